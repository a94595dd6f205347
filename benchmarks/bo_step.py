"""Benchmark: one BO query (warm SGPR refit + EI maximisation), wrjax vs the authors' way.

On synthetic data (N = 10,000 latent points, D = 25 and 56, M = 500 inducing points), in one
run on this machine:

* wrjax: a cold fit (``bo_suggest`` without state), then warm queries (``bo_suggest`` with
  the cold fit's state: warm refit + predictor + log-EI maximisation from 20 starts), timed
  after compilation, median of ``--repeats``; per-step cost of the Adam refit, for the
  authors' 100-step budget.
* reference (``reference_gpflow.py``, run with the ``reference`` virtualenv's Python in a
  subprocess: TensorFlow and JAX want different NumPy versions): GPflow SGPR warm-started
  from the same parameters on the same data, 100 Adam steps (the authors' minimum per
  refit), then SciPy L-BFGS-B from 20 starts on EI with ``gp.predict_f``.

* BoTorch (``reference_botorch.py``, in the BoTorch venv's Python, ``--botorch-python``; skip
  with ``--no-botorch``): GPyTorch SGPR warm-started from the same parameters, the same 100
  Adam steps, then ``LogExpectedImprovement`` + ``optimize_acqf`` from 20 restarts.

All three queries start from the same GP parameters (the wrjax cold fit) on the same data
(N = 2,000 best + 8,000 random = all points); the returned points are compared by their EI
under both fitted GPs (evaluated exactly, in float64, by wrjax), and the fits by their ELBO
(the same float64 bound for both).

GP-level sections (``--sections``; ``bo`` is the query comparison above):

* ``cold``: a cold fit from nothing (k-means and the authors' two phases) against
  :func:`wrjax.gp.cold_fit` (subset kernel fit, greedy inducing points, L-BFGS on all):
  time and bound (``--cold-repeats`` runs each). The other sections start from the
  authors' cold fit (``--cold-fit``), the state their recorded tables started from.
* ``refit``: from the cold fit's state, warm refits that stop on a convergence test
  (:func:`wrjax.gp.fit_converged`, L-BFGS and Adam) against the fixed 20 L-BFGS steps:
  time, iterations, bound (and the time at which each first reaches the reference's
  recorded bound), best log-EI found on each fit's posterior.
* ``incremental``: the per-query cost with incremental conditioning
  (:mod:`wrjax.gp_update`: add the queried point in O(M^2), maximise EI) against a warm
  refit (bound-and-gradient evaluations + predictor build + EI).
* ``curve``: the query-cost parts against N (1k-50k, M = 500) and M (100-1,000, N = 10k).
* ``threads``: one bound-and-gradient evaluation and a 500 x 500 Cholesky with SciPy's
  OpenBLAS at 2 threads (the library default) and at 1 (what ``wrjax.gp`` sets at import),
  interleaved.

Run:  python benchmarks/bo_step.py [--dims 25 56] [--repeats 3] [--sections ...] [--write]
      (``bo`` needs the reference venv: python -m venv /work/venv-ref &&
       /work/venv-ref/bin/pip install "gpflow==2.11.*" tensorflow-cpu scipy;
       GPflow 2.11 needs numpy < 2, which clashes with this project's jax, hence the
       separate venv; --ref-python PATH to point elsewhere, --no-reference to skip it;
       the BoTorch venv: python -m venv /work/venv-botorch &&
       /work/venv-botorch/bin/pip install torch==2.13.0 botorch scipy)
"""

from __future__ import annotations

import os

# No OPENBLAS_NUM_THREADS here any more: wrjax.gp limits the LAPACK that jaxlib calls to one
# thread when it is imported (see wrjax.gp.set_lapack_threads), which is what a README user
# gets; the ``threads`` section measures both settings.

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from wrjax import acquisition as acq  # noqa: E402
from wrjax import bo, gp, gp_update, parallel  # noqa: E402
from wrjax.precision import float64_scope  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import machine  # noqa: E402 - the module beside this script

HERE = Path(__file__).resolve().parent


def synthetic(rng, n, d, active=8):
    """VAE-like latents and a smooth score of the active dimensions, plus noise.

    Encoder means of a trained VAE use a few dimensions and leave the rest near 0 (posterior
    collapse): ``active`` coordinates ~ N(0, 1), the others ~ N(0, 0.1^2). With all ``d``
    coordinates ~ N(0, 1), the authors' initial lengthscales (about 1) make every kernel
    correlation ~exp(-d) and the fit collapses onto "all noise".
    """
    scale = np.where(np.arange(d) < active, 1.0, 0.1)
    z = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    za = z[:, :active].astype(np.float64)
    y = (
        np.sin(2.0 * za[:, 0]) * np.cos(za[:, 1])
        + 0.5 * np.cos(1.5 * za[:, 2] + za[:, 3])
        - 0.1 * np.sum((za - 0.5) ** 2, axis=1)
        + 0.05 * rng.standard_normal(n)
    )
    return z, y.astype(np.float32)


@float64_scope
def gp_data(z, y, config, state):
    """The exact GP subset that bo_suggest used (same subset key), standardised."""
    key = jax.random.wrap_key_data(jnp.asarray(state.subset_key))
    mask = np.ones(len(y), bool)
    sub = gp.select_subset(key, y, mask, n_best=config.n_best, n_random=config.n_random)
    idx, m = np.asarray(sub.index), np.asarray(sub.mask)
    return gp.make_data(z[idx], y[idx], m)


def _softplus_inv(v):
    v = np.asarray(v, np.float64)
    return v + np.log(-np.expm1(-v))


@float64_scope
def params_from_constrained(inducing, lengthscale, variance, noise):
    return gp.SGPRParams(
        inducing=jnp.asarray(inducing, jnp.float64),
        raw_lengthscale=jnp.asarray(_softplus_inv(lengthscale), jnp.float64),
        raw_variance=jnp.asarray(_softplus_inv(variance), jnp.float64),
        raw_noise=jnp.asarray(_softplus_inv(max(noise - gp.NOISE_FLOOR, 1e-12)), jnp.float64),
    )


@float64_scope
def ei_and_elbo(params, data, points, q):
    """EI (standardised units) at ``points`` and the ELBO, exact float64 wrjax formulas."""
    pred = gp.build_predictor(params, data)
    tau = float(np.quantile(np.asarray(data.y)[np.asarray(data.mask)], q))
    mean, var = gp._predict_standardized(pred, jnp.asarray(points, jnp.float64))
    ei = acq.expected_improvement(mean, var, tau)
    return np.asarray(ei), float(gp.collapsed_elbo(params, data))


