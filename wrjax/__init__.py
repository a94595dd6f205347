"""wrjax: sample-efficient latent-space optimisation with weighted retraining, in JAX.

Tripp, Daxberger & Hernández-Lobato, "Sample-Efficient Optimization in the Latent Space of
Deep Generative Models via Weighted Retraining", NeurIPS 2020.

The public API is re-exported here; submodules hold the details:

* ``wrjax.weighting``: rank weights (eq. 3) and the authors' other schemes, k schedules.
* ``wrjax.resampling``: duplicate-copy variance reduction (A.2), weighted minibatch plans.
* ``wrjax.vae``: per-example ELBO, weighted loss, ``TrainState``, train step, ``fit``.
* ``wrjax.gp``: sparse GP (SGPR, float64) fitting and cached prediction.
* ``wrjax.acquisition``: (log) expected improvement, incumbents, multi-start maximisation.
* ``wrjax.bo``: one Bayesian-optimisation suggestion from a masked data buffer.
* ``wrjax.lso``: the retraining loop (Algorithm 1), ``Task``, ``LSOConfig``, ``run``.
* ``wrjax.tasks``: the toy, shapes, expressions and chemistry tasks (imported on demand).
"""

from wrjax.acquisition import (
    data_bounds,
    expected_improvement,
    incumbent,
    log_expected_improvement,
    maximize_acquisition,
)
from wrjax.bo import BOConfig, bo_suggest
from wrjax.precision import float64_scope
from wrjax.resampling import Batches, duplicate_capacity, duplicate_copies, weighted_batches
from wrjax.vae import (
    ElboTerms,
    TrainInfo,
    TrainState,
    beta_schedule,
    bernoulli_log_likelihood,
    categorical_log_likelihood,
    decode_logits,
    elbo_terms,
    encode_mean,
    fit,
    gaussian_kl,
    init_train_state,
    make_train_step,
    weighted_elbo_loss,
)
from wrjax.weighting import (
    KSchedule,
    cem_pi_weights,
    constant_k,
    dbas_weights,
    geometric_k,
    make_weight_fn,
    max_rank_weight,
    rank_weights,
    rwr_weights,
    uniform_weights,
)

__version__ = "0.1.0"
