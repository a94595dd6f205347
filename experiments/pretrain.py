"""Pretrain the VAE of a task and save a checkpoint (msgpack + JSON metadata).

One subcommand per task; each writes ``DIR/NAME.msgpack`` (the ``params`` pytree, loaded with
``wrjax.checkpoint.load_pytree`` or the task's own loader) and ``DIR/NAME.json`` (the exact
command, the settings, the time taken, the machine, the final losses).

  python experiments/pretrain.py shapes --preset squares2d --k inf 1e-3 1e-5
  python experiments/pretrain.py shapes --preset dsprites --k inf 1e-5 --epochs 20

Several ``--k`` values train one model each, one after the other (the paper pretrains one
model per k; the authors' shapes code pretrained one unweighted model and weighted only the
fine-tuning).

Times on the 2-core development CPU (see ``checkpoints/shapes/README.md``): squares2d 7-18 min
per k (12,940 steps; depends on the load); dsprites about 0.42 s per step, 7,296 steps per
epoch, so about 17 h per k for the default 20 epochs (use a GPU or ``--epochs``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np


def _k_tag(k: float) -> str:
    """``inf`` -> "inf", ``1e-3`` -> "1e-3" (for file names)."""
    if math.isinf(k):
        return "inf"
    mantissa, exp = f"{k:.0e}".split("e")
    return f"{mantissa}e{int(exp)}"


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def _quantiles(x: np.ndarray) -> dict:
    qs = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "q05": float(qs[0]),
        "q25": float(qs[1]),
        "median": float(qs[2]),
        "q75": float(qs[3]),
        "q95": float(qs[4]),
        "max": float(x.max()),
    }


def run_shapes(args: argparse.Namespace, argv: list[str]) -> list[Path]:
    """The ``shapes`` subcommand: one checkpoint per ``--k``."""
    from wrjax.checkpoint import save_pytree
    from wrjax.tasks import shapes

    data = shapes.load_shapes(args.preset)
    cfg = shapes.PRESETS[args.preset]
    out_dir = Path(args.out_dir)
    written = []
    for i, k in enumerate(args.k):
        load_start = os.getloadavg()
        key = jax.random.fold_in(jax.random.key(args.seed), i)
        train_key, sample_key = jax.random.split(key)
        params, info = shapes.pretrain(
            train_key,
            args.preset,
            k=k,
            num_epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            beta_final=args.beta_final,
            mode=args.mode,
            upsample=args.upsample,
            max_steps=args.max_steps,
            data=data,
            eval_max=args.eval_max,
        )
        model = shapes.make_model(args.preset, upsample=args.upsample)
        sample = jax.jit(shapes.prior_sample_areas, static_argnames=("model", "num_samples"))
        prior = np.asarray(sample(sample_key, model, params, num_samples=args.prior_samples))
        train_areas = data.areas[data.train_idx]
        name = f"{args.preset}-k_{_k_tag(k)}"
        path = out_dir / name
        meta = {
            "task": "shapes",
            "preset": args.preset,
            "k": "inf" if math.isinf(k) else k,
            "seed": args.seed,
            "upsample": args.upsample,
            "command": "python experiments/pretrain.py " + " ".join(argv),
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
                "n_train": int(len(data.train_idx)),
                "n_heldout": int(len(data.heldout_idx)),
            },
            "num_steps": info.num_steps,
            "seconds": round(info.seconds, 1),
            "machine": {
                **_machine(),
                # The CPU may be shared: the 1-minute load average before and after.
                "load_average_start": round(load_start[0], 2),
                "load_average_end": round(os.getloadavg()[0], 2),
            },
            "final_epoch": {
                "loss": float(info.epoch_loss[-1]),
                "log_lik": float(info.epoch_log_lik[-1]),
                "kl": float(info.epoch_kl[-1]),
                "beta": float(info.epoch_beta[-1]),
            },
            "epoch_loss": [round(float(v), 3) for v in info.epoch_loss],
            "train_elbo_beta1": info.train_elbo,
            "heldout_elbo_beta1": info.heldout_elbo,
            "prior_sample_areas": {"num_samples": args.prior_samples, **_quantiles(prior)},
            "train_data_areas": _quantiles(train_areas),
            "num_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        }
        save_pytree(path, params, meta)
        written.append(path.with_suffix(".msgpack"))
        print(
            f"wrote {path}.msgpack ({path.with_suffix('.msgpack').stat().st_size / 1e6:.2f} MB): "
            f"{info.num_steps} steps in {info.seconds:.0f} s; ELBO train "
            f"{info.train_elbo['elbo']:.1f} held-out {info.heldout_elbo['elbo']:.1f}; prior-sample "
            f"area mean {prior.mean():.1f} median {np.median(prior):.0f} max {prior.max():.0f}",
            flush=True,
        )
    return written


def add_shapes_parser(subparsers) -> None:
    p = subparsers.add_parser("shapes", help="2D shapes task (squares2d or dsprites)")
    p.add_argument("--preset", choices=["squares2d", "dsprites"], default="squares2d")
    p.add_argument(
        "--k", type=float, nargs="+", default=[math.inf],
        help="rank-weight strengths, one model each ('inf' = unweighted)",
    )
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's (20)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 squares2d, 32 dsprites")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    p.add_argument("--beta-final", type=float, default=None, help="default: 10 squares2d, 1 dsprites")
    p.add_argument("--mode", choices=["sample", "epoch"], default="sample")
    p.add_argument("--upsample", default="subpixel")
    p.add_argument("--max-steps", type=int, default=None, help="stop early (smoke runs)")
    p.add_argument("--eval-max", type=int, default=10000)
    p.add_argument("--prior-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="checkpoints/shapes")
    p.set_defaults(func=run_shapes)


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="task", required=True)
    add_shapes_parser(subparsers)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = args.func(args, argv)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return out


if __name__ == "__main__":
    main()