@float64_scope
def scipy_on_surface(params, data, q, restarts, bounds, seed):
    """The authors' maximiser (SciPy L-BFGS-B on EI, their starts) on wrjax's fitted GP.

    Isolates the maximiser: same surface as wrjax's own ascent, exact float64 predictor.
    Returns (best EI, evaluations, seconds).
    """
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    pred = gp.build_predictor(params, data)
    y = np.asarray(data.y)[np.asarray(data.mask)]
    x = np.asarray(data.x)[np.asarray(data.mask)]
    tau = float(np.quantile(y, q))

    def neg_ei(v):
        mean, var = gp._predict_standardized(pred, v[None, :])
        return -acq.expected_improvement(mean[0], var[0], tau)

    vg = jax.jit(jax.value_and_grad(neg_ei))
    d = x.shape[1]
    good = np.flatnonzero(y >= np.quantile(y, 0.8))
    starts = [rng.standard_normal(d) for _ in range(restarts // 2)]
    starts += [x[i] for i in rng.choice(good, restarts - restarts // 2, replace=False)]
    vg(jnp.asarray(starts[0]))  # compile
    t = time.perf_counter()
    best, nfev = -np.inf, 0
    for s0 in starts:
        res = minimize(
            lambda v: tuple(np.asarray(a, np.float64) for a in vg(jnp.asarray(v))), s0,
            jac=True, method="L-BFGS-B", bounds=list(zip(bounds[0], bounds[1])),
        )  # fmt: skip
        nfev += res.nfev
        best = max(best, -float(res.fun))
    return best, nfev, time.perf_counter() - t


def run_reference(args, data, params, d):
    """The reference in ``args.ref_dtype``; if float32 crashes (as the authors' runs did on a
    Cholesky failure), the error is recorded and the reference is run again in float64."""
    try:
        return _run_reference(args, data, params, d, args.ref_dtype)
    except RuntimeError as err:
        if args.ref_dtype != "float32":
            raise
        msg = str(err).strip().splitlines()[-1][:200]
        print(f"[D={d}] reference float32 failed ({msg}); rerunning in float64", flush=True)
        res = _run_reference(args, data, params, d, "float64")
        res["float32_error"] = msg
        return res


def _run_reference(args, data, params, d, dtype, script="reference_gpflow.py", python=None):
    ls, var, noise = (np.asarray(v) for v in float64_scope(gp.constrain)(params))
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.json"
        np.savez(
            inp,
            x=np.asarray(data.x)[np.asarray(data.mask)],
            y=np.asarray(data.y)[np.asarray(data.mask)],
            inducing=np.asarray(params.inducing),
            lengthscale=ls,
            variance=var,
            noise=noise,
            warm_steps=args.ref_warm_steps,
            n_starts=args.restarts,
            repeats=args.ref_repeats,
            seed=d,
            dtype=dtype,
            early_stop=False,
        )
        t = time.perf_counter()
        proc = subprocess.run(
            [python or args.ref_python, str(HERE / script), str(inp), str(out)],
            capture_output=True, text=True, env=dict(os.environ),
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"reference {script} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(out.read_text())
        res["subprocess_s"] = time.perf_counter() - t
        return res


def _reference_row(row, prefix, ref):
    """Put a reference's median timings and first point into ``row`` under ``prefix``; return
    its fitted parameters in wrjax's form."""
    qs = ref["queries"]
    row[prefix] = ref
    for part in ("refit", "ei", "total"):
        row[f"{prefix}_{part}_s"] = statistics.median(q[f"{part}_s"] for q in qs)
    row[f"{prefix}_point"] = np.asarray(qs[0]["point"], np.float64)
    pr = ref["params"]
    return params_from_constrained(pr["inducing"], pr["lengthscale"], pr["variance"], pr["noise"])


def bench_dim(args, d):
    rng = np.random.default_rng(d)
    n, m = args.n, args.m
    z, y = synthetic(rng, n, d)
    mask = np.ones(n, bool)
    config = bo.BOConfig(
        num_inducing=m,
        n_best=n // 5,
        n_random=n - n // 5,
        cold_kernel_steps=args.cold_kernel_steps,
        cold_steps=args.cold_steps,
        cold_fit=args.cold_fit,
        num_restarts=args.restarts,
        num_random_starts=args.restarts // 2,
    )
    key = jax.random.key(d)
    k_cold, k_warm = jax.random.split(key)
    row = dict(D=d, N=n, M=m, config=config)

    t = time.perf_counter()
    _, cold_state, cold_info = bo.bo_suggest(k_cold, z, y, mask, config=config)
    row["cold_first_s"] = time.perf_counter() - t
    row["cold_elbo"] = cold_info.elbo
    print(f"[D={d}] cold fit ({config.cold_kernel_steps} Adam + {config.cold_steps} L-BFGS steps, "
          f"first call, incl. compilation): {row['cold_first_s']:.1f} s, ELBO {cold_info.elbo:.1f}", flush=True)

    # warm queries from the cold state: first call compiles, then timed repeats
    t = time.perf_counter()
    bo.bo_suggest(k_warm, z, y, mask, config=config, state=cold_state)
    row["warm_first_s"] = time.perf_counter() - t
    infos, outs = [], []
    for _ in range(args.repeats):
        cand, state, info = bo.bo_suggest(k_warm, z, y, mask, config=config, state=cold_state)
        infos.append(info)
        outs.append((cand, state))
    med = lambda k: statistics.median(getattr(i, k) for i in infos)  # noqa: E731
    row["ours_fit_s"], row["ours_acq_s"], row["ours_total_s"] = (
        med("fit_seconds"), med("acquisition_seconds"), med("total_seconds"),
    )  # fmt: skip
    cand, state = outs[0]
    row["ours_elbo_trace"] = infos[0].loss
    print(f"[D={d}] wrjax warm query ({config.warm_steps} L-BFGS steps + log-EI, {args.restarts} starts): "
          f"median {row['ours_total_s']:.2f} s (refit {row['ours_fit_s']:.2f} s, acquisition "
          f"{row['ours_acq_s']:.3f} s); first call {row['warm_first_s']:.1f} s", flush=True)

    # the Adam refit, per step (the authors' optimiser), measured over a short budget
    cfg_adam = dataclasses.replace(config, fit_method="adam", warm_steps=args.adam_probe_steps)
    bo.bo_suggest(k_warm, z, y, mask, config=cfg_adam, state=cold_state)  # compile
    _, st_adam, info_adam = bo.bo_suggest(k_warm, z, y, mask, config=cfg_adam, state=cold_state)
    row["ours_adam_step_s"] = info_adam.fit_seconds / args.adam_probe_steps
    print(f"[D={d}] wrjax Adam refit: {row['ours_adam_step_s']:.3f} s/step", flush=True)

    data = gp_data(z, y, config, cold_state)
    p_ours = float64_scope(lambda s: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), s))(state.params)
    row["ours_point"] = cand[0].astype(np.float64)
    q = config.incumbent_quantile
    row["ours_ei"] = float(ei_and_elbo(p_ours, data, row["ours_point"][None], q)[0][0])
    row["scipy_ei"], row["scipy_nfev"], row["scipy_s"] = scipy_on_surface(
        p_ours, data, q, args.restarts, infos[0].bounds, d
    )
    print(f"[D={d}] same surface (wrjax GP): EI at wrjax's point {row['ours_ei']:.6g}; SciPy "
          f"L-BFGS-B, {args.restarts} starts: {row['scipy_ei']:.6g} ({row['scipy_nfev']} evaluations, "
          f"{row['scipy_s']:.2f} s with wrjax's cached predictor)", flush=True)
    # both references start from the cold fit's parameters, in float64
    p0 = float64_scope(lambda s: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), s))(cold_state.params)
    ref = bt = None
    if not args.no_reference:
        ref = run_reference(args, data, p0, d)
        p_ref = _reference_row(row, "ref", ref)
        row["ref_nfev"] = statistics.median(q["nfev"] for q in ref["queries"])
    if not args.no_botorch:
        # BoTorch in float32 as the GPflow reference (a BoTorch user's default is float64; the
        # flag says which ran)
        bt = _run_reference(args, data, p0, d, args.ref_dtype, "reference_botorch.py", args.botorch_python)
        p_bt = _reference_row(row, "bt", bt)
    if ref is None and bt is None:
        return row
    # every point under our GP in one evaluation (our bound once, whichever references ran)
    names = ["ours"] + (["ref"] if ref is not None else []) + (["bt"] if bt is not None else [])
    pts = np.stack([row[f"{n}_point"] for n in names])
    under_ours, row["elbo_ours"] = ei_and_elbo(p_ours, data, pts, q)
    if ref is not None:
        eo = under_ours[[0, names.index("ref")]]
        row["ei_under_ours"] = eo
        row["ei_under_ref"], row["elbo_ref"] = ei_and_elbo(p_ref, data, pts[[0, names.index("ref")]], q)
        row["ratio"] = row["ref_total_s"] / row["ours_total_s"]
        row["ratio_adam"] = row["ref_total_s"] / (
            args.ref_warm_steps * row["ours_adam_step_s"] + row["ours_acq_s"]
        )
        print(f"[D={d}] reference ({ref['dtype']}): refit {row['ref_refit_s']:.1f} s "
              f"({args.ref_warm_steps} Adam steps), EI max {row['ref_ei_s']:.1f} s "
              f"({row['ref_nfev']} evaluations), total {row['ref_total_s']:.1f} s; "
              f"ratio {row['ratio']:.1f}x", flush=True)
        print(f"[D={d}] EI at (ours, ref) point under our GP {row['ei_under_ours']}, under the "
              f"reference GP {row['ei_under_ref']}; ELBO ours {row['elbo_ours']:.1f}, "
              f"ref {row['elbo_ref']:.1f}", flush=True)
    if bt is not None:
        row["bt_ei_under_ours"] = float(under_ours[names.index("bt")])
        eb, row["elbo_bt"] = ei_and_elbo(p_bt, data, pts[[0, names.index("bt")]], q)
        row["bt_ei_under_bt"] = float(eb[1])
        row["ei_ours_under_bt"] = float(eb[0])
        row["ratio_bt"] = row["bt_total_s"] / row["ours_total_s"]
        print(f"[D={d}] BoTorch ({bt['dtype']}, {bt['versions']['botorch']}, {bt['threads']} torch "
              f"threads): refit {row['bt_refit_s']:.1f} s ({args.ref_warm_steps} Adam steps), "
              f"optimize_acqf {row['bt_ei_s']:.1f} s, total {row['bt_total_s']:.1f} s; ratio "
              f"{row['ratio_bt']:.1f}x; ELBO (wrjax float64 bound) {row['elbo_bt']:.1f} vs ours "
              f"{row['elbo_ours']:.1f}; EI of its point under our GP {row['bt_ei_under_ours']:.4g} "
              f"(ours {row['ours_ei']:.4g}), under its GP {row['bt_ei_under_bt']:.4g} "
              f"(ours {row['ei_ours_under_bt']:.4g})", flush=True)
    return row


def markdown(args, rows, wall):
    lines = ["## bo_step", ""]
    lines.append(
        f"One BO query on synthetic data, N = {args.n:,}, M = {args.m}, {args.restarts} restarts. "
        f"Machine: {machine.describe()}, load average {os.getloadavg()[0]:.1f} at the end, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}. "
        f"Command: `{' '.join(['python', 'benchmarks/bo_step.py'] + sys.argv[1:])}` "
        f"(wall time {wall / 60:.1f} min)."
    )
    lines.append("")
    lines.append(
        "wrjax query = `bo_suggest` warm: refit (float64, default `fit_method=\"lbfgs\"`, "
        "`warm_steps=20`) + cached predictor + log-EI projected-Adam ascent (200 steps, vmapped "
        "over restarts); median of "
        f"{args.repeats} after compilation. Reference = the authors' way (`reference_gpflow.py`): "
        f"GPflow SGPR ({args.ref_dtype} as the authors; float64 where float32 crashed, see notes), {args.ref_warm_steps} Adam steps (lr 0.03, the authors' "
        "minimum per refit), then SciPy L-BFGS-B on EI with `gp.predict_f` per evaluation, "
        f"{args.restarts} starts (no early stop); {args.ref_repeats} timed query after a warm-up "
        "that traces the TF step. Both start from the same parameters (the wrjax cold fit) on "
        "the same data. EI (standardised units, incumbent = 90th percentile) and ELBO are "
        "evaluated exactly in float64 by wrjax for both fits."
    )
    lines.append("")
    head = (
        "| D | cold fit, 1st call (s) | wrjax refit (s) | wrjax EI max (s) | wrjax query (s) | "
        "reference refit (s) | reference EI max (s) [evals] | reference query (s) | ratio | "
        "ratio vs wrjax Adam (same steps) | EI ours/ref point, our GP | EI ours/ref point, ref GP | "
        "ELBO ours / ref | same surface: EI wrjax ascent / SciPy L-BFGS-B |"
    )
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r["config"]
        cold = f"{r['cold_first_s']:.1f} ({c.cold_kernel_steps} Adam + {c.cold_steps} L-BFGS)"
        if "ref" in r:
            eo, er = r["ei_under_ours"], r["ei_under_ref"]
            lines.append(
                f"| {r['D']} | {cold} | {r['ours_fit_s']:.2f} | {r['ours_acq_s']:.3f} | "
                f"{r['ours_total_s']:.2f} | {r['ref_refit_s']:.1f} | {r['ref_ei_s']:.1f} "
                f"[{r['ref_nfev']}] | {r['ref_total_s']:.1f} | **{r['ratio']:.1f}x** | "
                f"{r['ratio_adam']:.1f}x | {eo[0]:.4g} / {eo[1]:.4g} | {er[0]:.4g} / {er[1]:.4g} | "
                f"{r['elbo_ours']:.1f} / {r['elbo_ref']:.1f} | {r['ours_ei']:.6g} / {r['scipy_ei']:.6g} |"
            )
        else:
            lines.append(
                f"| {r['D']} | {cold} | {r['ours_fit_s']:.2f} | {r['ours_acq_s']:.3f} | "
                f"{r['ours_total_s']:.2f} | - | - | - | - | - | - | - | - | "
                f"{r['ours_ei']:.6g} / {r['scipy_ei']:.6g} |"
            )
    lines.append("")
    if any("bt" in r for r in rows):
        lines.append(
            "BoTorch reference (`reference_botorch.py`, its own venv): GPyTorch SGPR "
            "(`InducingPointKernel`, Titsias' bound with its trace term), the same warm start and "
            f"{args.ref_warm_steps} Adam steps at lr 0.03 as the GPflow reference, then "
            f"`LogExpectedImprovement` + `optimize_acqf` ({args.restarts} restarts, 512 raw "
            "samples) in the same box. Bound and EI evaluated in float64 by wrjax."
        )
        lines.append("")
        head = ("| D | BoTorch dtype, versions, threads | refit (s) | optimize_acqf (s) | query (s) | "
                "ratio BoTorch / wrjax | ELBO wrjax / BoTorch | EI wrjax / BoTorch point, our GP | "
                "EI wrjax / BoTorch point, BoTorch GP |")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in rows:
            if "bt" not in r:
                continue
            bt = r["bt"]
            lines.append(
                f"| {r['D']} | {bt['dtype']}, botorch {bt['versions']['botorch']} / gpytorch "
                f"{bt['versions']['gpytorch']} / torch {bt['versions']['torch']}, {bt['threads']} | "
                f"{r['bt_refit_s']:.1f} | {r['bt_ei_s']:.1f} | {r['bt_total_s']:.1f} | "
                f"**{r['ratio_bt']:.1f}x** | {r['elbo_ours']:.1f} / {r['elbo_bt']:.1f} | "
                f"{r['ours_ei']:.4g} / {r['bt_ei_under_ours']:.4g} | "
                f"{r['ei_ours_under_bt']:.4g} / {r['bt_ei_under_bt']:.4g} |"
            )
        lines.append("")
    for r in rows:
        tr = -np.asarray(r["ours_elbo_trace"])
        lines.append(
            f"- D = {r['D']}: wrjax Adam refit {r['ours_adam_step_s']:.3f} s/step (x{args.ref_warm_steps} = "
            f"{args.ref_warm_steps * r['ours_adam_step_s']:.1f} s, the ratio-vs-Adam column); "
            f"L-BFGS warm-refit ELBO by iteration 1/5/10/last: "
            + " / ".join(f"{tr[i]:.1f}" for i in (0, min(4, len(tr) - 1), min(9, len(tr) - 1), len(tr) - 1))
            + (f"; reference ({r['ref']['dtype']}) warm-up (trace) {r['ref']['warmup']['wall_s']:.1f} s, "
               f"{r['ref']['queries'][0]['n_success']}/{r['ref']['queries'][0]['n_starts_run']} starts converged"
               + (f"; **reference float32 crashed**: `{r['ref']['float32_error']}`, figures are float64"
                  if "float32_error" in r["ref"] else "")
               if "ref" in r else "")
        )
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# GP-level sections: converged refits, incremental conditioning, cost curves, threads
# --------------------------------------------------------------------------------------------

#: The reference's recorded warm-refit bounds (GPflow 2.11 float32, 100 Adam steps at lr 0.03
#: from the wrjax cold fit, evaluated by wrjax's float64 bound): the issue 11 run (D = 25) and
#: the table above (D = 56). GPflow is not installed beside jax (numpy < 2); see the docstring.
REFERENCE_BOUND = {25: 7481.2, 56: 6620.4}

_CONV_STATIC = ("optimizer", "max_steps", "tol", "window", "gtol", "min_steps", "jitter", "train_inducing")


def _median_time(fn, *a, reps=5):
    jax.block_until_ready(fn(*a))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*a))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _log_ei_std(pred, tau, x):
    mean, var = gp.predict_standardized(pred, x[None, :])
    return acq.log_expected_improvement(mean[0], var[0], tau)


