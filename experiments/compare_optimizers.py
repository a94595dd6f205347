"""Compare latent-space optimisers on one loop: plain LSO, the paper's weighted retraining with
EI, and weighted retraining with each other optimiser (``wrjax.latent_bo``).

Rows (each over the preset's seeds, or ``--seeds``):

* ``plain LSO``: the preset's optimiser (the paper's: the grid on shapes, GP-EI on the other
  tasks), no weighting (k = inf), no retraining;
* ``WR + <optimizer>``: k and retraining interval of the preset (the paper: 1e-3, every 50),
  for each name in ``--optimizers`` (default: the preset's optimiser, then gp-ei; random;
  thompson; trust-region-ei; trust-region-ts; and constrained-ei where the task defines a
  constraint). ``--no-plain`` drops the first row, ``--plain-only`` keeps only it.

A seed whose run directory already holds a finished (complete or stalled) run of the same
configuration is read back from its ``summary.json`` (its time is that run's), so rerunning
the command after an interruption finishes only what is missing and rebuilds the table;
``--report-only`` runs nothing and tabulates the seeds finished so far.

Each run is the resumable ``wrjax.run`` in ``WORKDIR/compare/TASK/PRESET/<optimizer>/<setting>``;
the table (TopK mean +- s.e. and time per seed) is printed and written to
``WORKDIR/compare/TASK/PRESET/compare.md``, the TopK plot beside it.

Example::

    python -m experiments.compare_optimizers expressions --preset cpu --budget 500
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from experiments import tasks as registry
from experiments.report import Row, gather, write_report

DEFAULT_OPTIMIZERS = ("gp-ei", "random", "thompson", "trust-region-ei", "trust-region-ts",
                      "constrained-ei")  # fmt: skip


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("task", choices=sorted(registry.TASKS))
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--optimizers", nargs="+", choices=registry.OPTIMIZERS,
                    help="default: the preset's optimiser, then " + ", ".join(DEFAULT_OPTIMIZERS))
    ap.add_argument("--budget", type=int)
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--workdir", type=Path, default=Path("runs"))
    plain = ap.add_mutually_exclusive_group()
    plain.add_argument("--no-plain", action="store_true", help="skip the plain-LSO row")
    plain.add_argument("--plain-only", action="store_true",
                       help="only the plain-LSO row (e.g. to add its seeds to a comparison)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: tabulate and plot the seeds already finished (missing ones are named)")
    args = ap.parse_args(argv)
    if args.preset not in registry.presets(args.task):
        ap.error(f"task {args.task!r} has presets {list(registry.presets(args.task))}, not {args.preset!r}")
    if args.budget is not None and args.budget < 1:
        ap.error("--budget must be >= 1")
    return args


def main(argv=None) -> str:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    preset = registry.get_config(args.task, args.preset)
    seeds = args.seeds if args.seeds is not None else preset.seeds
    base = {} if args.budget is None else {"budget": args.budget}
    root = args.workdir / "compare" / args.task / args.preset
    rows = []
    if not args.no_plain:  # the preset's own optimiser (the paper's: grid on shapes, GP-EI elsewhere)
        over = dict(base, k=math.inf, retrain_every=None, optimizer=preset.optimizer)
        rows.append(Row("plain LSO", over, root / "plain"))
    names = [] if args.plain_only else args.optimizers if args.optimizers is not None else (
        [preset.optimizer] + [n for n in DEFAULT_OPTIMIZERS if n != preset.optimizer])  # fmt: skip
    for name in names:
        if name == "constrained-ei" and not hasattr(registry.configs(args.task), "constraint"):
            print(f"skipping constrained-ei: task {args.task!r} defines no constraint")
            continue
        if name == "grid" and preset.optimizer != "grid":
            print(f"skipping grid: the grid is the 2-D shapes task's optimiser, not {args.task!r}'s")
            continue
        rows.append(Row(f"WR + {name}", dict(base, optimizer=name), root / name))
    got = gather(rows, args.task, args.preset, seeds, report_only=args.report_only,
                 progress=not args.no_progress)  # fmt: skip
    if args.report_only and not got.summaries:
        raise SystemExit(f"no finished seeds under {root}")
    header = (f"{args.task}, preset {args.preset}, seeds {list(seeds)}"
              + (f", budget {args.budget}" if args.budget else ""))  # fmt: skip
    return write_report(got, header, root / "compare.md", title=f"{args.task} ({args.preset})",
                        png_path=root / "compare_topk.png")  # fmt: skip


if __name__ == "__main__":
    main()
