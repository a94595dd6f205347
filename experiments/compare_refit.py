"""Compare the sparse GP's schedules within a retrain cycle on one loop: a warm refit before
every query (the authors', ``GPFitConfig(refit="every-query")``) against rank-one conditioning
with refits on a schedule (``refit="incremental"``, :mod:`wrjax.gp_update`), and optionally
(``--schedules ... every-query-converged``) a refit before every query run to convergence like
the incremental schedule's refits, which separates "better fits" from "rank-one updates".

One row per schedule, each the preset's weighted-retraining setting with a GP optimiser
(``--optimizer``, default ``gp-ei``; the incremental schedule is gp-ei's only) over the
preset's seeds (or ``--seeds``). Each run is the
resumable ``wrjax.run`` in the directory ``experiments.run`` gives it
(``WORKDIR/TASK/GROUP/SETTING/seedN``, the group naming the schedule), so

    python -m experiments.run expressions --preset cpu --gp-refit incremental --seeds 0 --workdir runs/refit

and this script share runs: finished seeds are read back, not rerun, and ``--report-only`` runs
nothing. The table (TopK mean +- s.e., seconds per query) is printed and written to
``WORKDIR/TASK/compare_refit-PRESET.md``, the TopK plot beside it.

Example::

    python -m experiments.compare_refit expressions --preset cpu --seeds 0 1 2 3 4 --workdir runs/refit
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments import tasks as registry
from experiments.report import Row, gather, write_report
from experiments.run import check_preset, positive_int

SCHEDULES = ("every-query", "every-query-converged", "incremental")
DEFAULT_SCHEDULES = ("every-query", "incremental")
GP_OPTIMIZERS = ("gp-ei", "thompson", "trust-region-ei", "trust-region-ts", "constrained-ei")


def parse_args(argv):
    """The arguments, with the preset's :class:`RunConfig` as ``args.config`` (usage error,
    exit 2, for a preset the task does not have)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("task", choices=sorted(registry.TASKS))
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--optimizer", default="gp-ei", choices=GP_OPTIMIZERS)
    ap.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(DEFAULT_SCHEDULES),
                    help="default: " + " ".join(DEFAULT_SCHEDULES) + "; every-query-converged runs "
                    "each warm refit to convergence as the incremental schedule's refits do")
    ap.add_argument("--budget", type=positive_int)
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--workdir", type=Path, default=Path("runs"))
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: tabulate and plot the seeds already finished")
    args = ap.parse_args(argv)
    args.config = check_preset(ap, args.task, args.preset)
    if args.optimizer != "gp-ei" and "incremental" in args.schedules:
        ap.error(f"the incremental schedule is gp-ei's only, not {args.optimizer}'s "
                 "(--schedules every-query every-query-converged)")
    return args


def main(argv=None) -> str:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    seeds = args.seeds if args.seeds is not None else args.config.seeds
    base = {"optimizer": args.optimizer} | ({} if args.budget is None else {"budget": args.budget})
    rows = [Row(f"WR + {args.optimizer}, {schedule}", dict(base, refit=schedule), args.workdir)
            for schedule in args.schedules]  # fmt: skip
    got = gather(rows, args.task, args.preset, seeds, report_only=args.report_only,
                 progress=not args.no_progress)  # fmt: skip
    if not got.summaries:
        raise SystemExit(f"no finished seeds of {args.task} {args.preset} under {args.workdir}")
    header = (f"{args.task}, preset {args.preset}, seeds {list(seeds)}"
              + (f", budget {args.budget}" if args.budget else ""))  # fmt: skip
    return write_report(got, header, args.workdir / args.task / f"compare_refit-{args.preset}.md",
                        title=f"{args.task} ({args.preset}): GP schedule")  # fmt: skip


if __name__ == "__main__":
    main()