def _ei_program(restarts, steps):
    """One jitted program: best log-EI (standardised units) on a predictor, as bo_suggest."""

    def run(key, pred, x, y, mask):
        bounds = acq.data_bounds(x, mask)
        tau = acq.incumbent(y, mask, quantile=0.9)
        f = jax.tree_util.Partial(_log_ei_std, pred, tau)
        res = acq.maximize(
            key, f, bounds, None, num_restarts=restarts, num_steps=steps,
            learning_rate=0.05, min_distance=1e-3,
        )  # fmt: skip
        return res.values[0], res.points[0]

    return jax.jit(run)


def _synthetic_data(d, n, seed=None):
    z, y = synthetic(np.random.default_rng(d if seed is None else seed), n, d)
    return float64_scope(gp.make_data)(z, y, np.ones(n, bool)), z, y


@float64_scope
def _cold_state(args, d):
    """The cold fit exactly as ``bench_dim`` (bo_suggest without state), and its GP data."""
    rng = np.random.default_rng(d)
    z, y = synthetic(rng, args.n, d)
    mask = np.ones(args.n, bool)
    config = bo.BOConfig(
        num_inducing=args.m, n_best=args.n // 5, n_random=args.n - args.n // 5,
        cold_kernel_steps=args.cold_kernel_steps, cold_steps=args.cold_steps, cold_fit=args.cold_fit,
        num_restarts=args.restarts, num_random_starts=args.restarts // 2,
    )  # fmt: skip
    k_cold, _ = jax.random.split(jax.random.key(d))
    t = time.perf_counter()
    _, state, info = bo.bo_suggest(k_cold, z, y, mask, config=config)
    cold_s = time.perf_counter() - t
    data = gp_data(z, y, config, state)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state.params)
    return params, data, cold_s, float(info.elbo)


