"""The shapes task's data sets and their fixed train/held-out splits.

* ``squares2d`` (the authors' data set): 64x64 binary images of one filled axis-aligned
  square of side ``s = 1..20`` with its top-left corner at column 32 and every row
  ``r = 0..64-s`` (1,090 distinct images) repeated 10 times (:func:`make_squares2d`).
* ``dsprites``: the 245,760 dSprites squares (:func:`wrjax.tasks.shapes.render.render_dsprites_squares`).

Both are generated, not read from disk. Images are ``(N, 64, 64)`` uint8 in {0, 1}; rows index
y (downwards), columns x. :func:`image_text` is the exact text form of an image (the task's
novelty key).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from wrjax.tasks.shapes.presets import get_preset
from wrjax.tasks.shapes.render import render_dsprites_squares

__all__ = [
    "SQUARES2D_COLUMN",
    "SQUARES2D_SIDES",
    "SQUARES2D_REPLICATES",
    "squares2d_sides",
    "make_squares2d",
    "ShapesData",
    "load_shapes",
    "image_text",
    "text_image",
]


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
    cfg = get_preset(preset)
    images = make_squares2d() if preset == "squares2d" else render_dsprites_squares()
    n = images.shape[0]
    n_held = int(n * cfg.heldout_frac)
    order = np.arange(n) if preset == "squares2d" else np.random.default_rng(0).permutation(n)
    areas = images.reshape(n, -1).sum(axis=1, dtype=np.int64).astype(np.float32)
    return ShapesData(images, areas, np.sort(order[n_held:]), np.sort(order[:n_held]))


def image_text(image) -> str:
    """Exact, reversible text form of a binary 64x64 image: hex of its packed bits (1,024 chars)."""
    return np.packbits(np.asarray(image, bool).ravel()).tobytes().hex()


def text_image(text: str) -> np.ndarray:
    """Inverse of :func:`image_text`: ``(64, 64)`` uint8."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))
    return bits[: 64 * 64].reshape(64, 64)
