"""The paper's ablation: {no weighting, weighting} x {no retraining, retraining} over seeds.

    python -m experiments.ablation TASK [--preset smoke|paper|...] [--k 1e-3] [--retrain-every 50]
                                   [--extra-k 1e-5] [--seeds 0 1 2] [--workdir runs]
                                   [--report-only]

Settings (§6): k = inf & never (plain LSO), k = inf & every R (retraining only),
k = K & never (weighting only), k = K & every R (weighted retraining); ``--extra-k`` adds
weighted-retraining settings with other k. Writes ``WORKDIR/TASK/GROUP/ablation.md`` (the
table; GROUP as in ``experiments.run``, e.g. ``paper-b60-grid``) and
``WORKDIR/TASK/GROUP/ablation_topk.png`` (TopK curves, mean ± s.e.). ``--report-only`` runs
nothing and redraws both from the seeds already finished (e.g. settings run in parallel with
``experiments.run``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from experiments import tasks as registry
from experiments.plot import plot_settings
from experiments.run import (check_preset, format_table, parse_retrain, positive_int, preset_help,
                             preset_names, run_setting, setting_dir, setting_name, user_errors)


def ablation_settings(k: float, retrain_every: int, extra_k=()) -> list[tuple[float, int | None]]:
    settings = [(math.inf, None), (math.inf, retrain_every), (k, None), (k, retrain_every)]
    return settings + [(kk, retrain_every) for kk in extra_k]


def read_summaries(setting_dir: Path, name: str, seeds) -> list[dict]:
    """The finished seeds' ``summary.json`` of one setting (missing seeds are reported)."""
    out = []
    for seed in seeds:
        path = setting_dir / f"seed{seed}" / "summary.json"
        if not path.exists():
            print(f"missing: {path}")
            continue
        out.append(dict(json.loads(path.read_text()), seed=int(seed), setting=name, dir=str(path.parent)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=preset_help())  # fmt: skip
    ap.add_argument("task", choices=sorted(registry.TASKS))
    ap.add_argument("--preset", default="smoke", choices=preset_names())  # as run and sweep
    ap.add_argument("--k", type=float)
    ap.add_argument("--retrain-every", type=parse_retrain)
    ap.add_argument("--extra-k", type=float, nargs="*", default=[])
    ap.add_argument("--budget", type=positive_int)
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--workdir", type=Path, default=Path("runs"))
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: tabulate and plot the seeds' summary.json files already in WORKDIR")
    args = ap.parse_args(argv)

    preset = check_preset(ap, args.task, args.preset)
    k = args.k if args.k is not None else preset.loop.get("k", 1e-3)
    r = args.retrain_every if args.retrain_every is not None else preset.loop.get("retrain_every", 50)
    seeds = args.seeds if args.seeds is not None else preset.seeds
    extra = {} if args.budget is None else {"budget": args.budget}
    summaries, dirs = [], []
    cache: dict = {}
    for kk, rr in ablation_settings(k, r, args.extra_k):
        name = setting_name(kk, rr)
        over = {"k": kk, "retrain_every": rr, **extra}
        sdir = setting_dir(args.workdir, args.task, args.preset, over)
        if args.report_only:
            found = read_summaries(sdir, name, seeds)
            summaries += found
            if found:
                dirs.append(sdir)
            continue
        print(f"== {name} ==", flush=True)
        try:
            summaries += run_setting(args.task, args.preset, over, seeds, args.workdir,
                                     progress=not args.no_progress, task_cache=cache)  # fmt: skip
        except user_errors() as e:
            ap.error(str(e).splitlines()[0] if str(e) else type(e).__name__)
        dirs.append(sdir)
    out_dir = sdir.parent
    if not summaries:
        ap.error(f"no finished seeds under {out_dir}: nothing to report ({out_dir / 'ablation.md'} left as it is)")
    table = format_table(summaries)
    (out_dir / "ablation.md").write_text(table + "\n")
    png = plot_settings(dirs, out_dir / "ablation_topk.png", title=f"{args.task} ablation ({args.preset})")
    print(table)
    print(f"table: {out_dir / 'ablation.md'}   plot: {png}")


if __name__ == "__main__":
    main()
