"""Pretrain the expression grammar VAE and save a checkpoint with its metadata.

Two modes:

* from scratch with rank weights of strength ``--k`` (the authors' pretraining: one model
  per k, ``--epochs`` passes, batch 512, Adam 1e-3, ReduceLROnPlateau);
* ``--init CHECKPOINT``: fine-tune an existing model (fresh Adam) with weights of strength
  ``--k``, e.g. one epoch from the unweighted model, as the paper does for chemistry.

The shipped checkpoints were made by (in this order)::

    python experiments/pretrain_expressions.py --k inf --epochs 20
    python experiments/pretrain_expressions.py --k 1e-3 --epochs 1 --batch-size 600 \\
        --init checkpoints/expressions/expr-k_inf

giving ``checkpoints/expressions/expr-k_inf`` and ``expr-k_1e-3``.

Writes ``OUT.msgpack`` (parameters) and ``OUT.json`` (the command, machine, time, per-epoch
losses, reconstruction accuracy on the held-out split and prior-sample validity).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import jax
import numpy as np

from wrjax.tasks import expressions as E

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "checkpoints" / "expressions"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=float, default=math.inf, help="rank-weight strength (inf: none)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--w-max", type=float, default=1.0, help="duplicate-copy threshold")
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--norm", choices=["none", "layer"], default="layer")
    p.add_argument("--init", type=Path, default=None, help="checkpoint to fine-tune from")
    p.add_argument("--prior-samples", type=int, default=1000)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint path without suffix "
                   "(default checkpoints/expressions/expr-k_K, e.g. expr-k_1e-3)")
    return p.parse_args(argv)


def k_name(k: float) -> str:
    """``inf``, ``1e-3``, ``0.1`` -> ``inf``, ``1e-3``, ``1e-1``: no dot, because
    ``wrjax.checkpoint`` treats the text after a dot as a file suffix."""
    if math.isinf(k):
        return "inf"
    return np.format_float_scientific(k, trim="-", exp_digits=1).replace(".", "p")


def main(argv=None) -> dict:
    """Run one pretraining; returns the metadata written beside the checkpoint."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = args.out or DEFAULT_OUT / f"expr-k_{k_name(args.k)}"
    key = jax.random.key(args.seed)
    train_key, prior_key, decode_key = jax.random.split(key, 3)

    data = E.load_expressions(data_dir=args.data_dir)
    if args.init is not None:
        model, params, init_meta = E.load_model(args.init)
    else:
        model, params, init_meta = E.GrammarVAE(norm=args.norm), None, None

    t0 = time.perf_counter()
    params, info = E.pretrain(
        train_key, k=args.k, num_epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, data=data, model=model, params=params,
        holdout_fraction=args.holdout, w_max=args.w_max,
    )
    train_seconds = time.perf_counter() - t0

    val_x = data.one_hot[info.val_indices]
    recon = E.reconstruction_accuracy(params, val_x, model=model)
    # Best 10% of the held-out points by score: what the weighting should favour.
    top = np.argsort(-data.scores[info.val_indices])[: max(1, len(info.val_indices) // 10)]
    recon_top = E.reconstruction_accuracy(params, val_x[top], model=model)
    z = jax.random.normal(prior_key, (args.prior_samples, model.latent_dim))
    voted = E.decode_expressions(decode_key, params, z, num_samples=5, model=model)
    single = E.decode_expressions(decode_key, params, z, num_samples=1, model=model)
    valid = [v for v in voted if v is not None]
    prior_scores = E.score_batch(valid) if valid else np.array([])

    metadata = {
        "command": "python experiments/pretrain_expressions.py " + shlex.join(argv),
        "task": "expressions",
        "k": args.k if not math.isinf(args.k) else "inf",
        "mode": "fine-tune" if args.init is not None else "from scratch",
        "init_checkpoint": str(args.init) if args.init is not None else None,
        "init_command": init_meta.get("command") if init_meta else None,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": E.machine_description(),
        "train_seconds": round(train_seconds, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "num_data": len(data.expressions),
        "num_train": info.num_train,
        "num_copies": info.num_copies,
        "num_val": info.num_val,
        "train_loss": info.train_loss,
        "val_loss": info.val_loss,
        "learning_rate": info.learning_rate,
        "epoch_seconds": [round(s, 2) for s in info.epoch_seconds],
        "final_train_loss": info.train_loss[-1],
        "final_val_loss": info.val_loss[-1],
        "reconstruction_accuracy": recon,
        "reconstruction_accuracy_best_decile": recon_top,
        "prior_validity": float(np.mean([v is not None for v in voted])),
        "prior_validity_single_decode": float(np.mean([v is not None for v in single])),
        "prior_unique_valid": len({E.novelty_key(v) for v in valid}),
        "prior_score_mean": float(prior_scores.mean()) if valid else None,
        "prior_score_max": float(prior_scores.max()) if valid else None,
        "val_indices": [int(i) for i in info.val_indices],
        "loss": "per example sum(masked BCE)/12 + KL/25, noise std 0.01 (Kusner et al.)",
    }
    E.save_model(out, params, model, metadata)
    summary = {k: metadata[k] for k in (
        "k", "mode", "train_seconds", "final_train_loss", "final_val_loss",
        "reconstruction_accuracy", "reconstruction_accuracy_best_decile", "prior_validity",
        "prior_validity_single_decode", "prior_unique_valid", "prior_score_mean",
        "prior_score_max")}
    print(f"saved {out}.msgpack: {summary}")
    return metadata


if __name__ == "__main__":
    main()
