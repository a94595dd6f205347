"""Run latent-space optimisation with weighted retraining on one task, over seeds.

    python -m experiments.run TASK [--preset smoke|paper] [--k K] [--retrain-every R|none]
                              [--budget B] [--seeds 0 1 2] [--workdir runs] [--optimizer ...]

Each seed's run goes to ``WORKDIR/TASK/GROUP/SETTING/seedN`` (records.jsonl, checkpoints/,
summary.json), GROUP naming the preset, budget and optimiser (``smoke-b20-grid``) and SETTING
k and the retrain interval (``k1e-3_r5``), so runs that differ in anything never share a
directory; an existing run directory is resumed. At the end a TopK table is printed and a
TopK-vs-evaluations plot is written to ``WORKDIR/TASK/GROUP/SETTING/topk.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from experiments import tasks as registry
from experiments.configs import RunConfig
from wrjax import LSOConfig, format_k, metrics, run
from wrjax.bo import REFIT_SCHEDULES
from wrjax.loop.run import run_config_json

_LSO_FIELDS = {f.name for f in dataclasses.fields(LSOConfig)}


def setting_name(k, retrain_every: int | None) -> str:
    """``k1e-3_r50``, ``kinf_rnever``: the directory of one ablation setting (k as
    :func:`wrjax.format_k` writes it)."""
    return f"k{format_k(k)}_r{'never' if retrain_every is None else retrain_every}"


def group_name(preset: str, budget: int, optimizer: str, refit: str | None = None,
               gp: dict | None = None) -> str:
    """``smoke-b20-grid``: the directory of the settings that share a preset, budget and
    optimiser (everything else a run depends on, but k and the retrain interval, and the
    seed, comes from the preset). A GP refit schedule other than the preset's
    (``--gp-refit``) is appended: ``paper-b500-gp-ei-incremental``, then the ``--gp``
    settings but the diagnostic ``audit_every``: ``...-incremental-refit_every=25``."""
    name = f"{preset}-b{int(budget)}-{optimizer}" + (f"-{refit}" if refit else "")
    return name + "".join(f"-{k}={v}" for k, v in sorted((gp or {}).items()) if k != "audit_every")


def parse_gp_setting(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` of ``--gp``: a :class:`wrjax.bo.GPFitConfig` field and a Python
    literal (``none`` = None); ``ValueError`` naming the fields otherwise."""
    import ast

    from wrjax.bo import GPFitConfig

    name, sep, value = text.partition("=")
    fields = [f.name for f in dataclasses.fields(GPFitConfig)]
    if not sep or name not in fields:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(fields)}; got {text!r}")
    if value.lower() == "none":
        return name, None
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def resolve_config(task_name: str, preset: str, overrides: dict) -> RunConfig:
    """The preset's :class:`RunConfig` with the command line's ``overrides`` applied:
    ``optimizer`` replaces the optimiser, ``refit`` the GP refit schedule of its
    :class:`wrjax.bo.BOConfig` (one of :data:`wrjax.bo.REFIT_SCHEDULES`), ``gp`` (a dict)
    other fields of it (``--gp NAME=VALUE``), the others (``k``,
    ``retrain_every``, ``budget``, ...) are :class:`wrjax.LSOConfig` fields of
    ``config.loop``."""
    config = registry.get_config(task_name, preset)
    loop = dict(overrides)
    optimizer = loop.pop("optimizer", None)
    refit = loop.pop("refit", None)
    gp_settings = dict(loop.pop("gp", None) or {})
    if refit is not None:
        gp_settings["refit"] = refit
    if gp_settings:
        from wrjax.bo import BOConfig

        config = dataclasses.replace(config, bo=dataclasses.replace(config.bo or BOConfig(), **gp_settings))
    if unknown := sorted(set(loop) - _LSO_FIELDS):
        raise ValueError(f"not LSOConfig fields: {unknown}")
    config = config.with_loop(**loop)
    return config if optimizer is None else dataclasses.replace(config, optimizer=optimizer)


def setting_dir(workdir: Path, task_name: str, preset: str, overrides: dict) -> Path:
    """``WORKDIR/TASK/GROUP/SETTING``: where the seeds of one setting go."""
    c = resolve_config(task_name, preset, overrides)
    group = group_name(preset, c.loop.get("budget", LSOConfig.budget), c.optimizer,
                       overrides.get("refit"), overrides.get("gp"))
    return Path(workdir) / task_name / group / setting_name(c.loop.get("k", 1e-3),
                                                             c.loop.get("retrain_every"))


