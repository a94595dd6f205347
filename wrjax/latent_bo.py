"""Optimisers beyond the paper's global EI, on the same loop (:func:`wrjax.run`).

Each factory returns an :class:`~wrjax.loop.optimizers.Optimizer` (``init``/``propose``) and
reuses the paper's sparse GP (:func:`wrjax.bo.fit_sparse_gp`: the same subset, fit and warm
starts as :func:`wrjax.bo.make_gp_ei`):

* :func:`make_random_search`: uniform points in the BO box, the baseline that any
  latent-space optimiser must beat (no model of the objective at all);
* :func:`make_thompson`: Thompson-sampling batches over candidate points in the box
  (:mod:`wrjax.thompson`), an alternative to Kriging-believer batches;
* :func:`make_trust_region`: TuRBO-style trust regions in latent space (LOL-BO, Maus et al.
  2022; :mod:`wrjax.trust_region`) with EI or Thompson sampling inside the region;
* :func:`make_constrained_ei`: EI times the probability of feasibility of a constraint
  known only after evaluation, modelled by a second sparse GP (:mod:`wrjax.constraints`).

Resume stays exact: every optimiser state is either rebuilt from the buffer at ``init`` (the
trust region replays TuRBO's rule over the evaluated points in order, so its size survives a
retrain and a restart) or derived within the cycle from deterministic keys, and the host
driver replays the proposals of a resumed run.

Candidates are ranked best first; the loop evaluates the first valid, novel one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wrjax import acquisition as acq
from wrjax import bo, constraints, gp, thompson
from wrjax import trust_region as tr
from wrjax.loop.optimizers import Optimizer, Proposal
from wrjax.precision import float64_scope

__all__ = [
    "make_random_search",
    "make_thompson",
    "make_trust_region",
    "TrustRegionBOState",
    "make_constrained_ei",
]

_F64 = jnp.float64


def _buffer_rows(ctx) -> int:
    return jax.tree.leaves(ctx.x)[0].shape[0]


def _box(z, mask, config: bo.AcquisitionConfig) -> np.ndarray:
    return np.asarray(
        acq.data_bounds(
            jnp.asarray(z), jnp.asarray(mask), quantile=config.bound_quantile,
            scale=config.bound_scale,
        )
    )  # fmt: skip


def _uniform(key, box, n) -> np.ndarray:
    u = np.asarray(jax.random.uniform(key, (n, box.shape[1])))
    return (box[0] + u * (box[1] - box[0])).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Random search in the box
# --------------------------------------------------------------------------------------------


def make_random_search(
    acquisition: bo.AcquisitionConfig = bo.AcquisitionConfig(), *, num_candidates: int = 32
) -> Optimizer:
    """Uniform random points in the BO box (``+- bound_scale * quantile(|z|)`` of the data).

    ``num_candidates`` per query, so that a query whose first decodings are invalid or known
    can move on; only the first valid novel one is evaluated.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")

    def init(ctx):
        return None

    def propose(key, state, ctx):
        box = _box(ctx.z, ctx.mask, acquisition)
        return Proposal(_uniform(key, box, num_candidates)), state

    config = {"num_candidates": num_candidates, "bound_quantile": acquisition.bound_quantile,
              "bound_scale": acquisition.bound_scale}  # fmt: skip
    return Optimizer(init, propose, "random", config)


# --------------------------------------------------------------------------------------------
# Thompson sampling
# --------------------------------------------------------------------------------------------


def _candidates(key, box, data: gp.SGPRData, center, n, local_scale):
    """Half uniform in ``box``, half Gaussian perturbations of ``center`` (clipped)."""
    k1, k2 = jax.random.split(key)
    n_local = n // 2
    uni = _uniform(k1, box, n - n_local)
    width = box[1] - box[0]
    eps = np.asarray(jax.random.normal(k2, (n_local, box.shape[1])))
    local = np.clip(center[None, :] + local_scale * width * eps, box[0], box[1])
    return np.concatenate([uni, local.astype(np.float32)])


@float64_scope
def _thompson_pick(key, fit: bo.GPFit, cand: np.ndarray, q: int) -> np.ndarray:
    idx, _ = thompson.thompson_batch(key, fit.predictor, jnp.asarray(cand, _F64), q)
    return np.asarray(idx)


