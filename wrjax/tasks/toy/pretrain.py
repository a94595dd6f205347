"""Pretraining of the toy VAE, and its command line ``python experiments/pretrain.py toy``.

The recipe is short (uniform weights, Adam, a few hundred steps): the task builder runs it
when the task is built. The command line saves a model the way every task does
(``args.save``, see ``experiments/pretrain.py``); load it back with
``wrjax.checkpoint.load_model(path, wrjax.tasks.toy.build_model)``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from wrjax import vae
from wrjax.tasks.toy.data import toy_data
from wrjax.tasks.toy.model import BitVAE, init_params
from wrjax.typing import PyTree

__all__ = ["PRESETS", "pretrain", "add_arguments", "main"]

#: Presets of ``experiments/pretrain.py toy`` (one: the task's own pretraining).
PRESETS = ("default",)


def pretrain(key: jax.Array, model: BitVAE, params: PyTree, x, *, num_steps: int = 300,
             batch_size: int = 32, learning_rate: float = 3e-3, beta: float = 0.1,
             progress: bool | str | None = None) -> tuple[PyTree, vae.History]:
    """Train ``model`` from ``params`` on the bit strings ``x`` with uniform weights:
    one chunk of ``num_steps`` updates drawn from ``key``. Returns ``(params, history)``."""
    opt = optax.adam(learning_rate)
    step = vae.make_train_step(model, opt, beta=beta)
    x = jnp.asarray(x)
    state, history = vae.train(
        key, vae.init_train_state(params, opt), step, x, jnp.ones(len(x)),
        num_steps=num_steps, batch_size=batch_size, chunk_key=lambda done: key, progress=progress,
    )  # fmt: skip
    return state.params, history


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESETS, default="default")
    parser.add_argument("--length", type=int, default=12)
    parser.add_argument("--max-ones", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)


def main(args: argparse.Namespace) -> None:
    """Pretrain and write ``--out`` (default ``checkpoints/toy/bits-k_inf``)."""
    x, _ = toy_data(args.length, args.max_ones)
    model = BitVAE(length=args.length)
    k_init, k_fit = jax.random.split(jax.random.key(args.seed))
    params, history = pretrain(k_fit, model, init_params(k_init, model), x,
                               num_steps=args.steps, progress="toy")
    out = args.out if args.out is not None else args.checkpoint_dir / "bits-k_inf"
    args.save(out, params, config={"length": model.length, "latent_dim": model.latent_dim,
                                   "hidden": model.hidden},
              record={"data": {"rows": int(len(x)), "max_ones": args.max_ones},
                      "metrics": {"final_loss": history.loss[-1]}, "history": history._asdict()})