@float64_scope
def bench_refit(args, d, params, data):
    """Warm refits from the cold state: fixed 20 L-BFGS vs converged L-BFGS vs converged Adam."""
    ref = REFERENCE_BOUND.get(d)
    ei = _ei_program(args.restarts, 200)
    key = jax.random.key(100 + d)
    lbfgs, adam = gp.make_optimizer(method="lbfgs"), gp.make_optimizer(0.03)
    variants = [
        ("fit, 20 L-BFGS steps (the old default)", "fixed", lbfgs, dict(num_steps=20)),
        (f"fit_converged L-BFGS (tol 1e-6/pt over 5 its, cap {args.refit_cap})", "conv", lbfgs,
         dict(max_steps=args.refit_cap, tol=1e-6, window=5)),
        (f"fit_converged Adam lr 0.03 (tol 2e-5/pt over 20 steps, cap {args.refit_cap})", "conv", adam,
         dict(max_steps=args.refit_cap, tol=2e-5, window=20)),
    ]
    rows = []
    for name, kind, opt, kw in variants:
        if kind == "fixed":
            fn = jax.jit(functools.partial(gp.fit, optimizer=opt, **kw))
        else:
            fn = jax.jit(functools.partial(gp.fit_converged, optimizer=opt, **kw))
        s0 = opt.init(params)
        t = time.perf_counter()
        compiled = fn.lower(params, s0, data).compile()
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        p, _, info = compiled(params, s0, data)
        jax.block_until_ready(p)
        fit_s = time.perf_counter() - t
        steps = int(info.num_steps)
        trace = -np.asarray(info.loss)[:steps]
        reach = None
        if ref is not None and np.any(trace >= ref):
            reach = (int(np.argmax(trace >= ref)) + 1) * fit_s / steps
        elif ref is not None and float(info.elbo) >= ref:
            reach = fit_s
        pred = gp.build_predictor(p, data)
        best, _ = ei(key, pred, data.x, data.y, data.mask)
        row = dict(name=name, seconds=fit_s, compile_s=compile_s, steps=steps,
                   converged=bool(info.converged), elbo=float(info.elbo), reach_s=reach,
                   log_ei=float(best), params=p)  # fmt: skip
        rows.append(row)
        print(f"[D={d}] refit {name}: {fit_s:.1f} s, {steps} steps, converged {row['converged']}, "
              f"ELBO {row['elbo']:.1f} (reference {ref}), reaches the reference after "
              f"{'-' if reach is None else f'{reach:.1f} s'}, best log-EI {row['log_ei']:.4f}", flush=True)
    return rows


