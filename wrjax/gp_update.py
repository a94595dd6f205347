"""Incremental conditioning of a cached SGPR posterior: new points in ``O(M^2)`` each.

Within a retrain cycle, the BO loop adds one queried point per step. With the kernel
hyperparameters, the inducing points ``Z`` and the target scaling held fixed, the SGPR
posterior (Titsias, 2009) depends on the data only through

    B = I + A A^T  (M x M),     A r  (M,),     n,   r^T r,   tr(A A^T),

with ``A = Lz^{-1} Kzf / sigma`` (one column ``a_i = Lz^{-1} k_z(x_i) / sigma`` per point) and
``r`` the standardised targets. A new point ``(x, y)`` adds a column to ``A``: ``B`` gets the
rank-one term ``a a^T``, whose Cholesky factor is updated in place in ``O(M^2)``
(:func:`cholesky_update`, the classic rotation algorithm: Golub & Van Loan, *Matrix
Computations*, 4th ed., sec. 6.5.4; Seeger, "Low rank updates for the Cholesky
decomposition", 2004), and ``A r``, ``n``, ``r^T r`` and ``tr(A A^T)`` get one term each. The
updated posterior is the one :func:`wrjax.gp.build_predictor` computes from scratch on the
grown data (same hyperparameters and scaling; ``tests/test_gp.py`` checks mean and variance
to 1e-8 in float64 after many updates), at ``O(M^2)`` instead of ``O(N M^2)`` per point.

The updates add no measurable rounding of their own (incremental against from-scratch in
the same ``form`` of :func:`wrjax.gp.build_predictor`: 1e-13 in the mean at N = 10,000,
M = 500); a state started from the default product-form build carries that form's rounding
(up to 1e-6 in the mean after a converged fit at that size), as the from-scratch build does.

The same statistics give the collapsed bound of the *current* hyperparameters on the grown
data exactly (:func:`incremental_elbo`), and the noise-normalised residual of each new point
under the posterior before it was added; :func:`staleness` reports both, for a caller's
refit schedule (refit when the bound per point has dropped, or the new points are badly
predicted, or every ``r`` queries).

Everything is pure and jittable with static shapes: a padded batch of points
(:func:`condition_on_batch`, with a mask) never changes a shape, so a BO loop compiles once.
Run inside :func:`wrjax.precision.float64_scope` (the public functions here enter it).

How a BO optimiser uses it (one retrain cycle):

    pred = gp.build_predictor(params, data)             # after each (re)fit
    state = gp_update.init_incremental(pred, data)      # O(M^2), no pass over the data
    # each query: maximise EI on state.pred, observe y at x, then
    state = gp_update.condition_on(state, x, y)         # O(M^2)
    info = gp_update.staleness(state)                   # refit when the schedule says so
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from wrjax.gp import SGPRData, SGPRPredictor, _predictor, _representer_weights, rbf_kernel, safe_cholesky
from wrjax.precision import float64_scope
from wrjax.typing import ArrayLike

__all__ = [
    "IncrementalSGPR",
    "StalenessInfo",
    "cholesky_update",
    "init_incremental",
    "condition_on",
    "condition_on_batch",
    "incremental_elbo",
    "staleness",
    "should_refit",
    "grown_predictor",
    "extend_inducing",
]

_F64 = jnp.float64


class IncrementalSGPR(NamedTuple):
    """A cached SGPR posterior plus the data statistics that let points be added in O(M^2)."""

    pred: SGPRPredictor  # current posterior (chol_b, proj_residual, weights kept up to date)
    num_data: jax.Array  # () float64 n, valid points conditioned on
    sum_sq_residual: jax.Array  # () float64 r^T r (standardised targets)
    trace_aat: jax.Array  # () float64 tr(A A^T) = sum_i |a_i|^2
    elbo_at_start: jax.Array  # () float64 the bound when the state was made (nats)
    num_data_at_start: jax.Array  # () float64 n then
    num_added: jax.Array  # () int32 points added since
    sum_sq_zscore: jax.Array  # () float64 sum over added points of (y - mu)^2 / (var + noise)
    max_sq_zscore: jax.Array  # () float64 the largest of those terms (0 when none)
    max_uncovered: jax.Array = None  # () float64 largest (k_xx - q_xx) / k_xx over added points


class StalenessInfo(NamedTuple):
    """How far the data have moved since the hyperparameters were fitted (see :func:`staleness`)."""

    elbo: jax.Array  # () bound of the current hyperparameters on all conditioned data (nats)
    elbo_per_point_change: jax.Array  # () elbo / n now minus at the start (nats per point)
    mean_sq_zscore: jax.Array  # () mean of (y - mu)^2 / (var + noise) over added points (0 if none)
    max_sq_zscore: jax.Array  # () largest such term
    num_added: jax.Array  # () int32
    max_uncovered: jax.Array  # () largest share of prior variance at an added point that the
    #   inducing points do not explain, (k_xx - q_xx) / k_xx in [0, 1]


def cholesky_update(chol: jax.Array, v: jax.Array) -> jax.Array:
    """The lower Cholesky factor of ``L L^T + v v^T`` from ``L``, in ``O(M^2)``.

    The rotation algorithm (Golub & Van Loan, sec. 6.5.4): for ``k = 0..M-1``,
    ``rho = hypot(L_kk, v_k)``, ``c = rho / L_kk``, ``s = v_k / L_kk``;
    ``L_kk <- rho``, ``L_ik <- (L_ik + s v_i) / c`` and ``v_i <- c v_i - s L_ik`` for ``i > k``.
    Runs as a ``lax.fori_loop`` over the columns (rows of ``L^T``, contiguous). An update
    never loses positive definiteness (``rho >= L_kk > 0``), so it needs no jitter.

    Args:
      chol: ``(M, M)`` lower-triangular factor with a positive diagonal.
      v: ``(M,)`` vector.

    Returns:
      ``(M, M)`` lower factor of ``chol @ chol.T + outer(v, v)``.
    """
    m = chol.shape[0]
    idx = jnp.arange(m)

    def body(k, carry):
        u, x = carry  # u = L^T: row k of u is column k of L
        row = u[k]
        lkk, xk = row[k], x[k]
        rho = jnp.hypot(lkk, xk)
        c = rho / lkk
        s = xk / lkk
        below = idx > k
        new_row = jnp.where(below, (row + s * x) / c, row).at[k].set(rho)
        x = jnp.where(below, c * x - s * new_row, x)
        return u.at[k].set(new_row), x

    u, _ = jax.lax.fori_loop(0, m, body, (chol.T, v))
    return u.T


def _bound(pred: SGPRPredictor, n, rr, tr_aat) -> jax.Array:
    """Titsias' collapsed bound from the cached statistics (as ``wrjax.gp.collapsed_elbo``)."""
    v = jsl.solve_triangular(pred.chol_b, pred.proj_residual, lower=True)
    log_det = n * jnp.log(pred.noise) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(pred.chol_b)))
    quad = (rr - jnp.sum(v * v)) / pred.noise
    trace = n * pred.variance / pred.noise - tr_aat
    return -0.5 * (n * math.log(2.0 * math.pi) + log_det + quad + trace)


