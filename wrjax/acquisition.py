"""Expected improvement, its logarithm, and a multi-start box-bounded maximiser (appendix C.2).

Everything is in the maximisation convention of wrjax: higher ``f`` is better, and the
improvement over an incumbent ``tau`` is ``max(f - tau, 0)``. The authors minimised, with the
incumbent at the 10th percentile of the GP's targets; here that is the 90th percentile
(:func:`incumbent`, ``method="quantile"``, ``quantile=0.9``).

With ``f ~ N(mu, s^2)`` and ``u = (mu - tau) / s``, EI is (Jones et al., 1998)

    EI = s * h(u),     h(u) = u Phi(u) + phi(u).

Far below the incumbent (``u`` very negative) ``h(u) ~ phi(u) / u^2`` underflows to 0 in
float64 near ``u = -38`` (float32: ``u = -13``), so EI and its gradient vanish, which
stalls gradient ascent from random starts. :func:`log_expected_improvement` evaluates
``log h`` without ever forming ``h`` there (Ament et al., "Unexpected improvements to
expected improvement", NeurIPS 2023, eq. 9), so it is finite and accurate for all ``u``.

:func:`maximize_acquisition` runs projected Adam from several starts at once (vmapped over
restarts, jitted), tracks the best point each start has visited, and returns the starts'
results ranked and flagged as distinct or duplicate, so a caller can fall back to the next
candidate when a decode is invalid or already known. The acquisition is passed as a
:class:`jax.tree_util.Partial` (or any pytree-callable), so that a new surrogate with the
same shapes reuses the compiled program.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import erfcx, ndtr

from wrjax.precision import float64_scope, is_tracer
from wrjax.typing import ArrayLike

__all__ = [
    "expected_improvement",
    "log_expected_improvement",
    "incumbent",
    "data_bounds",
    "AcquisitionResult",
    "maximize_acquisition",
    "maximize",
    "rank_distinct",
]

_C1 = 0.5 * math.log(2.0 * math.pi)  # log sqrt(2 pi)
_C2 = 0.5 * math.log(0.5 * math.pi)  # log sqrt(pi / 2)


def _h(u):
    """``h(u) = u Phi(u) + phi(u)``: EI of a standard normal above ``-u``."""
    return u * ndtr(u) + jnp.exp(-0.5 * u * u - _C1)


def expected_improvement(mean: ArrayLike, var: ArrayLike, incumbent: ArrayLike) -> jax.Array:
    """``E[max(f - incumbent, 0)]`` for ``f ~ N(mean, var)`` (maximisation), elementwise.

    ``EI = s (u Phi(u) + phi(u))`` with ``s = sqrt(var)``, ``u = (mean - incumbent) / s``
    (Jones, Schonlau & Welch, 1998). Underflows to exactly 0 far below the incumbent; use
    :func:`log_expected_improvement` to optimise there. ``var`` must be > 0.

    Args:
      mean, var, incumbent: arrays of one shape (or scalars); any float dtype.

    Returns:
      EI in the units of ``mean``, same shape and dtype.

    Example:
      >>> float(expected_improvement(0.0, 1.0, 0.0))  # = phi(0)
      0.3989422...
    """
    mean, var, incumbent = jnp.asarray(mean), jnp.asarray(var), jnp.asarray(incumbent)
    s = jnp.sqrt(var)
    return s * _h((mean - incumbent) / s)


def _log1mexp(x):
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both sides of ``-log 2`` (Maechler 2012)."""
    x = jnp.minimum(x, -1e-300)
    return jnp.where(
        x > -math.log(2.0),
        jnp.log(-jnp.expm1(jnp.maximum(x, -math.log(2.0)))),
        jnp.log1p(-jnp.exp(jnp.minimum(x, -math.log(2.0)))),
    )