def _best_point(z, y, mask) -> np.ndarray:
    yy = np.where(np.asarray(mask), np.asarray(y), -np.inf)
    return np.asarray(z)[int(np.argmax(yy))]


def make_thompson(
    fit: bo.GPFitConfig = bo.GPFitConfig(),
    acquisition: bo.AcquisitionConfig = bo.AcquisitionConfig(),
    *,
    num_candidates: int = 1000,
    q: int = 8,
    local_scale: float = 0.05,
) -> Optimizer:
    """Thompson sampling from the sparse GP over ``num_candidates`` points of the BO box.

    Each query fits the GP as :func:`wrjax.bo.make_gp_ei` does (cold at a cycle's start, warm
    after) and draws ``q`` joint posterior samples over the candidates (half uniform in the
    box, half perturbations of the incumbent with standard deviation ``local_scale`` of the
    box width); each draw's arg-max is a candidate, distinct, in draw order.
    """
    if num_candidates < q or q < 1:
        raise ValueError(f"need 1 <= q <= num_candidates, got q={q}, {num_candidates}")
    _check_schedule("make_thompson", fit)

    def init(ctx):
        return None

    def propose(key, state, ctx):
        k_fit, k_cand, k_ts = jax.random.split(key, 3)
        cold = state is None or bool(ctx.cycle_start)
        fitted = bo.fit_sparse_gp(k_fit, ctx.z, ctx.y, ctx.mask, fit=_fit_for(fit, ctx),
                                  state=None if cold else state, include=ctx.in_cycle)  # fmt: skip
        box = _box(ctx.z, ctx.mask, acquisition)
        center = _best_point(ctx.z, ctx.y, ctx.mask)
        cand = _candidates(k_cand, box, fitted.data, center, num_candidates, local_scale)
        idx = _thompson_pick(k_ts, fitted, cand, q)
        return Proposal(cand[idx], None, {"elbo": fitted.elbo}), fitted.state

    config = {"fit": dataclasses.asdict(fit), "num_candidates": num_candidates, "q": q,
              "local_scale": local_scale}  # fmt: skip
    return Optimizer(init, propose, "thompson", config)


@functools.lru_cache(maxsize=32)
def _fit_with_include(fit: bo.GPFitConfig, capacity: int) -> bo.GPFitConfig:
    return dataclasses.replace(fit, n_include=max(fit.n_include, capacity))


def _check_schedule(name: str, fit: bo.GPFitConfig) -> None:
    """These optimisers fit through :func:`wrjax.bo.fit_sparse_gp`, which always refits: the
    incremental schedule's rank-one updates feed only :func:`wrjax.bo.make_gp_ei`'s cached
    posterior, so asking for it here would silently run the every-query schedule."""
    if fit.refit == "incremental":
        raise ValueError(f"{name}: GPFitConfig(refit='incremental') is gp-ei's schedule only; "
                         "use 'every-query' or 'every-query-converged'")


def _fit_for(fit: bo.GPFitConfig, ctx) -> bo.GPFitConfig:
    # as make_gp_ei: the cycle's queries are forced into the GP data, at a static capacity
    return _fit_with_include(fit, int(ctx.include_capacity))


# --------------------------------------------------------------------------------------------
# Trust regions
# --------------------------------------------------------------------------------------------


class TrustRegionBOState(NamedTuple):
    """The optimiser state of :func:`make_trust_region` (host values)."""

    region: tr.TrustRegionState
    gp: bo.BOState | None  # warm start of the GP fit within the cycle (None: fit cold)
    rows_seen: int  # buffer rows already folded into ``region``
    proposed: bool = False  # a proposal was made since ``init`` (so no new row = discarded)
    discards: int = 0  # proposals in a row that added no row


def _replay_region(region, config, y, mask, start, stop, z=None):
    """Fold the evaluated rows ``start..stop`` of the buffer into the region, in order (each
    evaluation is a batch of one, as the loop evaluates one point per query). With ``z`` the
    region moves to a row that beats its incumbent (TuRBO's centre: its own best point)."""
    for i in range(start, stop):
        if bool(mask[i]):
            point = region.center if z is None else jnp.asarray(z[i], region.center.dtype)
            region = tr.update(region, config, batch_best=jnp.asarray(float(y[i])),
                               batch_best_point=point)  # fmt: skip
    return region