@float64_scope
def init_incremental(pred: SGPRPredictor, data: SGPRData) -> IncrementalSGPR:
    """The incremental state of a predictor built by :func:`wrjax.gp.build_predictor` on ``data``.

    ``O(M^2 + N)``: no pass over ``Kzf``. ``tr(A A^T)`` is read off the cached factor,
    ``tr(B) - M = |L_B|_F^2 - M`` (exact unless :func:`wrjax.gp.safe_cholesky` had to add
    jitter to ``B``, which never happens for ``B = I + A A^T`` short of overflow).

    Args:
      pred: the predictor of ``data`` (same hyperparameters, jitter and scaling).
      data: the data it was built on (only ``y``, ``mask`` are read).
    """
    w = data.mask.astype(_F64)
    n = jnp.sum(w)
    r = data.y * w
    rr = jnp.sum(r * r)
    m = pred.chol_b.shape[0]
    tr_aat = jnp.sum(pred.chol_b * pred.chol_b) - m
    elbo = _bound(pred, n, rr, tr_aat)
    zero = jnp.zeros((), _F64)
    return IncrementalSGPR(
        pred=pred,
        num_data=n,
        sum_sq_residual=rr,
        trace_aat=tr_aat,
        elbo_at_start=elbo,
        num_data_at_start=n,
        num_added=jnp.zeros((), jnp.int32),
        sum_sq_zscore=zero,
        max_sq_zscore=zero,
        max_uncovered=zero,
    )


