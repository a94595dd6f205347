"""The 2D shapes task wired into the retraining loop, and as one compiled program.

Two ways to run the paper's shapes experiment (§6.1) on the same pieces
(``wrjax.tasks.shapes``: data, VAEs, area objective, grid optimiser):

* :func:`make_shapes_task` returns a :class:`wrjax.lso.Task` for ``wrjax.lso.run``: records,
  checkpoints, resume, the experiment CLI (``python -m experiments.run shapes``).
* :func:`make_compiled_run` builds the *whole run* (weights, fine-tuning, grid search,
  appending the queried images) as one jitted function of a PRNG key, possible because the
  objective (the area) is pure JAX. :func:`make_seeds_run` vmaps it over seeds: several runs in
  one compiled program.

Both follow the authors' released shapes code: a 1-epoch weighted fine-tune before the
first query, then every ``retrain_every`` queries a 0.1-epoch fine-tune (batch 32, beta at
its final value, minibatches sampled with ``p ∝ w``); the grid optimiser queries, per cycle,
the ``retrain_every`` unseen grid images of largest area (the whole budget at once without
retraining).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax import vae
from wrjax.lso import Task
from wrjax.tasks import shapes
from wrjax.weighting import rank_weights

__all__ = [
    "CHECKPOINT_DIR",
    "checkpoint_for_k",
    "image_text",
    "make_shapes_task",
    "CompiledRunConfig",
    "CompiledRunResult",
    "make_compiled_run",
    "make_seeds_run",
]

#: Shipped pretrained models (``experiments/pretrain.py shapes``).
CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes"


def _k_tag(k: float) -> str:
    if math.isinf(k):
        return "inf"
    mantissa, exp = f"{k:.0e}".split("e")
    return f"{mantissa}e{int(exp)}"


def checkpoint_for_k(preset: str, k: float | None) -> Path:
    """The shipped checkpoint pretrained with rank weighting ``k`` if there is one, else the
    unweighted (``k = inf``) model (the loop's initial 1-epoch fine-tune then applies ``k``)."""
    if k is not None:
        p = CHECKPOINT_DIR / f"{preset}-k_{_k_tag(k)}"
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
    """The shapes task as a :class:`wrjax.lso.Task`.

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
    decode_fn = jax.jit(lambda p, z: shapes.binarize(vae.decode_logits(model, p, z)).astype(jnp.uint8))

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
        jax_objective=shapes.area,
        grid=shapes.grid_points(preset),
    )


# --------------------------------------------------------------------------------------------
# The whole run as one compiled program
# --------------------------------------------------------------------------------------------


class CompiledRunConfig(NamedTuple):
    """Static settings of :func:`make_compiled_run` (hashable)."""

    budget: int = 500
    retrain_every: int | None = 50
    k: float = 1e-3
    initial_epochs: float = 1.0
    finetune_epochs: float = 0.1
    batch_size: int = 32
    learning_rate: float = 1e-3
    beta: float = 10.0
    mode: str = "sample"
    chunk_size: int = 500


class CompiledRunResult(NamedTuple):
    """The queried points of one run, in query order (``budget`` of them)."""

    scores: jax.Array  # (budget,) float32 areas; NaN where the grid ran out of unseen images
    valid: jax.Array  # (budget,) bool
    z: jax.Array  # (budget, D) latent points queried
    final_params: object


def make_compiled_run(model, grid: np.ndarray, images: np.ndarray, areas: np.ndarray,
                      config: CompiledRunConfig):
    """Build ``run(key, params) -> CompiledRunResult``, the whole optimisation as one function.

    Every cycle: rank weights of all points so far -> fine-tune (``lax.scan`` of train steps)
    -> :func:`wrjax.tasks.shapes.grid_search` for the ``r`` best unseen grid images -> append
    them (fixed-capacity buffer, so the shapes never change). Cycles run in a ``lax.scan``.
    Jit it (``jax.jit(run)``) or vmap it over keys (:func:`make_seeds_run`).
    """
    budget = config.budget
    r = config.retrain_every or budget
    if budget % r:
        raise ValueError(f"budget {budget} must be a multiple of retrain_every {r} here")
    n_cycles = budget // r
    n0 = images.shape[0]
    capacity = n0 + budget
    first_steps = int(math.ceil(config.initial_epochs * n0 / config.batch_size))
    later_steps = int(math.ceil(config.finetune_epochs * n0 / config.batch_size))
    adam = optax.adam(config.learning_rate)
    step_fn = vae.make_train_step(model, adam, beta=config.beta)
    x0 = np.zeros((capacity, *images.shape[1:]), np.uint8)
    x0[:n0] = images
    y0 = np.zeros((capacity,), np.float32)
    y0[:n0] = areas
    seen0 = shapes.seen_from_images(images, capacity)
    grid = jnp.asarray(grid, jnp.float32)

    def finetune(key, state, x, y, mask, num_steps):
        w = rank_weights(y, config.k, mask)
        state, _ = vae.fit(
            key, state, step_fn, x, w, num_steps=num_steps, batch_size=config.batch_size,
            mode=config.mode, mask=mask,
        )  # fmt: skip
        return state

    def run(key, params):
        x, y = jnp.asarray(x0), jnp.asarray(y0)
        mask = jnp.arange(capacity) < n0
        state = vae.init_train_state(params, adam)
        k0, kc = jax.random.split(key)
        if first_steps:
            state = finetune(k0, state, x, y, mask, first_steps)

        def cycle(carry, inputs):
            state, x, y, mask, seen = carry
            c, ck = inputs
            if later_steps and config.retrain_every is not None:
                state = jax.lax.cond(
                    c > 0,
                    lambda s: finetune(ck, s, x, y, mask, later_steps),
                    lambda s: s,
                    state,
                )
            res = shapes.grid_search(state.params, model, grid, seen, r=r, chunk_size=config.chunk_size)
            start = n0 + c * r
            x = jax.lax.dynamic_update_slice(x, res.images, (start, 0, 0))
            y = jax.lax.dynamic_update_slice(y, jnp.where(res.valid, res.areas, 0.0), (start,))
            mask = jax.lax.dynamic_update_slice(mask, res.valid, (start,))
            seen = shapes.seen_add(seen, res.keys, res.valid)
            out = (jnp.where(res.valid, res.areas, jnp.nan), res.valid, res.z)
            return (state, x, y, mask, seen), out

        carry = (state, x, y, mask, seen0)
        inputs = (jnp.arange(n_cycles), jax.random.split(kc, n_cycles))
        (state, *_), (scores, valid, z) = jax.lax.scan(cycle, carry, inputs)
        return CompiledRunResult(scores.reshape(-1), valid.reshape(-1), z.reshape(budget, -1), state.params)

    return run


def make_seeds_run(run_fn):
    """Several seeds in one compiled program: ``jit(vmap(run_fn))(keys (S,), params)``.

    Measured on a 2-core CPU (``benchmarks/RESULTS.md``, ``## shapes_seeds``): 4.7x *slower*
    than ``jit(run_fn)`` seed after seed, because once the seeds' parameters differ, vmap
    batches the convolution kernels, which XLA:CPU runs slowly. Meant for accelerators; on
    CPU run the seeds one after another.
    """
    return jax.jit(jax.vmap(run_fn, in_axes=(0, None)))