def _log_h(u):
    """``log h(u)``, finite and accurate for every finite ``u`` (Ament et al. 2023, eq. 9).

    Three regions, each evaluated on a clamped input so that no branch produces inf or NaN
    (and no NaN gradient leaks through ``where``):

    * ``u > -1``: ``log(h(u))`` directly (``h(-1) = 0.083``, no cancellation);
    * ``-1/sqrt(eps) < u <= -1``: ``h(u) = phi(u) (1 - |u| Phi(u) / phi(u))`` and
      ``Phi(u)/phi(u) = sqrt(pi/2) erfcx(-u/sqrt 2)``, so
      ``log h = -u^2/2 - log sqrt(2 pi) + log1mexp(log(erfcx(-u/sqrt 2) |u|) + log sqrt(pi/2))``;
    * ``u <= -1/sqrt(eps)``: the asymptote ``log h = -u^2/2 - log sqrt(2 pi) - 2 log|u|``.
    """
    eps = jnp.finfo(u.dtype).eps
    big = 1.0 / math.sqrt(float(eps))
    u_hi = jnp.maximum(u, -1.0)
    u_mid = jnp.clip(u, -big, -1.0)
    u_lo = jnp.minimum(u, -big)
    hi = jnp.log(_h(u_hi))
    mid = (
        -0.5 * u_mid * u_mid
        - _C1
        + _log1mexp(jnp.log(erfcx(-u_mid / math.sqrt(2.0)) * -u_mid) + _C2)
    )
    lo = -0.5 * u_lo * u_lo - _C1 - 2.0 * jnp.log(-u_lo)
    return jnp.where(u > -1.0, hi, jnp.where(u > -big, mid, lo))


def log_expected_improvement(mean: ArrayLike, var: ArrayLike, incumbent: ArrayLike) -> jax.Array:
    """``log EI``, finite and accurate everywhere (no underflow far below the incumbent).

    ``log EI = log s + log h(u)`` with ``log h`` from Ament et al. (2023, eq. 9), see
    :func:`expected_improvement` for the notation. Equals ``log(expected_improvement(...))``
    where EI is representable (relative error ~1e-15 in float64); where EI underflows, it
    keeps decreasing smoothly (about ``-u^2/2``), so gradient ascent always has a direction.
    Its maximiser is EI's (log is monotone). ``var`` must be > 0.

    Example:
      >>> float(log_expected_improvement(-100.0, 1.0, 0.0))  # EI underflows to 0 here
      -5010.1...
    """
    mean, var, incumbent = jnp.asarray(mean), jnp.asarray(var), jnp.asarray(incumbent)
    u = (mean - incumbent) / jnp.sqrt(var)
    return 0.5 * jnp.log(var) + _log_h(u)


def incumbent(
    y: ArrayLike, mask: ArrayLike | None = None, *, method: str = "quantile", quantile: float = 0.9
) -> jax.Array:
    """The EI incumbent over the valid targets: their maximum, or a quantile.

    ``method="best"``: ``max y``. ``method="quantile"``: the ``quantile`` of ``y`` (linear
    interpolation, as ``numpy.quantile``). The authors used the 10th percentile of their
    minimised targets because EI at the best value has vanishing gradients almost everywhere;
    in wrjax's maximisation convention that is ``quantile=0.9`` (the default).

    Args:
      y: ``(N,)`` targets; mask: optional ``(N,)`` bool validity.

    Returns:
      ``()`` incumbent, dtype of ``y``. Jittable (``method`` is static).
    """
    if method not in ("best", "quantile"):
        raise ValueError(f"method must be 'best' or 'quantile', got {method!r}")
    if not is_tracer(quantile) and not 0.0 <= float(quantile) <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    y = jnp.asarray(y)
    mask = jnp.ones(y.shape, bool) if mask is None else jnp.asarray(mask, bool)
    if not is_tracer(y) and not is_tracer(mask) and not bool(np.any(np.asarray(mask))):
        raise ValueError("no valid point: the mask selects nothing")
    if method == "best":
        return jnp.max(jnp.where(mask, y, -jnp.inf))
    return jnp.nanquantile(jnp.where(mask, y, jnp.nan), quantile)


def data_bounds(
    x: ArrayLike, mask: ArrayLike | None = None, *, quantile: float = 0.999, scale: float = 1.1
) -> jax.Array:
    """The authors' search box: ``+- scale * quantile(|x|)`` over all valid coordinates.

    ``np.percentile(np.abs(X_train), 99.9) * 1.1`` in their ``gp_opt.py``: one scalar for
    every dimension (the 99.9th percentile ignores outliers).

    Returns:
      ``(2, D)`` array ``[lower, upper]``.
    """
    x = jnp.asarray(x)
    mask = jnp.ones(x.shape[:1], bool) if mask is None else jnp.asarray(mask, bool)
    a = jnp.where(mask[:, None], jnp.abs(x), jnp.nan)
    r = scale * jnp.nanquantile(a, quantile)
    ones = jnp.ones(x.shape[1:], x.dtype)
    return jnp.stack([-r * ones, r * ones])


