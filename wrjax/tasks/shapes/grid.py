"""The latent grids of the paper's shapes optimiser (§6.1; :func:`wrjax.grid_optimizer`
decodes every point and queries the best unseen images)."""

from __future__ import annotations

import numpy as np

from wrjax.tasks.shapes.presets import get_preset

__all__ = ["grid_points"]


def grid_points(preset: str) -> np.ndarray:
    """The latent grid of a preset, ``(G, D)`` float32, in ``itertools.product`` order.

    ``squares2d``: ``linspace(-3, 3, 50)`` per axis (G = 2,500; the authors'
    ``opt_shapes.py`` with ``opt_bounds=3``). ``dsprites``: ``-5, -4.5, ..., 5`` per axis
    (21 values) with ``||z|| <= 5`` (G = 532,509 of the 21^5 = 4,084,101 box points).
    """
    cfg = get_preset(preset)
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

