"""The 2D shape area task (paper §6.1, appendix C.4).

Two presets (:mod:`.presets`; see ``DESIGN.md``, "Where the paper and the authors' released
code differ"):

* ``"squares2d"`` (the authors' released setup, the fast default): 64x64 binary images of one
  filled axis-aligned square of side ``s = 1..20`` with its top-left corner at column 32 and
  every row ``r = 0..64-s`` (1,090 distinct images) repeated 10 times; latent dimension 2;
  grid optimiser over a 50x50 grid on ``[-3, 3]^2``.
* ``"dsprites"`` (the paper's text): the 245,760 dSprites squares, 6 scales x 40 orientations x
  32 x 32 positions, rendered procedurally; latent dimension 5; grid over ``[-5, 5]^5`` with
  step 0.5 restricted to ``||z|| <= 5``.

The objective is the area: the number of pixels on after rounding the decoded Bernoulli means.
The optimiser is :func:`wrjax.grid_optimizer` over the preset's grid (:func:`grid_points`).

Modules: :mod:`.data` (the data sets and splits), :mod:`.render` (the dSprites renderer),
:mod:`.objective` (area), :mod:`.grid` (the latent grids), :mod:`.layers` (fast convolutions),
:mod:`.model` (the VAEs, init, loading), :mod:`.pretrain` (the pretraining recipe and the
``experiments/pretrain.py shapes`` subcommand), :mod:`.task` (:func:`make_shapes_task`).
The public names are re-exported here.
"""

from wrjax.tasks.shapes.data import (
    ShapesData,
    image_text,
    load_shapes,
    make_squares2d,
    squares2d_sides,
    text_image,
)
from wrjax.tasks.shapes.grid import grid_points
from wrjax.tasks.shapes.layers import UPSAMPLE_MODES
from wrjax.tasks.shapes.model import (
    DSpritesVAE,
    SquaresVAE,
    build_model,
    init_params,
    make_model,
    param_shapes,
)
from wrjax.tasks.shapes.objective import area, binarize, prior_sample_areas
from wrjax.tasks.shapes.presets import PRESETS, ShapesPreset, get_preset
from wrjax.tasks.shapes.pretrain import evaluate_elbo, pretrain
from wrjax.tasks.shapes.render import (
    DSPRITES_ORIENTATIONS,
    DSPRITES_POSITIONS,
    DSPRITES_SCALES,
    DSPRITES_THRESHOLD,
    IMAGE_SIZE,
    dsprites_latents,
    render_dsprites_squares,
    render_squares,
)
from wrjax.tasks.shapes.task import make_shapes_task

__all__ = [
    "PRESETS",
    "ShapesPreset",
    "get_preset",
    "IMAGE_SIZE",
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
    "image_text",
    "text_image",
    "binarize",
    "area",
    "prior_sample_areas",
    "grid_points",
    "UPSAMPLE_MODES",
    "SquaresVAE",
    "DSpritesVAE",
    "make_model",
    "param_shapes",
    "init_params",
    "build_model",
    "evaluate_elbo",
    "pretrain",
    "make_shapes_task",
]
