"""Pretraining the shapes VAEs (the authors' recipe), on :func:`wrjax.vae.train`.

:func:`pretrain` trains one preset's model with rank weighting of strength ``k``;
:func:`add_arguments` and :func:`main` are the ``shapes`` subcommand of
``experiments/pretrain.py``, which writes one checkpoint per ``--k``:

  python experiments/pretrain.py shapes --preset squares2d --k inf 1e-3 1e-5
  python experiments/pretrain.py shapes --preset dsprites --k inf 1e-5 --epochs 20

Times on the 2-core development CPU (see ``checkpoints/shapes/README.md``): squares2d 7-18 min
per k (12,940 steps; depends on the load); dsprites about 0.42 s per step, 7,296 steps per
epoch, so about 17 h per k for the default 20 epochs (use a GPU or ``--epochs``).
"""

from __future__ import annotations

import argparse
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax.tasks.shapes.data import ShapesData, load_shapes
from wrjax.tasks.shapes.model import init_params, make_model
from wrjax.tasks.shapes.objective import prior_sample_areas
from wrjax.tasks.shapes.presets import PRESETS, get_preset
from wrjax.typing import PyTree
from wrjax.vae import History, beta_schedule, elbo_terms, init_train_state, make_train_step, train
from wrjax.weighting import format_k, rank_weights

