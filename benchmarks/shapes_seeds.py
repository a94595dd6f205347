"""Benchmark: the shapes task as one compiled program, several seeds vmapped vs one by one.

The whole weighted-retraining run on squares2d (weights, fine-tunes, 50x50 grid search,
appending) is one jitted function of a key (``wrjax.tasks.shapes_task.make_compiled_run``).
This times, after compilation, with ``block_until_ready`` and the median of repeats:

  * S seeds in one program: ``jit(vmap(run))(keys, params)``;
  * the same S seeds one after another: ``jit(run)(key, params)`` S times;
  * (reference) one seed through the host-side loop ``wrjax.lso.run`` with the grid
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

from wrjax import lso
from wrjax.tasks import shapes
from wrjax.tasks.shapes_task import (
    CompiledRunConfig, checkpoint_for_k, make_compiled_run, make_seeds_run, make_shapes_task,
)  # fmt: skip


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

    data = shapes.load_shapes("squares2d")
    model, params, _ = shapes.load_pretrained(str(checkpoint_for_k("squares2d", None)))
    x, y = data.images[data.train_idx], data.areas[data.train_idx]
    cfg = CompiledRunConfig(budget=args.budget, retrain_every=args.retrain_every, k=args.k)
    run = make_compiled_run(model, shapes.grid_points("squares2d"), x, y, cfg)
    keys = jax.random.split(jax.random.key(0), args.seeds)
    vmapped = make_seeds_run(run)
    single = jax.jit(run)

    t0 = time.perf_counter()
    jax.block_until_ready(vmapped(keys, params))
    compile_v = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(single(keys[0], params))
    compile_s = time.perf_counter() - t0

    t_v, res_v = timed(lambda: vmapped(keys, params), args.repeats)
    t_s, _ = timed(lambda: [single(k, params) for k in keys], args.repeats)
    top1 = np.nanmax(np.asarray(res_v.scores), axis=1)

    rows = [
        (f"{args.seeds} seeds, one vmapped program", t_v, 1.0),
        (f"{args.seeds} seeds, compiled run one after another", t_s, t_s / t_v),
    ]
    if not args.no_host:
        task = make_shapes_task(None, "squares2d")
        config = lso.LSOConfig(budget=args.budget, retrain_every=args.retrain_every, k=args.k,
                               optimizer="grid", batch_size=32)  # fmt: skip
        tmp = tempfile.mkdtemp()
        lso.run(jax.random.key(99), task, config, workdir=f"{tmp}/warm", progress=False)  # compile
        t0 = time.perf_counter()
        lso.run(jax.random.key(0), task, config, workdir=f"{tmp}/run", progress=False)
        t_h = (time.perf_counter() - t0) * args.seeds
        shutil.rmtree(tmp)
        rows.append((f"host loop wrjax.lso.run (1 seed timed, x{args.seeds})", t_h, t_h / t_v))

    print(f"machine: {platform.machine()} CPU x{jax.local_device_count()} "
          f"[{jax.devices()[0].platform}], jax {jax.__version__}; squares2d budget {args.budget}, "
          f"retrain every {args.retrain_every}, k={args.k:g}; median of {args.repeats}")
    print(f"compile: vmapped {compile_v:.1f} s, single {compile_s:.1f} s (first call, incl. run)")
    print("| how | seconds for all seeds | ratio to vmapped |")
    print("|---|---|---|")
    for name, t, r in rows:
        print(f"| {name} | {t:.1f} | {r:.2f} |")
    print(f"Top1 per seed (vmapped run): {top1.tolist()}")


if __name__ == "__main__":
    main()