def _condition(state: IncrementalSGPR, x: jax.Array, y: jax.Array, valid: jax.Array) -> IncrementalSGPR:
    pred = state.pred
    kzx = rbf_kernel(pred.inducing, x[None, :], pred.lengthscale, pred.variance)[:, 0]
    c = jsl.solve_triangular(pred.chol_kzz, kzx, lower=True)  # Lz^{-1} k_zx
    sigma = jnp.sqrt(pred.noise)
    a = c / sigma
    r = (y - pred.y_mean) / pred.y_std
    # predictive of the standardised target before the point is added (the staleness signal)
    mean = kzx @ pred.weights
    e = jsl.solve_triangular(pred.chol_b, c, lower=True)
    var = jnp.maximum(pred.variance - c @ c + e @ e, 0.0) + pred.noise
    z2 = (r - mean) ** 2 / var

    lb = cholesky_update(pred.chol_b, a)
    ar = pred.proj_residual + a * r
    new = IncrementalSGPR(
        pred=pred._replace(
            chol_b=lb, proj_residual=ar, weights=_representer_weights(pred.chol_kzz, lb, ar, pred.noise)
        ),
        num_data=state.num_data + 1.0,
        sum_sq_residual=state.sum_sq_residual + r * r,
        trace_aat=state.trace_aat + a @ a,
        elbo_at_start=state.elbo_at_start,
        num_data_at_start=state.num_data_at_start,
        num_added=state.num_added + 1,
        sum_sq_zscore=state.sum_sq_zscore + z2,
        max_sq_zscore=jnp.maximum(state.max_sq_zscore, z2),
        max_uncovered=jnp.maximum(state.max_uncovered, jnp.clip(1.0 - c @ c / pred.variance, 0.0, 1.0)),
    )
    return jax.tree.map(lambda a_, b_: jnp.where(valid, a_, b_), new, state)


@float64_scope
def condition_on(
    state: IncrementalSGPR, x: ArrayLike, y: ArrayLike, valid: ArrayLike = True
) -> IncrementalSGPR:
    """The state conditioned on one more observation ``(x, y)``: ``O(M^2)``.

    Exact for the SGPR with the state's hyperparameters, inducing points and target scaling:
    ``L_B`` by :func:`cholesky_update` with ``a = Lz^{-1} k_zx / sigma``, ``A r += a r``,
    the representer weights by four ``M x M`` triangular solves of vectors. Pure and
    jittable; ``valid=False`` returns the state unchanged (for padded inputs).

    Args:
      state: from :func:`init_incremental` (or a previous update).
      x: ``(D,)`` point; y: ``()`` target in the original units; valid: ``()`` bool.
    """
    x = jnp.asarray(x, _F64)
    y = jnp.asarray(y, _F64)
    return _condition(state, x, y, jnp.asarray(valid, bool))


@float64_scope
def condition_on_batch(
    state: IncrementalSGPR, x: ArrayLike, y: ArrayLike, mask: ArrayLike | None = None
) -> IncrementalSGPR:
    """:func:`condition_on` for ``K`` points in order (a ``lax.scan``), ``O(K M^2)``.

    Args:
      x: ``(K, D)``; y: ``(K,)`` original units; mask: optional ``(K,)`` bool (False rows are
        skipped: a fixed ``K`` with padding never recompiles).
    """
    x = jnp.asarray(x, _F64)
    y = jnp.asarray(y, _F64)
    mask = jnp.ones(y.shape, bool) if mask is None else jnp.asarray(mask, bool)

    def step(s, inp):
        xi, yi, mi = inp
        return _condition(s, xi, yi, mi), None

    state, _ = jax.lax.scan(step, state, (x, y, mask))
    return state


