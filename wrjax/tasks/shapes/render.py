"""A procedural renderer of the dSprites squares (the ``dsprites`` preset's data set).

:func:`render_squares` renders filled, rotated squares from dSprites latent *values* with
exact pixel coverage; :func:`render_dsprites_squares` renders the dataset's 245,760 squares in
its order. Images are ``(N, 64, 64)`` uint8 in {0, 1}; rows index y (downwards), columns x.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "IMAGE_SIZE",
    "DSPRITES_SCALES",
    "DSPRITES_ORIENTATIONS",
    "DSPRITES_POSITIONS",
    "DSPRITES_THRESHOLD",
    "dsprites_latents",
    "render_squares",
    "render_dsprites_squares",
]

_F32 = jnp.float32
#: Images are IMAGE_SIZE x IMAGE_SIZE pixels.
IMAGE_SIZE = 64

#: dSprites latent values (the dataset's ``latents_possible_values`` for the square).
DSPRITES_SCALES = np.linspace(0.5, 1.0, 6)
DSPRITES_ORIENTATIONS = np.linspace(0.0, 2.0 * np.pi, 40)
DSPRITES_POSITIONS = np.linspace(0.0, 1.0, 32)
#: A pixel is on when the square covers at least this fraction of it. Fitted to the official
#: GIF: 0.91 reproduces 38 of its 40 rotation frames and all 6 scale frames pixel for pixel
#: (8 pixels differ in all, all at coverage 0.907-0.909; see tests/test_shapes.py).
DSPRITES_THRESHOLD = 0.91
_PATCH = 32  # a rotated scale-1 square spans at most 20*sqrt(2) + 2 < 32 pixels


def dsprites_latents() -> np.ndarray:
    """Latent indices of the 245,760 squares in dSprites order, ``(245760, 4)`` int32.

    Columns: (scale, orientation, posX, posY) indices into :data:`DSPRITES_SCALES`,
    :data:`DSPRITES_ORIENTATIONS`, :data:`DSPRITES_POSITIONS` (x twice). posY varies
    fastest, then posX, orientation, scale (the dataset's C order over
    ``(6, 40, 32, 32)``).
    """
    grids = np.meshgrid(np.arange(6), np.arange(40), np.arange(32), np.arange(32), indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int32)


def _trapezoid_cdf(t: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """``P(a U + b V <= t)`` for ``U, V ~ Uniform(0, 1)`` independent and ``a >= b >= 0``.

    The density of ``a U + b V`` is a trapezoid on ``[0, a + b]``; its CDF is quadratic on
    ``[0, b]`` and ``[a, a + b]`` and linear in between. Written piecewise (not as the usual
    difference of four squares over ``2ab``) so that ``b -> 0`` (axis-aligned edges) is exact.
    """
    b_safe = jnp.maximum(b, 1e-20)
    rising = t * t / (2.0 * a * b_safe)
    linear = (t - 0.5 * b) / a
    top = 1.0 - jnp.square(a + b - t) / (2.0 * a * b_safe)
    return jnp.where(
        t <= 0.0,
        0.0,
        jnp.where(t <= b, rising, jnp.where(t <= a, linear, jnp.where(t < a + b, top, 1.0))),
    )


def _strip_fraction(u0, cu, cv, half):
    """Fraction of a unit pixel where ``|u0 + cu X + cv Y| <= half`` for ``(X, Y)`` uniform on
    the pixel ``[0, 1]^2`` (exact)."""
    shift = jnp.minimum(cu, 0.0) + jnp.minimum(cv, 0.0)
    a = jnp.maximum(jnp.abs(cu), jnp.abs(cv))
    b = jnp.minimum(jnp.abs(cu), jnp.abs(cv))
    return _trapezoid_cdf(half - u0 - shift, a, b) - _trapezoid_cdf(-half - u0 - shift, a, b)


@functools.partial(jax.jit, static_argnames=("threshold",))
def _render_patches(half, cos, sin, frac_y, frac_x, *, threshold):
    """``(N,)`` square parameters -> ``(N, 32, 32)`` bool patches.

    Patch pixel ``(p, q)`` covers ``[p - 16 - frac_y, p - 15 - frac_y] x [q - 16 - frac_x,
    q - 15 - frac_x]`` relative to the square's centre. The square's own axes are
    ``u = cos dx - sin dy`` and ``v = sin dx + cos dy`` (``dx`` right, ``dy`` down): it is
    rotated counter-clockwise as displayed. Coverage is the product of the exact fractions of
    the pixel inside the two strips ``|u| <= h`` and ``|v| <= h``: exact wherever at most one
    edge crosses the pixel, and a close approximation at the 4 corner pixels (exact again
    when the square is axis-aligned).
    """
    grid = jnp.arange(_PATCH, dtype=_F32) - _PATCH // 2
    y0 = (grid[None, :] - frac_y[:, None])[:, :, None]  # (N, 32, 1) pixel top
    x0 = (grid[None, :] - frac_x[:, None])[:, None, :]  # (N, 1, 32) pixel left
    c = cos[:, None, None]
    s = sin[:, None, None]
    h = half[:, None, None]
    cover_u = _strip_fraction(c * x0 - s * y0, c, -s, h)
    cover_v = _strip_fraction(s * x0 + c * y0, s, c, h)
    return cover_u * cover_v >= threshold


def render_squares(
    scale: Any,
    orientation: Any,
    pos_x: Any,
    pos_y: Any,
    *,
    threshold: float = DSPRITES_THRESHOLD,
    chunk_size: int = 16384,
) -> np.ndarray:
    """Render dSprites-style filled squares from latent *values*.

    Side ``20 * scale`` px, centre ``(16 + 32 pos_x, 16 + 32 pos_y)`` px (x = column, y =
    row, pixel ``i`` spanning ``[i, i + 1)``), rotated counter-clockwise by ``orientation``
    radians; a pixel is on when the square covers at least ``threshold`` of it (exact
    coverage; see :func:`_render_patches`).

    Args:
      scale, orientation, pos_x, pos_y: ``(N,)`` latent values (broadcast together), with
        ``scale`` in ``[0.5, 1]`` and positions in ``[0, 1]`` so the square stays inside.
      threshold: coverage needed to turn a pixel on.
      chunk_size: squares rendered per compiled call (memory ~ 100 bytes x 1024 x chunk).

    Returns:
      ``(N, 64, 64)`` uint8 images in {0, 1}.
    """
    scale, orientation, pos_x, pos_y = np.broadcast_arrays(
        *(np.asarray(v, np.float64).reshape(-1) for v in (scale, orientation, pos_x, pos_y))
    )
    n = scale.shape[0]
    if n == 0:
        raise ValueError("render_squares: no squares to render")
    if np.any(scale < 0.5 - 1e-9) or np.any(scale > 1.0 + 1e-9):
        raise ValueError("scale must lie in [0.5, 1]")
    if np.any(pos_x < -1e-9) | np.any(pos_x > 1 + 1e-9) | np.any(pos_y < -1e-9) | np.any(pos_y > 1 + 1e-9):
        raise ValueError("positions must lie in [0, 1]")
    # Integer and fractional parts of the centres in float64 (exact), the rest in float32.
    cy, cx = 16.0 + 32.0 * pos_y, 16.0 + 32.0 * pos_x
    iy, ix = np.floor(cy).astype(np.int64), np.floor(cx).astype(np.int64)
    params = np.stack(
        [10.0 * scale, np.cos(orientation), np.sin(orientation), cy - iy, cx - ix], axis=1
    ).astype(np.float32)
    patches = np.empty((n, _PATCH, _PATCH), np.uint8)
    chunk = min(chunk_size, n)
    for start in range(0, n, chunk):
        block = params[start : start + chunk]
        m = block.shape[0]
        if m < chunk:  # pad to the compiled chunk size
            block = np.concatenate([block, np.repeat(block[-1:], chunk - m, axis=0)])
        out = _render_patches(*(jnp.asarray(block[:, j]) for j in range(5)), threshold=threshold)
        patches[start : start + m] = np.asarray(out[:m])
    # Paste each patch with its top-left corner at (iy - 16, ix - 16): group by offset.
    images = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    top, left = iy - _PATCH // 2, ix - _PATCH // 2
    if top.min() < 0 or left.min() < 0 or top.max() + _PATCH > 64 or left.max() + _PATCH > 64:
        raise ValueError("square centre too close to the border")
    offsets = top * 64 + left
    order = np.argsort(offsets, kind="stable")
    uniq, starts = np.unique(offsets[order], return_index=True)
    ends = np.append(starts[1:], n)
    for off, a, b in zip(uniq, starts, ends):
        idx = order[a:b]
        row, col = divmod(int(off), 64)
        images[idx, row : row + _PATCH, col : col + _PATCH] = patches[idx]
    return images


def render_dsprites_squares(
    indices: Any = None, *, threshold: float = DSPRITES_THRESHOLD
) -> np.ndarray:
    """The 245,760 dSprites squares, ``(245760, 64, 64)`` uint8, in dSprites order.

    Index ``((scale * 40 + orientation) * 32 + posX) * 32 + posY`` (posY fastest), as in
    ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` restricted to the square. A procedural
    re-rendering checked against the official GIF (see :data:`DSPRITES_THRESHOLD`), not a
    byte copy of the original file, which is not available here. The whole set takes a few
    seconds and 1 GB of memory.

    Args:
      indices: optional ``(M,)`` dataset indices: render only those images, ``(M, 64, 64)``.
      threshold: coverage needed to turn a pixel on.
    """
    lat = dsprites_latents()
    if indices is not None:
        lat = lat[np.asarray(indices).reshape(-1)]
    return render_squares(
        DSPRITES_SCALES[lat[:, 0]],
        DSPRITES_ORIENTATIONS[lat[:, 1]],
        DSPRITES_POSITIONS[lat[:, 2]],
        DSPRITES_POSITIONS[lat[:, 3]],
        threshold=threshold,
    )

