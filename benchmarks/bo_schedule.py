"""Per-query time of make_gp_ei's two refit schedules on a synthetic buffer (one cycle).

``GPFitConfig(refit="every-query")`` (the default: a warm refit before every query) against
``refit="incremental"`` (rank-one conditioning of new rows, refits only when triggered).
A synthetic buffer (D = 25, ``y = sin(3 z.w) - 0.05 |z|^2``, ``z ~ N(0, I)``); each query's
top candidate is appended with its score, as the loop would. Prints one line per query
(seconds, whether it refitted, fit steps, bound) and writes ``--out`` (JSON).

Run:  python benchmarks/bo_schedule.py --size paper --queries 5 [--schedules every-query incremental]
                                       [--refit-every R]   (R: refit every R queries, staleness rules off)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from wrjax import bo
from wrjax.loop import ProposeContext


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["paper", "cpu"], default="paper")
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--schedules", nargs="+", default=["every-query", "incremental"],
                    choices=["every-query", "incremental"])  # fmt: skip
    ap.add_argument("--refit-every", type=int, default=None)
    ap.add_argument("--out", default="bo_schedule.json")
    args = ap.parse_args()
    rule = {} if args.refit_every is None else dict(
        refit_every=args.refit_every, refit_max_bound_drop=None, refit_max_uncovered=None,
        refit_max_mean_sq_zscore=None)  # fmt: skip
    d, q = 25, args.queries
    if args.size == "paper":
        base, n0 = bo.BOConfig(), 10_000
    else:  # experiments/tasks.py _small_gp(): the cpu preset's GP
        base = bo.BOConfig(num_inducing=100, n_best=500, n_random=1500, num_restarts=10,
                           ascent_steps=100, warm_steps=10)  # fmt: skip
        n0 = 2_000
    fit0, acq = base.split()
    rng = np.random.default_rng(0)
    w = rng.normal(size=(d,)) / np.sqrt(d)

    def f(z):
        return (np.sin(3 * z @ w) - 0.05 * np.sum(z**2, -1)).astype(np.float32)

    c = n0 + q
    z0 = np.zeros((c, d), np.float32)
    z0[:n0] = rng.normal(size=(n0, d))
    y0 = np.zeros(c, np.float32)
    y0[:n0] = f(z0[:n0])
    out = {}
    for sched in args.schedules:
        fit = dataclasses.replace(fit0, refit=sched, **(rule if sched == "incremental" else {}))
        opt = bo.make_gp_ei(fit, acq)
        z, y = z0.copy(), y0.copy()
        mask, inc = np.arange(c) < n0, np.zeros(c, bool)
        state, rows = None, []
        for i in range(q):
            ctx = ProposeContext(jnp.asarray(z), jnp.asarray(y), jnp.asarray(mask),
                                 jnp.asarray(inc), None, None, 0, i == 0, q - i, q)  # fmt: skip
            t = time.perf_counter()
            prop, state = opt.propose(jax.random.key(i), state, ctx)
            dt = time.perf_counter() - t
            p, r = prop.z[0], n0 + i
            z[r], y[r], mask[r], inc[r] = p, f(p[None])[0], True, True
            rows.append(dict(q=i, s=round(dt, 3), refit=prop.info["refitted"],
                             steps=prop.info["fit_steps"], elbo=round(prop.info["elbo"], 2),
                             y=float(y[r])))  # fmt: skip
            print(sched, rows[-1], flush=True)
        out[sched] = rows
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
