"""The 2D shape area task (paper §6.1, appendix C.4): data, models, objective, grid optimiser.

Two presets (see ``DESIGN.md``, "Where the paper and the authors' released code differ"):

* ``"squares2d"`` (the authors' released setup, the fast default): 64x64 binary images of one
  filled axis-aligned square of side ``s = 1..20`` with its top-left corner at column 32 and
  every row ``r = 0..64-s`` (1,090 distinct images) repeated 10 times; latent dimension 2;
  grid optimiser over a 50x50 grid on ``[-3, 3]^2``.
* ``"dsprites"`` (the paper's text): the 245,760 dSprites squares, 6 scales x 40 orientations x
  32 x 32 positions, rendered procedurally by :func:`render_dsprites_squares`; latent
  dimension 5; grid over ``[-5, 5]^5`` with step 0.5 restricted to ``||z|| <= 5``.

The objective is the area: the number of pixels on after rounding the decoded Bernoulli means
(:func:`area`). It is pure JAX, so a whole optimisation run can be one compiled program.

The grid optimiser (:func:`grid_search`) decodes every grid point in chunks, rounds, hashes
the images (:func:`image_keys`, 64 bits) to remove duplicates and already-queried images (a
fixed-capacity :class:`SeenSet`), and returns the ``r`` unseen images of largest area. It is
pure and static-shape: jit it with ``model``, ``r`` and ``chunk_size`` static.

Images are ``(N, 64, 64)`` uint8 in {0, 1}; rows index y (downwards), columns x.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax.tasks.shapes_models import UPSAMPLE_MODES, DSpritesVAE, SquaresVAE
from wrjax.typing import PyTree
from wrjax.vae import (
    beta_schedule,
    elbo_terms,
    fit,
    init_train_state,
    make_train_step,
)
from wrjax.weighting import rank_weights

__all__ = [
    "PRESETS",
    "ShapesPreset",
    "DSPRITES_SCALES",
    "DSPRITES_ORIENTATIONS",
    "DSPRITES_POSITIONS",
    "DSPRITES_THRESHOLD",
    "dsprites_latents",
    "render_squares",
    "render_dsprites_squares",
    "make_squares2d",
    "squares2d_sides",
    "ShapesData",
    "load_shapes",
    "binarize",
    "area",
    "image_keys",
    "SeenSet",
    "seen_init",
    "seen_add",
    "seen_from_images",
    "grid_points",
    "GridResult",
    "grid_scores",
    "select_top_unseen",
    "grid_search",
    "make_model",
    "param_shapes",
    "init_params",
    "evaluate_elbo",
    "prior_sample_areas",
    "PretrainInfo",
    "pretrain",
    "load_pretrained",
]

_F32 = jnp.float32
IMAGE_SIZE = 64


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


class ShapesPreset(NamedTuple):
    """Static settings of one preset: the grid, pretraining defaults of :func:`pretrain`, and
    the authors' fine-tuning settings for the retraining loop."""

    name: str
    latent_dim: int
    grid_bounds: float  # grid on [-b, b]^D
    grid_step_or_len: float  # squares2d: points per axis (linspace); dsprites: step
    grid_radius: float | None  # keep ||z|| <= radius (None: the whole box)
    num_epochs: int
    batch_size: int
    learning_rate: float
    beta_start: float
    beta_final: float  # also the fixed beta of every fine-tune
    beta_warmup: int
    heldout_frac: float
    retrain_epochs: float  # fine-tune length per retrain, in epochs of the current data
    first_retrain_epochs: float  # the first (weighted) fine-tune
    retrain_batch_size: int


