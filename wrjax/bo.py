"""One Bayesian-optimisation query in latent space: subset, SGPR fit, acquisition (appendix C.2).

:func:`bo_suggest` is what the retraining loop calls once per query. It

1. picks the GP data from the fixed-capacity buffer ``(z, y, mask)``: the ``n_best`` best,
   up to ``n_include`` forced points (the points queried in the current cycle, as the
   authors did), and ``n_random`` random others (:func:`wrjax.gp.select_subset`); the
   random part is drawn with a key kept in the state, so it stays put within a cycle;
2. fits the sparse GP: *cold* (k-means inducing points, the authors' initial values and
   two-phase Adam schedule) when there is no state or the caller passes
   ``refit_inducing=True`` at the start of a retrain cycle (the latents were re-encoded),
   otherwise *warm* from the previous fit's parameters and optimiser state;
3. caches the predictor and maximises (log-)EI from ``num_restarts`` starts inside the
   authors' box (half ``N(0, I)`` draws, half random points from the top 20% of the data);
4. for ``batch_size > 1``, adds Kriging-believer fantasies and maximises again.

It returns NumPy arrays (they survive leaving the float64 scope), ranked distinct
candidates so that the caller can move to the next one when a decode is invalid or a
duplicate, the state for the next warm start, and a :class:`BOInfo`.

Compilation: two jitted programs (fit, acquisition) keyed on the shapes and the
:class:`BOConfig`; from one query to the next at fixed buffer capacity nothing recompiles.
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
from wrjax.precision import float64_scope

__all__ = ["BOConfig", "BOState", "BOInfo", "bo_suggest"]

_F64 = jnp.float64


@dataclasses.dataclass(frozen=True)
class BOConfig:
    """Static settings of :func:`bo_suggest` (hashable; a change recompiles).

    Defaults follow the authors (appendix C.2 and their released code) except where noted.

    Attributes:
      num_inducing: ``M`` inducing points (500).
      n_best, n_random: GP data, the best and random points (2,000 + 8,000).
      n_include: slots for forced points (the current cycle's queries; 0 = none; the loop
        should set it to at least the number of queries per retrain cycle).
      kmeans_iters: Lloyd iterations of the k-means initialisation (after k-means++ seeding).
      fit_method: ``"lbfgs"`` (default; optax L-BFGS with a zoom line search, re-initialised
        at every fit) or ``"adam"`` (the authors'). A deviation from the authors, for speed:
        20 L-BFGS iterations cost about a quarter of the authors' 100 Adam steps, but in
        ``benchmarks/RESULTS.md`` (warm refit from a cold fit that was far from converged)
        they reached a lower ELBO than 100 Adam steps did; use ``"adam"`` with
        ``warm_steps=100`` for the authors' refit.
      cold_kernel_steps: cold fit, phase 1: kernel and noise only, Adam at
        ``kernel_learning_rate`` (also with ``fit_method="lbfgs"``: from the authors' initial
        values a line search jumps to the degenerate optimum "no signal, all noise"). The
        authors ran this phase until the loss changed by less than 2.5% per 100 steps and
        phase 2 until 5e-4; here both are fixed budgets, so shapes and run time are static.
      cold_steps: cold fit, phase 2: all parameters including inducing points.
      warm_steps: warm refit steps, all parameters (the authors: at least 100, until the loss
        changes by less than 5e-4 per 100 steps).
      kernel_learning_rate, learning_rate: Adam rates of the two phases (0.1, 0.03).
      jitter: base Kzz jitter relative to the signal variance (grown on failure).
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
    """

    num_inducing: int = 500
    n_best: int = 2000
    n_random: int = 8000
    n_include: int = 0
    kmeans_iters: int = 10
    fit_method: str = "lbfgs"
    cold_kernel_steps: int = 100
    cold_steps: int = 100
    warm_steps: int = 20
    kernel_learning_rate: float = 0.1
    learning_rate: float = 0.03
    jitter: float = 1e-6
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

    def __post_init__(self):
        positive = ("num_inducing", "num_restarts", "batch_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"BOConfig.{name} must be > 0, got {getattr(self, name)}")
        nonneg = (
            "n_best", "n_random", "n_include", "kmeans_iters", "cold_kernel_steps",
            "cold_steps", "warm_steps", "ascent_steps", "num_random_starts",
        )  # fmt: skip
        for name in nonneg:
            if getattr(self, name) < 0:
                raise ValueError(f"BOConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.n_best + self.n_random + self.n_include <= 0:
            raise ValueError("BOConfig: n_best + n_random + n_include must be > 0")
        if self.num_random_starts > self.num_restarts:
            raise ValueError("BOConfig.num_random_starts must be <= num_restarts")
        if self.fit_method not in ("adam", "lbfgs"):
            raise ValueError(f"BOConfig.fit_method must be 'adam' or 'lbfgs', got {self.fit_method!r}")
        if self.acquisition not in ("ei", "log-ei"):
            raise ValueError(f"BOConfig.acquisition must be 'ei' or 'log-ei', got {self.acquisition!r}")
        if self.incumbent not in ("quantile", "best"):
            raise ValueError(f"BOConfig.incumbent must be 'quantile' or 'best', got {self.incumbent!r}")
        if self.batch_strategy not in ("kriging-believer",):
            raise ValueError(f"unknown BOConfig.batch_strategy {self.batch_strategy!r}")
        for name in ("incumbent_quantile", "good_quantile", "bound_quantile"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"BOConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("kernel_learning_rate", "learning_rate", "ascent_learning_rate", "bound_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"BOConfig.{name} must be > 0, got {getattr(self, name)}")
        if not self.jitter >= 0 or not self.min_distance >= 0:
            raise ValueError("BOConfig.jitter and min_distance must be >= 0")


class BOState(NamedTuple):
    """What a warm refit needs from the previous query (NumPy leaves; pass it back as is)."""

    params: gp.SGPRParams  # raw GP parameters, float64, inducing (M, D)
    opt_state: optax.OptState  # the fit optimiser's state (Adam moments; re-made for L-BFGS)
    subset_key: np.ndarray  # (2,) uint32 raw key of the cycle's random subset


class BOInfo(NamedTuple):
    """Diagnostics of one :func:`bo_suggest` call (host values)."""

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


# --------------------------------------------------------------------------------------------
# The two jitted programs
# --------------------------------------------------------------------------------------------

_FIT_FIELDS = (
    "num_inducing", "n_best", "n_random", "n_include", "kmeans_iters", "fit_method",
    "cold_kernel_steps", "cold_steps", "warm_steps", "kernel_learning_rate", "learning_rate",
    "jitter",
)  # fmt: skip


def _fit_key(config: BOConfig) -> BOConfig:
    """The config with every field the fit program ignores reset, so they never recompile it."""
    base = BOConfig()
    return dataclasses.replace(
        base, **{f.name: getattr(config, f.name) for f in dataclasses.fields(BOConfig) if f.name in _FIT_FIELDS}
    )


def _acq_key(config: BOConfig) -> BOConfig:
    """The config with every field the acquisition program ignores reset."""
    base = BOConfig()
    return dataclasses.replace(
        base, **{f.name: getattr(config, f.name) for f in dataclasses.fields(BOConfig) if f.name not in _FIT_FIELDS}
    )



def _ei_at(pred, tau, x):
    mean, var = gp._predict_standardized(pred, x[None, :])
    return pred.y_std * acq.expected_improvement(mean[0], var[0], (tau - pred.y_mean) / pred.y_std)


def _log_ei_at(pred, tau, x):
    mean, var = gp._predict_standardized(pred, x[None, :])
    u_tau = (tau - pred.y_mean) / pred.y_std
    return jnp.log(pred.y_std) + acq.log_expected_improvement(mean[0], var[0], u_tau)


def _acq_partial(config: BOConfig, pred, tau):
    fn = _log_ei_at if config.acquisition == "log-ei" else _ei_at
    return jax.tree_util.Partial(fn, pred, tau)


class _FitOut(NamedTuple):
    params: gp.SGPRParams
    opt_state: optax.OptState
    info: gp.FitInfo
    pred: gp.SGPRPredictor
    data: gp.SGPRData
    num_data: jax.Array


@functools.partial(jax.jit, static_argnames=("config", "cold"))
def _fit_program(key, subset_key, z, y, mask, include, state_params, state_opt, *, config, cold):
    sub = gp.select_subset(
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
    if cold:
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
        info = info._replace(loss=jnp.concatenate(losses + [info.loss]))
    else:
        opt = gp.make_optimizer(config.learning_rate, method=method)
        fresh = opt.init(state_params)
        # L-BFGS caches the previous objective: always fresh; Adam keeps its moments, unless
        # the state came from another optimiser
        same = jax.tree.structure(state_opt) == jax.tree.structure(fresh)
        opt_state = state_opt if (method == "adam" and same) else fresh
        params, opt_state, info = gp.fit(
            state_params, opt_state, data,
            optimizer=opt, num_steps=config.warm_steps, jitter=config.jitter,
        )  # fmt: skip
    pred = gp.build_predictor(params, data, jitter=config.jitter)
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
def _acq_program(key, pred, data, *, config):
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
        return acq._maximize(
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
        mean, _ = gp._predict_standardized(p, x[None, :])
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
# Public entry point
# --------------------------------------------------------------------------------------------


def _validate(z, y, mask, include, config, state):
    z, y, mask = np.asarray(z), np.asarray(y), np.asarray(mask)
    if z.ndim != 2:
        raise ValueError(f"z must be 2-D (C, D), got shape {z.shape}")
    c, d = z.shape
    if y.shape != (c,) or mask.shape != (c,):
        raise ValueError(f"y and mask must have shape ({c},), got {y.shape} and {mask.shape}")
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
    if not mask.any():
        raise ValueError("no valid point: the mask selects nothing (empty buffer)")
    if not np.isfinite(z[mask]).all() or not np.isfinite(y[mask]).all():
        raise ValueError("z and y must be finite on valid slots; mask out failed points")
    if include is not None and np.shape(include) != (c,):
        raise ValueError(f"include must have shape ({c},), got {np.shape(include)}")
    if state is not None:
        zs = np.shape(state.params.inducing)
        if zs != (config.num_inducing, d):
            raise ValueError(
                f"state has inducing points of shape {zs}, expected {(config.num_inducing, d)}: "
                "pass state=None (or refit_inducing=True) after changing the latent size or M"
            )


def _np_tree(tree):
    return jax.tree.map(np.asarray, tree)


@float64_scope
def bo_suggest(
    key: jax.Array,
    z,
    y,
    mask,
    *,
    config: BOConfig = BOConfig(),
    state: BOState | None = None,
    refit_inducing: bool = False,
    include=None,
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
    _validate(z, y, mask, include, config, state)
    t0 = time.perf_counter()
    key = jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key (jax.random.PRNGKey)
    k_subset, k_init, k_acq = jax.random.split(key, 3)
    cold = state is None or bool(refit_inducing)
    c = np.shape(z)[0]
    include = np.zeros((c,), bool) if include is None else np.asarray(include, bool)
    subset_key = k_subset if cold else jax.random.wrap_key_data(jnp.asarray(state.subset_key))
    zf = jnp.asarray(z, _F64)
    yf = jnp.asarray(y, _F64)
    mask = jnp.asarray(mask, bool)
    if cold:
        s_params, s_opt = None, None
    else:
        s_params = jax.tree.map(lambda a: jnp.asarray(a, _F64), state.params)
        s_opt = jax.tree.map(jnp.asarray, state.opt_state)
    out = _fit_program(
        k_init, subset_key, zf, yf, mask, jnp.asarray(include), s_params, s_opt,
        config=_fit_key(config), cold=cold,
    )  # fmt: skip
    jax.block_until_ready(out)
    t1 = time.perf_counter()
    res = _acq_program(k_acq, out.pred, out.data, config=_acq_key(config))
    jax.block_until_ready(res)
    t2 = time.perf_counter()

    first = _np_tree(res.first)
    width = np.asarray(res.bounds[1] - res.bounds[0])
    tol = config.min_distance * width
    pts = first.points[first.distinct]
    vals = first.values[first.distinct]
    if config.batch_size > 1:
        batch = np.asarray(res.batch)
        rest = [
            i for i in range(len(pts))
            if not np.any(np.all(np.abs(batch - pts[i]) <= tol, axis=-1))
        ]  # fmt: skip
        pts = np.concatenate([batch, pts[rest]])
        vals = np.concatenate([np.asarray(res.batch_values), vals[rest]])
    new_state = BOState(
        params=_np_tree(out.params),
        opt_state=_np_tree(out.opt_state),
        subset_key=np.asarray(jax.random.key_data(subset_key)),
    )
    info = BOInfo(
        cold=cold,
        elbo=float(out.info.elbo),
        loss=np.asarray(out.info.loss),
        jitter=float(max(out.info.jitter, out.pred.jitter)),
        skipped_steps=int(out.info.skipped),
        num_data=int(out.num_data),
        incumbent=float(res.tau),
        acquisition_values=vals,
        bounds=np.asarray(res.bounds),
        fit_seconds=t1 - t0,
        acquisition_seconds=t2 - t1,
        total_seconds=time.perf_counter() - t0,
    )
    return pts.astype(np.float32), new_state, info
