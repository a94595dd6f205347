"""Microbenchmark: the weighted-ELBO train step of the shapes VAEs, against PyTorch, in one run.

Rows (same model, same batch of 64x64 binary images, Adam lr 1e-3; median over interleaved
rounds of the per-step time, after compilation and warm-up, ``block_until_ready``):

* ``wrjax.fit``: the step scanned (``lax.scan``) over minibatches drawn on the device, the
  loop that pretraining and every retrain run; its input state is not donated, so each call
  writes one new state (fresh pages: for dSprites 0.9 GB of parameters and Adam moments),
  amortised over the call's ``--steps`` steps;
* the jitted weighted step called from a Python loop (``wrjax.make_train_step``), state
  donated (``donate_argnums``) as a user's own loop should do: without donation every step
  writes its 76M new dSprites parameters and moments to fresh pages, which on this CPU costs
  more than the step's arithmetic;
* the same step without weights (a plain ELBO step written with optax): what weighting costs;
* **PyTorch** (``--torch-python``: the python of a venv with torch; ``benchmarks/
  torch_reference.py`` says how to make it): the same model, eager, in its own process,
  timed in the same rounds.

Models: ``squares2d`` (the authors' shapes VAE, 113k parameters), ``dsprites`` (the paper's C.4
VAE, 76M parameters), ``small`` (a plain flax conv VAE, no PyTorch twin).

For the roofline it also measures, in the same run, the float32 GEMM rate (a jitted
2048^3 matmul) and the memory bandwidth (a donated triad over 128 MB arrays), reads the
step's flop and byte counts from XLA's cost analysis, and reports the step's share of each
ceiling. ``--batches`` gives train-step time against batch size; ``--data-parallel`` splits
each batch over every device (``wrjax.parallel``; on a CPU force devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``). ``--json FILE`` appends one JSON
line per (model, batch), which ``benchmarks/plot_scaling.py`` draws.

Run:  python benchmarks/train_step.py [--model squares2d|dsprites|small] [--batches 32]
      [--rounds 5] [--steps 10] [--torch-python /tmp/torchvenv/bin/python] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import wrjax
from wrjax import parallel

sys.path.insert(0, str(Path(__file__).parent))
import machine as machine_line  # noqa: E402 - the module beside this script


class SmallConvVAE(nn.Module):
    """Conv encoder (16/32/64 channels, stride 2) and a resize+conv decoder; latent 2."""

    latent_dim: int = 2

    @nn.compact
    def encode(self, x):
        h = x[..., None].astype(jnp.float32)
        for i, c in enumerate((16, 32, 64)):
            h = nn.relu(nn.Conv(c, (4, 4), strides=(2, 2), name=f"enc_conv{i}")(h))
        h = nn.relu(nn.Dense(256, name="enc_fc")(h.reshape(h.shape[0], -1)))
        return nn.Dense(self.latent_dim, name="mean")(h), nn.Dense(self.latent_dim, name="logvar")(h)

    @nn.compact
    def decode(self, z):
        h = nn.relu(nn.Dense(256, name="dec_fc0")(z))
        h = nn.relu(nn.Dense(8 * 8 * 64, name="dec_fc1")(h)).reshape(z.shape[0], 8, 8, 64)
        for i, c in enumerate((32, 16)):
            h = jax.image.resize(h, (h.shape[0], h.shape[1] * 2, h.shape[2] * 2, h.shape[3]), "nearest")
            h = nn.relu(nn.Conv(c, (3, 3), name=f"dec_conv{i}")(h))
        h = jax.image.resize(h, (h.shape[0], 64, 64, h.shape[3]), "nearest")
        return nn.Conv(1, (3, 3), name="dec_out")(h)[..., 0]

    def __call__(self, x):
        return self.decode(self.encode(x)[0])


# ---------------------------------------------------------------------------------------------
# Ceilings of this machine, measured in the same run
# ---------------------------------------------------------------------------------------------


def _median_s(fn, repeats: int = 7) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_gflops(n: int = 2048) -> float:
    """float32 ``n x n @ n x n`` rate in GFLOP/s (jitted, median of 7)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    return 2 * n**3 / _median_s(lambda: mm(a, a)) / 1e9