@float64_scope
def incremental_elbo(state: IncrementalSGPR) -> jax.Array:
    """The collapsed bound of the state's hyperparameters on every point it holds (nats).

    Equals :func:`wrjax.gp.collapsed_elbo` on the grown data with the same scaling (the
    targets standardised by the state's ``y_mean``, ``y_std``), in ``O(M^2)``.
    """
    return _bound(state.pred, state.num_data, state.sum_sq_residual, state.trace_aat)


@float64_scope
def staleness(state: IncrementalSGPR) -> StalenessInfo:
    """Cheap signals that the hyperparameters no longer fit the grown data, ``O(M^2)``.

    * ``elbo_per_point_change``: the bound per point now minus when the state was made. The
      new points are scored by the fitted model; a clear drop (they are explained worse than
      the data it was fitted on) says a refit would move the hyperparameters.
    * ``mean_sq_zscore``, ``max_sq_zscore``: ``(y - mu)^2 / (s^2 + noise)`` of each new point
      under the posterior just before it was added (standardised units). About 1 for a
      calibrated model; much larger means the queries land where the model is overconfident.

    * ``max_uncovered``: ``(k_xx - q_xx) / k_xx`` of the worst-covered new point, the share of
      its prior variance that the fixed inducing points cannot explain. Near 1, the point is
      far from every inducing point: it adds about ``k_xx / (2 noise)`` nats to the bound's
      trace penalty and barely changes the posterior (its information is lost until a refit
      moves the inducing points). Measured in ``benchmarks/RESULTS.md`` (``schedule``):
      BO queries leave the inducing points' cover within a few queries.

    A refit schedule can combine these with a count (``num_added``), e.g. refit when
    ``num_added >= r``, ``max_uncovered > 0.5`` or ``mean_sq_zscore > 4``.
    """
    elbo = incremental_elbo(state)
    per_point = elbo / state.num_data - state.elbo_at_start / state.num_data_at_start
    k = jnp.maximum(state.num_added, 1).astype(_F64)
    return StalenessInfo(
        elbo=elbo,
        elbo_per_point_change=per_point,
        mean_sq_zscore=state.sum_sq_zscore / k,
        max_sq_zscore=state.max_sq_zscore,
        num_added=state.num_added,
        max_uncovered=state.max_uncovered,
    )


def should_refit(
    info: StalenessInfo,
    *,
    every: int | None = None,
    max_bound_drop: float | None = None,
    max_uncovered: float | None = None,
    max_mean_sq_zscore: float | None = None,
) -> jax.Array:
    """``()`` bool: True when any enabled refit criterion fires (jittable; options static).

    Criteria (None disables one; at least one must be set): ``num_added >= every``; the
    bound per point dropped by more than ``max_bound_drop`` nats since the fit; an added
    point with more than ``max_uncovered`` of its prior variance outside the inducing
    points' reach; mean squared z-score above ``max_mean_sq_zscore``. See :func:`staleness`
    for the signals and ``benchmarks/RESULTS.md`` (``schedule``) for how fast they move.
    """
    rules = []
    if every is not None:
        if int(every) != every or every < 1:
            raise ValueError(f"every must be a positive integer, got {every}")
        rules.append(info.num_added >= every)
    if max_bound_drop is not None:
        rules.append(-info.elbo_per_point_change > max_bound_drop)
    if max_uncovered is not None:
        rules.append(info.max_uncovered > max_uncovered)
    if max_mean_sq_zscore is not None:
        rules.append((info.num_added > 0) & (info.mean_sq_zscore > max_mean_sq_zscore))
    if not rules:
        raise ValueError("should_refit needs at least one criterion")
    return jnp.any(jnp.stack(rules))


