"""Benchmark: the EI maximisation of one BO query with the posterior variance in its two forms.

``AcquisitionConfig(predictor_form="triangular")`` evaluates ``var(x) = k_xx - |a|^2 +
|L_B^{-1} a|^2`` with two triangular solves per ascent step; ``"dense"`` (the default) forms
``C = Kzz^{-1} - (Kzz + Kzf Kfz / s2)^{-1}`` once per maximisation
(:func:`wrjax.gp.dense_predictor`, ``O(M^3)``) and then needs one matrix product per step.
Both run the whole jitted acquisition program of a query (``wrjax.bo._acq_program``: the box,
the incumbent, the authors' 20 starts, 200 projected Adam steps, ranking), the dense one
including its ``C``, on the same posterior and key; reported: median seconds of
``--repeats`` interleaved calls after a warm-up, the ratio, and the best log-EI each found
(equal quality: the same maximiser, so the values must agree).

Posteriors: synthetic VAE-like latents (``bo_step.synthetic``: N = 10,000, D = 25, the
expressions latent size), 20 L-BFGS steps from the authors' initialisation at each M, and
the ``grow_inducing`` posterior (M = 500 plus 50 slots, 5 of them used:
:func:`wrjax.gp_update.grown_predictor`).

A second table: the ``grow_inducing`` posterior built from scratch
(:func:`wrjax.gp_update.grown_predictor`, ``O(N (M+E)^2)``) against bordering the cached
factors (:func:`wrjax.gp_update.extend_inducing`, what the schedule runs), with the largest
differences of their mean and variance at 1,000 points.

Run:  python benchmarks/acq_form.py [--m 100 300 500 1000] [--repeats 5] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bo_step import synthetic  # noqa: E402
from machine import describe  # noqa: E402

from wrjax import bo, gp, gp_update  # noqa: E402
from wrjax.precision import float64_scope  # noqa: E402


@float64_scope
def posteriors(n, d, ms, seed=0):
    z, y = synthetic(np.random.default_rng(seed), n, d)
    data = gp.make_data(z, y, np.ones(n, bool))
    opt = gp.make_optimizer(method="lbfgs")
    fit = jax.jit(lambda p, s: gp.fit(p, s, data, optimizer=opt, num_steps=20))
    out = {}
    for m in ms:
        params = gp.init_params(jax.random.key(seed), data, num_inducing=m)
        params, _, info = fit(params, opt.init(params))
        out[f"M = {m}"] = (jax.jit(gp.build_predictor)(params, data), float(info.elbo))
        if m == 500:
            used = np.zeros(50, bool)
            used[:5] = True
            extra = jnp.asarray(z[:50], jnp.float64) + 0.05
            grown = jax.jit(gp_update.grown_predictor)(out[f"M = {m}"][0], data, extra, jnp.asarray(used))
            out["M = 500 + 5 of 50 grown"] = (grown, float(info.elbo))
            out["_grow"] = (out[f"M = {m}"][0], extra, jnp.asarray(used))
    return data, out


@float64_scope
def bench_grow(data, pred, extra, used, repeats):
    fns = {"rebuild": jax.jit(gp_update.grown_predictor), "extend": jax.jit(gp_update.extend_inducing)}
    outs = {k: jax.block_until_ready(f(pred, data, extra, used)) for k, f in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(pred, data, extra, used))
            times[k].append(time.perf_counter() - t)
    xt = jnp.asarray(np.random.default_rng(5).normal(size=(1000, data.x.shape[1])) * np.asarray(jnp.std(data.x, 0)))
    (m1, v1), (m2, v2) = (gp.predict_standardized(outs[k], xt) for k in fns)
    return ({k: statistics.median(v) for k, v in times.items()},
            float(jnp.max(jnp.abs(m1 - m2))), float(jnp.max(jnp.abs(v1 - v2))))  # fmt: skip


@float64_scope
def bench(data, pred, repeats, key):
    configs = {f: bo.AcquisitionConfig(predictor_form=f) for f in ("triangular", "dense")}
    res = {f: jax.block_until_ready(bo._acq_program(key, pred, data, config=c)) for f, c in configs.items()}
    times = {f: [] for f in configs}
    for _ in range(repeats):
        for f, c in configs.items():
            t = time.perf_counter()
            jax.block_until_ready(bo._acq_program(key, pred, data, config=c))
            times[f].append(time.perf_counter() - t)
    build = jax.jit(gp.dense_predictor)
    jax.block_until_ready(build(pred))
    tb = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(build(pred))
        tb.append(time.perf_counter() - t)
    med = {f: statistics.median(v) for f, v in times.items()}
    best = {f: float(r.first.values[0]) for f, r in res.items()}
    dist = float(np.max(np.abs(np.asarray(res["dense"].batch[0]) - np.asarray(res["triangular"].batch[0]))))
    return med, statistics.median(tb), best, dist


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=25)
    ap.add_argument("--m", type=int, nargs="+", default=[100, 300, 500, 1000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="write the table to benchmarks/RESULTS.md")
    ap.add_argument("--note", default="", help="a line about the conditions, written under the table")
    args = ap.parse_args()
    t0 = time.perf_counter()
    data, preds = posteriors(args.n, args.d, args.m)
    rows = []
    grow = preds.pop("_grow", None)
    for name, (pred, elbo) in preds.items():
        med, tb, best, dist = bench(data, pred, args.repeats, jax.random.key(3))
        rows.append((name, med["triangular"], med["dense"], tb, best["triangular"], best["dense"], dist))
        print(f"{name}: triangular {med['triangular']:.3f} s, dense {med['dense']:.3f} s "
              f"(C {tb * 1e3:.0f} ms), {med['triangular'] / med['dense']:.2f}x; best log-EI "
              f"{best['triangular']:.9f} / {best['dense']:.9f}, |dx| {dist:.1e}", flush=True)  # fmt: skip
    lines = [
        "## acq_form", "",
        f"`python benchmarks/acq_form.py --m {' '.join(map(str, args.m))} --repeats {args.repeats}` "
        f"on {describe()}; {time.perf_counter() - t0:.0f} s. One query's jitted EI maximisation "
        f"(20 starts x 200 Adam steps, N = {args.n:,}, D = {args.d}), median of {args.repeats} "
        "interleaved calls; the dense time includes forming `C`.", "",
        "| posterior | triangular (s) | dense (s) | of which `C` (ms) | speed-up | best log-EI triangular / dense | max abs diff of the proposals |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, tt, td, tb, bt, bd, dist in rows:
        lines.append(f"| {name} | {tt:.3f} | {td:.3f} | {tb * 1e3:.0f} | {tt / td:.2f}x | {bt:.9f} / {bd:.9f} | {dist:.1e} |")
    if grow is not None:
        tg, dm, dv = bench_grow(data, *grow, args.repeats)
        print(f"grow build: rebuild {tg['rebuild']:.3f} s, extend {tg['extend']:.3f} s; max |dmean| {dm:.1e}, |dvar| {dv:.1e}")
        lines += ["", "The `grow_inducing` posterior (M = 500 + 50 slots, 5 used), median of "
                  f"{args.repeats}: rebuilt from scratch (`grown_predictor`) {tg['rebuild']:.3f} s, by "
                  f"bordering the cached factors (`extend_inducing`) {tg['extend']:.3f} s "
                  f"({tg['rebuild'] / tg['extend']:.1f}x); largest differences at 1,000 points: mean "
                  f"{dm:.1e}, variance {dv:.1e} (standardised units)."]  # fmt: skip
    if args.note:
        lines += ["", args.note]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        from machine import write_section

        write_section(Path(__file__).resolve().parent / "RESULTS.md", "## acq_form", text)


if __name__ == "__main__":
    main()