@float64_scope
def bench_incremental(args, d, params, data, refit_rows=None):
    """Per-query cost: incremental conditioning + EI against a warm refit + build + EI."""
    n_eval = lambda p: -gp.collapsed_elbo(p, data)  # noqa: E731
    vg = jax.jit(jax.value_and_grad(n_eval))
    build = jax.jit(gp.build_predictor)
    init = jax.jit(gp_update.init_incremental)
    cond = jax.jit(gp_update.condition_on)
    stale = jax.jit(gp_update.staleness)
    ei = _ei_program(args.restarts, 200)
    key = jax.random.key(7)
    pred = build(params, data)
    state = init(pred, data)
    rng = np.random.default_rng(1)
    x_new = jnp.asarray(np.asarray(data.x)[:1] + 0.01 * rng.standard_normal((1, data.x.shape[1])))[0]
    y_new = data.y_mean + data.y_std * 1.5
    res = dict(
        eval_s=_median_time(vg, params, reps=args.repeats),
        build_s=_median_time(build, params, data, reps=args.repeats),
        update_s=_median_time(cond, state, x_new, y_new, reps=20),
        stale_s=_median_time(stale, state, reps=20),
        ei_s=_median_time(lambda: ei(key, pred, data.x, data.y, data.mask), reps=args.repeats),
    )
    # exactness at this size: 10 added points against the posterior built from scratch
    s = state
    xs = np.asarray(data.x)[:10] + 0.05 * rng.standard_normal((10, data.x.shape[1]))
    ys = np.asarray(data.y_mean + data.y_std * rng.standard_normal(10))
    for i in range(10):
        s = cond(s, xs[i], ys[i])
    grown = gp.SGPRData(
        jnp.concatenate([data.x, jnp.asarray(xs)]),
        jnp.concatenate([data.y, (jnp.asarray(ys) - data.y_mean) / data.y_std]),
        jnp.concatenate([data.mask, jnp.ones(10, bool)]), data.y_mean, data.y_std,
    )  # fmt: skip
    scratch = gp.build_predictor(params, grown, form="solve")
    xq = jnp.asarray(rng.standard_normal((50, data.x.shape[1])) * 0.5)
    (m1, v1), (m2, v2) = gp.predict(s.pred, xq), gp.predict(scratch, xq)
    res["max_mean_err"] = float(jnp.max(jnp.abs(m1 - m2)))
    res["max_var_err"] = float(jnp.max(jnp.abs(v1 - v2)))
    res["bound_err"] = float(gp_update.incremental_elbo(s) - gp.collapsed_elbo(params, grown))
    res["incremental_query_s"] = res["update_s"] + res["stale_s"] + res["ei_s"]
    refit_steps = {"fixed 20 L-BFGS steps": 20}
    for r in refit_rows or []:
        refit_steps[r["name"]] = r["steps"]
        r_q = r["seconds"] + res["build_s"] + res["ei_s"]
        r["query_s"] = r_q
    res["refit_rows"] = refit_rows or []
    print(f"[D={d}] per query: incremental update {1e3 * res['update_s']:.2f} ms + staleness "
          f"{1e3 * res['stale_s']:.2f} ms + EI {res['ei_s']:.3f} s = {res['incremental_query_s']:.3f} s; "
          f"one bound+grad eval {res['eval_s']:.3f} s, predictor build {res['build_s']:.3f} s; "
          f"10 updates vs scratch: mean {res['max_mean_err']:.1e}, var {res['max_var_err']:.1e}, "
          f"bound {res['bound_err']:.1e}", flush=True)
    return res


@float64_scope
def bench_curve(args, d):
    """The query-cost parts against N (M = args.m) and M (N = args.n); with more than one
    device the GP data's rows are sharded over them (``wrjax.parallel.shard_rows``)."""
    rows = []
    ei = _ei_program(args.restarts, 200)
    key = jax.random.key(3)
    configs = [(n, args.m) for n in args.curve_n] + [(args.n, m) for m in args.curve_m if m != args.m]
    mesh = parallel.data_mesh() if jax.device_count() > 1 else None
    for n, m in configs:
        data, z, _ = _synthetic_data(d, n)
        if mesh is not None:  # the GP data's rows split over the devices
            data = parallel.shard_rows(data, mesh)
        rng = np.random.default_rng(n + m)
        params = params_from_constrained(
            z[rng.choice(n, m, replace=False)].astype(np.float64) + 0.01 * rng.standard_normal((m, d)),
            np.where(np.arange(d) < 8, 1.0, 3.0), 1.0, 0.01,
        )  # fmt: skip
        vg = jax.jit(jax.value_and_grad(lambda p, dd: -gp.collapsed_elbo(p, dd)))
        build = jax.jit(gp.build_predictor)
        pred = build(params, data)
        # The rank-one update is O(M^2) and touches no data: it runs on one device (on the
        # sharded layout XLA would spread its M x M work over the mesh, 70x slower on CPU).
        state = jax.device_get(gp_update.init_incremental(pred, data))
        cond = jax.jit(gp_update.condition_on)
        row = dict(
            N=n, M=m, devices=jax.device_count(),
            eval_s=_median_time(vg, params, data, reps=args.repeats),
            build_s=_median_time(build, params, data, reps=args.repeats),
            update_s=_median_time(cond, state, np.asarray(data.x[0]), np.asarray(data.y_mean), reps=10),
            ei_s=_median_time(lambda: ei(key, pred, data.x, data.y, data.mask), reps=args.repeats),
        )  # fmt: skip
        rows.append(row)
        print(f"[D={d}] N={n} M={m}: eval {row['eval_s']:.3f} s, build {row['build_s']:.3f} s, "
              f"update {1e3 * row['update_s']:.2f} ms, EI {row['ei_s']:.3f} s", flush=True)
    return rows


