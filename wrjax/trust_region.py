"""Trust regions in latent space (TuRBO, Eriksson et al. 2019; LOL-BO, Maus et al. 2022).

The acquisition is maximised inside a box around the incumbent instead of the whole latent
box. The box's side grows after ``success_tolerance`` improving batches in a row and shrinks
after ``failure_tolerance`` non-improving ones; below ``min_length`` it restarts at
``init_length``. This is TuRBO's rule; LOL-BO keeps it in the latent space of a VAE and
re-centres the region on the re-encoded incumbent after every retrain.

State is a :class:`TrustRegionState` pytree and every function is pure, so a run that stores
it (or replays the evaluations that produced it) resumes exactly::

    state = init(center, config)
    lower, upper = bounds(state, lengthscale, global_bounds)     # where to search
    ...evaluate a batch, best score b...
    state = update(state, config, batch_best=b, batch_best_point=z)
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["TrustRegionConfig", "TrustRegionState", "init", "update", "recenter", "restart",
           "bounds"]


@dataclasses.dataclass(frozen=True)
class TrustRegionConfig:
    """TuRBO's defaults (side lengths in units of the global box's width, which is 1 in
    TuRBO's unit cube). ``failure_tolerance=None`` is TuRBO's ``ceil(max(4 / q, D / q))``."""

    init_length: float = 0.8
    min_length: float = 0.5**7
    max_length: float = 1.6
    success_tolerance: int = 3
    failure_tolerance: int | None = None
    batch_size: int = 1
    relative_improvement: float = 1e-3  # a success beats the incumbent by this * |incumbent|

    def __post_init__(self):
        if not 0 < self.min_length <= self.init_length <= self.max_length:
            raise ValueError("need 0 < min_length <= init_length <= max_length")
        if self.success_tolerance < 1 or self.batch_size < 1:
            raise ValueError("success_tolerance and batch_size must be >= 1")
        if self.failure_tolerance is not None and self.failure_tolerance < 1:
            raise ValueError("failure_tolerance must be >= 1")

    def failures_allowed(self, dim: int) -> int:
        if self.failure_tolerance is not None:
            return self.failure_tolerance
        return int(math.ceil(max(4.0 / self.batch_size, dim / self.batch_size)))


class TrustRegionState(NamedTuple):
    """Everything the next proposal needs; all scalars are 0-d arrays (a pytree)."""

    center: jax.Array  # (D,) the incumbent's latent point
    best: jax.Array  # () best score seen (the incumbent's)
    length: jax.Array  # () side length, in units of the global box width
    successes: jax.Array  # () int32 consecutive improving batches
    failures: jax.Array  # () int32 consecutive non-improving batches
    restarts: jax.Array  # () int32 number of restarts so far


def init(center: jax.Array, best: float, config: TrustRegionConfig) -> TrustRegionState:
    """A fresh region of side ``init_length`` around ``center`` (D,) with incumbent ``best``."""
    center = jnp.asarray(center)
    if center.ndim != 1:
        raise ValueError(f"center must be (D,), got shape {center.shape}")
    zero = jnp.zeros((), jnp.int32)
    return TrustRegionState(
        center, jnp.asarray(best, center.dtype), jnp.asarray(config.init_length, center.dtype),
        zero, zero, zero,
    )


def update(
    state: TrustRegionState,
    config: TrustRegionConfig,
    *,
    batch_best: jax.Array,
    batch_best_point: jax.Array,
) -> TrustRegionState:
    """TuRBO's update after one evaluated batch whose best score is ``batch_best`` at
    ``batch_best_point`` (D,). Pure and jittable (``config`` is static)."""
    dim = state.center.shape[0]
    fail_tol = config.failures_allowed(dim)
    threshold = state.best + config.relative_improvement * jnp.abs(state.best)
    # a restarted region has no incumbent yet (best = -inf): any finite score is a success
    threshold = jnp.where(jnp.isfinite(state.best), threshold, -jnp.inf)
    success = batch_best > threshold
    successes = jnp.where(success, state.successes + 1, 0)
    failures = jnp.where(success, 0, state.failures + 1)
    grow = successes >= config.success_tolerance
    shrink = failures >= fail_tol
    length = jnp.where(grow, jnp.minimum(2.0 * state.length, config.max_length), state.length)
    length = jnp.where(shrink, length / 2.0, length)
    successes = jnp.where(grow, 0, successes)
    failures = jnp.where(shrink, 0, failures)
    improved = batch_best > state.best
    center = jnp.where(improved, batch_best_point, state.center)
    best = jnp.maximum(state.best, batch_best)
    restart = length < config.min_length
    length = jnp.where(restart, config.init_length, length)
    return TrustRegionState(
        center, best, length.astype(state.length.dtype), successes.astype(jnp.int32),
        failures.astype(jnp.int32), (state.restarts + restart).astype(jnp.int32),
    )


def recenter(state: TrustRegionState, center: jax.Array) -> TrustRegionState:
    """Move the region to ``center`` (the re-encoded incumbent after a retrain), keeping its
    size and counters: the latent space has moved, the search's progress has not."""
    return state._replace(center=jnp.asarray(center, state.center.dtype))


def restart(state: TrustRegionState, center: jax.Array, config: TrustRegionConfig
            ) -> TrustRegionState:
    """TuRBO's restart, elsewhere: a fresh region of side ``init_length`` at ``center`` (D,)
    with no incumbent of its own (``best = -inf``, so the first scored point becomes it) and
    zeroed counters; ``restarts`` counts it."""
    center = jnp.asarray(center, state.center.dtype)
    zero = jnp.zeros((), jnp.int32)
    return TrustRegionState(
        center, jnp.asarray(-jnp.inf, state.best.dtype),
        jnp.asarray(config.init_length, state.length.dtype), zero, zero,
        (state.restarts + 1).astype(jnp.int32),
    )


def bounds(
    state: TrustRegionState, lengthscale: jax.Array, global_bounds: jax.Array
) -> jax.Array:
    """The region as a ``(2, D)`` box inside ``global_bounds``.

    TuRBO stretches the box along long lengthscales: side ``length * w_d * width_d`` with
    ``w = lengthscale / prod(lengthscale)^(1/D)`` (so the volume matches the isotropic box),
    each lengthscale first clipped to within a factor 20 of their geometric mean.
    """
    ls = jnp.asarray(lengthscale, state.center.dtype)
    lo, hi = jnp.asarray(global_bounds[0]), jnp.asarray(global_bounds[1])
    # TuRBO bounds its lengthscales (to [0.005, 2] of the unit cube, a ratio of 400); a
    # sparse GP can drive one to ~0 (an ignored dimension), which must not collapse the box
    log_ls = jnp.log(ls)
    log_ls = jnp.clip(log_ls, jnp.mean(log_ls) - jnp.log(20.0), jnp.mean(log_ls) + jnp.log(20.0))
    w = jnp.exp(log_ls - jnp.mean(log_ls))
    half = 0.5 * state.length * w * (hi - lo)
    # a re-encoded incumbent can lie outside the data's box: search from its nearest point
    center = jnp.clip(state.center, lo, hi)
    return jnp.stack([jnp.maximum(center - half, lo), jnp.minimum(center + half, hi)])