PRESETS: dict[str, ShapesPreset] = {
    # The authors' train-paper.sh: 20 epochs, batch 16, Adam 1e-3, beta 1e-6 -> 10 (x1.1 every
    # 10 steps after 1,000 warm-up steps); 5% held out; shapes-paper.sh / opt_shapes.py: 50x50
    # grid on [-3, 3]^2, fine-tune 0.1 epoch (the first 1 epoch) at batch 32, beta 10.
    "squares2d": ShapesPreset(
        "squares2d", 2, 3.0, 50, None, 20, 16, 1e-3, 1e-6, 10.0, 1000, 0.05, 0.1, 1.0, 32
    ),
    # The paper (§6.1, C.4) states the model, the latent size and the grid, not the training:
    # a standard VAE (beta 1, reached with the same warm-up shape), batch 32, Adam 1e-3,
    # 20 epochs; fine-tuning as for squares2d.
    "dsprites": ShapesPreset(
        "dsprites", 5, 5.0, 0.5, 5.0, 20, 32, 1e-3, 1e-6, 1.0, 1000, 0.05, 0.1, 1.0, 32
    ),
}


def _preset(preset: str) -> ShapesPreset:
    if preset not in PRESETS:
        raise ValueError(f"unknown shapes preset {preset!r}; choose from {sorted(PRESETS)}")
    return PRESETS[preset]


# ---------------------------------------------------------------------------------------------
# dSprites squares renderer
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# squares2d (the authors' data set)
# ---------------------------------------------------------------------------------------------

SQUARES2D_COLUMN = 32
SQUARES2D_SIDES = (1, 20)
SQUARES2D_REPLICATES = 10
SQUARES2D_SHUFFLE_SEED = 0


def squares2d_sides() -> tuple[np.ndarray, np.ndarray]:
    """The 1,090 distinct (side, top row) pairs in canonical order (side, then row), each
    ``(1090,)`` int: side ``s = 1..20`` and every row ``0..64-s``."""
    pairs = [(s, r) for s in range(SQUARES2D_SIDES[0], SQUARES2D_SIDES[1] + 1) for r in range(64 - s + 1)]
    arr = np.asarray(pairs, np.int32)
    return arr[:, 0], arr[:, 1]


def make_squares2d() -> np.ndarray:
    """The authors' squares data set: ``(10900, 64, 64)`` uint8 in a fixed order.

    1,090 distinct images (a filled square of side ``s`` with its top-left corner at
    ``(row r, column 32)``), each repeated 10 times, then shuffled with
    ``numpy.random.default_rng(0)`` (the authors shuffled with seed 0 too, with their own
    code, so the order, and hence the held-out split, is not theirs exactly).
    """
    sides, rows = squares2d_sides()
    sides = np.tile(sides, SQUARES2D_REPLICATES)
    rows = np.tile(rows, SQUARES2D_REPLICATES)
    perm = np.random.default_rng(SQUARES2D_SHUFFLE_SEED).permutation(sides.shape[0])
    sides, rows = sides[perm], rows[perm]
    r = np.arange(64)
    row_on = (r[None, :] >= rows[:, None]) & (r[None, :] < (rows + sides)[:, None])
    col_on = (r[None, :] >= SQUARES2D_COLUMN) & (r[None, :] < SQUARES2D_COLUMN + sides[:, None])
    return (row_on[:, :, None] & col_on[:, None, :]).astype(np.uint8)


class ShapesData(NamedTuple):
    """A preset's data set and its fixed train/held-out split."""

    images: np.ndarray  # (N, 64, 64) uint8
    areas: np.ndarray  # (N,) float32, pixels on
    train_idx: np.ndarray  # (N_train,) int64
    heldout_idx: np.ndarray  # (N_heldout,) int64


def load_shapes(preset: str) -> ShapesData:
    """Images, areas and the train/held-out split of a preset.

    ``squares2d``: :func:`make_squares2d`; as in the authors' ``WeightedNumpyDataset`` the
    *first* ``int(0.05 N) = 545`` images of the (shuffled) set are held out. ``dsprites``:
    :func:`render_dsprites_squares`; a fixed random 5% (``default_rng(0)``) is held out for
    the ELBO (the paper trains on all squares and states no split).
    """
    cfg = _preset(preset)
    images = make_squares2d() if preset == "squares2d" else render_dsprites_squares()
    n = images.shape[0]
    n_held = int(n * cfg.heldout_frac)
    order = np.arange(n) if preset == "squares2d" else np.random.default_rng(0).permutation(n)
    areas = images.reshape(n, -1).sum(axis=1, dtype=np.int64).astype(np.float32)
    return ShapesData(images, areas, np.sort(order[n_held:]), np.sort(order[:n_held]))


