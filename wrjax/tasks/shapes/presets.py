"""The two presets of the shapes task: their data set, model size, grid and training defaults.

See ``DESIGN.md``, "Where the paper and the authors' released code differ":

* ``"squares2d"`` (the authors' released setup, the fast default): the 10,900 images of
  :func:`wrjax.tasks.shapes.data.make_squares2d`; latent dimension 2; grid optimiser over a
  50x50 grid on ``[-3, 3]^2``.
* ``"dsprites"`` (the paper's text): the 245,760 dSprites squares rendered by
  :func:`wrjax.tasks.shapes.render.render_dsprites_squares`; latent dimension 5; grid over
  ``[-5, 5]^5`` with step 0.5 restricted to ``||z|| <= 5``.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ShapesPreset", "PRESETS", "get_preset"]


class ShapesPreset(NamedTuple):
    """Static settings of one preset: the model's latent size, the grid, and the pretraining
    defaults of :func:`wrjax.tasks.shapes.pretrain.pretrain`. (The fine-tuning settings of the
    retraining loop are the experiment presets', ``experiments/configs/shapes.py``.)"""

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


PRESETS: dict[str, ShapesPreset] = {
    # The authors' train-paper.sh: 20 epochs, batch 16, Adam 1e-3, beta 1e-6 -> 10 (x1.1 every
    # 10 steps after 1,000 warm-up steps); 5% held out; shapes-paper.sh / opt_shapes.py: 50x50
    # grid on [-3, 3]^2 (and fine-tunes of 0.1 epoch, the first 1 epoch, at batch 32, beta 10).
    "squares2d": ShapesPreset(
        "squares2d", 2, 3.0, 50, None, 20, 16, 1e-3, 1e-6, 10.0, 1000, 0.05
    ),
    # The paper (§6.1, C.4) states the model, the latent size and the grid, not the training:
    # a standard VAE (beta 1, reached with the same warm-up shape), batch 32, Adam 1e-3,
    # 20 epochs.
    "dsprites": ShapesPreset(
        "dsprites", 5, 5.0, 0.5, 5.0, 20, 32, 1e-3, 1e-6, 1.0, 1000, 0.05
    ),
}


def get_preset(preset: str) -> ShapesPreset:
    """The :class:`ShapesPreset` named ``preset`` (a ValueError naming the presets if unknown)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown shapes preset {preset!r}; choose from {sorted(PRESETS)}")
    return PRESETS[preset]
