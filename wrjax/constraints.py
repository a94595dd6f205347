"""Constrained expected improvement (Gardner et al. 2014; Gelbart et al. 2014).

When a constraint ``c(x) <= threshold`` is known only after an evaluation (the chemistry
task's 38-heavy-atom limit, or decoding validity), model ``c`` with its own GP and multiply EI
by the probability of feasibility::

    cEI(x) = EI(x) * P(c(x) <= threshold),   P = Phi((threshold - mu_c(x)) / sigma_c(x))

In logs, ``log cEI = log EI + log Phi(.)``, both finite far into the tails (``log_ndtr``), so
the multi-start maximiser of ``wrjax.acquisition`` gets a usable gradient even where the
feasible region is tiny. The incumbent of EI is the best *feasible* score.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr

from wrjax import acquisition, gp

__all__ = [
    "probability_of_feasibility",
    "log_probability_of_feasibility",
    "constrained_ei",
    "constrained_log_ei",
    "constrained_log_ei_at",
]


def probability_of_feasibility(mean, var, threshold) -> jax.Array:
    """``P(c <= threshold)`` for ``c ~ N(mean, var)``, elementwise."""
    return ndtr((threshold - mean) / jnp.sqrt(var))


def log_probability_of_feasibility(mean, var, threshold) -> jax.Array:
    """``log P(c <= threshold)``, finite for any finite input."""
    return log_ndtr((threshold - mean) / jnp.sqrt(var))


def constrained_ei(mean, var, incumbent, c_mean, c_var, threshold) -> jax.Array:
    """EI of the objective ``N(mean, var)`` above ``incumbent`` times the probability that
    the constraint ``N(c_mean, c_var)`` is at most ``threshold``."""
    ei = acquisition.expected_improvement(mean, var, incumbent)
    return ei * probability_of_feasibility(c_mean, c_var, threshold)


def constrained_log_ei(mean, var, incumbent, c_mean, c_var, threshold) -> jax.Array:
    """``log`` of :func:`constrained_ei`, stable in both tails."""
    return acquisition.log_expected_improvement(
        mean, var, incumbent
    ) + log_probability_of_feasibility(c_mean, c_var, threshold)


def constrained_log_ei_at(
    objective: gp.SGPRPredictor,
    constraint: gp.SGPRPredictor,
    incumbent: jax.Array,
    threshold: jax.Array,
    x: jax.Array,
) -> jax.Array:
    """Constrained log-EI of one latent point ``x (D,)`` from two fitted sparse GPs (each in
    its own standardised units: ``incumbent`` and ``threshold`` are given in those units).
    Pass it as ``jax.tree_util.Partial(constrained_log_ei_at, objective, constraint,
    incumbent, threshold)`` to ``wrjax.acquisition.maximize_acquisition``."""
    m, v = gp.predict_standardized(objective, x[None, :])
    cm, cv = gp.predict_standardized(constraint, x[None, :])
    return constrained_log_ei(m, v, incumbent, cm, cv, threshold)[0]