def parse_retrain(value: str) -> int | None:
    return None if value.lower() in ("none", "never", "inf") else int(value)


def run_setting(task_name: str, preset: str, overrides: dict, seeds, workdir: Path,
                *, progress: bool = True, task_cache: dict | None = None) -> list[dict]:
    """Run one setting over seeds; returns the per-seed summaries."""
    config = resolve_config(task_name, preset, overrides)
    base = setting_dir(workdir, task_name, preset, overrides)
    constraint = (registry.constraint(task_name, config) if config.optimizer == "constrained-ei"
                  else None)  # fmt: skip
    name = base.name
    task_cache = {} if task_cache is None else task_cache
    summaries = []
    for seed in seeds:
        lso_config = config.lso_config(seed)
        cache_key = (task_name, preset, config.loop.get("k"))
        if cache_key not in task_cache:
            # The task's own randomness (e.g. pretraining) is fixed; only the run varies.
            task_cache[cache_key] = registry.build_task(task_name, jax.random.key(10_000), config)
        task = task_cache[cache_key]
        optimizer = registry.make_optimizer(task, config.optimizer, config.bo, constraint)
        out = base / f"seed{seed}"
        finished = _finished_summary(out, task, lso_config, optimizer)
        if finished is not None:  # read back, not re-run: resuming it would replay every record
            summaries.append(dict(finished, seed=int(seed), setting=name, dir=str(out)))
            continue
        t0 = time.time()
        result = run(jax.random.key(int(seed)), task, lso_config, optimizer=optimizer, workdir=out,
                     progress=progress)  # fmt: skip
        summary = dict(result.summary, seed=int(seed), setting=name, dir=str(out),
                       wall_seconds=time.time() - t0)
        summaries.append(summary)
    return summaries


def _finished_summary(out: Path, task, lso_config, optimizer) -> dict | None:
    """The ``summary.json`` of a finished run in ``out`` made with this very configuration, or
    ``None`` (no summary, or another configuration: then ``run`` decides). A stalled run is
    finished too: resuming it replays its records up to the same stall."""
    path = out / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # written atomically, so not expected; run() rewrites it
    want = run_config_json(task, lso_config, optimizer)
    if summary.get("status") not in ("complete", "stalled") or summary.get("config") != want:
        return None
    return summary


