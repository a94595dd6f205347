"""Pretrain the VAE of a task and save it as a shipped model (msgpack + JSON record).

One command, one subcommand per task::

  python experiments/pretrain.py toy
  python experiments/pretrain.py shapes --preset squares2d --k inf 1e-3 1e-5
  python experiments/pretrain.py shapes --preset dsprites --k inf 1e-5 --epochs 20
  python experiments/pretrain.py expressions --k inf --epochs 20
  python experiments/pretrain.py chem --preset gru --epochs 20 --batch-size 128 ...

``python experiments/pretrain.py --help`` lists the tasks and their presets,
``python experiments/pretrain.py TASK --help`` the task's options.

The protocol of a task (how to add one: copy ``wrjax/tasks/toy/pretrain.py``)
------------------------------------------------------------------------------
``wrjax/tasks/<task>/pretrain.py`` defines

* ``PRESETS``: a tuple (or mapping) of the preset names, listed in ``--help``;
* ``add_arguments(parser)``: the task's own options on its subparser (not the common ones);
* ``main(args) -> None``: the recipe (built on ``wrjax.vae.train``), reading the parsed
  ``args``, which always carry, set here:

  - ``args.out``: ``Path`` or ``None``: ``--out`` as given (a folder for tasks that write
    several models, e.g. one per ``--k``; the checkpoint's stem path for tasks that write one);
  - ``args.checkpoint_dir``: the default folder, ``<checkout>/checkpoints/<task>`` (or
    ``./checkpoints/<task>`` outside a checkout);
  - ``args.seed`` (``--seed``, default 0) and ``args.time_limit`` (``--time-limit``: seconds of
    training, ``None``: no limit; pass it to ``train(time_limit_s=...)``);
  - ``args.command``: this command line, as recorded;
  - ``args.save(path, params, *, config, record=None) -> Path``: THE writer of a model:
    ``wrjax.checkpoint.save_model`` with ``record`` plus ``"command"``, ``"seconds"`` (time since
    the command started, unless ``record`` sets its own) and the machine description; prints
    where it wrote. ``config`` is what the task's ``build_fn`` needs to rebuild the model.

Times on the 2-core development CPU (see ``checkpoints/shapes/README.md``): squares2d 7-18 min
per k (12,940 steps; depends on the load); dsprites about 0.42 s per step, 7,296 steps per
epoch, so about 17 h per k for the default 20 epochs (use a GPU or ``--epochs``).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
from pathlib import Path

TASKS = ("toy", "shapes", "expressions", "chem")
HELP = {
    "toy": "the toy bit-string MLP VAE (seconds)",
    "shapes": "2D shapes task (squares2d or dsprites)",
    "expressions": "the expression grammar VAE",
    "chem": "the SELFIES VAE on ZINC250k",
}


def task_module(task: str):
    """``wrjax.tasks.<task>.pretrain`` (imported on demand: a task's imports stay its own)."""
    try:
        module = importlib.import_module(f"wrjax.tasks.{task}.pretrain")
    except ModuleNotFoundError as e:
        if e.name not in (f"wrjax.tasks.{task}", f"wrjax.tasks.{task}.pretrain"):
            raise
        return _legacy(task)
    if not (hasattr(module, "add_arguments") and hasattr(module, "main")):
        return _legacy(task)  # a task package still moving over
    return module


def default_checkpoint_dir(task: str) -> Path:
    from wrjax import paths

    root = paths.repo_root()
    return (root if root is not None else Path.cwd()) / "checkpoints" / task


def make_saver(start: float, command: str):
    """The ``args.save`` of the protocol (see the module docstring)."""

    def save(path, params, *, config: dict, record: dict | None = None) -> Path:
        from wrjax.checkpoint import save_model

        record = dict(record or {})
        record.setdefault("seconds", round(time.perf_counter() - start, 1))
        record = {"command": command, **record}
        path = Path(path)
        save_model(path, params, config=config, record=record)
        blob = Path(f"{path}.msgpack")
        print(f"wrote {blob} ({blob.stat().st_size / 1e6:.2f} MB)", flush=True)
        return path

    return save


def build_parser(tasks=TASKS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python experiments/pretrain.py", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for task in tasks:
        module = task_module(task)
        presets = tuple(getattr(module, "PRESETS", ()))
        help_text = HELP[task] + (f"; presets: {', '.join(presets)}" if presets else "")
        p = sub.add_parser(task, help=help_text, description=help_text)
        p.add_argument("--out", type=Path, default=None,
                       help=f"where to write (default under checkpoints/{task}/)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--time-limit", type=float, default=None, help="seconds of training")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args._module, "LEGACY", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    args.command = "python experiments/pretrain.py " + shlex.join(argv)
    args.checkpoint_dir = default_checkpoint_dir(args.task)
    args.save = make_saver(start, args.command)
    out = args._module.main(args)
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Transition: tasks whose package has no pretrain module yet
# ---------------------------------------------------------------------------------------------


def _legacy(task: str):
    import types

    if task == "shapes":
        return types.SimpleNamespace(PRESETS=("squares2d", "dsprites"),
                                     add_arguments=shapes_add_arguments, main=shapes_main)
    script = {"expressions": "pretrain_expressions", "chem": "pretrain_chem"}.get(task)
    if script is not None:  # the old script, its own parser after the subcommand
        def main(args):
            from wrjax import paths

            if paths.repo_root() is not None and str(paths.repo_root()) not in sys.path:
                sys.path.insert(0, str(paths.repo_root()))
            old = importlib.import_module(f"experiments.{script}")
            rest = list(args.extra)
            for flag, v in (("--out", args.out), ("--time-limit", args.time_limit)):
                if v is not None:
                    rest += [flag, str(v)]
            return old.main(rest + ["--seed", str(args.seed)])

        return types.SimpleNamespace(PRESETS=(), add_arguments=lambda p: None, main=main,
                                     LEGACY=True)
    raise ModuleNotFoundError(f"no pretraining for task {task!r}: wrjax.tasks.{task}.pretrain")


# The shapes recipe's command line, to move to wrjax/tasks/shapes/pretrain.py (used from
# here until that module exists).


def shapes_add_arguments(p) -> None:
    import math

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


def _quantiles(x) -> dict:
    import numpy as np

    qs = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "q05": float(qs[0]), "q25": float(qs[1]), "median": float(qs[2]),
            "q75": float(qs[3]), "q95": float(qs[4]), "max": float(x.max())}  # fmt: skip


def shapes_main(args) -> list[Path]:
    """One checkpoint per ``--k`` in ``--out`` (a folder; default checkpoints/shapes)."""
    import math
    import os

    import jax
    import numpy as np

    from wrjax.tasks import shapes
    from wrjax.weighting import format_k

    data = shapes.load_shapes(args.preset)
    cfg = shapes.PRESETS[args.preset]
    out_dir = Path(args.out) if args.out is not None else args.checkpoint_dir
    written = []
    for i, k in enumerate(args.k):
        load_start = os.getloadavg()
        key = jax.random.fold_in(jax.random.key(args.seed), i)
        train_key, sample_key = jax.random.split(key)
        t0 = time.perf_counter()
        params, info = shapes.pretrain(
            train_key, args.preset, k=k, num_epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.lr, beta_final=args.beta_final, mode=args.mode,
            upsample=args.upsample, max_steps=args.max_steps, data=data, eval_max=args.eval_max,
        )  # fmt: skip
        model = shapes.make_model(args.preset, upsample=args.upsample)
        sample = jax.jit(shapes.prior_sample_areas, static_argnames=("model", "num_samples"))
        prior = np.asarray(sample(sample_key, model, params, num_samples=args.prior_samples))
        config = {"task": "shapes", "preset": args.preset, "upsample": args.upsample}
        record = {
            **config,
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
                "n_train": int(len(data.train_idx)),
                "n_heldout": int(len(data.heldout_idx)),
            },
            "data": {"preset": args.preset, "n_train": int(len(data.train_idx))},
            "num_steps": info.num_steps,
            "seconds": round(time.perf_counter() - t0, 1),
            # The CPU may be shared: the 1-minute load average before and after.
            "machine": {"load_average_start": round(load_start[0], 2),
                        "load_average_end": round(os.getloadavg()[0], 2)},
            "metrics": {"final_epoch": {"loss": float(info.epoch_loss[-1]),
                                        "log_lik": float(info.epoch_log_lik[-1]),
                                        "kl": float(info.epoch_kl[-1]),
                                        "beta": float(info.epoch_beta[-1])},
                        "train_elbo_beta1": info.train_elbo,
                        "heldout_elbo_beta1": info.heldout_elbo},
            "epoch_loss": [round(float(v), 3) for v in info.epoch_loss],
            "prior_sample_areas": {"num_samples": args.prior_samples, **_quantiles(prior)},
            "train_data_areas": _quantiles(data.areas[data.train_idx]),
            "num_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        }
        path = args.save(out_dir / f"{args.preset}-k_{format_k(k)}", params, config=config,
                         record=record)
        written.append(path)
        print(f"{info.num_steps} steps in {info.seconds:.0f} s; ELBO train "
              f"{info.train_elbo['elbo']:.1f} held-out {info.heldout_elbo['elbo']:.1f}; prior-sample "
              f"area mean {prior.mean():.1f} median {np.median(prior):.0f} max {prior.max():.0f}",
              flush=True)
    return written


if __name__ == "__main__":
    main()
