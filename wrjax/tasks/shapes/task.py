"""The 2D shapes task (paper §6.1) as a :class:`wrjax.Task`.

:func:`make_shapes_task` builds it from the data, VAEs and area objective of this package.
Its decoder and objective are also given in pure JAX, so the same task runs with either
driver and the same grid optimiser (:func:`wrjax.grid_optimizer`):

* ``wrjax.run(key, task, config, optimizer=wrjax.grid_optimizer(task), workdir=...)``:
  records, checkpoints, resume, the experiment CLI (``python -m experiments.run shapes``);
* ``wrjax.make_compiled_run(task, config, optimizer=wrjax.grid_optimizer(task))``: the whole
  run as one jittable function of a key, vmappable over seeds
  (:func:`wrjax.loop.make_seeds_run`).

Both follow the authors' released shapes code: a 1-epoch weighted fine-tune before the
first query, then every ``retrain_every`` queries a 0.1-epoch fine-tune (batch 32, beta at
its final value, minibatches sampled with ``p ∝ w``); the grid optimiser queries, per cycle,
the ``retrain_every`` unseen grid images of largest area (the whole budget at once without
retraining).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wrjax import checkpoint as ckpt
from wrjax import paths, vae
from wrjax.task import Task
from wrjax.tasks.shapes.data import image_text, load_shapes
from wrjax.tasks.shapes.grid import grid_points
from wrjax.tasks.shapes.model import build_model, make_model
from wrjax.tasks.shapes.objective import area, binarize
from wrjax.tasks.shapes.presets import get_preset

__all__ = ["make_shapes_task"]


def make_shapes_task(
    key: jax.Array,
    preset: str = "squares2d",
    *,
    k: float | None = None,
    checkpoint: str | Path | None = None,
    params=None,
) -> Task:
    """The shapes task as a :class:`wrjax.Task`.

    The optimisation data are the preset's training images (squares2d: the first 95%, as the
    authors), scored by their area; the novelty key of an image is its exact bit pattern.
    ``key`` is unused (the data and checkpoint are fixed) and kept for the common builder
    signature. The model is ``checkpoint``, else the shipped one pretrained with ``k``, else
    the unweighted one (``wrjax.paths.checkpoint_for_k``; the loop's initial fine-tune then
    applies ``k``); ``params`` (for the preset's default model) replaces the checkpoint.
    """
    del key
    data = load_shapes(preset)
    if params is not None:
        model = make_model(preset)
    else:
        path = checkpoint or paths.checkpoint_for_k("shapes", preset, k)
        model, params, meta = ckpt.load_model(path, build_model)
        meta_preset = meta.get("config", meta).get("preset", preset)
        if meta_preset != preset:
            raise ValueError(f"checkpoint is for preset {meta_preset!r}, not {preset!r}")
    x = data.images[data.train_idx]
    keys = [image_text(im) for im in x]
    cfg = get_preset(preset)

    def jax_decode(params, z):
        """Rounded decodings ``(B, 64, 64)`` uint8 (pure JAX)."""
        return binarize(vae.decode_logits(model, params, z)).astype(jnp.uint8)

    decode_fn = jax.jit(jax_decode)

    def decode(key, params, z):
        out = np.asarray(decode_fn(params, jnp.asarray(z, jnp.float32)))
        return list(out)

    return Task(
        name=f"shapes-{preset}",
        model=model,
        params=params,
        x=x,
        y=data.areas[data.train_idx].astype(np.float32),
        initial_keys=keys,
        decode=decode,
        objective=lambda image: float(np.sum(image)),
        to_data=lambda image: np.asarray(image, np.uint8),
        novelty_key=image_text,
        beta=cfg.beta_final,  # the authors fine-tune with beta fixed at its final value
        jax_decode=jax_decode,
        jax_objective=lambda images: area(images, logits=False),
        grid=grid_points(preset),
    )
