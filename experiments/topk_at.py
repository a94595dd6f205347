"""TopK after a given number of evaluations, per run and over seeds, read from the runs'
``records.jsonl``: finished, stopped and still-running runs alike.

A run's ``summary.json`` holds its TopK curves only once it ends; comparing schedules part
way (after 100, 200, 300 evaluations, as ``experiments/RESULTS.md`` does) needs the records.
"After n evaluations" means over the records with ``eval < n`` (the budget's axis: a failed
evaluation uses one of the n), the K-th best successful score among them
(:func:`wrjax.metrics.topk_curve`'s definition). A run that has not reached n evaluations is
left out of that column's mean and shown as blank.

    python -m experiments.topk_at runs/paper_inc_carry runs/paper_everyquery --after 100 200 300 500

Each argument is a folder searched for run directories (those with a ``records.jsonl``);
runs are grouped by their setting directory (the run directory's parent), one row per run
and one mean ± s.e. row per group with two or more runs. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from wrjax import metrics
from wrjax.loop.records import load_records

KS = (1, 10, 50)


def evaluations(run_dir: Path) -> list[dict]:
    """The run's evaluated records (those with an ``eval`` index: successful or failed; the
    discarded duplicates and invalid decodes have none), in evaluation order."""
    return sorted((r for r in load_records(run_dir) if r.get("eval") is not None), key=lambda r: r["eval"])


def topk_after(records: list[dict], n: int, ks=KS) -> dict[str, float] | None:
    """``{"top1": ..., ...}`` over the evaluated ``records`` (:func:`evaluations`) with
    ``eval < n``; ``None`` if the run has not made n evaluations yet; NaN for a K with fewer
    than K successful scores."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(records) < n:
        return None
    scores = np.array([r["score"] for r in records if r["eval"] < n and r["status"] == "ok"], np.float64)
    out = {}
    for k in ks:
        curve = np.asarray(metrics.topk_curve(scores, k)) if scores.size else np.array([np.nan])
        out[f"top{k}"] = float(curve[-1])
    return out


def find_runs(roots) -> list[Path]:
    """Run directories (holding ``records.jsonl``) under each root, sorted."""
    runs = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"no such folder: {root}")
        runs += [p.parent for p in root.rglob("records.jsonl")]
    return sorted(set(runs))


def _cell(vals: dict | None, ks) -> str:
    if vals is None:
        return ""
    return " / ".join(f"{vals[f'top{k}']:.3g}" for k in ks)


def table(roots, after=(100, 200, 300, 500), ks=KS) -> str:
    """The markdown table: one row per run (``setting/seedN``, evaluations made, TopK after
    each n) and, per setting with two or more runs, ``mean ± s.e.`` over the runs that reached
    each n (:func:`wrjax.metrics.mean_and_stderr`), with their count."""
    runs = find_runs(roots)
    if not runs:
        raise FileNotFoundError(f"no run directory (records.jsonl) under {', '.join(map(str, roots))}")
    head = "| run | evaluations | " + " | ".join(f"after {n}" for n in after) + " |"
    lines = [head, "|---|---|" + "---|" * len(after)]
    groups: dict[Path, list] = {}
    for run in runs:
        recs = evaluations(run)
        got = [topk_after(recs, n, ks) for n in after]
        groups.setdefault(run.parent, []).append(got)
        lines.append(f"| {'/'.join(run.parts[-3:])} | {len(recs)} | "
                     + " | ".join(_cell(g, ks) for g in got) + " |")  # fmt: skip
    for setting, rows in groups.items():
        if len(rows) < 2:
            continue
        cells = []
        for j in range(len(after)):
            reached = [r[j] for r in rows if r[j] is not None]
            if not reached:
                cells.append("")
                continue
            parts = []
            for k in ks:
                stats = metrics.mean_and_stderr([np.array([r[f"top{k}"]]) for r in reached])
                parts.append(f"{stats.mean[0]:.3g} ± {stats.stderr[0]:.2g}")
            cells.append(" / ".join(parts) + f" ({len(reached)})")
        lines.append(f"| **{setting.parent.name}/{setting.name}: mean ± s.e.** | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+", type=Path, help="folders holding run directories")
    ap.add_argument("--after", type=int, nargs="+", default=[100, 200, 300, 500])
    ap.add_argument("--k", type=int, nargs="+", default=list(KS))
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.after) or any(k < 1 for k in args.k):
        ap.error("--after and --k take positive integers")
    try:
        print(table(args.roots, args.after, args.k))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