@float64_scope
def bench_threads(args, d, rounds=5):
    """Bound-and-gradient evaluation and a Cholesky at 2 (library default) and 1 LAPACK threads."""
    data, _, _ = _synthetic_data(d, args.n)
    params = params_from_constrained(np.asarray(data.x[: args.m]) + 0.01, np.ones(d), 1.0, 0.01)
    vg = jax.jit(jax.value_and_grad(lambda p: -gp.collapsed_elbo(p, data)))
    kzz = gp.rbf_kernel(params.inducing, params.inducing, jnp.ones(d), jnp.asarray(1.0)) + 1e-6 * jnp.eye(args.m)
    chol = jax.jit(jnp.linalg.cholesky)
    out = {1: dict(eval=[], chol=[]), 2: dict(eval=[], chol=[])}
    for _ in range(rounds):
        for th in (2, 1):
            gp.set_lapack_threads(th)
            out[th]["eval"].append(_median_time(vg, params, reps=3))
            out[th]["chol"].append(_median_time(chol, kzz, reps=9))
    gp.set_lapack_threads(1)
    res = {th: {k: statistics.median(v) for k, v in o.items()} for th, o in out.items()}
    res["wins"] = sum(a < b for a, b in zip(out[1]["eval"], out[2]["eval"]))
    res["rounds"] = rounds
    print(f"[D={d}] threads: eval 1 thread {res[1]['eval']:.3f} s vs 2 threads {res[2]['eval']:.3f} s "
          f"(1 faster in {res['wins']}/{rounds} rounds); MxM Cholesky {1e3 * res[1]['chol']:.2f} ms vs "
          f"{1e3 * res[2]['chol']:.2f} ms", flush=True)
    return res


def _objective(z, rng):
    """The score of ``synthetic`` at latent points ``z (K, D)`` (same formula and noise)."""
    za = np.asarray(z, np.float64)[:, :8]
    return (
        np.sin(2.0 * za[:, 0]) * np.cos(za[:, 1])
        + 0.5 * np.cos(1.5 * za[:, 2] + za[:, 3])
        - 0.1 * np.sum((za - 0.5) ** 2, axis=1)
        + 0.05 * rng.standard_normal(len(za))
    )


@float64_scope
def bench_schedule(args, d):
    """How stale the hyperparameters get over a retrain cycle of BO queries.

    A small BO run (``--schedule-n`` points, ``--schedule-m`` inducing points): fit once
    (converged L-BFGS), then each query maximises log-EI on the incrementally conditioned
    posterior, scores the point with ``synthetic``'s objective and conditions on it. After
    some queries, the bound of the stale hyperparameters on the grown data
    (``gp_update.staleness``) is compared with a converged refit's on the same data (same
    scaling), and the EI-optimal point of the stale posterior is scored by the refitted one.
    """
    n, m, q_max = args.schedule_n, args.schedule_m, max(args.schedule_at)
    z, y = synthetic(np.random.default_rng(d + 1), n, d)
    rng = np.random.default_rng(5)
    data0 = gp.make_data(z, y, np.ones(n, bool))
    lbfgs = gp.make_optimizer(method="lbfgs")
    conv = jax.jit(functools.partial(gp.fit_converged, optimizer=lbfgs, max_steps=300, tol=1e-7, window=10))
    first = jax.jit(functools.partial(gp.fit_converged, optimizer=lbfgs, max_steps=2000, tol=1e-7, window=10))
    p0 = gp.init_params(jax.random.key(d), data0, num_inducing=m)
    p0, _, info0 = first(p0, lbfgs.init(p0), data0)
    # the baseline: what a refit finds on the data the state was fitted on (not exactly 0:
    # the first fit stops on its tolerance)
    _, _, info00 = conv(p0, lbfgs.init(p0), data0)
    base_gain = (float(info00.elbo) - float(info0.elbo)) / n
    print(f"[D={d}] schedule: first fit {int(info0.num_steps)} steps (converged {bool(info0.converged)}), "
          f"ELBO {float(info0.elbo):.2f}; a refit on the same data gains {base_gain:.2e}/pt", flush=True)
    build = jax.jit(gp.build_predictor)
    state = gp_update.init_incremental(build(p0, data0), data0)
    cond = jax.jit(gp_update.condition_on)
    ei = _ei_program(10, 100)
    xs, ys, rows = [], [], []
    key = jax.random.key(11)
    bounds_x, bounds_y = data0.x, data0.y
    for q in range(1, q_max + 1):
        key, k = jax.random.split(key)
        _, x_next = ei(k, state.pred, bounds_x, bounds_y, data0.mask)
        y_next = float(_objective(np.asarray(x_next)[None], rng)[0])
        xs.append(np.asarray(x_next))
        ys.append(y_next)
        state = cond(state, x_next, y_next)
        if q in args.schedule_at:
            info = gp_update.staleness(state)
            grown = gp.SGPRData(
                jnp.concatenate([data0.x, jnp.asarray(np.stack(xs))]),
                jnp.concatenate([data0.y, (jnp.asarray(ys) - data0.y_mean) / data0.y_std]),
                jnp.ones(n + q, bool), data0.y_mean, data0.y_std,
            )  # fmt: skip
            p_r, _, info_r = conv(p0, lbfgs.init(p0), grown)
            pred_r = build(p_r, grown)
            tau = acq.incumbent(grown.y, grown.mask, quantile=0.9)
            _, x_stale = ei(k, state.pred, bounds_x, bounds_y, data0.mask)
            val_r, x_r = ei(k, pred_r, bounds_x, bounds_y, data0.mask)
            v_stale = float(_log_ei_std(pred_r, tau, x_stale))
            rows.append(dict(
                q=q, stale_elbo=float(info.elbo), refit_elbo=float(info_r.elbo),
                gain_per_point=(float(info_r.elbo) - float(info.elbo)) / (n + q),
                change_per_point=float(info.elbo_per_point_change),
                mean_z2=float(info.mean_sq_zscore), max_z2=float(info.max_sq_zscore),
                max_unc=float(info.max_uncovered),
                log_ei_refit=float(val_r), log_ei_stale_point=v_stale, refit_steps=int(info_r.num_steps),
            ))  # fmt: skip
            r = rows[-1]
            print(f"[D={d}] schedule q={q}: stale bound {r['stale_elbo']:.2f}, refit {r['refit_elbo']:.2f} "
                  f"(+{r['gain_per_point']:.2e}/pt, {r['refit_steps']} steps), bound/pt change "
                  f"{r['change_per_point']:.2e}, mean z^2 {r['mean_z2']:.2f} (max {r['max_z2']:.1f}), "
                  f"max uncovered {r['max_unc']:.3f}; "
                  f"refit posterior's log-EI: its own optimum {r['log_ei_refit']:.4f}, at the stale "
                  f"optimum {r['log_ei_stale_point']:.4f}", flush=True)
    return dict(rows=rows, fit_elbo=float(info0.elbo), n=n, m=m, base_gain=base_gain,
                first_steps=int(info0.num_steps), first_converged=bool(info0.converged))