#: Where :func:`grown_predictor` parks its unused inducing slots: ``FAR * (slot + 1)`` on the
#: first axis. At that distance every kernel value with a data point, a query point or another
#: slot underflows to exactly 0 in float64 for any lengthscale below 1e6 (``exp(-5e3)`` at
#: worst), so an unused slot is an inducing input that carries no information: it leaves the
#: posterior exactly as it is and needs no mask anywhere downstream.
FAR = 1e8


@float64_scope
def grown_predictor(
    pred: SGPRPredictor, data: SGPRData, extra_x: ArrayLike, extra_mask: ArrayLike, *,
    jitter: float = 1e-6, form: str = "product",
) -> SGPRPredictor:
    """The SGPR posterior of ``data`` with the valid ``extra_x`` rows added to the inducing
    inputs: ``M + E`` inducing points, the kernel, noise and scaling of ``pred`` unchanged.

    Between refits the incremental schedule keeps the inducing points fixed, so points
    queried far from all of them are seen only through ``Kzz^{-1}``-projections and the
    posterior barely moves there; the per-query refit moves the inducing points towards the
    data after every query. Making each queried point an inducing point gives the posterior
    the queried points' own information (with the same hyperparameters, Titsias' bound can
    only rise when inducing inputs are added) without refitting. ``O(N (M+E)^2)``: a
    from-scratch :func:`wrjax.gp.build_predictor` on the grown inducing set, whose unused
    slots sit at :data:`FAR` (static shapes: ``E`` fixed, a mask says which are used).

    Args:
      pred: the current posterior (its ``inducing``, hyperparameters and ``y`` scaling).
      data: the standardised data it conditions on (``pred``'s scaling).
      extra_x: ``(E, D)`` candidate inducing inputs; extra_mask: ``(E,)`` bool, which are used.
      jitter: base ``Kzz`` jitter relative to the signal variance, as ``build_predictor``.

    Returns:
      an :class:`SGPRPredictor` with ``M + E`` inducing rows (unused ones at ``FAR``).
    """
    z = jnp.concatenate([pred.inducing, _parked(extra_x, extra_mask)])
    return _predictor(pred.lengthscale, pred.variance, pred.noise, z, data, jitter, form)


def _parked(extra_x, extra_mask):
    """``extra_x`` with its unused rows moved to :data:`FAR` (``(E, D)`` float64)."""
    extra_x = jnp.asarray(extra_x, _F64)
    extra_mask = jnp.asarray(extra_mask, bool)
    e, d = extra_x.shape
    park = jnp.zeros((e, d), _F64).at[:, 0].set(FAR * (1.0 + jnp.arange(e, dtype=_F64)))
    return jnp.where(extra_mask[:, None], extra_x, park)