def format_table(summaries: list[dict]) -> str:
    """A markdown table: one row per setting, TopK as mean ± s.e. over seeds."""
    by_setting: dict[str, list[dict]] = {}
    for s in summaries:
        by_setting.setdefault(s["setting"], []).append(s)
    lines = ["| setting | seeds | Top1 | Top10 | Top50 | evaluations | discarded | time/seed (s) "
             "| s/query (median) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, group in by_setting.items():
        cells = []
        for key in ("top1", "top10", "top50"):
            vals = [g["final"][key] for g in group if g["final"].get(key) is not None]
            if not vals:
                cells.append("n/a")
                continue
            st = metrics.mean_and_stderr([np.array([v]) for v in vals])
            cells.append(f"{st.mean[0]:.3g} ± {st.stderr[0]:.2g}")
        n_eval = np.mean([g["num_evaluations"] for g in group])
        disc = np.mean([g["counts"]["invalid"] + g["counts"]["duplicate"] for g in group])
        # a run resumed over several processes: its summary's seconds span them all
        secs = np.mean([g["seconds"] if "processes" in g else g.get("wall_seconds", g["seconds"])
                        for g in group])
        stalled = sum(g.get("status", "complete") != "complete" for g in group)
        # a stalled seed has fewer evaluations than the budget: say so where the numbers are
        label = name if not stalled else f"{name} ({stalled} stalled)"
        per_query = [g["query_seconds"]["median"] for g in group
                     if (g.get("query_seconds") or {}).get("median") is not None]
        per_query = f"{np.median(per_query):.3g}" if per_query else "n/a"
        lines.append(f"| {label} | {len(group)} | {' | '.join(cells)} | {n_eval:.0f} | {disc:.0f} "
                     f"| {secs:.0f} | {per_query} |")
    return "\n".join(lines)


def preset_names() -> list[str]:
    """Every task's preset names (the ``--preset`` choices; a task may lack some)."""
    return sorted({p for t in registry.TASKS for p in registry.presets(t)})


def preset_help() -> str:
    return "presets per task: " + "; ".join(
        f"{t}: {', '.join(registry.presets(t))}" for t in sorted(registry.TASKS))


def check_preset(ap: argparse.ArgumentParser, task: str, preset: str) -> RunConfig:
    """The preset's config, or a usage error (exit 2) if the task has no such preset."""
    if preset not in registry.presets(task):
        ap.error(f"task {task!r} has no preset {preset!r}; choose from {', '.join(registry.presets(task))}")
    return registry.get_config(task, preset)


def positive_int(value: str) -> int:
    v = int(value)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return v


def user_errors():
    """The exceptions that mean a user's mistake (bad setting, workdir of another run, a
    workdir in use, a damaged run needing a decision): shown as a usage line, exit 2."""
    from wrjax.loop.run import RunError

    return (ValueError, RunError)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=preset_help())  # fmt: skip
    ap.add_argument("task", choices=sorted(registry.TASKS))
    ap.add_argument("--preset", default="smoke", choices=preset_names())
    ap.add_argument("--k", type=float, help="rank-weighting k (inf = no weighting)")
    ap.add_argument("--retrain-every", type=parse_retrain, default=argparse.SUPPRESS,
                    help="evaluations between retrains, or 'none'")
    ap.add_argument("--budget", type=positive_int)
    ap.add_argument("--optimizer", choices=registry.OPTIMIZERS)
    ap.add_argument("--gp-refit", choices=REFIT_SCHEDULES,
                    help="the sparse GP's schedule within a retrain cycle: a warm refit before "
                    "every query (the authors'), the same refit run to convergence, or rank-one "
                    "conditioning with refits on a schedule (wrjax.bo.GPFitConfig.refit); default: "
                    "the preset's")
    ap.add_argument("--gp", type=parse_gp_setting, action="append", metavar="NAME=VALUE",
                    help="set a wrjax.bo.GPFitConfig field of the preset's GP (repeatable), e.g. "
                    "--gp refit_every=25 --gp refit_max_steps=30; audit_every=N logs, every N-th "
                    "query, what the skipped refit would have proposed (proposals.jsonl)")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--workdir", type=Path, default=Path("runs"))
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    preset = check_preset(ap, args.task, args.preset)

    overrides = {}
    if args.k is not None:
        overrides["k"] = args.k
    if hasattr(args, "retrain_every"):
        overrides["retrain_every"] = args.retrain_every
    if args.budget is not None:
        overrides["budget"] = args.budget
    if args.optimizer is not None:
        overrides["optimizer"] = args.optimizer
    if args.gp_refit is not None:
        overrides["refit"] = args.gp_refit
    if args.gp:
        overrides["gp"] = dict(args.gp)
    seeds = args.seeds if args.seeds is not None else preset.seeds
    try:
        summaries = run_setting(args.task, args.preset, overrides, seeds, args.workdir,
                                progress=not args.no_progress)  # fmt: skip
    except user_errors() as e:
        ap.error(str(e).splitlines()[0] if str(e) else type(e).__name__)
    print()
    print(format_table(summaries))
    for s in summaries:
        best = s["best"][0] if s["best"] else None
        if best is not None:
            print(f"seed {s['seed']}: best {best['score']:.4g} at evaluation {best['eval']}: {best['text'][:80]}")
        q = s.get("query_seconds") or {}
        if q.get("median") is not None:
            print(f"seed {s['seed']}: {q['median']:.3g} s per query (median of {q['count']}; "
                  f"90th percentile {q['p90']:.3g} s)")
        audit = (s.get("optimizer") or {}).get("audit")
        if audit:
            print(f"seed {s['seed']}: {audit['count']} audits: the skipped refit valued the picks at "
                  f"{audit['ei_ratio_median']:.2%} of its best EI (median; 10th percentile "
                  f"{audit['ei_ratio_p10']:.2%})")
    if not args.no_plot:
        from experiments.plot import plot_settings

        setting_dir = Path(summaries[0]["dir"]).parent
        out = setting_dir / "topk.png"
        plot_settings([setting_dir], out, title=f"{args.task} ({args.preset})")
        print(f"records: {setting_dir}/seed*/records.jsonl   plot: {out}")


if __name__ == "__main__":
    main()