class AcquisitionResult(NamedTuple):
    """Multi-start maximisation result, ranked: distinct candidates first, best first."""

    points: jax.Array  # (R, D) end points of the R restarts, ranked
    values: jax.Array  # (R,) acquisition value at each point
    distinct: jax.Array  # (R,) bool, False for a point within tolerance of a better one
    start_values: jax.Array  # (R,) acquisition value at each start (same order as points)


def rank_distinct(points: jax.Array, values: jax.Array, tol: jax.Array) -> tuple[jax.Array, ...]:
    """Sort by value (descending), flag near-duplicates, and move them to the end.

    A point is a duplicate when it lies within ``tol`` (max-norm, per dimension ``(D,)`` or a
    scalar) of a point with a strictly better rank. Non-finite values rank last.

    Returns:
      ``(order (R,), distinct (R,))``: ``points[order]`` is the ranked array and ``distinct``
      its flags in that order.
    """
    r = values.shape[0]
    v = jnp.where(jnp.isfinite(values), values, -jnp.inf)
    order = jnp.argsort(-v, stable=True)
    p = points[order]
    tol = jnp.broadcast_to(jnp.asarray(tol, p.dtype), p.shape[1:])[None, None, :]
    close = jnp.all(jnp.abs(p[:, None, :] - p[None, :, :]) <= tol, axis=-1)  # (R, R)
    earlier = jnp.arange(r)[None, :] < jnp.arange(r)[:, None]  # j ranked before i
    dup = jnp.any(close & earlier, axis=1)
    distinct = ~dup & jnp.isfinite(v[order])
    second = jnp.argsort(~distinct, stable=True)  # distinct first, rank kept within groups
    return order[second], distinct[second]


def _uniform_in_box(key, n, lower, upper):
    u = jax.random.uniform(key, (n,) + lower.shape, lower.dtype)
    return lower[None, :] + u * (upper - lower)[None, :]


def maximize(
    key,
    acq_fn,
    bounds,
    init_points,
    *,
    num_restarts: int,
    num_steps: int,
    learning_rate: float,
    min_distance: float,
):
    """The unvalidated, traceable core of :func:`maximize_acquisition` (same arguments, all
    keyword options required; ``bounds`` a ``(2, D)`` array, ``init_points`` an array or None).
    For use inside a caller's own jitted program, such as a BO proposal step."""
    lower, upper = bounds[0], bounds[1]
    width = upper - lower
    value_fn = jax.vmap(acq_fn)

    # starts: the given points (best by acquisition if there are more than R), then uniform
    if init_points is None:
        starts = _uniform_in_box(key, num_restarts, lower, upper)
    else:
        p = init_points.shape[0]
        init_points = jnp.clip(init_points, lower[None, :], upper[None, :])
        if p >= num_restarts:
            v0 = value_fn(init_points)
            _, idx = jax.lax.top_k(jnp.where(jnp.isfinite(v0), v0, -jnp.inf), num_restarts)
            starts = init_points[idx]
        else:
            extra = _uniform_in_box(key, num_restarts - p, lower, upper)
            starts = jnp.concatenate([init_points, extra])

    # projected Adam on -acq, step sizes relative to the box width, cosine-decayed to 1e-3
    schedule = optax.cosine_decay_schedule(learning_rate, max(num_steps, 1), alpha=1e-3)
    opt = optax.adam(schedule)
    grad_fn = jax.vmap(jax.value_and_grad(acq_fn))

    def step(carry, _):
        x, s, best_x, best_v = carry
        v, g = grad_fn(x)
        finite = jnp.isfinite(v)
        better = finite & (v > best_v)
        best_x = jnp.where(better[:, None], x, best_x)
        best_v = jnp.where(better, v, best_v)
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        # unit-box coordinates, so one learning rate suits every dimension
        upd, s = opt.update(-g * width[None, :], s, x)
        x = jnp.clip(x + upd * width[None, :], lower[None, :], upper[None, :])
        return (x, s, best_x, best_v), None

    v_start = value_fn(starts)
    init_best = jnp.where(jnp.isfinite(v_start), v_start, -jnp.inf)
    carry = (starts, opt.init(starts), starts, init_best)
    (x, _, best_x, best_v), _ = jax.lax.scan(step, carry, None, length=num_steps)
    v_end = value_fn(x)
    better = jnp.isfinite(v_end) & (v_end > best_v)
    best_x = jnp.where(better[:, None], x, best_x)
    best_v = jnp.where(better, v_end, best_v)
    order, distinct = rank_distinct(best_x, best_v, min_distance * width)
    return AcquisitionResult(best_x[order], best_v[order], distinct, v_start[order])


