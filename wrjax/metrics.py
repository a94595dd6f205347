"""TopK curves (paper appendix C.3) and their aggregation over seeds.

For evaluations ``b = 1..B`` of one run, TopK(b) is the K-th best score among the first
``b`` evaluated points (Top1 is the best so far; Top10 the worst of the 10 best). Only
successful evaluations of unique novel points enter (the loop already discards invalid and
duplicate suggestions). Before K points exist the curve is NaN.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["topk_curve", "topk_curves", "CurveStats", "mean_and_stderr"]


@jax.jit
def _topk_curve(scores: jax.Array, k_buffer: jax.Array) -> jax.Array:
    k = k_buffer.shape[0]

    def body(best, s):
        # Keep the K best so far, sorted descending; -inf marks "not yet filled".
        best = jax.lax.top_k(jnp.concatenate([best, s[None]]), k)[0]
        return best, best[-1]

    _, kth = jax.lax.scan(body, jnp.full((k,), -jnp.inf, scores.dtype), scores)
    return jnp.where(jnp.isneginf(kth), jnp.nan, kth)


def topk_curve(scores, k: int) -> jax.Array:
    """TopK curve of one run.

    Args:
      scores: ``(B,)`` scores in evaluation order (finite; higher is better).
      k: K >= 1.

    Returns:
      ``(B,)`` float32: the K-th best of the first ``b`` scores, NaN while ``b < K``.

    Example:
      >>> import numpy as np, wrjax
      >>> np.asarray(wrjax.topk_curve([1.0, 3.0, 2.0, 5.0], 2)).tolist()
      [nan, 1.0, 2.0, 3.0]
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    scores = jnp.asarray(scores, jnp.float32)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D (B,), got shape {scores.shape}")
    if scores.shape[0] == 0:
        return jnp.zeros((0,), jnp.float32)
    return _topk_curve(scores, jnp.zeros((int(k),), jnp.float32))


def topk_curves(scores, ks: Sequence[int] = (1, 10, 50)) -> dict[str, np.ndarray]:
    """``{"top1": (B,), "top10": (B,), ...}`` as NumPy arrays (for summaries and plots)."""
    return {f"top{k}": np.asarray(topk_curve(scores, k)) for k in ks}


class CurveStats(NamedTuple):
    """Mean and standard error across seeds, each ``(B,)``; ``n`` seeds contributed."""

    mean: np.ndarray
    stderr: np.ndarray
    n: np.ndarray


def mean_and_stderr(curves: Sequence[np.ndarray]) -> CurveStats:
    """Mean ± standard error (``std(ddof=1) / sqrt(n)``) over seeds, per evaluation.

    Curves may differ in length (a run that stopped early); shorter ones are padded with
    NaN and each position uses the seeds that reached it. With one seed the error is 0.
    """
    if len(curves) == 0:
        raise ValueError("no curves to aggregate")
    length = max(len(c) for c in curves)
    arr = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        arr[i, : len(c)] = c
    n = np.sum(~np.isnan(arr), axis=0)
    filled = np.where(np.isnan(arr), 0.0, arr)
    mean = np.where(n > 0, filled.sum(0) / np.maximum(n, 1), np.nan)
    sq = np.where(np.isnan(arr), 0.0, (arr - mean) ** 2).sum(0)
    sd = np.sqrt(sq / np.maximum(n - 1, 1))
    se = np.where(n > 1, sd / np.sqrt(np.maximum(n, 1)), 0.0)
    return CurveStats(mean, se, n)