def triad_gbps(n: int = 2**25) -> float:
    """Memory bandwidth in GB/s of ``a <- 0.9 a + b`` over two ``n``-float arrays, ``a``
    donated (no fresh pages), counting 3 x 4 bytes per element."""
    triad = jax.jit(lambda a, b: 0.9 * a + b, donate_argnums=0)
    a, b = jnp.ones(n), jnp.ones(n)
    a = jax.block_until_ready(triad(a, b))
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        a = jax.block_until_ready(triad(a, b))
        times.append(time.perf_counter() - t0)
    return 12 * n / statistics.median(times) / 1e9


# ---------------------------------------------------------------------------------------------
# The PyTorch twin, in its own process
# ---------------------------------------------------------------------------------------------


class TorchServer:
    """``benchmarks/torch_reference.py --serve`` in the venv of ``python``; :meth:`ms` times
    ``n`` steps there."""

    def __init__(self, python: str, model: str, batch: int):
        script = Path(__file__).with_name("torch_reference.py")
        self.proc = subprocess.Popen([python, str(script), "--serve", model, "--batch", str(batch)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the PyTorch reference did not start under {python}")
        self.info = json.loads(line)

    def ms(self, n: int) -> list[float]:
        self.proc.stdin.write(f"time {n}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["ms"]

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------------
# The JAX rows
# ---------------------------------------------------------------------------------------------


def build(model_name: str, key):
    if model_name == "small":
        model = SmallConvVAE()
        return model, model.init(key, jnp.zeros((1, 64, 64), jnp.uint8))["params"]
    from wrjax.tasks import shapes

    model = shapes.make_model(model_name)
    return model, shapes.init_params(key, model)


def jax_rows(model, params, batch: int, steps: int, data_parallel: bool):
    """``{name: fn}``; each ``fn()`` runs ``steps`` train steps and returns the new params."""
    key = jax.random.key(0)
    rng = np.random.default_rng(0)
    n = max(256, 4 * batch)
    x = jnp.asarray(rng.random((n, 64, 64)) < 0.2, jnp.uint8)
    opt = optax.adam(1e-3)
    w = wrjax.rank_weights(jnp.asarray(rng.normal(size=n), jnp.float32), 1e-3)
    xb, lw = x[:batch], n * w[:batch]
    sharding = None
    state0 = wrjax.init_train_state(params, opt)
    if data_parallel:
        mesh = parallel.data_mesh()
        sharding = parallel.batch_sharding(mesh)
        state0 = parallel.replicate(state0, mesh)
        x, w = parallel.replicate((x, w), mesh)
        xb, lw = jax.device_put((xb, lw), sharding)
    step_fn = wrjax.make_train_step(model, opt, beta=1.0)
    weighted = jax.jit(step_fn, donate_argnums=(1,))

    def plain_loss(p, k, xb):
        mean, logvar = model.apply({"params": p}, xb, method=model.encode)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(k, mean.shape)
        logits = model.apply({"params": p}, z, method=model.decode)
        ll = -optax.sigmoid_binary_cross_entropy(logits, xb.astype(jnp.float32)).sum((1, 2))
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1 - logvar, -1)
        return jnp.mean(kl - ll)

    def plain_step(k, st, xb):
        loss, g = jax.value_and_grad(plain_loss)(st.params, k, xb)
        upd, os_ = opt.update(g, st.opt_state, st.params)
        return wrjax.TrainState(optax.apply_updates(st.params, upd), os_, st.step + 1), loss

    plain = jax.jit(plain_step, donate_argnums=(1,))
    keys = [jax.random.fold_in(key, i) for i in range(steps)]
    # Donated loops consume their state: each keeps its own, threaded through the rounds.
    live = {"weighted": jax.tree.map(jnp.copy, state0), "plain": jax.tree.map(jnp.copy, state0)}

    def run_weighted():
        s = live["weighted"]
        for k in keys:
            s, _ = weighted(k, s, xb, lw)
        live["weighted"] = s
        return s.params

    def run_plain():
        s = live["plain"]
        for k in keys:
            s, _ = plain(k, s, xb)
        live["plain"] = s
        return s.params

    def run_fit():
        s, _ = wrjax.fit(key, state0, step_fn, x, w, num_steps=steps, batch_size=batch,
                         batch_sharding=sharding)  # fmt: skip
        return s.params

    cost = jax.jit(step_fn).lower(key, state0, xb, lw).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # a batch-sharded program's cost is one device's share: count the whole step
    parts = jax.device_count() if data_parallel else 1
    rows = {"wrjax.fit (lax.scan, device-side batches)": run_fit,
            "jitted weighted step, Python loop, state donated": run_weighted,
            "plain unweighted ELBO step (optax), donated": run_plain}  # fmt: skip
    return rows, {"flops": parts * float(cost.get("flops", float("nan"))),
                  "bytes": parts * float(cost.get("bytes accessed", float("nan")))}  # fmt: skip


def measure(args, model_name: str, batch: int) -> dict:
    model, params = build(model_name, jax.random.key(0))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    rows, cost = jax_rows(model, params, batch, args.steps, args.data_parallel)
    for fn in rows.values():  # compile + warm up
        jax.block_until_ready(fn())
    torch = None
    if args.torch_python and model_name != "small":
        torch = TorchServer(args.torch_python, model_name, batch)
        torch.ms(2)
    times = {name: [] for name in rows}
    if torch:
        times["PyTorch eager (reference)"] = []
    for _ in range(args.rounds):  # interleaved: load drifts hit every row alike
        for name, fn in rows.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
        if torch:
            times["PyTorch eager (reference)"].append(statistics.mean(torch.ms(args.steps)))
    info = torch.info if torch else None
    if torch:
        torch.close()
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"model": model_name, "batch": batch, "params": n_params, "ms": med,
            "devices": jax.device_count() if args.data_parallel else 1,
            "cost": cost, "torch": info}  # fmt: skip


def report(r: dict, gflops: float, gbps: float) -> str:
    ref = r["ms"].get("PyTorch eager (reference)")
    fit_ms = r["ms"]["wrjax.fit (lax.scan, device-side batches)"]
    lines = [f"`--model {r['model']}`, batch {r['batch']}, {r['params']:,} parameters, "
             f"{r['devices']} device(s):", "",
             "| step | median ms/step | PyTorch ms / this (speed vs PyTorch) |", "|---|---|---|"]  # fmt: skip
    for name, ms in r["ms"].items():
        lines.append(f"| {name} | {ms:.1f} | {ref / ms:.2f}x |" if ref else f"| {name} | {ms:.1f} | n/a |")
    flops, nbytes = r["cost"]["flops"], r["cost"]["bytes"]
    lines += ["", f"XLA cost analysis of one step (all devices): {flops / 1e9:.2f} GFLOP, {nbytes / 1e9:.2f} GB "
              f"accessed. In `wrjax.fit`: {flops / fit_ms / 1e6:.0f} GFLOP/s = "
              f"{100 * flops / fit_ms / 1e6 / gflops:.0f}% of the measured GEMM rate; the bytes at the "
              f"measured bandwidth alone take {nbytes / gbps / 1e6:.0f} ms "
              f"({100 * nbytes / gbps / 1e6 / fit_ms:.0f}% of the step)."]  # fmt: skip
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--model", choices=["squares2d", "dsprites", "small"], default="squares2d")
    ap.add_argument("--batches", type=int, nargs="+", default=[32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed call")
    ap.add_argument("--torch-python", help="python of a venv with torch (the PyTorch row)")
    ap.add_argument("--data-parallel", action="store_true", help="split each batch over all devices")
    ap.add_argument("--json", type=Path, help="append one JSON line per batch size")
    args = ap.parse_args(argv)
    if args.data_parallel and any(b % jax.device_count() for b in args.batches):
        ap.error(f"--data-parallel needs batch sizes divisible by {jax.device_count()} devices")
    gflops, gbps = gemm_gflops(), triad_gbps()
    machine = f"{machine_line.describe()}; load average {os.getloadavg()[0]:.1f}"
    print(f"machine: {machine}\nceilings measured now: float32 GEMM {gflops:.0f} GFLOP/s, "
          f"memory bandwidth (triad) {gbps:.0f} GB/s\n", flush=True)
    for batch in args.batches:
        r = measure(args, args.model, batch)
        print(report(r, gflops, gbps) + "\n", flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(dict(r, gemm_gflops=gflops, triad_gbps=gbps, machine=machine,
                                        command=" ".join(sys.argv))) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
