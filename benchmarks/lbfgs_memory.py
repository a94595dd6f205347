"""Benchmark: per-query warm refits with L-BFGS restarted afresh vs with its memory carried.

The authors refit the sparse GP before every query; wrjax's warm refit is ``--steps`` L-BFGS
iterations (``GPFitConfig.warm_steps``, 20). Until ``GPFitConfig.carry_lbfgs`` existed every
refit started L-BFGS afresh, and a fresh L-BFGS spends its first iterations on gradient-like
steps whose zoom line search needs several bound-and-gradient evaluations each.
:func:`wrjax.gp.carry_lbfgs_state` keeps the previous fit's curvature pairs instead.

What it runs (one process, both schedules from the same cold fit on the same data):

* data: ``--data synthetic`` (``bo_step.synthetic``, N = ``--n`` rows, D = ``--dim``) or
  ``--data expressions`` (the expressions task's 5,000 initial points encoded by its shipped
  model: the paper preset's cycle-0 GP data, D = 25). The ``--queries`` best rows are held
  out and join the data one per query, best first (BO's queries sit near the optimum), so
  the objective changes between refits as in a run; shapes stay fixed (a mask grows).
* cold fit: :func:`wrjax.gp.cold_fit` with the library defaults (``M = --inducing``).
* per query: the new row joins, the targets are re-standardised (as the loop does), and one
  refit of ``--steps`` iterations runs from the previous parameters, fresh or carried.
  Timed after compilation (both programs compiled first), ``block_until_ready`` on each.
* equal bound: after the last query (the same data for both), the fresh schedule continues
  with further fresh refits of ``--steps`` until its bound reaches the carried schedule's
  final bound (at most ``--max-extra`` refits); the table reports the time each schedule
  spent to reach that bound.

Run:  python benchmarks/lbfgs_memory.py [--data synthetic|expressions] [--dim 56] [--write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wrjax import gp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402 - the module beside this script
from bo_step import synthetic  # noqa: E402


def load_data(args):
    if args.data == "synthetic":
        z, y = synthetic(np.random.default_rng(args.seed), args.n, args.dim)
        return np.asarray(z, np.float64), np.asarray(y, np.float64)
    from wrjax.loop.steps import encode_all
    from wrjax.tasks.expressions import make_expressions_task

    task = make_expressions_task(jax.random.PRNGKey(args.seed), k=1e-3, num_initial=5000)
    z = np.asarray(encode_all(task.model, task.params, task.x), np.float64)
    return z, np.asarray(task.y, np.float64)


def run(args):
    z, y = load_data(args)
    n = len(y)
    order = np.argsort(-y)  # best first
    held = order[: args.queries]
    mask0 = np.ones(n, bool)
    mask0[held] = False
    opt = gp.make_optimizer(method="lbfgs")
    with jax.enable_x64(True):
        fit = jax.jit(lambda p, s, d: gp.fit(p, s, d, optimizer=opt, num_steps=args.steps))
        carry = jax.jit(gp.carry_lbfgs_state)
        make = jax.jit(gp.make_data)
        cold = jax.jit(lambda k, d: gp.cold_fit(k, d, num_inducing=args.inducing))
        data0 = make(z, y, mask0)
        t = time.perf_counter()
        p0, cinfo = cold(jax.random.PRNGKey(args.seed + 1), data0)
        jax.block_until_ready(p0)
        cold_s = time.perf_counter() - t
        print(f"N {n} D {z.shape[1]}: cold fit {cold_s:.1f} s (with compilation), bound "
              f"{float(cinfo.elbo):.1f}, {int(cinfo.num_steps)} steps", flush=True)
        # compile both refit paths before timing (a fit's output state, not a fresh init, is
        # what the carried path sees: its scalars are not weakly typed)
        p1, s1, _ = fit(p0, opt.init(p0), data0)
        jax.block_until_ready(fit(p1, carry(s1, p1, data0), data0))
        jax.block_until_ready(fit(p0, carry(opt.init(p0), p0, data0), data0))  # query 1's input

        out = {}
        for name in ("fresh", "carried"):
            p, s = p0, opt.init(p0)
            mask = mask0.copy()
            secs, bounds, evals = [], [], []
            for q in range(args.queries):
                mask[held[q]] = True
                data = make(z, y, mask)
                jax.block_until_ready(data)
                t = time.perf_counter()
                s = carry(s, p, data) if name == "carried" else opt.init(p)
                p, s, info = fit(p, s, data)
                jax.block_until_ready((p, s))
                secs.append(time.perf_counter() - t)
                bounds.append(float(info.elbo))
                if args.verbose:
                    print(f"  {name} query {q + 1}: {secs[-1]:.2f} s, bound {bounds[-1]:.1f}", flush=True)
            out[name] = dict(seconds=secs, bounds=bounds, params=p, state=s, data=data)
            print(f"{name}: median refit {statistics.median(secs):.2f} s, total {sum(secs):.1f} s, "
                  f"bound after query 1/{args.queries // 2}/{args.queries}: {bounds[0]:.1f} / "
                  f"{bounds[args.queries // 2 - 1]:.1f} / {bounds[-1]:.1f}", flush=True)

        # equal bound on the final data: fresh refits continue until they reach the carried bound
        target = out["carried"]["bounds"][-1]
        f = out["fresh"]
        p, data = f["params"], f["data"]
        extra_s, extra, bound = 0.0, 0, f["bounds"][-1]
        while bound < target and extra < args.max_extra:
            t = time.perf_counter()
            p, _, info = fit(p, opt.init(p), data)
            jax.block_until_ready(p)
            extra_s += time.perf_counter() - t
            extra += 1
            bound = float(info.elbo)
        reached = bound >= target
        print(f"fresh needs {extra} more refits ({extra_s:.1f} s) to reach the carried bound "
              f"{target:.1f}: {'reached' if reached else 'not reached'} ({bound:.1f})", flush=True)
    res = dict(
        data=args.data, n=n, d=int(z.shape[1]), m=args.inducing, queries=args.queries, steps=args.steps,
        cold_seconds=cold_s, cold_bound=float(cinfo.elbo),
        fresh=dict(median_s=statistics.median(out["fresh"]["seconds"]), total_s=sum(out["fresh"]["seconds"]),
                   bounds=out["fresh"]["bounds"]),
        carried=dict(median_s=statistics.median(out["carried"]["seconds"]),
                     total_s=sum(out["carried"]["seconds"]), bounds=out["carried"]["bounds"]),
        equal_bound=dict(target=target, extra_refits=extra, extra_s=extra_s, reached=reached, bound=bound),
    )
    return res


def markdown(args, res, wall):
    f, c, e = res["fresh"], res["carried"], res["equal_bound"]
    q = res["queries"]
    fresh_to_target = f["total_s"] + e["extra_s"]
    ratio = fresh_to_target / c["total_s"]
    src = ("`bo_step.synthetic`" if res["data"] == "synthetic"
           else "the expressions task's 5,000 initial points, encoded by its shipped model (paper preset, cycle 0)")
    lines = [
        "## lbfgs_memory",
        "",
        f"Machine: {machine.describe()}. Command: `python benchmarks/lbfgs_memory.py {' '.join(sys.argv[1:])}` "
        f"(wall time {wall / 60:.1f} min). Data: {src}; N = {res['n']:,}, D = {res['d']}, M = {res['m']}; "
        f"the {q} best rows join one per query (best first), a warm refit of {res['steps']} L-BFGS "
        "iterations before each, from the same cold fit "
        f"({res['cold_bound']:.1f} nats). Times after compilation, `block_until_ready`.",
        "",
        "| refit | median refit (s) | total over the queries (s) | bound after query 1 | "
        f"after query {q // 2} | after query {q} |",
        "|---|---|---|---|---|---|",
        f"| fresh L-BFGS every refit (before) | {f['median_s']:.2f} | {f['total_s']:.1f} | {f['bounds'][0]:.1f} | "
        f"{f['bounds'][q // 2 - 1]:.1f} | {f['bounds'][-1]:.1f} |",
        f"| memory carried (`carry_lbfgs=True`) | {c['median_s']:.2f} | {c['total_s']:.1f} | {c['bounds'][0]:.1f} | "
        f"{c['bounds'][q // 2 - 1]:.1f} | {c['bounds'][-1]:.1f} |",
        "",
        f"Equal bound on the final data: the fresh schedule needed {e['extra_refits']} more fresh refits "
        f"({e['extra_s']:.1f} s) to reach the carried schedule's final bound {e['target']:.1f}"
        + ("" if e["reached"] else f" and did **not** reach it (ended at {e['bound']:.1f})")
        + f": {fresh_to_target:.1f} s against {c['total_s']:.1f} s, **{ratio:.2f}x**"
        + ("" if e["reached"] else " (a lower bound on the ratio)") + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=("synthetic", "expressions"), default="synthetic")
    ap.add_argument("--n", type=int, default=10_000, help="rows of synthetic data")
    ap.add_argument("--dim", type=int, default=56, help="D of synthetic data")
    ap.add_argument("--inducing", type=int, default=500)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-extra", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="one line per refit")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    ap.add_argument("--write", action="store_true", help="replace the section in benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run(args)
    text = markdown(args, res, time.perf_counter() - t0)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.write:
        machine.write_section(Path(__file__).resolve().parent / "RESULTS.md", "## lbfgs_memory", text)


if __name__ == "__main__":
    main()