__all__ = ["PRESETS", "evaluate_elbo", "pretrain", "add_arguments", "main"]


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
    time_limit_s: float | None = None,
    progress: bool | str = True,
) -> tuple[PyTree, History, dict]:
    """Pretrain a preset's VAE with rank weighting (eq. 3) over its training images.

    The authors' shapes recipe: Adam, minibatches drawn *with replacement* with probability
    proportional to the rank weights (``mode="sample"``; their ``WeightedRandomSampler``),
    ``floor(N_train / batch)`` steps per epoch, beta warm-up ``wrjax.vae.beta_schedule``
    (``beta_start`` for ``beta_warmup`` steps, then x1.1 every 10 steps up to
    ``beta_final``). ``k = inf`` is the unweighted model. :func:`wrjax.vae.train` runs it one
    epoch a chunk, each epoch with its own key (one split of the training key per epoch).

    Args:
      key: PRNG key (split into the init, training and evaluation keys).
      preset: ``"squares2d"`` or ``"dsprites"``.
      k: rank-weight strength (> 0; ``inf`` = uniform).
      num_epochs, batch_size, learning_rate, beta_final: override the preset's defaults.
      mode: ``"sample"`` (weighted sampling) or ``"epoch"`` (weights in the loss).
      upsample: decoder upsampling layer (see :func:`wrjax.tasks.shapes.model.make_model`).
      max_steps: stop after this many steps in all (smoke runs).
      data: the preset's :class:`~wrjax.tasks.shapes.data.ShapesData` if already loaded.
      eval_max: at most this many (evenly spaced) training and held-out images for the final
        ELBO.
      time_limit_s: stop after the epoch that passes this wall time.
      progress: one line per epoch (``True``, or a label; default ``"PRESET k=K"``), or silent.

    Returns:
      ``(params, history, metrics)``: the :class:`wrjax.vae.History` has one entry per epoch;
      ``metrics`` holds ``num_steps``, ``seconds`` (training, compilation included) and the
      final ``train_elbo`` and ``heldout_elbo`` (:func:`evaluate_elbo`, beta = 1).
    """
    if not (k > 0):
        raise ValueError(f"k must be > 0 (inf for uniform), got {k}")
    cfg = get_preset(preset)
    num_epochs = cfg.num_epochs if num_epochs is None else num_epochs
    batch_size = cfg.batch_size if batch_size is None else batch_size
    learning_rate = cfg.learning_rate if learning_rate is None else learning_rate
    beta_final = cfg.beta_final if beta_final is None else beta_final
    data = load_shapes(preset) if data is None else data
    model = make_model(preset, upsample=upsample)

    train_x = jnp.asarray(data.images[data.train_idx])
    weights = rank_weights(data.areas[data.train_idx], k)
    steps_per_epoch = train_x.shape[0] // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} > number of training images {train_x.shape[0]}")

    init_key, train_key, eval_key = jax.random.split(key, 3)
    optimizer = optax.adam(learning_rate)
    state = init_train_state(init_params(init_key, model), optimizer)
    beta = beta_schedule(cfg.beta_start, beta_final, warmup_steps=cfg.beta_warmup)
    total = num_epochs * steps_per_epoch if max_steps is None else min(max_steps, num_epochs * steps_per_epoch)
    epoch_keys = jax.random.split(train_key, num_epochs)
    if progress is True:
        progress = f"{preset} k={format_k(k)}"
    state, history = train(
        train_key, state, make_train_step(model, optimizer, beta=beta), train_x, weights,
        num_steps=total, batch_size=batch_size, mode=mode, chunk_steps=steps_per_epoch,
        chunk_key=lambda done: epoch_keys[done // steps_per_epoch],
        time_limit_s=time_limit_s, progress=progress,
    )  # fmt: skip

    k_tr, k_ho = jax.random.split(eval_key)

    def spaced(idx):
        return idx[:: max(1, -(-len(idx) // eval_max))][:eval_max]

    metrics = {
        "num_steps": int(state.step),
        "seconds": history.seconds[-1] if history.seconds else 0.0,
        "train_elbo": evaluate_elbo(k_tr, model, state.params, data.images[spaced(data.train_idx)]),
        "heldout_elbo": evaluate_elbo(k_ho, model, state.params, data.images[spaced(data.heldout_idx)]),
    }
    return state.params, history, metrics


# ---------------------------------------------------------------------------------------------
# The ``shapes`` subcommand of experiments/pretrain.py (its protocol: that file's docstring)
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's own options (``--out``, ``--seed``, ``--time-limit`` are common)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="squares2d")
    parser.add_argument(
        "--k", type=float, nargs="+", default=[math.inf],
        help="rank-weight strengths, one model each ('inf' = unweighted; the paper pretrains "
             "one model per k, the authors' code one unweighted model)",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's (20)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 squares2d, 32 dsprites")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--beta-final", type=float, default=None, help="default: 10 squares2d, 1 dsprites")
    parser.add_argument("--mode", choices=["sample", "epoch"], default="sample")
    parser.add_argument("--upsample", default="subpixel")
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (smoke runs)")
    parser.add_argument("--eval-max", type=int, default=10000)
    parser.add_argument("--prior-samples", type=int, default=1000)


def _quantiles(x: np.ndarray) -> dict:
    qs = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "q05": float(qs[0]), "q25": float(qs[1]), "median": float(qs[2]),
            "q75": float(qs[3]), "q95": float(qs[4]), "max": float(x.max())}  # fmt: skip


def main(args: argparse.Namespace) -> list:
    """One checkpoint ``PRESET-k_K`` per ``--k`` in ``--out`` (a folder; default
    ``checkpoints/shapes``), written with ``args.save``. Returns the stem paths written."""
    import os
    from pathlib import Path

    data = load_shapes(args.preset)
    cfg = get_preset(args.preset)
    out_dir = Path(args.out) if args.out is not None else args.checkpoint_dir
    model = make_model(args.preset, upsample=args.upsample)
    sample = jax.jit(prior_sample_areas, static_argnames=("model", "num_samples"))
    written = []
    for i, k in enumerate(args.k):
        load_start = os.getloadavg()
        key = jax.random.fold_in(jax.random.key(args.seed), i)
        train_key, sample_key = jax.random.split(key)
        params, history, metrics = pretrain(
            train_key, args.preset, k=k, num_epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.lr, beta_final=args.beta_final, mode=args.mode,
            upsample=args.upsample, max_steps=args.max_steps, data=data, eval_max=args.eval_max,
            time_limit_s=args.time_limit,
        )  # fmt: skip
        prior = np.asarray(sample(sample_key, model, params, num_samples=args.prior_samples))
        config = {"task": "shapes", "preset": args.preset, "upsample": args.upsample}
        record = {
            **config,  # the older checkpoints' top-level fields, read by build_model too
            "k": "inf" if math.isinf(k) else k,
            "seed": args.seed,
            "settings": {
                "num_epochs": args.epochs if args.epochs is not None else cfg.num_epochs,
                "batch_size": args.batch_size if args.batch_size is not None else cfg.batch_size,
                "learning_rate": args.lr if args.lr is not None else cfg.learning_rate,
                "beta_start": cfg.beta_start,
                "beta_final": args.beta_final if args.beta_final is not None else cfg.beta_final,
                "beta_warmup_steps": cfg.beta_warmup,
                "beta_factor_every_10_steps": 1.1,
                "mode": args.mode,
                "init": "truncated normal, variance 2 / fan_in (He), zero biases",
                "max_steps": args.max_steps,
            },
            "data": {"preset": args.preset, "n_train": int(len(data.train_idx)),
                     "n_heldout": int(len(data.heldout_idx))},
            "num_steps": metrics["num_steps"],
            "seconds": round(metrics["seconds"], 1),  # training, compilation included
            # The CPU may be shared: the 1-minute load average before and after.
            "machine": {"load_average_start": round(load_start[0], 2),
                        "load_average_end": round(os.getloadavg()[0], 2)},
            "metrics": {
                "final_epoch": {"loss": history.loss[-1], "log_lik": history.log_lik[-1],
                                "kl": history.kl[-1], "beta": history.beta[-1]},
                "train_elbo_beta1": metrics["train_elbo"],
                "heldout_elbo_beta1": metrics["heldout_elbo"],
                "prior_sample_areas": {"num_samples": args.prior_samples, **_quantiles(prior)},
            },
            "epoch_loss": [round(v, 3) for v in history.loss],
            "train_data_areas": _quantiles(data.areas[data.train_idx]),
            "num_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        }  # fmt: skip
        written.append(args.save(out_dir / f"{args.preset}-k_{format_k(k)}", params,
                                 config=config, record=record))
        print(f"{metrics['num_steps']} steps in {metrics['seconds']:.0f} s; ELBO train "
              f"{metrics['train_elbo']['elbo']:.1f} held-out {metrics['heldout_elbo']['elbo']:.1f}; "
              f"prior-sample area mean {prior.mean():.1f} median {np.median(prior):.0f} max "
              f"{prior.max():.0f}", flush=True)  # fmt: skip
    return written
