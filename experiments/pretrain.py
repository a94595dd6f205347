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
    return importlib.import_module(f"wrjax.tasks.{task}.pretrain")


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
    if "--distributed" in argv:  # first: importing the tasks' modules starts JAX's backend
        from wrjax import parallel

        parallel.initialize_distributed()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = "python experiments/pretrain.py " + shlex.join(argv)
    args.checkpoint_dir = default_checkpoint_dir(args.task)
    args.save = make_saver(start, args.command)
    out = args._module.main(args)
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    main()
