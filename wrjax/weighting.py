"""Data weighting schemes for weighted retraining (paper §4.1, eq. 3; appendix A.1, A.4).

Every scheme maps the scores of a fixed-capacity buffer, ``scores (N,)`` with a validity
``mask (N,)``, to weights ``(N,)`` that sum to 1 over the valid slots and are exactly 0 on
masked slots. Higher scores are better (maximisation) everywhere in wrjax.

The schemes are pure and jittable; their scalar hyperparameters (``k``, ``alpha``,
``quantile``) are traced, so changing them, or filling the buffer, never recompiles.
Called with concrete arrays, they validate their input and raise ``ValueError`` with a
clear message; inside a jax transformation no check can run and invalid input gives NaN.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from wrjax._checks import check_k, check_masked_scores, check_positive
from wrjax.precision import is_tracer
from wrjax.typing import ArrayLike, Bool, Float, KSchedule, WeightFn

__all__ = [
    "rank_weights",
    "uniform_weights",
    "dbas_weights",
    "cem_pi_weights",
    "rwr_weights",
    "make_weight_fn",
    "KSchedule",
    "ConstantK",
    "GeometricK",
    "constant_k",
    "geometric_k",
    "format_k",
    "k_values",
    "make_cycle_weight_fn",
    "max_rank_weight",
]

_F32 = jnp.float32


def _prepare(scores: ArrayLike, mask: ArrayLike | None) -> tuple[jax.Array, jax.Array]:
    """Validate (when concrete) and convert ``scores``/``mask`` to float32 / bool arrays."""
    check_masked_scores(scores, mask)
    if not is_tracer(scores):
        # On the host, so that int64 (or uint64) scores are not wrapped to int32 first.
        scores = np.asarray(np.asarray(scores), np.float64).astype(np.float32)
    scores = jnp.asarray(scores).astype(_F32)
    mask = jnp.ones(scores.shape, bool) if mask is None else jnp.asarray(mask, bool)
    return scores, mask


def _check_positive(name: str, value) -> None:
    hint = f" (use {name}=inf for uniform weights)"
    if name.startswith("k"):
        check_k(name, value, hint=hint)
    else:
        check_positive(name, value, hint=hint)


def _normalise(raw: jax.Array, mask: jax.Array) -> jax.Array:
    raw = jnp.where(mask, raw, 0.0)
    return raw / jnp.sum(raw)


def uniform_weights(scores: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    """Uniform weights ``1 / N_valid`` on valid slots, 0 elsewhere. Shape ``(N,)``, float32."""
    scores, mask = _prepare(scores, mask)
    return _normalise(jnp.ones_like(scores), mask)


@jax.jit
def _rank_weights(scores: jax.Array, mask: jax.Array, k: jax.Array) -> jax.Array:
    capacity = scores.shape[0]
    n_valid = jnp.sum(mask).astype(_F32)
    # rank(x) = #{valid j : s_j > s_x}. Sorting the valid scores (masked slots pushed to
    # -inf) makes it capacity - #{j : s_j <= s_x}, one O(N log N) searchsorted instead of
    # the O(N^2) count; ties land on the same insertion point and so share a rank.
    sorted_scores = jnp.sort(jnp.where(mask, scores, -jnp.inf))
    ranks = capacity - jnp.searchsorted(sorted_scores, scores, side="right")
    raw = 1.0 / (k * n_valid + ranks.astype(_F32))
    # k = inf is uniform weighting; 1/(inf) would be 0 for every point and 0/0 after
    # normalisation, so it is selected explicitly.
    # A k N beyond 1e30 is uniform to float32 precision; selected explicitly so that raw
    # weights that underflow (k N near float32's max) do not give 0/0.
    raw = jnp.where(jnp.isinf(k) | (k * n_valid > 1e30), 1.0, raw)
    # Under jit nothing is checked: a non-finite valid score makes every weight NaN (it
    # would otherwise sort as the best point and take nearly all the weight).
    bad = jnp.any(mask & ~jnp.isfinite(scores))
    return jnp.where(bad, jnp.nan, _normalise(raw, mask))


def rank_weights(
    scores: Float[ArrayLike, "N"], k: float | ArrayLike, mask: Bool[ArrayLike, "N"] | None = None
) -> Float[jax.Array, "N"]:
    """Rank-based weights of eq. 3: ``w_i ∝ 1 / (k N + rank_i)``, normalised over valid slots.

    ``rank_i`` is the number of *valid* points with a strictly greater score (zero-based;
    ties share a rank) and ``N`` the number of valid points. ``k = inf`` gives uniform
    weights; ``k -> 0`` puts all mass on the best point. Appendix A.1: the fraction of weight
    on the score quantile ``[q1, q2]`` is about ``ln((k+q2)/(k+q1)) / ln(1+1/k)``,
    independent of ``N`` when ``kN >> 1``.

    Args:
      scores: ``(N,)`` objective values, higher is better; must be finite on valid slots.
      k: weighting strength, ``> 0`` (may be ``inf``). Traced: changing it never recompiles.
      mask: optional ``(N,)`` bool, ``True`` on valid slots of a fixed-capacity buffer.

    Returns:
      ``(N,)`` float32 weights, summing to 1 over valid slots, exactly 0 on masked slots.

    Example:
      >>> import wrjax
      >>> w = wrjax.rank_weights([3.0, 1.0, 2.0, 2.0], k=1.0)
      >>> [round(float(v), 4) for v in w]   # ranks 0, 3, 1, 1
      [0.3153, 0.1802, 0.2523, 0.2523]
    """
    _check_positive("k", k)
    scores, mask = _prepare(scores, mask)
    return _rank_weights(scores, mask, jnp.asarray(k, _F32))


def max_rank_weight(k: float) -> float:
    """Largest normalised rank weight *relative to uniform*, ``~ 1 / (k ln(1 + 1/k))``.

    (A.1 with ``kN >> 1``: the best point has raw weight ``1/(kN)`` and the raw weights
    sum to ``ln(1 + 1/k)``.) About 145 for ``k = 1e-3`` and 4.2 for ``k = 0.1``.
    """
    if math.isinf(k):
        return 1.0
    return 1.0 / (k * math.log1p(1.0 / k))


def _masked_quantile(scores: jax.Array, mask: jax.Array, q: jax.Array) -> jax.Array:
    return jnp.nanquantile(jnp.where(mask, scores, jnp.nan), q)


def dbas_weights(
    scores: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    quantile: float = 0.95,
    noise: float = 0.1,
) -> jax.Array:
    """DbAS weights (Brookes et al. 2019), as in the authors' code.

    ``w_i ∝ P(y' >= y_q)`` with ``y' ~ N(y_i, noise^2)`` and ``y_q`` the ``quantile`` of the
    valid scores, i.e. ``Φ((y_i - y_q) / noise)``. The authors use noise 10 for shapes
    (areas are integers in the hundreds) and 0.1 otherwise.
    """
    _check_positive("noise", noise)
    scores, mask = _prepare(scores, mask)
    y_q = _masked_quantile(scores, mask, jnp.asarray(quantile, _F32))
    raw = jax.scipy.stats.norm.cdf((scores - y_q) / noise)
    return _normalise(raw, mask)


def cem_pi_weights(
    scores: ArrayLike, mask: ArrayLike | None = None, *, quantile: float = 0.95
) -> jax.Array:
    """CEM-PI weights: ``w_i ∝ 1[y_i >= y_q]`` with ``y_q`` the ``quantile`` of valid scores."""
    scores, mask = _prepare(scores, mask)
    y_q = _masked_quantile(scores, mask, jnp.asarray(quantile, _F32))
    return _normalise((scores >= y_q).astype(_F32), mask)


def rwr_weights(
    scores: ArrayLike, mask: ArrayLike | None = None, *, alpha: float = 1e-2
) -> jax.Array:
    """Reward-weighted regression: ``w_i ∝ exp(alpha (y_i - max y))`` over valid points.

    Subtracting the maximum keeps the exponent <= 0, so nothing overflows. The authors use
    alpha 1e-3 or 1e-2 for shapes and 0.1 or 1 otherwise.
    """
    _check_positive("alpha", alpha)
    scores, mask = _prepare(scores, mask)
    y_max = jnp.max(jnp.where(mask, scores, -jnp.inf))
    return _normalise(jnp.exp(alpha * (jnp.where(mask, scores, y_max) - y_max)), mask)


def make_weight_fn(scheme: str = "rank", **params) -> Callable[..., jax.Array]:
    """Return ``weight_fn(scores, mask) -> weights`` for a scheme name.

    ``scheme`` is one of ``"rank"`` (needs ``k``), ``"uniform"``, ``"dbas"``
    (``quantile``, ``noise``), ``"cem-pi"`` (``quantile``), ``"rwr"`` (``alpha``).
    """
    if scheme == "rank":
        if "k" not in params:
            raise ValueError("scheme 'rank' needs k, e.g. make_weight_fn('rank', k=1e-3)")
        k = params.pop("k")
        _check_positive("k", k)
        if params:
            raise ValueError(f"unexpected parameters for 'rank': {sorted(params)}")
        return lambda scores, mask=None: rank_weights(scores, k, mask)
    table = {
        "uniform": uniform_weights,
        "dbas": dbas_weights,
        "cem-pi": cem_pi_weights,
        "rwr": rwr_weights,
    }
    if scheme not in table:
        raise ValueError(f"unknown weighting scheme {scheme!r}; choose from {['rank', *table]}")
    fn = table[scheme]
    return lambda scores, mask=None: fn(scores, mask, **params)


def make_cycle_weight_fn(scheme: str = "rank", **params) -> WeightFn:
    """``weight_fn(scores, mask, k) -> weights`` for the retraining loop, checked once here.

    ``k`` is an argument (it may change per cycle and is traced under jit); the schemes other
    than ``"rank"`` ignore it. ``params`` are the scheme's other parameters, as in
    :func:`make_weight_fn`.
    """
    make_weight_fn(scheme, **({"k": 1.0} if scheme == "rank" else {}), **params)  # validate
    if scheme == "rank":
        return lambda scores, mask, k: rank_weights(scores, k, mask)
    fn = make_weight_fn(scheme, **params)
    return lambda scores, mask, k: fn(scores, mask)


# --------------------------------------------------------------------------------------------
# k: a number or a schedule over retrain cycles
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConstantK:
    """The paper's setting: the same ``k`` at every retrain cycle (a plain float does the same)."""

    k: float

    def __post_init__(self):
        _check_positive("k", self.k)

    def __call__(self, cycle: int) -> float:
        return float(self.k)

    def __str__(self) -> str:
        return format_k(self.k)


@dataclasses.dataclass(frozen=True)
class GeometricK:
    """``k`` annealed log-linearly from ``k_start`` to ``k_end`` over ``num_cycles`` cycles.

    The weighting schedule the paper's conclusion proposes: weight gently while the model
    still has to learn the data, then sharpen onto the best points. Held at ``k_end``
    after ``num_cycles``.
    """

    k_start: float
    k_end: float
    num_cycles: int

    def __post_init__(self):
        _check_positive("k_start", self.k_start)
        _check_positive("k_end", self.k_end)
        if self.num_cycles < 1:
            raise ValueError(f"num_cycles must be >= 1, got {self.num_cycles}")

    def __call__(self, cycle: int) -> float:
        t = min(max(cycle, 0), self.num_cycles) / self.num_cycles
        return float(math.exp((1 - t) * math.log(self.k_start) + t * math.log(self.k_end)))

    def __str__(self) -> str:
        return f"geom{format_k(self.k_start)}-{format_k(self.k_end)}-{self.num_cycles}"


def constant_k(k: float) -> ConstantK:
    """The same ``k`` at every cycle (:class:`ConstantK`)."""
    return ConstantK(k)


def geometric_k(k_start: float, k_end: float, num_cycles: int) -> GeometricK:
    """Anneal ``k`` log-linearly (:class:`GeometricK`)."""
    return GeometricK(k_start, k_end, num_cycles)


def format_k(k: float | KSchedule) -> str:
    """The one text form of ``k`` in names (run directories, checkpoints, tables).

    A float in one significant digit, a schedule by its ``str`` (or its function name).

    >>> format_k(1e-3), format_k(float("inf")), format_k(0.5), format_k(geometric_k(1.0, 1e-4, 4))
    ('1e-3', 'inf', '5e-1', 'geom1e0-1e-4-4')
    """
    if callable(k):
        text = str(k) if type(k).__str__ is not object.__str__ else getattr(k, "__name__", "")
        return text or "schedule"
    k = float(k)
    if math.isinf(k):
        return "inf"
    mantissa, exp = f"{k:.0e}".split("e")
    return f"{mantissa}e{int(exp)}"


def k_values(k: float | KSchedule, num_cycles: int) -> tuple[float, ...]:
    """``k`` at cycles ``0 .. num_cycles - 1``, each checked to be ``> 0`` (may be ``inf``).

    The one place a ``k`` is validated: :class:`wrjax.LSOConfig` calls it when it is built.

    >>> [round(k, 6) for k in k_values(geometric_k(1.0, 1e-2, 2), 3)]
    [1.0, 0.1, 0.01]
    """
    raw = [k(c) for c in range(num_cycles)] if callable(k) else [k] * num_cycles
    for c, v in enumerate(raw):  # checked before float(): "1e-3" and True are not a k
        _check_positive("k" if not callable(k) else f"k (schedule, cycle {c})", v)
    return tuple(float(np.asarray(v)) for v in raw)
