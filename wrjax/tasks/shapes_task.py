"""The 2D shapes task (paper §6.1) as a :class:`wrjax.Task`.

:func:`make_shapes_task` builds it from ``wrjax.tasks.shapes`` (data, VAEs, area objective).
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

from wrjax import vae
from wrjax.task import Task
from wrjax.tasks import shapes
from wrjax.weighting import format_k

__all__ = [
    "CHECKPOINT_DIR",
    "checkpoint_for_k",
    "image_text",
    "make_shapes_task",
]

#: Shipped pretrained models (``experiments/pretrain.py shapes``).
CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes"


def checkpoint_for_k(preset: str, k: float | None) -> Path:
    """The shipped checkpoint pretrained with rank weighting ``k`` if there is one, else the
    unweighted (``k = inf``) model (the loop's initial 1-epoch fine-tune then applies ``k``)."""
    if k is not None:
        p = CHECKPOINT_DIR / f"{preset}-k_{format_k(k)}"
        if Path(f"{p}.msgpack").exists():
            return p
    return CHECKPOINT_DIR / f"{preset}-k_inf"


def image_text(image) -> str:
    """Exact, reversible text form of a binary 64x64 image: hex of its packed bits (1,024 chars)."""
    return np.packbits(np.asarray(image, bool).ravel()).tobytes().hex()


def text_image(text: str) -> np.ndarray:
    """Inverse of :func:`image_text`: ``(64, 64)`` uint8."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))
    return bits[: 64 * 64].reshape(64, 64)


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
    signature. ``params`` (for the preset's default model) replaces the checkpoint.
    """
    del key
    data = shapes.load_shapes(preset)
    if params is not None:
        model = shapes.make_model(preset)
    else:
        model, params, meta = shapes.load_pretrained(str(checkpoint or checkpoint_for_k(preset, k)))
        if meta.get("preset", preset) != preset:
            raise ValueError(f"checkpoint is for preset {meta.get('preset')!r}, not {preset!r}")
    x = data.images[data.train_idx]
    keys = [image_text(im) for im in x]
    cfg = shapes.PRESETS[preset]

    def jax_decode(params, z):
        """Rounded decodings ``(B, 64, 64)`` uint8 (pure JAX)."""
        return shapes.binarize(vae.decode_logits(model, params, z)).astype(jnp.uint8)

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
        jax_objective=lambda images: shapes.area(images, logits=False),
        grid=shapes.grid_points(preset),
    )
