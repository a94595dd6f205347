"""wrjax: sample-efficient latent-space optimisation with weighted retraining, in JAX.

Tripp, Daxberger & Hernández-Lobato, "Sample-Efficient Optimization in the Latent Space of
Deep Generative Models via Weighted Retraining", NeurIPS 2020.

What most users call is re-exported here: the loop (:func:`run`, :class:`Task`,
:class:`LSOConfig`, the optimisers :func:`make_gp_ei` and :func:`grid_optimizer`), its
results (:func:`topk_curve`, :func:`topk_curves`), and the numerical pieces (weights, the
weighted VAE trainer, resampling, acquisition). Submodules hold the details:

* ``wrjax.task``: the problem contract :class:`Task` (tasks import only this).
* ``wrjax.loop``: Algorithm 1: config, ``LSOState``, pure steps, optimisers, records, the host
  driver ``run`` and the compiled driver ``make_compiled_run``.
* ``wrjax.weighting``: rank weights (eq. 3) and the authors' other schemes, k schedules.
* ``wrjax.resampling``: duplicate-copy variance reduction (A.2), weighted minibatch plans.
* ``wrjax.vae``: per-example ELBO, weighted loss, ``TrainState``, train step, ``fit``, and
  ``train``, the one training loop (chunks, ``History``, validation, hooks, resuming).
* ``wrjax.checkpoint``: pytrees and shipped models (``save_model``/``load_model``).
* ``wrjax.paths``: the one resolver of data sets, shipped checkpoints and caches.
* ``wrjax.gp``: sparse GP (SGPR, float64) fitting and cached prediction.
* ``wrjax.acquisition``: (log) expected improvement, incumbents, multi-start maximisation.
* ``wrjax.bo``: the GP-EI optimiser (fit and acquisition configs, data subset, ``bo_suggest``).
* ``wrjax.buffer``, ``wrjax.metrics``: the fixed-capacity data buffer, TopK curves.
* ``wrjax.tasks``: the toy, shapes, expressions and chemistry tasks (imported on demand).

Where the jit boundaries are: the library jits its numerical programs once each, at the
function a caller uses (``fit``, ``rank_weights``, the GP fit and acquisition programs), with
the static arguments stated there; the host driver jits its bookkeeping steps once per run;
the compiled driver is a pure function for the caller to jit or vmap.
"""

from wrjax.acquisition import (
    data_bounds,
    expected_improvement,
    incumbent,
    log_expected_improvement,
    maximize_acquisition,
)
from wrjax.bo import AcquisitionConfig, BOConfig, GPFitConfig, bo_suggest, make_gp_ei
from wrjax.buffer import DataBuffer, buffer_from_data
from wrjax.loop import (
    LSOConfig,
    LSOState,
    Optimizer,
    Proposal,
    RunResult,
    grid_optimizer,
    load_records,
    make_compiled_run,
    run,
)
from wrjax.metrics import mean_and_stderr, topk_curve, topk_curves
from wrjax.precision import float64_scope
from wrjax.resampling import Batches, duplicate_capacity, duplicate_copies, weighted_batches
from wrjax.task import Task
from wrjax.vae import (
    ElboTerms,
    History,
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
    train,
    weighted_elbo_loss,
)
from wrjax.weighting import (
    KSchedule,
    cem_pi_weights,
    constant_k,
    dbas_weights,
    format_k,
    geometric_k,
    make_weight_fn,
    max_rank_weight,
    rank_weights,
    rwr_weights,
    uniform_weights,
)

__version__ = "0.1.0"

__all__ = [
    # the loop
    "run", "Task", "LSOConfig", "LSOState", "RunResult", "Optimizer", "Proposal",
    "make_gp_ei", "GPFitConfig", "AcquisitionConfig", "grid_optimizer", "make_compiled_run",
    "load_records", "DataBuffer", "buffer_from_data",
    # results
    "topk_curve", "topk_curves", "mean_and_stderr",
    # weighting
    "rank_weights", "uniform_weights", "dbas_weights", "cem_pi_weights", "rwr_weights",
    "make_weight_fn", "max_rank_weight", "KSchedule", "constant_k", "geometric_k", "format_k",
    # the weighted VAE
    "ElboTerms", "TrainInfo", "TrainState", "beta_schedule", "bernoulli_log_likelihood",
    "categorical_log_likelihood", "decode_logits", "elbo_terms", "encode_mean", "fit",
    "train", "History", "gaussian_kl", "init_train_state", "make_train_step", "weighted_elbo_loss",
    "Batches", "duplicate_capacity", "duplicate_copies", "weighted_batches",
    # BO pieces
    "BOConfig", "bo_suggest", "data_bounds", "expected_improvement", "incumbent",
    "log_expected_improvement", "maximize_acquisition", "float64_scope",
]  # fmt: skip