# ---------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------


def binarize(values: jax.Array, *, logits: bool = True) -> jax.Array:
    """Round decoded Bernoulli means to a binary image.

    Args:
      values: ``(B, 64, 64)`` decoder logits (``logits=True``) or probabilities / images.
      logits: whether ``values`` are logits (then the mean is ``sigmoid(values)``).

    Returns:
      ``(B, 64, 64)`` bool, ``round(mean)`` with 0.5 rounding to 0 (``numpy.around``).
    """
    values = jnp.asarray(values)
    mean = jax.nn.sigmoid(values.astype(_F32)) if logits else values.astype(_F32)
    return mean > 0.5


def area(values: jax.Array, *, logits: bool = True) -> jax.Array:
    """The objective: pixels on after rounding the decoded Bernoulli means.

    Args:
      values: ``(B, H, W)`` logits (default), or probabilities/binary images with
        ``logits=False``.

    Returns:
      ``(B,)`` float32 areas (pixel counts; maximum 4096). Pure JAX, jittable.
    """
    on = binarize(values, logits=logits)
    return jnp.sum(on.reshape(on.shape[0], -1), axis=1, dtype=jnp.int32).astype(_F32)


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with good avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _hash_salts(num_words: int) -> np.ndarray:
    """Fixed per-word salts ``(2, num_words)`` uint32 (a function of the index only)."""
    i = np.arange(2 * num_words, dtype=np.uint64).reshape(2, num_words)
    x = (i * np.uint64(0x9E3779B9) + np.uint64(0x7F4A7C15)) & np.uint64(0xFFFFFFFF)
    x = x.astype(np.uint32)
    # numpy version of _fmix32 (wrapping uint32 arithmetic)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x85EBCA6B)
        x ^= x >> np.uint32(13)
        x *= np.uint32(0xC2B2AE35)
        x ^= x >> np.uint32(16)
    return x


def image_keys(images: jax.Array) -> jax.Array:
    """64-bit hash keys of binary images, ``(B, H, W) -> (B, 2)`` uint32.

    The image is packed into 32-bit words (``H*W/32``); each key half is
    ``sum_i fmix32(word_i ^ salt_i) mod 2^32`` with its own salts. Equal images have equal
    keys; two different images collide with probability about ``2^-64`` (an image differing in
    a single word never collides, ``fmix32`` being a bijection), so among the ~10^6 images of
    a run a collision has probability below 1e-7.

    Args:
      images: ``(B, H, W)`` bool/int values, nonzero meaning on; ``H*W`` divisible by 32.
    """
    b = images.shape[0]
    bits = (images.reshape(b, -1, 32) != 0).astype(jnp.uint32)
    words = jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32).reshape(1, 1, 32), axis=-1, dtype=jnp.uint32)
    salts = jnp.asarray(_hash_salts(words.shape[1]))
    mixed = _fmix32(words[:, None, :] ^ salts[None, :, :])  # (B, 2, W)
    return jnp.sum(mixed, axis=-1, dtype=jnp.uint32)


# ---------------------------------------------------------------------------------------------
# The set of already-queried images
# ---------------------------------------------------------------------------------------------


class SeenSet(NamedTuple):
    """Fixed-capacity set of image keys that the grid optimiser must not return again."""

    keys: jax.Array  # (C, 2) uint32, from image_keys
    mask: jax.Array  # (C,) bool, True on filled slots
    count: jax.Array  # () int32, keys added so far (> C means some were dropped)