_maximize = maximize  # the old private name, kept for callers
_maximize_jit = jax.jit(
    maximize,
    static_argnames=("num_restarts", "num_steps", "learning_rate", "min_distance"),
)


def _as_pytree_fn(acq_fn):
    if not callable(acq_fn):
        raise ValueError(f"acq_fn must be callable, got {type(acq_fn).__name__}")
    leaves = jax.tree.leaves(acq_fn)
    if len(leaves) == 1 and leaves[0] is acq_fn:
        # a plain function (a pytree leaf): its identity becomes part of the program's key
        return jax.tree_util.Partial(acq_fn)
    return acq_fn


@float64_scope
def maximize_acquisition(
    key: jax.Array,
    acq_fn: Callable[[jax.Array], jax.Array],
    bounds: ArrayLike,
    *,
    num_restarts: int,
    num_steps: int,
    init_points: ArrayLike | None = None,
    learning_rate: float = 0.05,
    min_distance: float = 1e-3,
) -> AcquisitionResult:
    """Maximise ``acq_fn`` inside a box from ``num_restarts`` starts at once (jitted, vmapped).

    Each start runs ``num_steps`` of projected Adam ascent (step size ``learning_rate``
    times the box width per coordinate, cosine-decayed to 1e-3 of that, clipping back into
    the box after each step) and keeps the best point it visited. Results are ranked by
    value; a result within ``min_distance * width`` (per coordinate) of a better one is
    flagged as a duplicate and moved behind the distinct ones.

    Starts: ``init_points`` first (clipped into the box); if there are more of them than
    ``num_restarts``, the ``num_restarts`` with the highest acquisition; if fewer, the rest
    are uniform in the box. :func:`wrjax.bo.bo_suggest` passes the authors' mix: half
    ``N(0, I)`` draws, half random points from the top 20% of the data.

    Compilation: the program is cached on the shapes, the static options and the
    *function* inside ``acq_fn``. Pass the acquisition as a
    ``jax.tree_util.Partial(fn, predictor, incumbent)`` (or any callable pytree): a new
    predictor of the same shapes then reuses the compiled program. A plain closure is
    wrapped as ``Partial(closure)`` and recompiles whenever the closure object changes.
    Runs in float64 (:func:`wrjax.precision.float64_scope`); never raises inside jit.

    Args:
      key: PRNG key for the uniform starts.
      acq_fn: maps one point ``(D,)`` to a scalar to maximise (e.g. log-EI).
      bounds: ``(2, D)`` ``[lower, upper]`` with ``lower < upper``.
      num_restarts: ``R`` starts (static, > 0).
      num_steps: ascent steps per start (static, >= 0).
      init_points: optional ``(P, D)`` starting points.

    Returns:
      :class:`AcquisitionResult` with ``points (R, D)``, ``values (R,)``, ``distinct (R,)``.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> f = jax.tree_util.Partial(lambda x: -jnp.sum((x - 0.3) ** 2))
      >>> res = maximize_acquisition(jax.random.key(0), f, jnp.array([[-1.0, -1.0], [1.0, 1.0]]),
      ...                            num_restarts=4, num_steps=200)
      >>> bool(np.allclose(res.points[0], 0.3, atol=1e-4))  # float64 results: compare on the host
      True
    """
    if int(num_restarts) != num_restarts or num_restarts <= 0:
        raise ValueError(f"num_restarts must be a positive integer, got {num_restarts}")
    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps}")
    bounds = jnp.asarray(bounds, jnp.float64)
    if bounds.ndim != 2 or bounds.shape[0] != 2:
        raise ValueError(f"bounds must have shape (2, D), got {bounds.shape}")
    if not is_tracer(bounds):
        b = np.asarray(bounds)
        if not np.all(np.isfinite(b)) or not np.all(b[0] < b[1]):
            raise ValueError("bounds must be finite with lower < upper in every dimension")
    if init_points is not None:
        init_points = jnp.asarray(init_points, jnp.float64)
        if init_points.ndim != 2 or init_points.shape[1] != bounds.shape[1]:
            raise ValueError(
                f"init_points must have shape (P, {bounds.shape[1]}), got {init_points.shape}"
            )
    return _maximize_jit(
        key,
        _as_pytree_fn(acq_fn),
        bounds,
        init_points,
        num_restarts=int(num_restarts),
        num_steps=int(num_steps),
        learning_rate=float(learning_rate),
        min_distance=float(min_distance),
    )
