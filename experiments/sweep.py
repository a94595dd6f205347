"""The ablation grid (settings x seeds) as parallel jobs: Ray tasks, or a local process pool.

    python -m experiments.sweep TASK [--preset P] [--k K] [--retrain-every R] [--extra-k K ...]
                                [--seeds S ...] [--budget B] [--workdir runs]
                                [--engine auto|ray|local] [--address ADDR] [--num-cpus N]
                                [--workers N] [--cpus-per-run 1] [--gpus-per-run 0]
                                [--max-retries 3]

Each job is one seed of one setting: the same resumable ``wrjax.run`` in the same directory as
``experiments.run`` and ``experiments.ablation`` use, so a job retried after its worker died
resumes from its last checkpoint and repeats no evaluation, and a sweep stopped and started
again only runs what is unfinished. The sweep ends by writing the ablation's table and TopK plot
(``ablation.md``, ``ablation_topk.png``) from the finished seeds.

Engines: ``ray`` runs the jobs as Ray tasks with resource requests (``--cpus-per-run``,
``--gpus-per-run``), on a new local Ray instance with ``--num-cpus`` CPUs (default: all of this
machine's) or on the running cluster at ``--address`` (``auto``: the one ``ray start`` started
on this machine), and retries a job whose worker died ``--max-retries`` times
(``pip install -e ".[sweep]"``); ``local`` runs them in ``--workers`` spawned processes;
``auto`` (default) is ``ray`` when it is installed, else ``local``. Progress: one line per
finished job and an overall bar.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

from experiments import tasks as registry
from experiments.ablation import ablation_settings, read_summaries
from experiments.plot import plot_settings
from experiments.run import (check_preset, format_table, parse_retrain, positive_int, preset_names,
                             run_setting, setting_dir, setting_name)  # fmt: skip


def run_job(task: str, preset: str, overrides: dict, seed: int, workdir: str) -> dict:
    """One seed of one setting, in its own process (a Ray task or a pool worker)."""
    # one BLAS/XLA thread pool per job: the engine runs several jobs side by side
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    [summary] = run_setting(task, preset, overrides, [seed], Path(workdir), progress=False)
    return {"setting": summary["setting"], "seed": seed, "final": summary["final"],
            "status": summary["status"], "dir": summary["dir"]}  # fmt: skip


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("task", choices=sorted(registry.TASKS))
    ap.add_argument("--preset", default="smoke", choices=preset_names())
    ap.add_argument("--k", type=float)
    ap.add_argument("--retrain-every", type=parse_retrain)
    ap.add_argument("--extra-k", type=float, nargs="*", default=[])
    ap.add_argument("--budget", type=positive_int)
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--workdir", type=Path, default=Path("runs"))
    ap.add_argument("--engine", choices=["auto", "ray", "local"], default="auto")
    ap.add_argument("--address", help="a running Ray cluster, or auto (default: a local instance)")
    ap.add_argument("--num-cpus", type=positive_int, help="CPUs of the local Ray instance")
    ap.add_argument("--workers", type=positive_int, default=2, help="local engine processes")
    ap.add_argument("--cpus-per-run", type=float, default=1.0)
    ap.add_argument("--gpus-per-run", type=float, default=0.0)
    ap.add_argument("--max-retries", type=int, default=3, help="Ray: retries after a worker died")
    args = ap.parse_args(argv)
    if args.address is not None and args.num_cpus is not None:
        ap.error("--num-cpus is for a local Ray instance, not with --address")
    preset = check_preset(ap, args.task, args.preset)
    if args.engine == "auto":
        try:
            import ray  # noqa: F401

            args.engine = "ray"
        except ImportError:
            args.engine = "local"
    elif args.engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            ap.error('--engine ray needs Ray: pip install -e ".[sweep]"')
    return args, preset


def jobs_of(args, preset) -> list[tuple[str, str, dict, int, str]]:
    k = args.k if args.k is not None else preset.loop.get("k", 1e-3)
    r = args.retrain_every if args.retrain_every is not None else preset.loop.get("retrain_every", 50)
    seeds = args.seeds if args.seeds is not None else preset.seeds
    extra = {} if args.budget is None else {"budget": args.budget}
    # absolute: a Ray worker runs in its raylet's folder (where `ray start` ran), not the sweep's
    workdir = str(Path(args.workdir).absolute())
    return [(args.task, args.preset, {"k": kk, "retrain_every": rr, **extra}, int(s), workdir)
            for kk, rr in ablation_settings(k, r, args.extra_k) for s in seeds]  # fmt: skip


def _run_local(jobs, workers):
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds JAX threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [pool.submit(run_job, *j) for j in jobs]
        for f in concurrent.futures.as_completed(futures):
            yield f.result()


def _run_ray(jobs, args):
    import ray

    started = not ray.is_initialized()  # else: the caller's connection, left open
    if started:
        # no address: a new local instance, never a cluster that happens to run on this machine
        ray.init(address=args.address or "local", num_cpus=args.num_cpus, log_to_driver=False)
    try:
        if started and args.address is None:  # it never grows: a request over its size hangs
            have = ray.cluster_resources()
            for name, want in (("CPU", args.cpus_per_run), ("GPU", args.gpus_per_run)):
                if want > have.get(name, 0):
                    raise SystemExit(f"a run asks for {want} {name}s; the local Ray instance has "
                                     f"{have.get(name, 0):g}")  # fmt: skip
        remote = ray.remote(num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run,
                            max_retries=args.max_retries, retry_exceptions=False)(run_job)  # fmt: skip
        pending = [remote.remote(*j) for j in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


def report(args, preset) -> str:
    """The ablation table and plot from the finished seeds (as ``ablation --report-only``)."""
    k = args.k if args.k is not None else preset.loop.get("k", 1e-3)
    r = args.retrain_every if args.retrain_every is not None else preset.loop.get("retrain_every", 50)
    seeds = args.seeds if args.seeds is not None else preset.seeds
    extra = {} if args.budget is None else {"budget": args.budget}
    summaries, dirs, sdir = [], [], None
    for kk, rr in ablation_settings(k, r, args.extra_k):
        sdir = setting_dir(args.workdir, args.task, args.preset, {"k": kk, "retrain_every": rr, **extra})
        found = read_summaries(sdir, setting_name(kk, rr), seeds)
        summaries += found
        if found:
            dirs.append(sdir)
    if not summaries:
        return "no finished seeds"
    table = format_table(summaries)
    (sdir.parent / "ablation.md").write_text(table + "\n")
    plot_settings(dirs, sdir.parent / "ablation_topk.png", title=f"{args.task} sweep ({args.preset})")
    return table


def main(argv=None) -> str:
    args, preset = parse_args(list(sys.argv[1:] if argv is None else argv))
    jobs = jobs_of(args, preset)
    print(f"{len(jobs)} runs on the {args.engine} engine", flush=True)
    results = _run_ray(jobs, args) if args.engine == "ray" else _run_local(jobs, args.workers)
    with tqdm(total=len(jobs), desc="sweep", unit="run") as bar:
        for res in results:
            top1 = res["final"].get("top1")
            bar.write(f"done {res['setting']} seed {res['seed']}: {res['status']}, Top1 {top1}")
            bar.update(1)
    table = report(args, preset)
    print(table)
    return table


if __name__ == "__main__":
    main()