@float64_scope
def bench_cold(args, d):
    """Cold fits from nothing on the same data: the authors' two phases against
    ``gp.cold_fit`` (``GPFitConfig.cold_fit``), each compiled ahead of time, then
    ``--cold-repeats`` timed runs (median)."""
    z, y = synthetic(np.random.default_rng(d), args.n, d)
    data = gp.make_data(z, y, np.ones(args.n, bool))
    key = jax.random.key(d)

    def authors(key, data):
        params = gp.init_params(key, data, num_inducing=args.m)
        opt1 = gp.make_optimizer(0.1, train_inducing=False)
        params, _, i1 = gp.fit(params, opt1.init(params), data, optimizer=opt1,
                               num_steps=args.cold_kernel_steps)  # fmt: skip
        opt2 = gp.make_optimizer(method="lbfgs")
        params, _, i2 = gp.fit(params, opt2.init(params), data, optimizer=opt2, num_steps=args.cold_steps)
        return params, i2._replace(num_steps=jnp.asarray(args.cold_kernel_steps + args.cold_steps))

    f = bo.GPFitConfig()
    variants = [
        (f"authors: k-means, {args.cold_kernel_steps} Adam (kernel) + {args.cold_steps} L-BFGS (all)", authors),
        (f"subset-greedy (default): {f.cold_subset}-row subset, {f.cold_warmup_steps} Adam + <= "
         f"{f.cold_kernel_max_steps} L-BFGS (kernel), greedy inducing points, <= {f.cold_max_steps} "
         "L-BFGS (all)", functools.partial(gp.cold_fit, num_inducing=args.m, subset_size=f.cold_subset,
                                           warmup_steps=f.cold_warmup_steps,
                                           kernel_max_steps=f.cold_kernel_max_steps,
                                           max_steps=f.cold_max_steps,
                                           tol=f.refit_tol if f.cold_tol is None else f.cold_tol)),
    ]  # fmt: skip
    rows = []
    for name, fn in variants:
        t = time.perf_counter()
        compiled = jax.jit(fn).lower(key, data).compile()
        compile_s = time.perf_counter() - t
        times = []
        for _ in range(args.cold_repeats):
            t = time.perf_counter()
            params, info = compiled(key, data)
            jax.block_until_ready(params)
            times.append(time.perf_counter() - t)
        row = dict(name=name, seconds=statistics.median(times), times=times, compile_s=compile_s,
                   steps=int(info.num_steps), elbo=float(info.elbo))  # fmt: skip
        rows.append(row)
        print(f"[D={d}] cold fit {name}: {row['seconds']:.1f} s (runs {[round(t, 1) for t in times]}, "
              f"compile {compile_s:.1f} s), {row['steps']} steps, ELBO {row['elbo']:.1f} "
              f"(reference {REFERENCE_BOUND.get(d)})", flush=True)
    return rows