def make_trust_region(
    num_initial: int,
    fit: bo.GPFitConfig = bo.GPFitConfig(),
    acquisition: bo.AcquisitionConfig = bo.AcquisitionConfig(),
    region: tr.TrustRegionConfig = tr.TrustRegionConfig(),
    *,
    method: str = "ei",
    num_candidates: int = 1000,
    discard_is_failure: bool = True,
    restart_after_discards: int | None = 10,
) -> Optimizer:
    """Latent trust-region BO (TuRBO's rule; LOL-BO's use of it in a VAE's latent space).

    Args:
      num_initial: rows of the initial data at the start of the buffer (``len(task.y)``):
        the rows after them are the evaluated points, in order.
      fit, acquisition: the GP and the global box, as :func:`wrjax.bo.make_gp_ei`.
      region: TuRBO's constants (side lengths in units of the global box width).
      method: ``"ei"`` (log-EI maximised inside the region, ``acquisition.num_restarts``
        starts: the incumbent and uniform points of the region) or ``"thompson"`` (one
        posterior draw over ``num_candidates`` uniform points of the region, its best first).
      discard_is_failure: a proposal that added no row (every candidate decoded to an
        invalid or already known object, or its evaluation failed) counts as a non-improving
        batch. Without it the region never changes while its decodings repeat the incumbent,
        and the run stalls: measured on expressions, all 3 seeds stopped after 200 duplicates
        in a row (after 211, 240 and 425 of 500 evaluations). Counted within a cycle only: at a cycle start
        the region is rebuilt from the evaluations (the retrained model decodes differently).
      restart_after_discards: after this many proposals in a row that added no row, restart
        the region *away from the incumbent*, as TuRBO restarts from a fresh global design:
        side ``init_length``, centred on a uniform point of the global box (drawn from the
        proposal's key), with no incumbent of its own, so it follows its own best point from
        then on. ``discard_is_failure`` alone only shrinks the region onto the same cell, and
        its restart (after ``7 x failures_allowed`` failures, 175 at D = 25) re-centres on the
        same incumbent: measured on expressions, 1 seed in 3 of trust-region EI and TS still
        stalled (200 duplicates in a row, the last 200 records naming 18-26 expressions).
        ``None``: never. Within a cycle only, like ``discard_is_failure``.

    At each cycle start (``init``), TuRBO's rule is replayed over the evaluated points so far
    and the region is centred on the best point's *re-encoded* latent (the model changed);
    within the cycle each new evaluation updates it. The region's box is stretched along the
    GP's long lengthscales (TuRBO's weighting).
    """
    if method not in ("ei", "thompson"):
        raise ValueError(f"method must be 'ei' or 'thompson', got {method!r}")
    if num_initial < 0:
        raise ValueError(f"num_initial must be >= 0, got {num_initial}")
    if restart_after_discards is not None and restart_after_discards < 1:
        raise ValueError(f"restart_after_discards must be >= 1 or None, got {restart_after_discards}")
    _check_schedule("make_trust_region", fit)

    def init(ctx):
        c = _buffer_rows(ctx)
        y, mask = np.asarray(ctx.y)[:c], np.asarray(ctx.mask)[:c]
        start = min(num_initial, c)
        first = np.where(mask[:start], y[:start], -np.inf)
        state = tr.init(jnp.zeros(ctx.z.shape[1], jnp.float32), float(first.max()), region)
        state = _replay_region(state, region, y, mask, start, int(mask.sum()))
        center = _best_point(np.asarray(ctx.z)[:c], y, mask)
        return TrustRegionBOState(tr.recenter(state, jnp.asarray(center)), None, int(mask.sum()))

    def propose(key, state: TrustRegionBOState, ctx):
        c = _buffer_rows(ctx)
        y, mask = np.asarray(ctx.y)[:c], np.asarray(ctx.mask)[:c]
        n = int(mask.sum())
        # the region follows its incumbent: a new row that beats it is the centre (its z as
        # it was queried); without a restart that incumbent is the buffer's best row
        reg = _replay_region(state.region, region, y, mask, state.rows_seen, n,
                             z=np.asarray(ctx.z)[:c])  # fmt: skip
        discarded = state.proposed and n == state.rows_seen
        discards = state.discards + 1 if discarded else 0
        if discard_is_failure and discarded:
            reg = tr.update(reg, region, batch_best=jnp.asarray(-jnp.inf, reg.best.dtype),
                            batch_best_point=reg.center)  # fmt: skip
        if restart_after_discards is not None and discards >= restart_after_discards:
            far = _uniform(jax.random.fold_in(key, 7), _box(ctx.z, ctx.mask, acquisition), 1)[0]
            reg, discards = tr.restart(reg, jnp.asarray(far), region), 0
        k_fit, k_acq = jax.random.split(key)
        cold = state.gp is None or bool(ctx.cycle_start)
        fitted = bo.fit_sparse_gp(k_fit, ctx.z, ctx.y, ctx.mask, fit=_fit_for(fit, ctx),
                                  state=None if cold else state.gp, include=ctx.in_cycle)  # fmt: skip
        box = _region_box(reg, fitted, _box(ctx.z, ctx.mask, acquisition))
        if method == "ei":
            cands = _ei_in_box(k_acq, fitted, box, np.asarray(reg.center), acquisition)
        else:
            pool = _uniform(k_acq, box, num_candidates)
            idx = _thompson_pick(jax.random.fold_in(k_acq, 1), fitted, pool, 1)
            cands = np.concatenate([pool[idx], np.delete(pool, idx, axis=0)[:15]])
        info = {"elbo": fitted.elbo, "length": float(reg.length), "restarts": int(reg.restarts)}
        return Proposal(cands, None, info), TrustRegionBOState(reg, fitted.state, n, True,
                                                               discards)  # fmt: skip

    config = {"num_initial": num_initial, "fit": dataclasses.asdict(fit),
              "region": dataclasses.asdict(region), "method": method,
              "num_candidates": num_candidates, "discard_is_failure": discard_is_failure,
              "restart_after_discards": restart_after_discards}  # fmt: skip
    return Optimizer(init, propose, f"trust-region-{method}", config)