def seen_init(capacity: int) -> SeenSet:
    """An empty :class:`SeenSet` of static ``capacity`` (>= the number of keys ever added)."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    return SeenSet(
        jnp.zeros((capacity, 2), jnp.uint32), jnp.zeros((capacity,), bool), jnp.zeros((), jnp.int32)
    )


def seen_add(seen: SeenSet, keys: jax.Array, valid: jax.Array | None = None) -> SeenSet:
    """Append ``keys (R, 2)`` (those with ``valid (R,)`` True) after the filled slots.

    Pure and jittable (R static). Keys beyond the capacity are dropped and ``count`` still
    counts them, so ``count > capacity`` flags an overflow. Duplicates are allowed.
    """
    keys = jnp.asarray(keys, jnp.uint32)
    r = keys.shape[0]
    valid = jnp.ones((r,), bool) if valid is None else jnp.asarray(valid, bool)
    order = jnp.argsort(~valid, stable=True)  # valid ones first, in order
    n_new = jnp.sum(valid).astype(jnp.int32)
    pos = seen.count + jnp.arange(r, dtype=jnp.int32)
    pos = jnp.where(jnp.arange(r) < n_new, pos, seen.keys.shape[0])  # invalid -> dropped
    new_keys = seen.keys.at[pos].set(keys[order], mode="drop")
    new_mask = seen.mask.at[pos].set(True, mode="drop")
    return SeenSet(new_keys, new_mask, seen.count + n_new)


def seen_from_images(images: Any, capacity: int, *, chunk_size: int = 8192) -> SeenSet:
    """A :class:`SeenSet` holding the keys of ``images (N, 64, 64)`` (e.g. the training data),
    with room for ``capacity - N`` more. Eager (not for use under jit)."""
    images = np.asarray(images)
    n = images.shape[0]
    if capacity < n:
        raise ValueError(f"capacity {capacity} < number of images {n}")
    keys_fn = jax.jit(image_keys)
    keys = np.concatenate(
        [np.asarray(keys_fn(jnp.asarray(images[i : i + chunk_size]))) for i in range(0, n, chunk_size)]
    ) if n else np.zeros((0, 2), np.uint32)
    return seen_add(seen_init(capacity), jnp.asarray(keys))


# ---------------------------------------------------------------------------------------------
# Grid optimiser
# ---------------------------------------------------------------------------------------------


def grid_points(preset: str) -> np.ndarray:
    """The latent grid of a preset, ``(G, D)`` float32, in ``itertools.product`` order.

    ``squares2d``: ``linspace(-3, 3, 50)`` per axis (G = 2,500; the authors'
    ``opt_shapes.py`` with ``opt_bounds=3``). ``dsprites``: ``-5, -4.5, ..., 5`` per axis
    (21 values) with ``||z|| <= 5`` (G = 532,509 of the 21^5 = 4,084,101 box points).
    """
    cfg = _preset(preset)
    if preset == "squares2d":
        axis = np.linspace(-cfg.grid_bounds, cfg.grid_bounds, int(cfg.grid_step_or_len))
    else:
        n = int(round(2 * cfg.grid_bounds / cfg.grid_step_or_len)) + 1
        axis = np.linspace(-cfg.grid_bounds, cfg.grid_bounds, n)
    # meshgrid with "ij" indexing flattened in C order is itertools.product order.
    mesh = np.meshgrid(*([axis] * cfg.latent_dim), indexing="ij")
    pts = np.stack([m.reshape(-1) for m in mesh], axis=1)
    if cfg.grid_radius is not None:
        pts = pts[np.sum(pts * pts, axis=1) <= cfg.grid_radius**2 + 1e-9]
    return pts.astype(np.float32)


class GridResult(NamedTuple):
    """The ``r`` best unseen grid images (best first)."""

    indices: jax.Array  # (r,) int32 rows of the grid
    z: jax.Array  # (r, D) float32 latent points
    images: jax.Array  # (r, 64, 64) uint8 decoded, rounded images
    areas: jax.Array  # (r,) float32 area of `images` (the objective)
    keys: jax.Array  # (r, 2) uint32 image_keys(images)
    valid: jax.Array  # (r,) bool; False where fewer than r unseen distinct images exist


def grid_scores(
    params: PyTree, model: Any, grid: jax.Array, *, chunk_size: int = 512
) -> tuple[jax.Array, jax.Array]:
    """Decode every grid point in chunks and score it (no image is kept).

    Args:
      params: the model's ``params``.
      model: a module with ``decode(z) -> (B, 64, 64)`` logits (static under jit).
      grid: ``(G, D)`` latent points.
      chunk_size: points decoded at once (memory ~ chunk x decoder activations).

    Returns:
      ``(areas (G,) float32, keys (G, 2) uint32)``.
    """
    g = grid.shape[0]
    n_chunks = -(-g // chunk_size)
    padded = jnp.pad(jnp.asarray(grid, _F32), ((0, n_chunks * chunk_size - g), (0, 0)))

    def one(zc):
        on = binarize(model.apply({"params": params}, zc, method=model.decode))
        return area(on, logits=False), image_keys(on)

    areas, keys = jax.lax.map(one, padded.reshape(n_chunks, chunk_size, -1))
    return areas.reshape(-1)[:g], keys.reshape(-1, 2)[:g]


def select_top_unseen(
    areas: jax.Array, keys: jax.Array, seen: SeenSet, *, r: int, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Indices of the ``r`` largest-area grid images that are distinct and unseen.

    Duplicates (equal keys) count once, at their first grid index; an image whose key is in
    ``seen`` is excluded; ties in area go to the smaller grid index. One sort of ``C + G``
    keys, so it scales to the 10^5-point dSprites grid with a large seen set.

    Args:
      areas: ``(G,)`` scores.
      keys: ``(G, 2)`` uint32 image keys.
      seen: the :class:`SeenSet`.
      r: number to select (static).
      valid: optional ``(G,)`` bool of usable grid points.

    Returns:
      ``(indices (r,) int32, ok (r,) bool)``; ``ok`` is False on slots past the number of
      eligible images (their index is arbitrary).
    """
    g = areas.shape[0]
    c = seen.keys.shape[0]
    valid = jnp.ones((g,), bool) if valid is None else valid
    k0 = jnp.concatenate([seen.keys[:, 0], keys[:, 0]])
    k1 = jnp.concatenate([seen.keys[:, 1], keys[:, 1]])
    # Within a group of equal keys: a seen key sorts first (0), then grid points (1) by
    # index, then padding (2). A grid point is kept iff it starts its group.
    src = jnp.concatenate([jnp.where(seen.mask, 0, 2), jnp.where(valid, 1, 2)]).astype(jnp.int32)
    idx = jnp.concatenate([jnp.full((c,), -1, jnp.int32), jnp.arange(g, dtype=jnp.int32)])
    k0s, k1s, srcs, idxs = jax.lax.sort((k0, k1, src, idx), num_keys=4)
    starts = jnp.concatenate(
        [jnp.ones((1,), bool), (k0s[1:] != k0s[:-1]) | (k1s[1:] != k1s[:-1])]
    )
    keep_sorted = starts & (srcs == 1)
    target = jnp.where(srcs == 1, idxs, g)  # everything else goes to a dump slot
    keep = jnp.zeros((g + 1,), bool).at[target].max(keep_sorted)[:g]
    score = jnp.where(keep, areas.astype(_F32), -jnp.inf)
    top, indices = jax.lax.top_k(score, r)  # ties: lower index first
    return indices.astype(jnp.int32), top > -jnp.inf


