"""Bayesian optimisation in latent space: subset, SGPR fit, acquisition (appendix C.2).

Two pure programs and a factory, optax/blackjax style:

* :class:`GPFitConfig`: the GP's data policy (:func:`select_subset`: the ``n_best`` best, up to
  ``n_include`` forced points, ``n_random`` random others) and its fit, *cold* (k-means
  inducing points, the authors' initial values and two-phase schedule) at the start of a
  retrain cycle, *warm* from the previous fit's parameters and optimiser state within it;
* :class:`AcquisitionConfig`: (log-)EI maximised from ``num_restarts`` starts inside the
  authors' box (half ``N(0, I)`` draws, half random points from the top 20% of the data);
  ``batch_size > 1`` adds Kriging-believer fantasies;
* :func:`make_gp_ei` ``(fit, acquisition) -> Optimizer(init, propose)`` for :func:`wrjax.run`.

:func:`bo_suggest` is one validated query on a masked buffer (with the flat :class:`BOConfig`
of both halves), for use outside the loop. Each query returns NumPy arrays (they survive
leaving the float64 scope): ranked distinct candidates, so that the caller can move to the
next one when a decode is invalid or a duplicate, the state for the next warm start, and a
:class:`BOInfo`.

Compilation: the fit program is keyed on the :class:`GPFitConfig` and the shapes, the
acquisition program on the :class:`AcquisitionConfig`; from one query to the next at fixed
buffer capacity nothing recompiles, and changing one config never recompiles the other
program.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax import acquisition as acq
from wrjax import gp
from wrjax import gp_update
from wrjax._checks import check_choice, check_masked_scores, check_unit
from wrjax.loop.optimizers import Optimizer, Proposal
from wrjax.precision import float64_scope
from wrjax.typing import ArrayLike

__all__ = [
    "GPFitConfig", "AcquisitionConfig", "BOConfig", "BOState", "BOInfo", "select_subset",
    "make_gp_ei", "bo_suggest", "GPFit", "fit_sparse_gp", "log_ei_at", "IncrementalBOState",
]  # fmt: skip

_F64 = jnp.float64


def _check_counts(owner: str, config, positive=(), nonneg=()):
    for name in positive:
        if getattr(config, name) <= 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {getattr(config, name)}")
    for name in nonneg:
        if getattr(config, name) < 0:
            raise ValueError(f"{owner}.{name} must be >= 0, got {getattr(config, name)}")


REFIT_SCHEDULES = ("every-query", "every-query-converged", "incremental")
COLD_FITS = ("subset-greedy", "authors")
#: The fields only the "subset-greedy" cold fit reads (left out of an "authors" run's
#: config.json, so that the runs recorded before it existed resume).
_SUBSET_GREEDY_NAMES = ("cold_fit", "cold_subset", "cold_warmup_steps", "cold_kernel_max_steps",
                        "cold_max_steps", "cold_tol")
#: The fields only the "authors" cold fit reads.
_AUTHORS_COLD_NAMES = ("cold_kernel_steps", "cold_steps")


@dataclasses.dataclass(frozen=True)
class GPFitConfig:
    """The GP's data and its fit (static: a change recompiles the fit program only).

    Defaults follow the authors (appendix C.2 and their released code) except where noted.

    Attributes:
      num_inducing: ``M`` inducing points (500).
      n_best, n_random: GP data, the best and random points (2,000 + 8,000).
      n_include: slots for forced points (the current cycle's queries; 0 = none; the loop
        raises it to its include capacity).
      kmeans_iters: Lloyd iterations of the k-means initialisation (after k-means++ seeding).
      fit_method: ``"lbfgs"`` (default; optax L-BFGS with a zoom line search, re-initialised
        at every fit) or ``"adam"`` (the authors'). A deviation from the authors, for speed:
        20 L-BFGS iterations cost about a quarter of the authors' 100 Adam steps, but in
        ``benchmarks/RESULTS.md`` (warm refit from a cold fit that was far from converged)
        they reached a lower ELBO than 100 Adam steps did; use ``"adam"`` with
        ``warm_steps=100`` for the authors' refit.
      cold_fit: how a retrain cycle's first fit starts from nothing. ``"subset-greedy"``
        (default; :func:`wrjax.gp.cold_fit`): kernel and noise on a random ``cold_subset``
        rows (``cold_warmup_steps`` Adam steps, then L-BFGS to convergence, at most
        ``cold_kernel_max_steps``), inducing points by greedy conditional variance on all
        rows, then L-BFGS on everything (at most ``cold_max_steps``; both to ``cold_tol``
        nats per point). A deviation from the authors, for speed: at N = 10,000, M = 500 it
        reaches a higher bound than their schedule in a fraction of the time
        (``benchmarks/RESULTS.md``). ``"authors"``: the authors' two phases on all rows,
        ``cold_kernel_steps`` then ``cold_steps`` (the fit of every run recorded before
        2026-12-06; the ``cpu`` presets keep it).
      cold_subset, cold_warmup_steps, cold_kernel_max_steps, cold_max_steps: the
        ``"subset-greedy"`` phases' sizes (above).
      cold_tol: the ``"subset-greedy"`` phases' tolerance (nats per point); None (default)
        = ``refit_tol``, as before this field existed. Set it to loosen the warm refits
        (``refit_tol``) while the cold fit, which starts far from the optimum, still
        converges: ``refit_tol=1e-4, cold_tol=1e-5``.
      carry_lbfgs: warm L-BFGS refits keep the previous fit's curvature memory
        (:func:`wrjax.gp.carry_lbfgs_state`) instead of starting afresh (False, the
        behaviour of every run recorded before 2026-12-07). On unchanged data a carried
        refit continues the previous fit exactly; ``benchmarks/RESULTS.md``
        (``## lbfgs_memory``) measures it against fresh refits at equal bound. A cold fit
        always starts afresh. Needs ``fit_method="lbfgs"``.
      grow_inducing: incremental: EI is maximised on the posterior whose inducing inputs are
        the fitted ones plus every point absorbed since the last fit (the cached factors
        bordered by them, :func:`wrjax.gp_update.extend_inducing`, ``O(N M n_include)`` a
        query; the same posterior as :func:`wrjax.gp_update.grown_predictor`), so
        that a queried point informs the posterior around it between refits as a per-query
        refit's moved inducing points do (False: the fitted inducing points only, the
        behaviour of every run recorded before 2026-12-08). The staleness rules and the
        refits are unchanged.
      grow_inducing_max: the most absorbed points that join the inducing inputs (the latest
        ones; 32). The grown posterior has ``num_inducing + min(grow_inducing_max,
        n_include)`` rows whether or not they are used, and the EI ascent's cost grows with
        their square: with the loop's ``n_include`` (250 in a 50-evaluation cycle) every
        grown query ran on 750 rows, 2.2x the ascent time of 500, while the staleness rules
        refitted before 18 points had been absorbed in every recorded run (so a cap of 32
        changes none of their posteriors). Left out of ``config.json`` at its default.
      cold_kernel_steps: ``"authors"`` cold fit, phase 1: kernel and noise only, Adam at
        ``kernel_learning_rate`` (also with ``fit_method="lbfgs"``: from the authors' initial
        values a line search jumps to the degenerate optimum "no signal, all noise"). The
        authors ran this phase until the loss changed by less than 2.5% per 100 steps and
        phase 2 until 5e-4; here both are fixed budgets, so shapes and run time are static.
      cold_steps: cold fit, phase 2: all parameters including inducing points.
      warm_steps: warm refit steps, all parameters (the authors: at least 100, until the loss
        changes by less than 5e-4 per 100 steps).
      kernel_learning_rate, learning_rate: Adam rates of the two phases (0.1, 0.03).
      jitter: base Kzz jitter relative to the signal variance (grown on failure).
      refit: the schedule of :func:`make_gp_ei` within a retrain cycle. ``"every-query"``
        (default, the authors'): a warm refit of ``warm_steps`` before every query.
        ``"every-query-converged"``: a warm refit before every query run to convergence
        (:func:`wrjax.gp.fit_converged`, at most ``refit_max_steps``, ``refit_tol`` nats
        per point), the refit the incremental schedule makes, so that the two schedules can
        be compared at equal fits; :func:`fit_sparse_gp` (the other GP optimisers) honours
        it too.
        ``"incremental"``: the points observed since the last query enter the cached
        posterior by rank-one updates (:mod:`wrjax.gp_update`, ``O(M^2)`` each, kernel,
        inducing points and target scaling fixed) and a warm *converged* refit
        (:func:`wrjax.gp.fit_converged`, at most ``refit_max_steps``, ``refit_tol`` nats per
        point) on the cycle's subset runs only when :func:`wrjax.gp_update.should_refit` says
        so (or at the cycle start, cold). :func:`bo_suggest` and :func:`fit_sparse_gp`
        always fit.
      refit_every: incremental: refit once this many points were added since the last fit
        (0 = no count rule).
      refit_max_bound_drop, refit_max_uncovered, refit_max_mean_sq_zscore: incremental:
        the staleness thresholds of :func:`wrjax.gp_update.should_refit` (None = off).
        Defaults from the ``schedule`` notes in ``benchmarks/RESULTS.md``.
      incremental_window: incremental: most new rows absorbed per query (a static window;
        more new rows than this, or than ``n_include``, force a refit instead).
      refit_max_steps, refit_tol: incremental and every-query-converged: the converged
        refit's cap and tolerance.
      audit_every: incremental, a diagnostic (0 = off): at the queries whose remaining
        evaluations in the cycle are a multiple of this, and that the schedule did not
        refit, also run the refit the schedule skipped and maximise EI on it, and report how
        the schedule's proposal fares on that posterior (``BOInfo.audit``). It costs one
        converged refit per audit and changes nothing else (the trajectory is the same with
        and without it), so it is left out of a run's config.json.
    """

    num_inducing: int = 500
    n_best: int = 2000
    n_random: int = 8000
    n_include: int = 0
    kmeans_iters: int = 10
    fit_method: str = "lbfgs"
    cold_fit: str = "subset-greedy"
    cold_subset: int = 2000
    cold_warmup_steps: int = 20
    cold_kernel_max_steps: int = 50
    cold_max_steps: int = 25
    cold_kernel_steps: int = 100
    cold_steps: int = 100
    warm_steps: int = 20
    kernel_learning_rate: float = 0.1
    learning_rate: float = 0.03
    jitter: float = 1e-6
    refit: str = "every-query"
    refit_every: int = 10
    refit_max_bound_drop: float | None = 0.05
    refit_max_uncovered: float | None = 0.3
    refit_max_mean_sq_zscore: float | None = 4.0
    incremental_window: int = 8
    refit_max_steps: int = 100
    refit_tol: float = 1e-5
    audit_every: int = 0
    cold_tol: float | None = None
    carry_lbfgs: bool = False
    grow_inducing: bool = False
    grow_inducing_max: int = 32

    def __post_init__(self):
        owner = type(self).__name__
        _check_counts(owner, self, positive=("num_inducing", "incremental_window", "refit_max_steps"),
                      nonneg=("n_best", "n_random", "n_include", "kmeans_iters", "cold_kernel_steps",
                              "cold_steps", "warm_steps", "refit_every", "cold_warmup_steps",
                              "cold_kernel_max_steps", "cold_max_steps", "audit_every"))  # fmt: skip
        if self.grow_inducing_max <= 0:
            raise ValueError(f"{owner}.grow_inducing_max must be > 0, got {self.grow_inducing_max}")
        check_choice(f"{owner}.refit", self.refit, REFIT_SCHEDULES)
        check_choice(f"{owner}.cold_fit", self.cold_fit, COLD_FITS)
        if self.audit_every and self.refit != "incremental":
            # only the incremental schedule skips refits, so there is nothing to audit: say so
            # rather than log nothing
            raise ValueError(f"{owner}.audit_every audits the refits that refit='incremental' skips; "
                             f"it must be 0 with refit={self.refit!r}, got {self.audit_every}")
        if self.grow_inducing and self.refit != "incremental":
            raise ValueError(f"{owner}.grow_inducing adds the points absorbed since the last fit to the "
                             f"inducing inputs; it needs refit='incremental', got {self.refit!r}")
        if self.carry_lbfgs and self.fit_method != "lbfgs":
            raise ValueError(f"{owner}.carry_lbfgs keeps L-BFGS's memory across refits; it needs "
                             f"fit_method='lbfgs', got {self.fit_method!r} (Adam keeps its moments anyway)")
        if self.cold_subset <= 0:
            raise ValueError(f"{owner}.cold_subset must be > 0, got {self.cold_subset}")
        if not self.refit_tol >= 0:
            raise ValueError(f"{owner}.refit_tol must be >= 0")
        if self.cold_tol is not None and not self.cold_tol >= 0:
            raise ValueError(f"{owner}.cold_tol must be None or >= 0, got {self.cold_tol}")
        if self.n_best + self.n_random + self.n_include <= 0:
            raise ValueError(f"{owner}: n_best + n_random + n_include must be > 0")
        check_choice(f"{owner}.fit_method", self.fit_method, ("adam", "lbfgs"))
        for name in ("kernel_learning_rate", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{owner}.{name} must be > 0, got {getattr(self, name)}")
        if not self.jitter >= 0:
            raise ValueError(f"{owner}.jitter must be >= 0")


@dataclasses.dataclass(frozen=True)
class AcquisitionConfig:
    """How candidates are found on the fitted GP (static: recompiles the acquisition only).

    Attributes:
      acquisition: ``"log-ei"`` (default) or ``"ei"``. Both have the same maximiser; log-EI
        is the default because EI and its gradient underflow to exactly 0 a few standard
        deviations below the incumbent, where many random starts land, while log-EI keeps a
        useful gradient everywhere (Ament et al., 2023).
      incumbent: ``"quantile"`` (the authors': ``incumbent_quantile`` of the GP targets) or
        ``"best"`` (the best target).
      incumbent_quantile: 0.9 in wrjax's maximisation convention = the authors' 10th
        percentile of minimised targets.
      num_restarts: ascent starts (20); num_random_starts of them are ``N(0, I)`` draws
        (clipped to the box), the rest random points from the top ``1 - good_quantile``
        of the GP data (the authors: 10 + 10, top 20%).
      ascent_steps, ascent_learning_rate: projected Adam ascent per start (see
        :func:`wrjax.acquisition.maximize_acquisition`).
      min_distance: candidates closer than this fraction of the box width (per coordinate)
        to a better one are duplicates.
      bound_quantile, bound_scale: the box ``+- bound_scale * quantile(|z|)`` (99.9%, 1.1).
      batch_size: ``q`` points per query; ``q > 1`` uses ``batch_strategy``.
      batch_strategy: ``"kriging-believer"``: after each pick, condition the GP on its own
        posterior mean there (:func:`wrjax.gp.add_observation`), raise the incumbent to that
        value if it is higher, and maximise again from the same starts, taking the best
        result that is not within ``min_distance`` of an earlier pick (where the posterior
        is already confident, low noise and dense data, conditioning on the believed value
        barely changes EI and KB alone would pick almost the same point again; if every
        result is such a point, the best one is taken anyway). Not in the authors' code
        (they query one point per iteration).
      predictor_form: how the ascent evaluates the posterior variance: ``"dense"`` (default,
        :func:`wrjax.gp.dense_predictor`: one ``M x M`` matrix formed per maximisation, then
        a matrix product per step) or ``"triangular"`` (two triangular solves per step, as
        :func:`wrjax.gp.predict`). The same posterior up to rounding; dense made the
        maximisation 1.4x faster at M = 500 on a synthetic posterior (``benchmarks/RESULTS.md``,
        ``acq_form``) and 1.7x on the refitting queries of an expressions run
        (``experiments/RESULTS.md``). Left out of ``config.json`` when dense, so
        runs recorded before it resume (with the dense form).
    """

    acquisition: str = "log-ei"
    incumbent: str = "quantile"
    incumbent_quantile: float = 0.9
    num_restarts: int = 20
    num_random_starts: int = 10
    good_quantile: float = 0.8
    ascent_steps: int = 200
    ascent_learning_rate: float = 0.05
    min_distance: float = 1e-3
    bound_quantile: float = 0.999
    bound_scale: float = 1.1
    batch_size: int = 1
    batch_strategy: str = "kriging-believer"
    predictor_form: str = "dense"

    def __post_init__(self):
        owner = type(self).__name__
        _check_counts(owner, self, positive=("num_restarts", "batch_size"),
                      nonneg=("ascent_steps", "num_random_starts"))  # fmt: skip
        if self.num_random_starts > self.num_restarts:
            raise ValueError(f"{owner}.num_random_starts must be <= num_restarts")
        check_choice(f"{owner}.acquisition", self.acquisition, ("ei", "log-ei"))
        check_choice(f"{owner}.incumbent", self.incumbent, ("quantile", "best"))
        check_choice(f"{owner}.batch_strategy", self.batch_strategy, ("kriging-believer",))
        check_choice(f"{owner}.predictor_form", self.predictor_form, ("dense", "triangular"))
        for name in ("incumbent_quantile", "good_quantile", "bound_quantile"):
            check_unit(f"{owner}.{name}", getattr(self, name))
        for name in ("ascent_learning_rate", "bound_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{owner}.{name} must be > 0, got {getattr(self, name)}")
        if not self.min_distance >= 0:
            raise ValueError(f"{owner}.min_distance must be >= 0")


_FIT_NAMES = tuple(f.name for f in dataclasses.fields(GPFitConfig))
_INCREMENTAL_NAMES = ("refit", "refit_every", "refit_max_bound_drop", "refit_max_uncovered",
                      "refit_max_mean_sq_zscore", "incremental_window", "refit_max_steps", "refit_tol")
_ACQ_NAMES = tuple(f.name for f in dataclasses.fields(AcquisitionConfig))


@dataclasses.dataclass(frozen=True)
class BOConfig(GPFitConfig, AcquisitionConfig):
    """Both halves in one flat config, for :func:`bo_suggest` (every field of
    :class:`GPFitConfig` and :class:`AcquisitionConfig`, with their defaults).

    >>> fit, acquisition = BOConfig(num_inducing=100, num_restarts=10).split()
    >>> fit.num_inducing, acquisition.num_restarts
    (100, 10)
    """

    def __post_init__(self):
        self.split()  # validates both halves

    def split(self) -> tuple[GPFitConfig, AcquisitionConfig]:
        """``(GPFitConfig, AcquisitionConfig)`` with this config's values."""
        return (GPFitConfig(**{n: getattr(self, n) for n in _FIT_NAMES}),
                AcquisitionConfig(**{n: getattr(self, n) for n in _ACQ_NAMES}))


class BOState(NamedTuple):
    """What a warm refit needs from the previous query (NumPy leaves; pass it back as is)."""

    params: gp.SGPRParams  # raw GP parameters, float64, inducing (M, D)
    opt_state: optax.OptState  # the fit optimiser's state (Adam moments; re-made for L-BFGS)
    subset_key: np.ndarray  # (2,) uint32 raw key of the cycle's random subset


class BOInfo(NamedTuple):
    """Diagnostics of one query (host values)."""

    cold: bool  # whether this was a cold fit
    elbo: float  # collapsed ELBO after the fit (nats, standardised targets)
    loss: np.ndarray  # (steps,) negative ELBO along the fit
    jitter: float  # largest jitter added to Kzz (fit end and predictor), absolute
    skipped_steps: int  # fit steps skipped for a non-finite loss or gradient
    num_data: int  # valid points in the GP subset
    incumbent: float  # EI incumbent, original units
    acquisition_values: np.ndarray  # (R',) log-EI or EI (config.acquisition) at the candidates, original units
    bounds: np.ndarray  # (2, D) the search box
    fit_seconds: float  # subset + fit + predictor (wall clock, compiled after the first call)
    acquisition_seconds: float  # acquisition maximisation
    total_seconds: float
    refitted: bool = True  # whether this query fitted the GP (False: incremental update only)
    fit_steps: int = 0  # optimiser iterations of this query's fit (0 when not refitted)
    staleness: dict | None = None  # incremental schedule: the signals its refit rules read
    #   (num_added, elbo_per_point_change, max_uncovered, mean_sq_zscore, overflow) before
    #   this query's decision; None for a cold fit or the other schedules
    audit: dict | None = None  # incremental with audit_every: the skipped refit's verdict on
    #   this query (:func:`_audit_skipped_refit`); None where no audit ran


# --------------------------------------------------------------------------------------------
# The GP's data: a subset of the buffer
# --------------------------------------------------------------------------------------------


def select_subset(
    key: jax.Array,
    y: ArrayLike,
    mask: ArrayLike,
    *,
    n_best: int,
    n_random: int,
    include: ArrayLike | None = None,
    n_include: int = 0,
) -> gp.Subset:
    """The ``n_best`` highest scores, up to ``n_include`` forced points, and ``n_random`` others.

    The GP data of appendix C.2: the 2,000 best plus 8,000 random points of the buffer; the
    authors also add every point queried in the current retrain cycle (pass them as
    ``include`` with ``n_include`` slots for them). Shapes are static: the result always has
    ``S = min(n_best + n_include + n_random, C)`` entries, and when fewer valid points exist
    the extra entries are masked out. The three groups are disjoint: forced points that are
    already among the best take no second slot, and the random draw (uniform without
    replacement, by random priority) is over the valid points in neither group. Forced points
    beyond ``n_include`` join the random pool.

    With the same ``key`` the random priorities per slot are the same, so the random part is
    stable while a buffer grows (the loop keeps one key per retrain cycle).

    Args:
      key: PRNG key for the random part.
      y: ``(C,)`` scores (higher is better).
      mask: ``(C,)`` bool validity of the buffer slots.
      n_best, n_random, n_include: static sizes of the three groups (>= 0).
      include: optional ``(C,)`` bool, points that must be included (masked slots ignored).

    Returns:
      :class:`wrjax.gp.Subset` with ``index (S,)`` int32 and ``mask (S,)`` bool.
    """
    for name, v in (("n_best", n_best), ("n_random", n_random), ("n_include", n_include)):
        if int(v) != v or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v}")
    if n_best + n_random + n_include <= 0:
        raise ValueError("select_subset needs n_best + n_random + n_include > 0")
    check_masked_scores(y, mask, name="y")
    return _select_subset(key, y, mask, n_best=n_best, n_random=n_random, include=include,
                          n_include=n_include)


def _select_subset(key, y, mask, *, n_best, n_random, include=None, n_include=0) -> gp.Subset:
    """The pure core of :func:`select_subset` (static sizes, no checks; traceable)."""
    y = jnp.asarray(y)
    mask = jnp.asarray(mask, bool)
    c = y.shape[0]
    include = jnp.zeros((c,), bool) if include is None else jnp.asarray(include, bool)
    if include.shape != (c,):
        raise ValueError(f"include must have shape {(c,)}, got {include.shape}")

    neg = jnp.asarray(-jnp.inf, jnp.float32)
    slot = jnp.arange(c, dtype=jnp.int32)
    taken = jnp.zeros((c,), bool)
    parts_i, parts_m = [], []

    def take(priority, eligible, k):
        # top-k by priority among eligible slots; masked entries when fewer are eligible
        if k == 0:
            return jnp.zeros((0,), jnp.int32), jnp.zeros((0,), bool)
        vals, idx = jax.lax.top_k(jnp.where(eligible, priority, neg), k)
        return idx.astype(jnp.int32), jnp.isfinite(vals)

    score = y.astype(jnp.float32)
    k_best = min(n_best, c)
    i_best, m_best = take(score, mask, k_best)
    taken = taken.at[i_best].set(m_best)
    parts_i.append(i_best)
    parts_m.append(m_best)

    k_inc = min(n_include, c - k_best)
    # forced points: prefer later slots (the most recent queries) when over capacity
    i_inc, m_inc = take(slot.astype(jnp.float32), include & mask & ~taken, k_inc)
    taken = taken.at[i_inc].set(m_inc | taken[i_inc])
    parts_i.append(i_inc)
    parts_m.append(m_inc)

    k_rand = min(n_random, c - k_best - k_inc)
    u = jax.random.uniform(key, (c,), jnp.float32)
    i_rand, m_rand = take(u, mask & ~taken, k_rand)
    parts_i.append(i_rand)
    parts_m.append(m_rand)
    return gp.Subset(jnp.concatenate(parts_i), jnp.concatenate(parts_m))


# --------------------------------------------------------------------------------------------
# The two jitted programs
# --------------------------------------------------------------------------------------------


def _ei_at(pred, tau, x):
    mean, var = gp.predict_standardized(pred, x[None, :])
    return pred.y_std * acq.expected_improvement(mean[0], var[0], (tau - pred.y_mean) / pred.y_std)


def log_ei_at(pred: gp.SGPRPredictor, tau: jax.Array, x: jax.Array) -> jax.Array:
    """log-EI at one point ``x (D,)`` above the incumbent ``tau`` (original units), from a
    predictor in standardised units: the acquisition of :func:`make_gp_ei`. Pure; pass it as
    ``jax.tree_util.Partial(log_ei_at, pred, tau)`` to the maximiser."""
    mean, var = gp.predict_standardized(pred, x[None, :])
    u_tau = (tau - pred.y_mean) / pred.y_std
    return jnp.log(pred.y_std) + acq.log_expected_improvement(mean[0], var[0], u_tau)


_log_ei_at = log_ei_at


def _acq_partial(config: AcquisitionConfig, pred, tau):
    """The acquisition of one point on ``pred`` in ``config``'s predictor form (traceable)."""
    fn = _log_ei_at if config.acquisition == "log-ei" else _ei_at
    if config.predictor_form == "dense" and isinstance(pred, gp.SGPRPredictor):
        pred = gp.dense_predictor(pred)
    return jax.tree_util.Partial(fn, pred, tau)


class _FitOut(NamedTuple):
    params: gp.SGPRParams
    opt_state: optax.OptState
    info: gp.FitInfo
    pred: gp.SGPRPredictor
    data: gp.SGPRData
    num_data: jax.Array


@functools.partial(jax.jit, static_argnames=("config", "cold", "converged"))
def _fit_program(key, subset_key, z, y, mask, include, state_params, state_opt, *, config: GPFitConfig,
                 cold, converged=False):
    sub = _select_subset(
        subset_key,
        y,
        mask,
        n_best=config.n_best,
        n_random=config.n_random,
        include=include,
        n_include=config.n_include,
    )
    data = gp.make_data(z[sub.index], y[sub.index], sub.mask & mask[sub.index])
    method = config.fit_method
    if cold and config.cold_fit == "subset-greedy":
        params, info = gp.cold_fit(
            key, data, num_inducing=config.num_inducing, subset_size=config.cold_subset,
            kmeans_iters=config.kmeans_iters, warmup_steps=config.cold_warmup_steps,
            kernel_learning_rate=config.kernel_learning_rate,
            kernel_max_steps=config.cold_kernel_max_steps, max_steps=config.cold_max_steps,
            tol=config.refit_tol if config.cold_tol is None else config.cold_tol, jitter=config.jitter,
        )  # fmt: skip
        # a fresh state of the warm refits' optimiser (L-BFGS re-initialises anyway)
        opt_state = gp.make_optimizer(config.learning_rate, method=method).init(params)
    elif cold:
        params = gp.init_params(
            key, data, num_inducing=config.num_inducing, kmeans_iters=config.kmeans_iters
        )
        losses = []
        if config.cold_kernel_steps > 0:
            # Adam for this phase whatever fit_method says: from the authors' initial values
            # (lengthscales near 1 in 25-56 dimensions) a line search jumps straight to the
            # degenerate optimum "signal variance 0, all noise"
            opt1 = gp.make_optimizer(config.kernel_learning_rate, train_inducing=False)
            params, _, info1 = gp.fit(
                params, opt1.init(params), data,
                optimizer=opt1, num_steps=config.cold_kernel_steps, jitter=config.jitter,
            )  # fmt: skip
            losses.append(info1.loss)
        opt = gp.make_optimizer(config.learning_rate, method=method)
        params, opt_state, info = gp.fit(
            params, opt.init(params), data,
            optimizer=opt, num_steps=config.cold_steps, jitter=config.jitter,
        )  # fmt: skip
        loss = jnp.concatenate(losses + [info.loss])
        info = info._replace(loss=loss, num_steps=jnp.asarray(loss.shape[0], jnp.int32))
    else:
        opt = gp.make_optimizer(config.learning_rate, method=method)
        fresh = opt.init(state_params)
        # Adam keeps its moments; L-BFGS caches the previous objective's value and gradient,
        # so it starts fresh unless carry_lbfgs moves its curvature memory onto the new data.
        # A state from another optimiser (other structure) always starts fresh.
        same = jax.tree.structure(state_opt) == jax.tree.structure(fresh)
        if method == "adam" and same:
            opt_state = state_opt
        elif config.carry_lbfgs and same:
            opt_state = gp.carry_lbfgs_state(state_opt, state_params, data, jitter=config.jitter)
        else:
            opt_state = fresh
        if converged:  # to convergence, capped: every-query-converged, incremental's refits
            params, opt_state, info = gp.fit_converged(
                state_params, opt_state, data, optimizer=opt, max_steps=config.refit_max_steps,
                tol=config.refit_tol, window=1 if method == "lbfgs" else 20, jitter=config.jitter,
            )  # fmt: skip
        else:
            params, opt_state, info = gp.fit(
                state_params, opt_state, data,
                optimizer=opt, num_steps=config.warm_steps, jitter=config.jitter,
            )  # fmt: skip
    # the incremental schedule builds rarely and then updates the factors: the "solve" form
    # (25% slower) keeps its rounding at 1e-13 where "product" carries cond(Kzz) * eps
    form = "solve" if config.refit == "incremental" else "product"
    pred = gp.build_predictor(params, data, jitter=config.jitter, form=form)
    return _FitOut(params, opt_state, info, pred, data, jnp.sum(data.mask))


class _AcqOut(NamedTuple):
    first: acq.AcquisitionResult  # ranked multi-start result of the first pick
    batch: jax.Array  # (q, D) picks in order
    batch_values: jax.Array  # (q,) acquisition value of each pick when it was made
    tau: jax.Array
    bounds: jax.Array


def _starts(key, data, bounds, config):
    k_rand, k_good = jax.random.split(key)
    d = data.x.shape[1]
    n_rand = config.num_random_starts
    n_good = config.num_restarts - n_rand
    rand = jax.random.normal(k_rand, (config.num_restarts, d), _F64)  # N(0, I), authors'
    if n_good == 0:
        return rand
    cut = acq.incumbent(data.y, data.mask, method="quantile", quantile=config.good_quantile)
    good = data.mask & (data.y >= cut)
    prio = jnp.where(good, jax.random.uniform(k_good, data.y.shape, _F64), -jnp.inf)
    vals, idx = jax.lax.top_k(prio, min(n_good, data.y.shape[0]))
    picks = jnp.where(jnp.isfinite(vals)[:, None], data.x[idx], rand[n_rand : n_rand + idx.shape[0]])
    starts = jnp.concatenate([rand[:n_rand], picks, rand[n_rand + idx.shape[0] :]])
    return starts


@functools.partial(jax.jit, static_argnames=("config",))
def _acq_program(key, pred, data, *, config: AcquisitionConfig):
    bounds = acq.data_bounds(
        data.x, data.mask, quantile=config.bound_quantile, scale=config.bound_scale
    )
    # in original units (the predictor maps back)
    y_orig = data.y * pred.y_std + pred.y_mean
    tau = acq.incumbent(
        y_orig, data.mask,
        method="best" if config.incumbent == "best" else "quantile",
        quantile=config.incumbent_quantile,
    )  # fmt: skip
    # fold_in, not split: the first pick does not depend on batch_size
    starts = _starts(jax.random.fold_in(key, 0), data, bounds, config)

    def run(k, p, t):
        return acq.maximize(
            k, _acq_partial(config, p, t), bounds, starts,
            num_restarts=config.num_restarts, num_steps=config.ascent_steps,
            learning_rate=config.ascent_learning_rate, min_distance=config.min_distance,
        )  # fmt: skip

    first = run(jax.random.fold_in(key, 1), pred, tau)
    x0, v0 = first.points[0], first.values[0]
    if config.batch_size == 1:
        return _AcqOut(first, x0[None], v0[None], tau, bounds)

    def believe(p, t, x):
        # Kriging believer: pretend f(x) = its posterior mean; the fantasy also counts as an
        # observation for the incumbent, otherwise (with a low quantile incumbent) EI at x
        # stays almost unchanged and the same point is picked again
        mean, _ = gp.predict_standardized(p, x[None, :])
        y_x = mean[0] * p.y_std + p.y_mean
        return gp.add_observation(p, x, y_x), jnp.maximum(t, y_x)

    tol = config.min_distance * (bounds[1] - bounds[0])

    def pick(carry, i):
        p, t, chosen, filled = carry
        res = run(jax.random.fold_in(key, i), p, t)
        # the best result that is not a previous pick (KB can return almost the same point
        # when the posterior is already confident there); the overall best if all are
        near = jnp.all(jnp.abs(res.points[:, None, :] - chosen[None, :, :]) <= tol[None, None, :], axis=-1)
        fresh = res.distinct & ~jnp.any(near & filled[None, :], axis=1)
        j = jnp.where(jnp.any(fresh), jnp.argmax(fresh), 0)
        x = res.points[j]
        p, t = believe(p, t, x)
        chosen = chosen.at[i - 1].set(x)
        filled = filled.at[i - 1].set(True)
        return (p, t, chosen, filled), (x, res.values[j])

    q = config.batch_size
    chosen = jnp.zeros((q, x0.shape[0]), x0.dtype).at[0].set(x0)
    filled = jnp.zeros((q,), bool).at[0].set(True)
    p1, t1 = believe(pred, tau, x0)
    _, (xs, vs) = jax.lax.scan(pick, (p1, t1, chosen, filled), jnp.arange(2, q + 1))
    return _AcqOut(first, jnp.concatenate([x0[None], xs]), jnp.concatenate([v0[None], vs]), tau, bounds)


# --------------------------------------------------------------------------------------------
# One query, the optimiser, and the validated entry point
# --------------------------------------------------------------------------------------------


def _np_tree(tree):
    return jax.tree.map(np.asarray, tree)


def _as_key(key):
    key = jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key (jax.random.PRNGKey)
    return key


def _converged_warm(fit: GPFitConfig, cold: bool) -> bool:
    """Whether a refit (not :func:`make_gp_ei`'s incremental path) runs to convergence."""
    return not cold and fit.refit == "every-query-converged"


def _fit(k_subset, k_init, z, y, mask, *, fit: GPFitConfig, state, cold, include, converged=False):
    """The fit program on host inputs: ``(_FitOut, new BOState)`` (inside float64)."""
    c = np.shape(z)[0]
    include = jnp.zeros((c,), bool) if include is None else jnp.asarray(include, bool)
    subset_key = k_subset if cold else jax.random.wrap_key_data(jnp.asarray(state.subset_key))
    if cold:
        s_params, s_opt = None, None
    else:
        s_params = jax.tree.map(lambda a: jnp.asarray(a, _F64), state.params)
        s_opt = jax.tree.map(jnp.asarray, state.opt_state)
    out = _fit_program(
        k_init, subset_key, jnp.asarray(z, _F64), jnp.asarray(y, _F64), jnp.asarray(mask, bool),
        include, s_params, s_opt, config=fit, cold=cold, **({"converged": True} if converged else {}),
    )  # fmt: skip
    jax.block_until_ready(out)
    new_state = BOState(_np_tree(out.params), _np_tree(out.opt_state),
                        np.asarray(jax.random.key_data(subset_key)))  # fmt: skip
    return out, new_state


class GPFit(NamedTuple):
    """A fitted sparse GP on the buffer's subset (:func:`fit_sparse_gp`).

    ``predictor`` and ``data`` are float64 device arrays: use them inside a
    :func:`wrjax.precision.float64_scope` (e.g. with :func:`wrjax.gp.predict` or an
    acquisition program of your own).
    """

    predictor: gp.SGPRPredictor
    data: gp.SGPRData
    state: BOState  # pass back for the next warm refit
    elbo: float
    jitter: float
    num_data: int
    seconds: float


@float64_scope
def fit_sparse_gp(key, z, y, mask, *, fit: GPFitConfig = GPFitConfig(),
                  state: BOState | None = None, include=None) -> GPFit:
    """Fit the SGPR of :func:`make_gp_ei` on a masked buffer, cold when ``state`` is None,
    else warm from it: the public first half of a query, for optimisers that choose their
    candidates differently (trust regions, Thompson sampling, constrained EI). Inputs are
    those of :func:`bo_suggest` (unvalidated here: the loop's buffer holds finite scores)."""
    t0 = time.perf_counter()
    k_subset, k_init = jax.random.split(_as_key(key))
    cold = state is None
    out, new_state = _fit(k_subset, k_init, z, y, mask, fit=fit, state=state, cold=cold,
                          include=include, converged=_converged_warm(fit, cold))  # fmt: skip
    return GPFit(out.pred, out.data, new_state, float(out.info.elbo),
                 float(max(out.info.jitter, out.pred.jitter)), int(out.num_data),
                 time.perf_counter() - t0)  # fmt: skip


@float64_scope
def _suggest(key, z, y, mask, *, fit: GPFitConfig, acquisition: AcquisitionConfig,
             state: BOState | None, cold: bool, include) -> tuple[np.ndarray, BOState, BOInfo]:
    """One query, unvalidated (the caller checked the inputs): fit, then maximise."""
    t0 = time.perf_counter()
    k_subset, k_init, k_acq = jax.random.split(_as_key(key), 3)
    out, new_state = _fit(k_subset, k_init, z, y, mask, fit=fit, state=state, cold=cold,
                          include=include, converged=_converged_warm(fit, cold))  # fmt: skip
    t1 = time.perf_counter()
    res = _acq_program(k_acq, out.pred, out.data, config=acquisition)
    jax.block_until_ready(res)
    t2 = time.perf_counter()
    pts, vals = _ranked_candidates(res, acquisition)
    steps = int(out.info.num_steps) if out.info.num_steps is not None else len(out.info.loss)
    info = BOInfo(
        cold=cold, elbo=float(out.info.elbo), loss=np.asarray(out.info.loss),
        jitter=float(max(out.info.jitter, out.pred.jitter)), skipped_steps=int(out.info.skipped),
        num_data=int(out.num_data), incumbent=float(res.tau), acquisition_values=vals,
        bounds=np.asarray(res.bounds), fit_seconds=t1 - t0, acquisition_seconds=t2 - t1,
        total_seconds=time.perf_counter() - t0, refitted=True, fit_steps=steps,
    )  # fmt: skip
    return pts.astype(np.float32), new_state, info


def _ranked_candidates(res: _AcqOut, config: AcquisitionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Distinct candidates best first: the batch (q > 1) then the other first-round ones."""
    first = _np_tree(res.first)
    pts, vals = first.points[first.distinct], first.values[first.distinct]
    if config.batch_size == 1:
        return pts, vals
    tol = config.min_distance * np.asarray(res.bounds[1] - res.bounds[0])
    batch = np.asarray(res.batch)
    rest = [i for i in range(len(pts)) if not np.any(np.all(np.abs(batch - pts[i]) <= tol, axis=-1))]
    return np.concatenate([batch, pts[rest]]), np.concatenate([np.asarray(res.batch_values), vals[rest]])


# --------------------------------------------------------------------------------------------
# The incremental schedule: rank-one updates between (rare) refits
# --------------------------------------------------------------------------------------------


class IncrementalBOState(NamedTuple):
    """The state of :func:`make_gp_ei` with ``GPFitConfig(refit="incremental")`` (NumPy leaves).

    The first three fields are :class:`BOState`'s (the last fit's, for the next warm refit).
    """

    params: gp.SGPRParams  # raw GP parameters of the last fit
    opt_state: optax.OptState  # its optimiser state
    subset_key: np.ndarray  # (2,) uint32 raw key of the cycle's random subset
    inc: gp_update.IncrementalSGPR  # the posterior of the last fit's data plus the points added since
    data: gp.SGPRData  # (S + n_include) rows: the fit's subset, then the added points (same scaling)
    absorbed: np.ndarray  # (C + P,) bool rows valid at the last fit or added since
    seen_z: np.ndarray  # (C + P, D) the rows' latents then (a changed row is new: the pseudo
    seen_y: np.ndarray  # (C + P,)   rows are a ring that the loop overwrites), and scores


def _refit_rules(config: GPFitConfig) -> dict:
    rules = {"every": config.refit_every or None, "max_bound_drop": config.refit_max_bound_drop,
             "max_uncovered": config.refit_max_uncovered,
             "max_mean_sq_zscore": config.refit_max_mean_sq_zscore}  # fmt: skip
    return {k: v for k, v in rules.items() if v is not None}


@functools.partial(jax.jit, static_argnames=("config",))
def _absorb_program(z, y, mask, inc, data, absorbed, seen_z, seen_y, *, config: GPFitConfig):
    """Condition on the rows valid now but not at the last fit, or changed since (at most
    ``incremental_window`` of them, lowest slots first, in a fixed window): ``(inc, data,
    absorbed, seen_z, seen_y, staleness, refit, overflow)``; ``refit`` is the schedule's verdict, ``overflow`` that some new rows
    did not fit the window or the data's spare slots (then the caller must refit)."""
    rows = y.shape[0]
    cap = config.n_include
    s = data.x.shape[0] - cap
    new = mask & (~absorbed | jnp.any(z != seen_z, axis=1) | (y != seen_y))
    slot = jnp.arange(rows)
    k = min(config.incremental_window, rows)
    vals, idx = jax.lax.top_k(jnp.where(new, (rows - slot).astype(_F64), 0.0), k)
    take = vals > 0
    n_new = jnp.sum(new.astype(jnp.int32))
    overflow = (n_new > k) | (inc.num_added + n_new > cap)
    x_new = z[idx].astype(_F64)
    y_new = y[idx].astype(_F64)
    inc2 = gp_update.condition_on_batch(inc, x_new, y_new, take)
    pos = s + inc.num_added + jnp.cumsum(take.astype(jnp.int32)) - 1
    pos = jnp.where(take, pos, data.x.shape[0])  # out of range: dropped
    ys = (y_new - inc.pred.y_mean) / inc.pred.y_std
    data2 = data._replace(
        x=data.x.at[pos].set(x_new, mode="drop"), y=data.y.at[pos].set(ys, mode="drop"),
        mask=data.mask.at[pos].set(True, mode="drop"),
    )  # fmt: skip
    absorbed2 = absorbed.at[idx].set(absorbed[idx] | take)
    seen_z = seen_z.at[idx].set(jnp.where(take[:, None], z[idx], seen_z[idx]))
    seen_y = seen_y.at[idx].set(jnp.where(take, y[idx], seen_y[idx]))
    info = gp_update.staleness(inc2)
    rules = _refit_rules(config)
    stale = gp_update.should_refit(info, **rules) if rules else jnp.zeros((), bool)
    return inc2, data2, absorbed2, seen_z, seen_y, info, stale | overflow, overflow


@functools.partial(jax.jit, static_argnames=("config",))
def _grow_program(inc, data, *, config: GPFitConfig):
    """The posterior EI runs on under ``grow_inducing``: the rows absorbed since the last fit
    (the data's last ``n_include`` slots) join the inducing inputs, by bordering the cached
    factors (``inc.pred`` is the posterior of ``data``), not by rebuilding them."""
    s = data.x.shape[0] - config.n_include
    k = min(config.grow_inducing_max, config.n_include)
    # the k latest absorbed rows (they fill the spare slots in order from s)
    start = s + jnp.clip(inc.num_added - k, 0, config.n_include - k)
    rows = jax.lax.dynamic_slice_in_dim(data.x, start, k)
    used = jax.lax.dynamic_slice_in_dim(data.mask, start, k)
    return gp_update.extend_inducing(inc.pred, data, rows, used)


@functools.partial(jax.jit, static_argnames=("spare",))
def _init_program(pred, data, *, spare: int):
    """The incremental state of a fresh fit, and its data with ``spare`` empty rows appended."""
    inc = gp_update.init_incremental(pred, data)
    d = data.x.shape[1]
    ext = data._replace(
        x=jnp.concatenate([data.x, jnp.zeros((spare, d), data.x.dtype)]),
        y=jnp.concatenate([data.y, jnp.zeros((spare,), data.y.dtype)]),
        mask=jnp.concatenate([data.mask, jnp.zeros((spare,), bool)]),
    )  # fmt: skip
    return inc, ext


def _to_device(tree):
    return jax.tree.map(jnp.asarray, tree)


def _bound_per_point(elbo: float, num_data: int, y_std) -> float:
    """A collapsed bound on standardised targets, per point, in the original units (the
    Jacobian of ``y -> (y - mean) / std`` is ``-log std`` per point)."""
    return elbo / max(num_data, 1) - float(np.log(np.asarray(y_std)))


@jax.jit
def _acq_value_at(acq_fn, x):
    return acq_fn(x)


def _audit_skipped_refit(keys, z, y, mask, *, fit: GPFitConfig, acquisition: AcquisitionConfig,
                         state: BOState, include, proposal, values, elbo: float, num_data: int,
                         y_std, bounds) -> dict:
    """What the refit that the incremental schedule skipped would have proposed: the warm
    converged refit a refitting query runs (same state, data and keys), EI maximised on it
    from the same starts, and the schedule's proposal judged on that posterior. Returns
    (host floats): ``ei_ratio`` = EI(schedule's proposal) / EI(refit's proposal), both
    under the refitted posterior (log-EI: the exp of the difference; 1 = the same decision
    value, > 1 when the refit's own ascent found less); ``ei_ratio_other_starts``: the same
    ratio for the refit's own maximiser run from other random starts (the baseline: how much
    the multi-start ascent alone moves the pick); ``distance``: between the two
    proposals, over the box diagonal; ``elbo_gain_per_point``: the refit's bound per point
    minus the stale posterior's, both in the original units of ``y`` (each standardises with
    its own scale, so the bounds in standardised units do not compare); ``stale_value``: the schedule's own (log-)EI at its
    proposal; ``seconds``."""
    t0 = time.perf_counter()
    k_subset, k_init, k_acq = keys
    out, _ = _fit(k_subset, k_init, z, y, mask, fit=fit, state=state, cold=False,
                  include=include, converged=True)  # fmt: skip
    res = _acq_program(k_acq, out.pred, out.data, config=acquisition)
    pts, vals = _ranked_candidates(res, acquisition)
    acq_fn = _acq_partial(acquisition, out.pred, res.tau)
    at = float(_acq_value_at(acq_fn, jnp.asarray(proposal, _F64)))
    best = float(vals[0])
    # the maximiser's own spread, the baseline of the ratio: the same posterior, other starts
    other = _acq_program(jax.random.fold_in(k_acq, 1), out.pred, out.data, config=acquisition)
    at_other = float(_ranked_candidates(other, acquisition)[1][0])

    def ratio_of(v):
        if acquisition.acquisition == "log-ei":
            return float(np.exp(v - best))
        return v / best if best > 0 else float("nan")

    ratio = ratio_of(at)
    width = np.asarray(bounds[1] - bounds[0], np.float64)
    dist = float(np.linalg.norm(np.asarray(proposal, np.float64) - np.asarray(pts[0], np.float64))
                 / max(float(np.linalg.norm(width)), 1e-300))  # fmt: skip
    return {"ei_ratio": round(ratio, 6), "ei_ratio_other_starts": round(ratio_of(at_other), 6),
            "distance": round(dist, 6),
            "elbo_gain_per_point": round(_bound_per_point(float(out.info.elbo), int(out.num_data), out.pred.y_std)
                                         - _bound_per_point(elbo, num_data, y_std), 6),
            "stale_value": round(float(values[0]), 6), "refit_value": round(best, 6),
            "refit_steps": int(out.info.num_steps) if out.info.num_steps is not None else len(out.info.loss),
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


@float64_scope
def _suggest_incremental(key, z, y, mask, *, fit: GPFitConfig, acquisition: AcquisitionConfig,
                         state: IncrementalBOState | None, cold: bool, include, audit: bool = False):
    """One query of the incremental schedule: absorb the new rows, refit if the schedule says
    so (cold at a cycle start), maximise the acquisition on the updated posterior."""
    t0 = time.perf_counter()
    k_subset, k_init, k_acq = jax.random.split(_as_key(key), 3)
    z, y, mask = jnp.asarray(z, _F64), jnp.asarray(y, _F64), jnp.asarray(mask, bool)
    refit, signals = cold, None
    if not cold:
        inc, data, absorbed, seen_z, seen_y, stale, verdict, overflow = _absorb_program(
            z, y, mask, _to_device(state.inc), _to_device(state.data), jnp.asarray(state.absorbed),
            jnp.asarray(state.seen_z), jnp.asarray(state.seen_y), config=fit,
        )  # fmt: skip
        refit = bool(verdict)
        signals = {"num_added": int(stale.num_added), "overflow": bool(overflow),
                   **{f: round(float(getattr(stale, f)), 6) for f in
                      ("elbo_per_point_change", "max_uncovered", "mean_sq_zscore")}}  # fmt: skip
    if refit:
        warm = None if cold else BOState(state.params, state.opt_state, state.subset_key)
        out, bstate = _fit(k_subset, k_init, z, y, mask, fit=fit, state=warm, cold=cold,
                           include=include, converged=not cold)  # fmt: skip
        inc, data = _init_program(out.pred, out.data, spare=fit.n_include)
        absorbed, seen_z, seen_y = mask, z, y
        elbo, loss = float(out.info.elbo), np.asarray(out.info.loss)
        steps = int(out.info.num_steps) if out.info.num_steps is not None else len(loss)
        jitter = float(max(out.info.jitter, out.pred.jitter))
        skipped = int(out.info.skipped)
    else:
        bstate = BOState(state.params, state.opt_state, state.subset_key)
        elbo, loss, steps = float(gp_update.incremental_elbo(inc)), np.zeros((0,)), 0
        jitter, skipped = float(inc.pred.jitter), 0
    acq_pred = inc.pred
    if fit.grow_inducing and not refit and fit.n_include:
        acq_pred = _grow_program(inc, data, config=fit)
    jax.block_until_ready((inc, data, acq_pred))
    t1 = time.perf_counter()
    res = _acq_program(k_acq, acq_pred, data, config=acquisition)
    jax.block_until_ready(res)
    t2 = time.perf_counter()
    pts, vals = _ranked_candidates(res, acquisition)
    t3 = time.perf_counter()  # the query's time; an audit's is its own
    verdict = None
    if audit and not refit and len(pts):
        verdict = _audit_skipped_refit(
            (k_subset, k_init, k_acq), z, y, mask, fit=fit, acquisition=acquisition,
            state=bstate, include=include, proposal=pts[0], values=vals, elbo=elbo,
            num_data=int(inc.num_data), y_std=inc.pred.y_std, bounds=np.asarray(res.bounds),
        )  # fmt: skip
    new_state = IncrementalBOState(bstate.params, bstate.opt_state, bstate.subset_key,
                                   _np_tree(inc), _np_tree(data), np.asarray(absorbed),
                                   np.asarray(seen_z), np.asarray(seen_y))  # fmt: skip
    info = BOInfo(
        cold=cold, elbo=elbo, loss=loss, jitter=jitter, skipped_steps=skipped,
        num_data=int(inc.num_data), incumbent=float(res.tau), acquisition_values=vals,
        bounds=np.asarray(res.bounds), fit_seconds=t1 - t0, acquisition_seconds=t2 - t1,
        total_seconds=t3 - t0, refitted=refit, fit_steps=steps, staleness=signals, audit=verdict,
    )  # fmt: skip
    return pts.astype(np.float32), new_state, info


def make_gp_ei(fit: GPFitConfig = GPFitConfig(),
               acquisition: AcquisitionConfig = AcquisitionConfig()) -> Optimizer:
    """Sparse-GP expected improvement (appendix C.2) as an optimiser for :func:`wrjax.run`.

    The GP is fitted cold (k-means inducing points, a new random subset) at the start of
    each cycle, when the latents have been re-encoded, and refitted warm after every query
    within the cycle (``fit.refit="every-query"``, default), or (``"incremental"``) the new
    points enter the cached posterior by rank-one updates and a warm converged refit runs
    only when the staleness rules of ``fit`` fire (state: :class:`IncrementalBOState`); the cycle's queries (and re-proposed known points) are forced into the
    GP data, with ``n_include`` raised to the loop's static bound so that the programs never
    change during a run. Inputs are not re-checked per query: the loop's buffer holds only
    finite scores.

    >>> opt = make_gp_ei(GPFitConfig(num_inducing=100), AcquisitionConfig(num_restarts=10))
    >>> opt.name, opt.config["fit"]["num_inducing"]
    ('gp-ei', 100)
    """
    # audit_every=0 inside: the audit is decided here, and the compiled programs (static
    # config) are the same with and without it
    fit_for = functools.lru_cache(maxsize=8)(
        lambda capacity: dataclasses.replace(fit, n_include=max(fit.n_include, capacity), audit_every=0)
    )

    def init(ctx):
        return None  # no state: the first query of a cycle fits cold

    incremental = fit.refit == "incremental"
    suggest = _suggest_incremental if incremental else _suggest

    def propose(key, state, ctx):
        extra = {}
        if incremental and fit.audit_every:
            extra["audit"] = int(ctx.remaining) % fit.audit_every == 0
        cands, new_state, info = suggest(
            key, ctx.z, ctx.y, ctx.mask, fit=fit_for(ctx.include_capacity),
            acquisition=acquisition, state=state, cold=state is None or bool(ctx.cycle_start),
            include=ctx.in_cycle, **extra,
        )  # fmt: skip
        stats = {
            "elbo": info.elbo, "jitter": info.jitter,
            "acq_best": float(info.acquisition_values[0]) if len(info.acquisition_values) else None,
            "fit_seconds": info.fit_seconds, "acq_seconds": info.acquisition_seconds,
            "refitted": info.refitted, "fit_steps": info.fit_steps,
        }  # fmt: skip
        if info.staleness is not None:
            stats["staleness"] = info.staleness
        if info.audit is not None:
            stats["audit"] = info.audit
        return Proposal(cands, None, stats), new_state

    fit_json = dataclasses.asdict(fit)
    del fit_json["audit_every"]  # a diagnostic: the run's results do not depend on it
    if fit.cold_tol is None:  # = refit_tol: the config.json of runs before cold_tol stays as it was
        del fit_json["cold_tol"]
    if not fit.carry_lbfgs:  # the behaviour before the field existed: recorded runs resume
        del fit_json["carry_lbfgs"]
    if not fit.grow_inducing:  # likewise
        del fit_json["grow_inducing"]
    if not fit.grow_inducing or fit.grow_inducing_max == GPFitConfig.grow_inducing_max:  # recorded runs resume
        del fit_json["grow_inducing_max"]
    # the cold fit's unused fields stay out; an "authors" run's config.json is as it was
    unused = _SUBSET_GREEDY_NAMES if fit.cold_fit == "authors" else _AUTHORS_COLD_NAMES
    fit_json = {k: v for k, v in fit_json.items() if k not in unused}
    if fit.refit != "incremental":  # unused then: keeps the config.json of such runs as it was
        used = ("refit", "refit_max_steps", "refit_tol") if fit.refit == "every-query-converged" else ()
        fit_json = {k: v for k, v in fit_json.items() if k not in _INCREMENTAL_NAMES or k in used}
    acq_json = dataclasses.asdict(acquisition)
    if acquisition.predictor_form == "dense":  # the default: recorded runs resume as they were
        del acq_json["predictor_form"]
    config = {"fit": fit_json, "acquisition": acq_json}
    return Optimizer(init, propose, "gp-ei", config)


def _check_inputs(z, y, mask, include, fit: GPFitConfig, state):
    z = np.asarray(z)
    if z.ndim != 2:
        raise ValueError(f"z must be 2-D (C, D), got shape {z.shape}")
    c, d = z.shape
    if np.shape(y) != (c,):
        raise ValueError(f"y must have shape ({c},) like z's rows, got {np.shape(y)}")
    check_masked_scores(y, mask, name="y")
    if not np.isfinite(z[np.asarray(mask)]).all():
        raise ValueError("z and y must be finite on valid slots; mask out failed points")
    if include is not None and np.shape(include) != (c,):
        raise ValueError(f"include must have shape ({c},), got {np.shape(include)}")
    if state is not None:
        zs = np.shape(state.params.inducing)
        if zs != (fit.num_inducing, d):
            raise ValueError(
                f"state has inducing points of shape {zs}, expected {(fit.num_inducing, d)}: "
                "pass state=None (or refit_inducing=True) after changing the latent size or M"
            )


def bo_suggest(
    key: jax.Array,
    z: ArrayLike,
    y: ArrayLike,
    mask: ArrayLike,
    *,
    config: BOConfig = BOConfig(),
    state: BOState | None = None,
    refit_inducing: bool = False,
    include: ArrayLike | None = None,
) -> tuple[np.ndarray, BOState, BOInfo]:
    """Fit the sparse GP on the buffer and propose the next latent point(s) by (log-)EI.

    Args:
      key: PRNG key (split into: random subset, k-means/initial values, ascent starts).
      z: ``(C, D)`` latent codes of the buffer (any float dtype; only valid rows are read).
      y: ``(C,)`` scores, higher is better.
      mask: ``(C,)`` bool, True on valid slots.
      config: static settings, :class:`BOConfig`.
      state: the previous call's state for a warm refit, or ``None`` for a cold fit.
      refit_inducing: force a cold fit (k-means inducing points, fresh hyperparameters and
        a new random subset) even with a state: pass True at the start of each retrain
        cycle, after the latents were re-encoded.
      include: optional ``(C,)`` bool, points that must be in the GP data (the current
        cycle's queries); at most ``config.n_include`` of them are added.

    Returns:
      ``(candidates, state, info)``: ``candidates`` is a float32 ``(R', D)`` NumPy array of
      distinct points ranked best first (``R' <= num_restarts``); with ``batch_size = q > 1``
      its first ``q`` rows are the batch, in pick order, followed by the remaining distinct
      first-round candidates. ``state`` (NumPy leaves) warm-starts the next call;
      ``info`` is a :class:`BOInfo`.

    Raises:
      ValueError: on malformed input (shapes, non-finite valid entries, empty mask, a
        state that does not match ``config``/``D``).
    """
    fit, acquisition = config.split()
    _check_inputs(z, y, mask, include, fit, state)
    return _suggest(key, z, y, mask, fit=fit, acquisition=acquisition, state=state,
                    cold=state is None or bool(refit_inducing), include=include)  # fmt: skip