@float64_scope
def _region_box(reg, fitted: bo.GPFit, box: np.ndarray) -> np.ndarray:
    ls = jax.nn.softplus(jnp.asarray(fitted.state.params.raw_lengthscale, _F64))
    reg64 = reg._replace(center=jnp.asarray(reg.center, _F64), length=jnp.asarray(reg.length, _F64))
    return np.asarray(tr.bounds(reg64, ls, jnp.asarray(box, _F64)))


@float64_scope
def _ei_in_box(key, fitted: bo.GPFit, box, center, config: bo.AcquisitionConfig):
    pred = fitted.predictor
    y_orig = fitted.data.y * pred.y_std + pred.y_mean
    tau = acq.incumbent(y_orig, fitted.data.mask, method=config.incumbent,
                        quantile=config.incumbent_quantile)  # fmt: skip
    fn = jax.tree_util.Partial(bo.log_ei_at, pred, tau)
    starts = jnp.asarray(np.clip(center, box[0], box[1])[None], _F64)
    res = acq.maximize_acquisition(
        key, fn, jnp.asarray(box, _F64), num_restarts=config.num_restarts,
        num_steps=config.ascent_steps, init_points=starts,
        learning_rate=config.ascent_learning_rate, min_distance=config.min_distance,
    )  # fmt: skip
    return np.asarray(res.points)[np.asarray(res.distinct)].astype(np.float32)


# --------------------------------------------------------------------------------------------
# Constrained EI
# --------------------------------------------------------------------------------------------


