"""A fixed-capacity dataset that grows by appending, with a validity mask.

The retraining loop adds one queried point at a time. Keeping the arrays at a fixed
capacity (initial data + budget) means every jitted function over the buffer (weights,
fine-tuning, encoding, the GP subset) compiles once per run, not once per query.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wrjax.typing import PyTree

__all__ = ["DataBuffer", "buffer_from_data", "append", "valid_rows"]


class DataBuffer(NamedTuple):
    """Fixed-capacity data: rows ``[0, count)`` are valid, the rest is padding."""

    x: PyTree  # leaves (C, ...): model inputs
    y: jax.Array  # (C,) float32 scores (higher is better); 0 on padding
    mask: jax.Array  # (C,) bool, True on valid rows
    count: jax.Array  # () int32, number of valid rows


def buffer_from_data(x: PyTree, y, capacity: int) -> DataBuffer:
    """A buffer of ``capacity`` rows holding ``x``/``y`` first (padding is zeros).

    Raises ``ValueError`` for an empty dataset, non-finite scores, mismatched lengths or a
    capacity smaller than the data.
    """
    y = np.asarray(y, np.float32)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (N,), got shape {y.shape}")
    n = y.shape[0]
    if n == 0:
        raise ValueError("the initial dataset is empty")
    if not np.isfinite(y).all():
        raise ValueError(f"initial scores must be finite; {int((~np.isfinite(y)).sum())} are not")
    leaves = jax.tree.leaves(x)
    if any(np.shape(a)[0] != n for a in leaves):
        raise ValueError(f"x leaves have leading sizes {[np.shape(a)[0] for a in leaves]}, y has {n}")
    if capacity < n:
        raise ValueError(f"capacity {capacity} is smaller than the data ({n})")

    def pad(a):
        a = np.asarray(a)
        out = np.zeros((capacity, *a.shape[1:]), a.dtype)
        out[:n] = a
        return jnp.asarray(out)

    mask = np.zeros(capacity, bool)
    mask[:n] = True
    return DataBuffer(
        jax.tree.map(pad, x), pad(y), jnp.asarray(mask), jnp.asarray(n, jnp.int32)
    )


@jax.jit
def append(buffer: DataBuffer, x_row: PyTree, y: jax.Array) -> DataBuffer:
    """Write one row at ``count`` and mark it valid (a full buffer is left unchanged)."""
    capacity = buffer.y.shape[0]
    i = buffer.count
    ok = i < capacity
    j = jnp.minimum(i, capacity - 1)
    x = jax.tree.map(
        lambda a, r: a.at[j].set(jnp.where(ok, jnp.asarray(r, a.dtype), a[j])), buffer.x, x_row
    )
    y_new = buffer.y.at[j].set(jnp.where(ok, jnp.asarray(y, jnp.float32), buffer.y[j]))
    mask = buffer.mask.at[j].set(buffer.mask[j] | ok)
    return DataBuffer(x, y_new, mask, i + ok.astype(jnp.int32))


def valid_rows(buffer: DataBuffer) -> tuple[PyTree, np.ndarray]:
    """The valid ``(x, y)`` as host NumPy arrays (for saving and inspection)."""
    n = int(buffer.count)
    return jax.tree.map(lambda a: np.asarray(a[:n]), buffer.x), np.asarray(buffer.y[:n])