def grid_search(
    params: PyTree,
    model: Any,
    grid: jax.Array,
    seen: SeenSet,
    *,
    r: int,
    chunk_size: int = 512,
) -> GridResult:
    """The paper's shapes optimiser: the ``r`` best unseen images decodable from the grid.

    Decodes every grid point (in chunks of ``chunk_size``), rounds the Bernoulli means,
    de-duplicates the images, drops those in ``seen``, and returns the ``r`` with the largest
    area, best first. Scoring every grid image is free (the area is known in closed form);
    only the returned ``r`` count against the budget. The returned images are decoded again
    and their ``areas``/``keys`` recomputed from them, so they are exactly what is queried.

    Pure and static-shape: jit with ``static_argnames=("model", "r", "chunk_size")``; add
    ``result.keys`` to ``seen`` with :func:`seen_add` (mask ``result.valid``) after querying.
    The authors' ``opt_shapes.py`` excluded nothing (it could query an image twice); start
    from ``seen_init(budget)`` to exclude only earlier queries, or from
    ``seen_from_images(train_images, N + budget)`` to also exclude the training images.

    Args:
      params: the model's ``params``.
      model: VAE module (hashable; static).
      grid: ``(G, D)`` float32 grid (:func:`grid_points`).
      seen: keys already queried (:class:`SeenSet`).
      r: number of images to return (retrain_every, or the whole budget).
      chunk_size: decoding batch.

    Returns:
      :class:`GridResult`.
    """
    grid = jnp.asarray(grid, _F32)
    if grid.shape[0] < r:
        raise ValueError(f"grid has {grid.shape[0]} points < r = {r}")
    areas, keys = grid_scores(params, model, grid, chunk_size=chunk_size)
    indices, ok = select_top_unseen(areas, keys, seen, r=r)
    z = grid[indices]
    on = binarize(model.apply({"params": params}, z, method=model.decode))
    return GridResult(indices, z, on.astype(jnp.uint8), area(on, logits=False), image_keys(on), ok)