def make_constrained_ei(
    constraint: Callable[[Any, Any], np.ndarray],
    threshold: float,
    fit: bo.GPFitConfig = bo.GPFitConfig(),
    acquisition: bo.AcquisitionConfig = bo.AcquisitionConfig(),
    *,
    constraint_fit: bo.GPFitConfig | None = None,
) -> Optimizer:
    """EI times the probability that ``c(x) <= threshold``, with ``c`` modelled by its own GP.

    Args:
      constraint: ``(task, rows) -> (C,)`` constraint values of the buffer's rows (the
        model's input format; e.g. the heavy-atom count of the molecule a token row spells).
        Called once per cycle on the whole buffer and then on each new row. Host callable.
      threshold: feasible when ``c <= threshold`` (e.g. 38 heavy atoms).
      fit, acquisition: as :func:`wrjax.bo.make_gp_ei` (the objective GP and the box).
      constraint_fit: the constraint GP's fit (default: ``fit``).

    The EI incumbent is taken over feasible points only (infeasible ones still train the
    objective GP: the objective scores them, e.g. at the floor of a capped objective).
    """
    cfit = fit if constraint_fit is None else constraint_fit
    _check_schedule("make_constrained_ei", fit)
    _check_schedule("make_constrained_ei (constraint_fit)", cfit)

    def values(ctx, rows):
        return np.asarray(constraint(ctx.task, rows), np.float64)

    def init(ctx):
        c = _buffer_rows(ctx)
        mask = np.asarray(ctx.mask)[:c]
        cvals = np.zeros((c,), np.float64)
        cvals[mask] = values(ctx, jax.tree.map(lambda a: np.asarray(a)[mask], ctx.x))
        return {"c": cvals, "rows": int(mask.sum()), "gp": None, "cgp": None}

    def propose(key, state, ctx):
        c = _buffer_rows(ctx)
        mask = np.asarray(ctx.mask)
        n = int(mask[:c].sum())
        cvals = np.array(state["c"])
        if n > state["rows"]:
            new = jax.tree.map(lambda a: np.asarray(a)[state["rows"] : n], ctx.x)
            cvals[state["rows"] : n] = values(ctx, new)
        # pseudo rows (re-proposed known points) carry no constraint value: masked out
        cmask = mask.copy()
        cmask[c:] = False
        cv = np.zeros(mask.shape, np.float64)
        cv[:c] = cvals
        k_fit, k_cfit, k_acq = jax.random.split(key, 3)
        cold = state["gp"] is None or bool(ctx.cycle_start)
        inc = ctx.in_cycle
        f_obj = bo.fit_sparse_gp(k_fit, ctx.z, ctx.y, ctx.mask, fit=_fit_for(fit, ctx),
                                 state=None if cold else state["gp"], include=inc)  # fmt: skip
        f_con = bo.fit_sparse_gp(k_cfit, ctx.z, cv, cmask, fit=_fit_for(cfit, ctx),
                                 state=None if cold else state["cgp"], include=inc)  # fmt: skip
        feasible = cmask & (cv <= threshold)
        y = np.asarray(ctx.y, np.float64)
        tau = float(np.max(np.where(feasible & mask, y, -np.inf))) if feasible.any() else float(np.min(y[mask]))
        box = _box(ctx.z, ctx.mask, acquisition)
        cands = _constrained_ascent(k_acq, f_obj, f_con, tau, threshold, box,
                                    _best_point(ctx.z, np.where(feasible, y, -np.inf), mask),
                                    acquisition)  # fmt: skip
        new_state = {"c": cvals, "rows": n, "gp": f_obj.state, "cgp": f_con.state}
        return Proposal(cands, None, {"elbo": f_obj.elbo, "constraint_elbo": f_con.elbo}), new_state

    config = {"threshold": threshold, "fit": dataclasses.asdict(fit),
              "constraint_fit": dataclasses.asdict(cfit)}  # fmt: skip
    return Optimizer(init, propose, "constrained-ei", config)


@float64_scope
def _constrained_ascent(key, f_obj: bo.GPFit, f_con: bo.GPFit, tau, threshold, box, center,
                        config: bo.AcquisitionConfig) -> np.ndarray:
    po, pc = f_obj.predictor, f_con.predictor
    u_tau = (tau - po.y_mean) / po.y_std
    u_thr = (threshold - pc.y_mean) / pc.y_std
    fn = jax.tree_util.Partial(constraints.constrained_log_ei_at, po, pc, u_tau, u_thr)
    k_start, k_max = jax.random.split(key)
    n = config.num_restarts
    u = jax.random.uniform(k_start, (n - 1, box.shape[1]), _F64)
    lo, hi = jnp.asarray(box[0], _F64), jnp.asarray(box[1], _F64)
    starts = jnp.concatenate([jnp.clip(jnp.asarray(center, _F64), lo, hi)[None], lo[None] + u * (hi - lo)[None]])
    res = acq.maximize_acquisition(
        k_max, fn, jnp.stack([lo, hi]), num_restarts=n, num_steps=config.ascent_steps,
        init_points=starts, learning_rate=config.ascent_learning_rate,
        min_distance=config.min_distance,
    )  # fmt: skip
    return np.asarray(res.points)[np.asarray(res.distinct)].astype(np.float32)
