"""Variance reduction for weighted minibatch training (paper §4.1, appendix A.2).

Two ways to turn dataset weights into minibatches, both with static shapes:

* :func:`duplicate_copies` (appendix A.2): a point whose weight, scaled to mean 1, exceeds
  ``w_max`` is replaced by ``ceil(w / w_max)`` copies sharing its weight. Minibatches are then
  drawn as an epoch over the copies and the weights enter the loss.
* :func:`weighted_batches` with ``mode="sample"``: indices drawn with replacement with
  ``p ∝ w``; the weights act through the sampling and the loss is unweighted (the authors'
  shapes and chemistry code trains this way).

Every batch plan is a :class:`Batches` of ``indices (S, B)`` into the training data and the
per-example ``loss_weights (S, B)`` that multiply ``-ELBO`` in the loss, chosen so that
``E[mean(loss_weights * L)] = Σ_i w_i L_i``: uniform weights reproduce the unweighted loss.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wrjax.precision import is_tracer
from wrjax.typing import ArrayLike

__all__ = ["duplicate_copies", "duplicate_capacity", "Batches", "weighted_batches"]

_F32 = jnp.float32


def duplicate_capacity(n: int, w_max: float) -> int:
    """Static upper bound on the number of copies :func:`duplicate_copies` can make.

    With weights of mean 1 over ``n_valid <= n`` points, a point of weight ``w > w_max``
    makes ``ceil(w / w_max) < w / w_max + 1`` copies, so the total is below
    ``n + Σ w / w_max = n + n_valid / w_max``.
    """
    return n + int(math.floor(n / w_max)) + 1


def duplicate_copies(
    weights: ArrayLike, w_max: float = 5.0, *, mask: ArrayLike | None = None
) -> tuple[jax.Array, jax.Array]:
    """Appendix A.2: split heavy points into copies so that no copy weighs more than ``w_max``.

    The weights of the valid slots are first scaled to mean 1 (the paper applies ``w_max``
    after normalisation; mean 1 makes ``w_max = 5`` mean "five times the uniform weight").
    A point with ``w > w_max`` becomes ``n = ceil(w / w_max)`` copies of weight ``w / n``;
    the others are kept once. The total weight is preserved exactly.

    The output has the static length :func:`duplicate_capacity` ``(N, w_max)``, so the
    function is jittable and a growing dataset never recompiles it. Padding slots have index
    0 and weight exactly 0 (select them with ``copy_weights > 0``).

    Args:
      weights: ``(N,)`` non-negative weights (any scale; e.g. from ``rank_weights``).
      w_max: largest weight of a copy, relative to the mean weight 1. Must be ``>= 1``.
      mask: optional ``(N,)`` bool of valid slots; masked slots make no copy.

    Returns:
      ``(indices, copy_weights)``: ``(C,)`` int32 indices into ``weights`` and ``(C,)``
      float32 copy weights with mean 1 over the valid points, i.e. they sum to ``N_valid``.

    Example:
      >>> import wrjax
      >>> idx, cw = wrjax.duplicate_copies([0.05, 0.05, 0.9], w_max=1.5)
      >>> [int(i) for i, c in zip(idx, cw) if c > 0]
      [0, 1, 2, 2]
    """
    if not is_tracer(weights):
        w = np.asarray(weights)
        if w.ndim != 1:
            raise ValueError(f"weights must be 1-D (N,), got shape {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and non-negative")
    if not w_max >= 1.0:
        raise ValueError(f"w_max must be >= 1 (weights are scaled to mean 1), got {w_max}")
    weights = jnp.asarray(weights, _F32)
    n = weights.shape[0]
    mask = jnp.ones(n, bool) if mask is None else jnp.asarray(mask, bool)
    capacity = duplicate_capacity(n, w_max)
    return _duplicate_copies(weights, mask, jnp.asarray(w_max, _F32), capacity)


def _duplicate_copies(weights, mask, w_max, capacity):
    weights = jnp.where(mask, weights, 0.0)
    n_valid = jnp.sum(mask)
    scaled = weights * n_valid / jnp.sum(weights)
    n_copies = jnp.where(mask, jnp.maximum(jnp.ceil(scaled / w_max), 1.0), 0.0).astype(jnp.int32)
    # Copies are laid out point after point: copy slot c belongs to the point whose
    # cumulative copy count first exceeds c. searchsorted finds it in O(C log N).
    ends = jnp.cumsum(n_copies)
    slots = jnp.arange(capacity)
    indices = jnp.searchsorted(ends, slots, side="right").astype(jnp.int32)
    valid = slots < ends[-1]
    indices = jnp.where(valid, indices, 0)
    per_copy = scaled / jnp.maximum(n_copies, 1).astype(_F32)
    copy_weights = jnp.where(valid, per_copy[indices], 0.0)
    return indices, copy_weights


class Batches(NamedTuple):
    """A plan of ``S`` minibatches of size ``B`` over a dataset."""

    indices: jax.Array  # (S, B) int32 rows of the training data
    loss_weights: jax.Array  # (S, B) float32 multipliers of the per-example loss


def weighted_batches(
    key: jax.Array,
    weights: jax.Array,
    *,
    num_steps: int,
    batch_size: int,
    mode: Literal["sample", "epoch"] = "epoch",
    mask: jax.Array | None = None,
) -> Batches:
    """Plan ``num_steps`` minibatches of ``batch_size`` from weighted data (static shapes).

    Args:
      key: PRNG key.
      weights: ``(N,)`` non-negative weights (any scale); 0 on padding.
      num_steps, batch_size: static; the plan is ``(num_steps, batch_size)``.
      mode: ``"sample"`` draws indices with replacement with ``p ∝ w`` and gives every
        example loss weight 1; ``"epoch"`` shuffles the valid slots, walks through them
        (wrapping around, so a fraction of an epoch or several epochs both work) and gives
        example ``i`` loss weight ``N_valid * w_i / Σ w``.
      mask: optional ``(N,)`` bool of valid slots (default: ``weights > 0``).

    Returns:
      :class:`Batches` with ``E[mean(loss_weights * L[indices])] = Σ_i p_i L_i``,
      ``p = w / Σ w``, in both modes.
    """
    weights = jnp.asarray(weights, _F32)
    mask = weights > 0 if mask is None else jnp.asarray(mask, bool) & (weights > 0)
    shape = (num_steps, batch_size)
    if mode == "sample":
        logits = jnp.where(mask, jnp.log(jnp.where(mask, weights, 1.0)), -jnp.inf)
        indices = jax.random.categorical(key, logits, shape=shape).astype(jnp.int32)
        return Batches(indices, jnp.ones(shape, _F32))
    if mode != "epoch":
        raise ValueError(f"mode must be 'sample' or 'epoch', got {mode!r}")
    n = weights.shape[0]
    n_valid = jnp.sum(mask)
    # Random order of the valid slots first, padding last: sort random keys with padding
    # pushed to +inf. Walking position t reads slot order[t mod N_valid].
    order = jnp.argsort(jnp.where(mask, jax.random.uniform(key, (n,)), jnp.inf))
    positions = jnp.arange(num_steps * batch_size) % jnp.maximum(n_valid, 1)
    indices = order[positions].reshape(shape).astype(jnp.int32)
    p = weights / jnp.sum(jnp.where(mask, weights, 0.0))
    loss_weights = n_valid.astype(_F32) * p[indices]
    return Batches(indices, loss_weights)
