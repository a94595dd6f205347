"""Benchmark: the shapes task as one compiled program, several seeds vmapped vs one by one.

The whole weighted-retraining run on squares2d (weights, fine-tunes, 50x50 grid search,
appending) is one jitted function of a key (``wrjax.make_compiled_run``, which scans the
host driver's steps).
This times, after compilation, with ``block_until_ready`` and the median of repeats:

  * S seeds in one program: ``jit(vmap(run))(keys, params)`` (``make_seeds_run(mode="vmap")``);
  * S seeds in one program in sequence: ``jit(lax.map(run))`` (``mode="map"``, the CPU default);
  * the same S seeds one after another: ``jit(run)(key, params)`` S times;
  * (reference) one seed through the host driver ``wrjax.run`` with the grid
    optimiser, which records, checkpoints and can resume, times S.

Run:  python benchmarks/shapes_seeds.py [--seeds 5] [--budget 500] [--retrain-every 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time

import jax
import numpy as np

import wrjax
from wrjax.loop import make_compiled_run, make_seeds_run
from wrjax.tasks.shapes import make_shapes_task


def timed(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--retrain-every", type=int, default=50)
    ap.add_argument("--k", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-host", action="store_true", help="skip the host-loop reference")
    args = ap.parse_args()

    task = make_shapes_task(None, "squares2d")  # the unweighted (k = inf) checkpoint
    params = task.params
    config = wrjax.LSOConfig(budget=args.budget, retrain_every=args.retrain_every, k=args.k,
                             batch_size=32)  # fmt: skip
    grid = wrjax.grid_optimizer(task)
    run = make_compiled_run(task, config, optimizer=grid)
    keys = jax.random.split(jax.random.key(0), args.seeds)
    vmapped = make_seeds_run(run, mode="vmap")
    mapped = make_seeds_run(run, mode="map")
    single = jax.jit(run)

    t0 = time.perf_counter()
    jax.block_until_ready(vmapped(keys, params))
    compile_v = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(mapped(keys, params))
    compile_m = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(single(keys[0], params))
    compile_s = time.perf_counter() - t0

    # interleaved: one repeat of each in turn, so that load changes hit all three alike
    times = {"v": [], "m": [], "s": []}
    for _ in range(args.repeats):
        t, res_v = timed(lambda: vmapped(keys, params), 1)
        times["v"].append(t)
        times["m"].append(timed(lambda: mapped(keys, params), 1)[0])
        times["s"].append(timed(lambda: [single(k, params) for k in keys], 1)[0])
    t_v, t_m, t_s = (statistics.median(times[c]) for c in "vms")
    top1 = np.nanmax(np.asarray(res_v.scores), axis=1)

    rows = [
        (f"{args.seeds} seeds, one vmapped program (mode='vmap')", t_v, 1.0),
        (f"{args.seeds} seeds, one lax.map program (mode='map')", t_m, t_m / t_v),
        (f"{args.seeds} seeds, compiled run one after another", t_s, t_s / t_v),
    ]
    if not args.no_host:
        tmp = tempfile.mkdtemp()
        wrjax.run(jax.random.key(99), task, config, optimizer=grid, workdir=f"{tmp}/warm",
                  progress=False)  # compile  # fmt: skip
        t0 = time.perf_counter()
        wrjax.run(jax.random.key(0), task, config, optimizer=grid, workdir=f"{tmp}/run", progress=False)
        t_h = (time.perf_counter() - t0) * args.seeds
        shutil.rmtree(tmp)
        rows.append((f"host driver wrjax.run (1 seed timed, x{args.seeds})", t_h, t_h / t_v))

    print(f"machine: {platform.machine()} CPU x{jax.local_device_count()} "
          f"[{jax.devices()[0].platform}], jax {jax.__version__}; squares2d budget {args.budget}, "
          f"retrain every {args.retrain_every}, k={args.k:g}; median of {args.repeats}")
    print(f"compile: vmapped {compile_v:.1f} s, lax.map {compile_m:.1f} s, single "
          f"{compile_s:.1f} s (first call, incl. run)")
    print("| how | seconds for all seeds | ratio to vmapped |")
    print("|---|---|---|")
    for name, t, r in rows:
        print(f"| {name} | {t:.1f} | {r:.2f} |")
    print(f"Top1 per seed (vmapped run): {top1.tolist()}")


if __name__ == "__main__":
    main()