def gp_markdown(args, out, wall):
    lines = [
        f"### GP-level query costs (`--sections {' '.join(args.sections)}`)", "",
        f"Machine: {machine.describe()}; load average {os.getloadavg()[0]:.1f} at the end; every "
        "comparison below ran in one process, jit warmed up (compile excluded), "
        "`block_until_ready`, medians of repeats. LAPACK threads: wrjax's import default (1). "
        f"Command: `{' '.join(['python', 'benchmarks/bo_step.py'] + sys.argv[1:])}` "
        f"(wall time {wall / 60:.1f} min). N = {args.n:,}, M = {args.m}, {args.restarts} EI "
        "restarts x 200 ascent steps, synthetic data of `synthetic()`.", "",
    ]
    for d, sec in out.items():
        if "cold" in sec:
            lines += [
                f"**Cold fit from nothing, D = {d}** (N = {args.n:,}, M = {args.m}; the same data and "
                f"key for both; median of {args.cold_repeats} runs after AOT compilation). Reference "
                f"bound {REFERENCE_BOUND.get(d)} = GPflow's 100 Adam steps from an earlier wrjax "
                "cold fit (recorded; see the warm-refit table).", "",
                "| cold fit | seconds (runs) | compile (s) | steps | ELBO |",
                "|---|---|---|---|---|",
            ]
            for r in sec["cold"]:
                runs = ", ".join(f"{t:.1f}" for t in r["times"])
                lines.append(f"| {r['name']} | {r['seconds']:.1f} ({runs}) | {r['compile_s']:.1f} | "
                             f"{r['steps']} | {r['elbo']:.1f} |")
            lines.append("")
        if "refit" in sec:
            ref = REFERENCE_BOUND.get(d)
            lines += [
                f"**Warm refit from the cold fit, D = {d}** (cold fit by `bo_suggest`, "
                f"{args.cold_kernel_steps} Adam + {args.cold_steps} L-BFGS: {sec['cold_s']:.0f} s "
                f"incl. compilation, ELBO {sec['cold_elbo']:.1f}). Reference bound {ref} = GPflow's "
                "100 Adam steps (recorded; GPflow is not installed beside jax). One timed run "
                "each after AOT compilation; \"reaches\" = the time at the first step whose "
                "bound is at least the reference's (steps assumed of equal cost).", "",
                "| refit | seconds | steps | converged | ELBO | reaches reference after (s) | "
                "best log-EI (std. units) | query = refit + build + EI (s) |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in sec["refit"]:
                reach = "never" if r["reach_s"] is None else f"{r['reach_s']:.1f}"
                q = r.get("query_s")
                lines.append(
                    f"| {r['name']} | {r['seconds']:.1f} | {r['steps']} | {r['converged']} | "
                    f"{r['elbo']:.1f} | {reach} | {r['log_ei']:.4f} | "
                    f"{'-' if q is None else f'{q:.1f}'} |"
                )
            lines.append("")
        if "incremental" in sec:
            r = sec["incremental"]
            lines += [
                f"**Per-query cost, D = {d}**: incremental conditioning "
                f"(`gp_update.condition_on`) {1e3 * r['update_s']:.2f} ms + `staleness` "
                f"{1e3 * r['stale_s']:.2f} ms + EI maximisation {r['ei_s']:.3f} s = "
                f"**{r['incremental_query_s']:.3f} s**; a warm refit costs "
                f"{r['eval_s']:.3f} s per bound-and-gradient evaluation (x its steps, above) + "
                f"{r['build_s']:.3f} s predictor build + the same EI. After 10 incremental "
                f"updates at this size, against `build_predictor` from scratch: max |mean| "
                f"error {r['max_mean_err']:.1e}, max |var| error {r['max_var_err']:.1e}, bound "
                f"error {r['bound_err']:.1e} nats.", "",
            ]
        if "curve" in sec:
            lines += [
                f"**Query-cost parts against N and M, D = {d}** (seconds; \"update\" in ms):", "",
                "| N | M | bound+grad eval | predictor build | incremental update (ms) | EI max | "
                "incremental query (update + EI) | refit query, 20 evals + build + EI |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in sec["curve"]:
                lines.append(
                    f"| {r['N']:,} | {r['M']} | {r['eval_s']:.3f} | {r['build_s']:.3f} | "
                    f"{1e3 * r['update_s']:.2f} | {r['ei_s']:.3f} | {r['update_s'] + r['ei_s']:.3f} | "
                    f"{20 * r['eval_s'] + r['build_s'] + r['ei_s']:.2f} |"
                )
            lines.append("")
        if "schedule" in sec:
            r0 = sec["schedule"]
            lines += [
                f"**Staleness over a retrain cycle, D = {d}** (N = {r0['n']:,}, M = {r0['m']}: one "
                f"L-BFGS fit ({r0['first_steps']} steps, converged {r0['first_converged']}; a refit on "
                f"the same data gains {r0['base_gain']:.1e} nats/pt), then BO queries on the "
                "incrementally conditioned posterior; at each row a refit (L-BFGS, tol 1e-7/pt over "
                "10 its, cap 300) on the same data and scaling):", "",
                "| queries | stale bound | refit bound | refit gain per point | stale bound/pt change | "
                "mean z^2 (max) | max uncovered | refit log-EI: own optimum / at stale optimum |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in r0["rows"]:
                lines.append(
                    f"| {r['q']} | {r['stale_elbo']:.2f} | {r['refit_elbo']:.2f} | "
                    f"{r['gain_per_point']:.2e} | {r['change_per_point']:.2e} | "
                    f"{r['mean_z2']:.2f} ({r['max_z2']:.1f}) | {r['max_unc']:.3f} | {r['log_ei_refit']:.4f} / "
                    f"{r['log_ei_stale_point']:.4f} |"
                )
            lines.append("")
        if "threads" in sec:
            r = sec["threads"]
            lines += [
                f"**LAPACK threads, D = {d}** ({r['rounds']} interleaved rounds): one "
                f"bound-and-gradient evaluation {r[1]['eval']:.3f} s with 1 thread against "
                f"{r[2]['eval']:.3f} s with 2 (1 thread faster in {r['wins']}/{r['rounds']} "
                f"rounds); an M x M (M = {args.m}) float64 Cholesky {1e3 * r[1]['chol']:.2f} ms against "
                f"{1e3 * r[2]['chol']:.2f} ms.", "",
            ]
    return "\n".join(lines)


def write_subsection(path: Path, text: str) -> None:
    """Replace (or add) a ``### `` subsection of the ``## bo_step`` section."""
    old = path.read_text()
    head = text.split("\n", 1)[0]  # one subsection per set of sections
    start = old.find("## bo_step")
    end = old.find("\n## ", start + 1)
    end = len(old) if end < 0 else end + 1
    sec = old[start:end]
    i = sec.find(head)
    if i >= 0:
        j = sec.find("\n### ", i + 1)
        sec = sec[:i] + (sec[j + 1 :] if j >= 0 else "")
    sec = sec.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n\n"
    path.write_text(old[:start] + sec + old[end:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[25, 56])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--m", type=int, default=500)
    p.add_argument("--restarts", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cold-kernel-steps", type=int, default=100)
    p.add_argument("--cold-steps", type=int, default=100)
    p.add_argument("--adam-probe-steps", type=int, default=10)
    p.add_argument("--ref-python", default="/work/venv-ref/bin/python")
    p.add_argument("--ref-dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--ref-warm-steps", type=int, default=100)
    p.add_argument("--ref-repeats", type=int, default=1)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--botorch-python", default="/work/venv-botorch/bin/python",
                   help="Python of the BoTorch venv (see reference_botorch.py)")
    p.add_argument("--no-botorch", action="store_true", help="skip the BoTorch reference")
    p.add_argument("--sections", nargs="+", default=["bo", "refit", "incremental", "curve", "threads"],
                   choices=["bo", "cold", "refit", "incremental", "curve", "threads", "schedule"])
    p.add_argument("--cold-repeats", type=int, default=3, help="timed runs of each cold fit")
    p.add_argument("--cold-fit", default="authors", choices=bo.COLD_FITS,
                   help="the cold fit of the bo, refit and incremental sections (authors: the "
                        "state their recorded tables start from)")
    p.add_argument("--schedule-n", type=int, default=2_000)
    p.add_argument("--schedule-m", type=int, default=100)
    p.add_argument("--schedule-at", type=int, nargs="+", default=[5, 10, 25, 50])
    p.add_argument("--curve-dim", type=int, default=25)
    p.add_argument("--refit-cap", type=int, default=200, help="iteration cap of the converged refits")
    p.add_argument("--curve-n", type=int, nargs="+", default=[1_000, 5_000, 10_000, 20_000, 50_000])
    p.add_argument("--curve-m", type=int, nargs="+", default=[100, 250, 500, 1_000])
    p.add_argument("--write", action="store_true", help="write the bo_step section of RESULTS.md")
    p.add_argument("--curve-json", type=Path,
                   help="also write the curve rows as JSON (benchmarks/plot_scaling.py draws them)")
    args = p.parse_args()
    t0 = time.perf_counter()
    if "bo" in args.sections:
        rows = [bench_dim(args, d) for d in args.dims]
        text = markdown(args, rows, time.perf_counter() - t0)
        print(text)
        if args.write:
            machine.write_section(HERE / "RESULTS.md", "## bo_step", text)
    gp_sections = [s for s in args.sections if s != "bo"]
    if not gp_sections:
        return
    t1 = time.perf_counter()
    out = {}
    for d in args.dims:
        sec = out.setdefault(d, {})
        if "cold" in gp_sections:
            sec["cold"] = bench_cold(args, d)
        if "refit" in gp_sections or "incremental" in gp_sections:
            params, data, sec["cold_s"], sec["cold_elbo"] = _cold_state(args, d)
            print(f"[D={d}] cold fit {sec['cold_s']:.1f} s, ELBO {sec['cold_elbo']:.1f}", flush=True)
            if "refit" in gp_sections:
                sec["refit"] = bench_refit(args, d, params, data)
                params = sec["refit"][1]["params"]  # the converged L-BFGS fit
            if "incremental" in gp_sections:
                sec["incremental"] = bench_incremental(args, d, params, data, sec.get("refit"))
        if "schedule" in gp_sections:
            sec["schedule"] = bench_schedule(args, d)
        if "threads" in gp_sections and d == max(args.dims):
            sec["threads"] = bench_threads(args, d)
    if "curve" in gp_sections:
        out.setdefault(args.curve_dim, {})["curve"] = bench_curve(args, args.curve_dim)
        if args.curve_json:
            args.curve_json.write_text(json.dumps({
                "dim": args.curve_dim, "rows": out[args.curve_dim]["curve"],
                "machine": machine.describe(),
                "command": " ".join(sys.argv)}, indent=1))  # fmt: skip
    text = gp_markdown(args, out, time.perf_counter() - t1)
    print(text)
    if args.write:
        write_subsection(HERE / "RESULTS.md", text)


if __name__ == "__main__":
    main()
