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

Both queries start from the same GP parameters (the wrjax cold fit) on the same data
(N = 2,000 best + 8,000 random = all points); the returned points are compared by their EI
under both fitted GPs (evaluated exactly, in float64, by wrjax), and the fits by their ELBO
(the same float64 bound for both).

Run:  python benchmarks/bo_step.py [--dims 25 56] [--repeats 3] [--write]
      (needs the reference venv: python -m venv /work/venv-ref &&
       /work/venv-ref/bin/pip install "gpflow==2.11.*" tensorflow-cpu scipy;
       --ref-python PATH to point elsewhere, --no-reference to skip it)
"""

from __future__ import annotations

import os

# On a small shared CPU, multithreaded OpenBLAS (used by jaxlib's and SciPy's LAPACK calls)
# spins against the other threads: a 500 x 500 Cholesky took 0.7 s instead of 5 ms here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
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
from wrjax import bo, gp  # noqa: E402
from wrjax.precision import float64_scope  # noqa: E402

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


def _run_reference(args, data, params, d, dtype):
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
            [args.ref_python, str(HERE / "reference_gpflow.py"), str(inp), str(out)],
            capture_output=True, text=True, env=dict(os.environ),
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"reference failed:\n{proc.stderr[-3000:]}")
        res = json.loads(out.read_text())
        res["subprocess_s"] = time.perf_counter() - t
        return res


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
    if not args.no_reference:
        p0 = float64_scope(lambda s: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), s))(cold_state.params)
        ref = run_reference(args, data, p0, d)
        qs = ref["queries"]
        row["ref"] = ref
        row["ref_refit_s"] = statistics.median(q["refit_s"] for q in qs)
        row["ref_ei_s"] = statistics.median(q["ei_s"] for q in qs)
        row["ref_total_s"] = statistics.median(q["total_s"] for q in qs)
        row["ref_nfev"] = statistics.median(q["nfev"] for q in qs)
        row["ref_point"] = np.asarray(qs[0]["point"], np.float64)
        pr = ref["params"]
        p_ref = params_from_constrained(pr["inducing"], pr["lengthscale"], pr["variance"], pr["noise"])
        pts = np.stack([row["ours_point"], row["ref_point"]])
        row["ei_under_ours"], row["elbo_ours"] = ei_and_elbo(p_ours, data, pts, q)
        row["ei_under_ref"], row["elbo_ref"] = ei_and_elbo(p_ref, data, pts, q)
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
    return row


def markdown(args, rows, wall):
    lines = ["## bo_step", ""]
    lines.append(
        f"One BO query on synthetic data, N = {args.n:,}, M = {args.m}, {args.restarts} restarts. "
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs), "
        f"jax {jax.__version__}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}. "
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


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    start = old.find("## bo_step")
    if start >= 0:
        end = old.find("\n## ", start + 1)
        old = old[:start] + (old[end + 1 :] if end >= 0 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text)


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
    p.add_argument("--write", action="store_true", help="write the bo_step section of RESULTS.md")
    args = p.parse_args()
    t0 = time.perf_counter()
    rows = [bench_dim(args, d) for d in args.dims]
    text = markdown(args, rows, time.perf_counter() - t0)
    print(text)
    if args.write:
        write_section(HERE / "RESULTS.md", text)


if __name__ == "__main__":
    main()