# ---------------------------------------------------------------------------------------------
# Models and pretraining
# ---------------------------------------------------------------------------------------------


def make_model(
    preset: str, *, upsample: str = "subpixel", fast: bool = True
) -> SquaresVAE | DSpritesVAE:
    """The preset's VAE: :class:`SquaresVAE` (``squares2d``) or :class:`DSpritesVAE`
    (``dsprites``).

    Args:
      preset: ``"squares2d"`` or ``"dsprites"``.
      upsample: the decoder's upsampling layer (``shapes_models.UPSAMPLE_MODES``); the default
        "subpixel" is the transposed convolution of the paper/authors computed fast.
      fast: compute every convolution with the custom-VJP stride-1 convolution
        (``shapes_models.conv2d``), whose gradients stay fast inside ``lax.scan``; ``False``
        uses plain ``lax`` convolutions (same function and parameters).
    """
    cfg = _preset(preset)
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"unknown upsample {upsample!r}; choose from {UPSAMPLE_MODES}")
    cls = SquaresVAE if preset == "squares2d" else DSpritesVAE
    return cls(latent_dim=cfg.latent_dim, upsample=upsample, fast=fast)


def param_shapes(model: Any) -> PyTree:
    """The ``params`` tree of ``model`` as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
    dummy = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE), _F32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy))["params"]


# Standard deviation of a standard normal truncated to [-2, 2], as in
# flax/jax.nn.initializers.variance_scaling(..., "truncated_normal").
_TRUNC_STD = 0.87962566103423978


def init_params(key: jax.Array, model: Any, *, gain: float = 2.0) -> PyTree:
    """Fresh parameters of a shapes VAE: He-normal kernels (``gain = 2``), zero biases.

    Kernels are drawn from a normal truncated to 2 standard deviations with variance
    ``gain / fan_in``, ``fan_in = prod(kernel.shape[:-1])`` (``gain = 1`` is flax's default
    ``lecun_normal``; ``gain = 2`` is He et al. 2015's choice for ReLU networks). With LeCun
    (or PyTorch's default, smaller) scaling the signal of the 11-layer squares encoder shrinks
    about 2x per layer, the latent code starts at ~1e-3 and, in our runs, the KL stayed at 0
    for the first 400+ steps (a posterior stuck at the prior once beta reaches 10); with
    ``gain = 2`` the code is used within 200 steps. All values come from one random call:
    ``model.init`` makes one threefry call per layer, and XLA:CPU takes about 0.3 s to compile
    each (20-30 s for these models).

    Returns:
      the ``params`` pytree (float32), same structure as ``model.init(...)["params"]``.
    """
    shapes_tree = param_shapes(model)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes_tree)
    kernel_sizes = [
        math.prod(leaf.shape) for path, leaf in flat if getattr(path[-1], "key", None) != "bias"
    ]
    noise = jax.random.truncated_normal(key, -2.0, 2.0, (sum(kernel_sizes),), _F32) / _TRUNC_STD
    leaves, offset = [], 0
    for path, leaf in flat:
        if getattr(path[-1], "key", None) == "bias":
            leaves.append(jnp.zeros(leaf.shape, _F32))
            continue
        size = math.prod(leaf.shape)
        fan_in = size // leaf.shape[-1]
        leaves.append(noise[offset : offset + size].reshape(leaf.shape) * math.sqrt(gain / fan_in))
        offset += size
    return jax.tree_util.tree_unflatten(treedef, leaves)


@functools.partial(jax.jit, static_argnames=("model", "beta"))
def _elbo_batches(key, params, batches, *, model, beta):
    keys = jax.random.split(key, batches.shape[0])

    def one(args):
        k, x = args
        t = elbo_terms(k, params, model, x, beta=beta)
        return t.log_lik, t.kl

    return jax.lax.map(one, (keys, batches))


def evaluate_elbo(
    key: jax.Array,
    model: Any,
    params: PyTree,
    images: Any,
    *,
    beta: float = 1.0,
    batch_size: int = 500,
) -> dict[str, float]:
    """Mean single-sample ELBO terms per image over ``images (N, 64, 64)`` (nats).

    Returns ``{"elbo", "log_lik", "kl"}`` (host floats) with ``elbo = log_lik - beta * kl``
    (``beta = 1``: the true ELBO). Runs a jitted ``lax.map`` over batches; the last partial
    batch is padded and the padding ignored.
    """
    images = np.asarray(images)
    n = images.shape[0]
    if n == 0:
        raise ValueError("evaluate_elbo: no images")
    batch_size = min(batch_size, n)
    n_b = -(-n // batch_size)
    padded = np.zeros((n_b * batch_size,) + images.shape[1:], images.dtype)
    padded[:n] = images
    batches = jnp.asarray(padded.reshape(n_b, batch_size, *images.shape[1:]))
    ll, kl = _elbo_batches(key, params, batches, model=model, beta=float(beta))
    ll, kl = np.asarray(ll).reshape(-1)[:n], np.asarray(kl).reshape(-1)[:n]
    ll_mean, kl_mean = float(ll.mean()), float(kl.mean())
    return {"elbo": ll_mean - beta * kl_mean, "log_lik": ll_mean, "kl": kl_mean}


def prior_sample_areas(
    key: jax.Array, model: Any, params: PyTree, *, num_samples: int = 1000
) -> jax.Array:
    """Areas of images decoded (and rounded) from ``z ~ N(0, I)`` (the paper's Fig. 3 right).

    Returns ``(num_samples,)`` float32.
    """
    z = jax.random.normal(key, (num_samples, model.latent_dim), _F32)
    return area(model.apply({"params": params}, z, method=model.decode))


class PretrainInfo(NamedTuple):
    """Diagnostics of :func:`pretrain` (host values)."""

    epoch_loss: np.ndarray  # (E,) mean optimised loss (-ELBO with the step's beta) per epoch
    epoch_log_lik: np.ndarray  # (E,) mean log p(x|z)
    epoch_kl: np.ndarray  # (E,) mean KL
    epoch_beta: np.ndarray  # (E,) beta at the end of each epoch
    num_steps: int
    seconds: float  # wall-clock training time (compilation included)
    train_elbo: dict  # evaluate_elbo on (up to eval_max) training images, beta = 1
    heldout_elbo: dict  # evaluate_elbo on (up to eval_max) held-out images, beta = 1


def pretrain(
    key: jax.Array,
    preset: str,
    *,
    k: float = math.inf,
    num_epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    beta_final: float | None = None,
    mode: str = "sample",
    upsample: str = "subpixel",
    max_steps: int | None = None,
    data: ShapesData | None = None,
    eval_max: int = 10000,
    log: Callable[[str], None] | None = print,
) -> tuple[PyTree, PretrainInfo]:
    """Pretrain a preset's VAE with rank weighting (eq. 3) over its training images.

    The authors' shapes recipe: Adam, minibatches drawn *with replacement* with probability
    proportional to the rank weights (``mode="sample"``; their ``WeightedRandomSampler``),
    ``floor(N_train / batch)`` steps per epoch, beta warm-up ``wrjax.vae.beta_schedule``
    (``beta_start`` for ``beta_warmup`` steps, then x1.1 every 10 steps up to
    ``beta_final``). ``k = inf`` is the unweighted model.

    Args:
      key: PRNG key.
      preset: ``"squares2d"`` or ``"dsprites"``.
      k: rank-weight strength (> 0; ``inf`` = uniform).
      num_epochs, batch_size, learning_rate, beta_final: override the preset's defaults.
      mode: ``"sample"`` (weighted sampling) or ``"epoch"`` (weights in the loss).
      upsample: decoder upsampling layer (see :func:`make_model`).
      max_steps: stop after this many steps in all (smoke runs).
      data: the preset's :class:`ShapesData` if already loaded.
      eval_max: at most this many (evenly spaced) training and held-out images for the final
        ELBO.
      log: progress printer (None: silent).

    Returns:
      ``(params, PretrainInfo)``.
    """
    if not (k > 0):
        raise ValueError(f"k must be > 0 (inf for uniform), got {k}")
    cfg = _preset(preset)
    num_epochs = cfg.num_epochs if num_epochs is None else num_epochs
    batch_size = cfg.batch_size if batch_size is None else batch_size
    learning_rate = cfg.learning_rate if learning_rate is None else learning_rate
    beta_final = cfg.beta_final if beta_final is None else beta_final
    data = load_shapes(preset) if data is None else data
    model = make_model(preset, upsample=upsample)

    train_x = jnp.asarray(data.images[data.train_idx])
    train_y = data.areas[data.train_idx]
    weights = rank_weights(train_y, k)
    n_train = train_x.shape[0]
    steps_per_epoch = n_train // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} > number of training images {n_train}")

    init_key, train_key, eval_key = jax.random.split(key, 3)
    params = init_params(init_key, model)
    optimizer = optax.adam(learning_rate)
    state = init_train_state(params, optimizer)
    beta = beta_schedule(cfg.beta_start, beta_final, warmup_steps=cfg.beta_warmup)
    step_fn = make_train_step(model, optimizer, beta=beta)

    total = num_epochs * steps_per_epoch
    if max_steps is not None:
        total = min(max_steps, total)
    stats = []
    t0 = time.perf_counter()
    done = 0
    epoch_keys = jax.random.split(train_key, num_epochs)
    for epoch in range(num_epochs):
        n_steps = min(steps_per_epoch, total - done)
        if n_steps <= 0:
            break
        state, info = fit(
            epoch_keys[epoch], state, step_fn, train_x, weights,
            num_steps=n_steps, batch_size=batch_size, mode=mode,
        )
        done += n_steps
        row = (
            float(info.loss.mean()), float(info.log_lik.mean()), float(info.kl.mean()),
            float(info.beta[-1]),
        )
        stats.append(row)
        if log is not None:
            log(
                f"[{preset} k={k:g}] epoch {epoch + 1}/{num_epochs} steps {done}/{total} "
                f"loss {row[0]:.2f} log_lik {row[1]:.2f} kl {row[2]:.3f} beta {row[3]:.3g} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    jax.block_until_ready(state.params)
    seconds = time.perf_counter() - t0

    k_tr, k_ho = jax.random.split(eval_key)
    def spaced(idx):
        return idx[:: max(1, -(-len(idx) // eval_max))][:eval_max]

    train_elbo = evaluate_elbo(k_tr, model, state.params, data.images[spaced(data.train_idx)])
    heldout_elbo = evaluate_elbo(k_ho, model, state.params, data.images[spaced(data.heldout_idx)])
    arr = np.asarray(stats, np.float64).reshape(-1, 4)
    info = PretrainInfo(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], done, seconds, train_elbo, heldout_elbo)
    return state.params, info


def load_pretrained(path: str) -> tuple[Any, PyTree, dict]:
    """Load a checkpoint written by ``experiments/pretrain.py shapes``.

    Returns ``(model, params, metadata)``; the model is rebuilt from the metadata's
    ``preset`` and ``upsample``.
    """
    from wrjax.checkpoint import load_metadata, load_pytree

    meta = load_metadata(path)
    model = make_model(meta["preset"], upsample=meta.get("upsample", "subpixel"))
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(model))
    return model, load_pytree(path, target), meta