@float64_scope
def extend_inducing(
    pred: SGPRPredictor, data: SGPRData, extra_x: ArrayLike, extra_mask: ArrayLike
) -> SGPRPredictor:
    """:func:`grown_predictor` by extending ``pred``'s factors: ``O(N M E + M^2 E)``, not
    ``O(N (M+E)^2)``.

    ``pred`` must be the posterior of ``data`` (as an :class:`IncrementalSGPR`'s ``pred`` is
    of the rows it has absorbed). With ``Z' = [Z; X_e]``, the new inducing rows border both
    factors: ``Lz' = [[Lz, 0], [L21, L22]]`` with ``L21 = K_ez Lz^{-T}`` and ``L22`` the factor
    of ``K_ee + j I - L21 L21^T``; ``A' = [A; A_e]`` with ``A_e = L22^{-1} (K_ef / s - L21 A)``,
    so ``B' = I + A' A'^T`` borders ``B`` with ``A A_e^T`` and ``I + A_e A_e^T``. ``A`` (``M x
    N``) is never formed: every product with it comes from ``A A^T = L_B L_B^T - I``,
    ``A r`` (cached) and one pass over the data for ``K_zf K_fe`` and ``K_ef K_fe`` (with
    ``M = 500``, ``E = 50``, ``N = 10,000``: 0.069 s against 0.174 s for the rebuild,
    ``benchmarks/RESULTS.md`` ``## acq_form``). The same jitter ``pred.jitter`` is added to
    the new block (more only if its factor fails), so with nothing escalated the result is
    the from-scratch build's up to rounding (``tests/test_bo_incremental.py``: 1e-9 in the
    mean on well-conditioned problems; more where ``cond(B)`` is large, as for any build).

    Args:
      pred: the posterior of ``data``; data: its standardised data.
      extra_x: ``(E, D)`` inputs to add; extra_mask: ``(E,)`` bool, which are used (the
        others are parked at :data:`FAR`, where they carry nothing).

    Returns:
      an :class:`SGPRPredictor` with ``M + E`` inducing rows, the kernel, noise, jitter and
      scaling of ``pred``.
    """
    ze = _parked(extra_x, extra_mask)
    e, m = ze.shape[0], pred.inducing.shape[0]
    ls, var, noise = pred.lengthscale, pred.variance, pred.noise
    sigma = jnp.sqrt(noise)
    lz, lb = pred.chol_kzz, pred.chol_b
    eye_e = jnp.eye(e, dtype=_F64)
    # the new rows of Lz'
    l21 = jsl.solve_triangular(lz, rbf_kernel(pred.inducing, ze, ls, var), lower=True).T  # (E, M)
    schur = rbf_kernel(ze, ze, ls, var) + pred.jitter * eye_e - l21 @ l21.T
    l22, _ = safe_cholesky(0.5 * (schur + schur.T), 0.0)
    # the one pass over the data
    w = data.mask.astype(_F64)
    kzf = rbf_kernel(pred.inducing, data.x, ls, var) * w[None, :]  # (M, N)
    kef = rbf_kernel(ze, data.x, ls, var) * w[None, :]  # (E, N)
    p = jsl.solve_triangular(lz, kzf @ kef.T, lower=True) / noise  # A K_fe / s, (M, E)
    aat = lb @ lb.T - jnp.eye(m, dtype=_F64)  # A A^T
    # A A_e^T = (A K_fe / s - A A^T L21^T) L22^{-T}
    a_ae = jsl.solve_triangular(l22, (p - aat @ l21.T).T, lower=True).T  # (M, E)
    # A_e A_e^T = L22^{-1} [K_ef K_fe / s2 - P^T L21^T - L21 P + L21 A A^T L21^T] L22^{-T}
    l21_p = l21 @ p  # (E, E)
    inner = kef @ kef.T / noise - l21_p.T - l21_p + l21 @ aat @ l21.T
    u = jsl.solve_triangular(l22, inner, lower=True)
    ae_ae = jsl.solve_triangular(l22, u.T, lower=True)
    ae_r = jsl.solve_triangular(l22, kef @ (data.y * w) / sigma - l21 @ pred.proj_residual, lower=True)
    # L_B' = [[L_B, 0], [Y, L]]: Y = (L_B^{-1} A A_e^T)^T, L the factor of I + A_e A_e^T - Y Y^T
    yb = jsl.solve_triangular(lb, a_ae, lower=True).T  # (E, M)
    sb = eye_e + 0.5 * (ae_ae + ae_ae.T) - yb @ yb.T
    lb_new, _ = safe_cholesky(0.5 * (sb + sb.T), 0.0)
    zeros = jnp.zeros((m, e), _F64)
    lz2 = jnp.block([[lz, zeros], [l21, l22]])
    lb2 = jnp.block([[lb, zeros], [yb, lb_new]])
    ar2 = jnp.concatenate([pred.proj_residual, ae_r])
    return pred._replace(
        inducing=jnp.concatenate([pred.inducing, ze]),
        chol_kzz=lz2,
        chol_b=lb2,
        proj_residual=ar2,
        weights=_representer_weights(lz2, lb2, ar2, noise),
    )
