"""Benchmark: decoder upsampling layers and conv gradients of the shapes VAEs (batch 32).

XLA:CPU has two slow paths for conv VAEs: the kernel gradient of a strided transposed
convolution (``lhs_dilation``), and every gradient convolution inside a ``lax.scan`` body (as
in ``wrjax.vae.fit``). This compares, in one run on the same data, the jitted weighted-ELBO
train step (``wrjax.make_train_step``, Adam) of both shapes models in these configurations
(``upsample``/``fast`` of ``wrjax.tasks.shapes.make_model``):

* ``convtranspose/plain``: ``lax.conv_transpose`` decoder + plain convolutions, i.e. exactly
  ``flax.linen.ConvTranspose``/``Conv``: the reference;
* ``subpixel/plain``: the transposed convolutions as stride-1 conv + depth-to-space (exact);
* ``subpixel/fast``: that, with every conv through the custom-VJP ``conv2d`` (exact; default);
* ``convtranspose/fast``, ``resize/fast``, ``pixelshuffle/fast``: alternatives (the last two
  are different layers: nearest upsampling + conv, and conv to 4C + depth-to-space).

It times (a) one jitted step called from Python, and (b) the per-step time inside
``wrjax.vae.fit`` (``lax.scan`` over steps), and checks that the gradients of the exact
configurations match the reference with the same parameters. With ``--torch`` it also times
the same model in PyTorch on the CPU (ConvTranspose2d decoder), if ``torch`` imports.

Run:  python benchmarks/decoder_grad.py [--rounds 5] [--repeats 3] [--scan-steps 16]
      [--models squares2d dsprites] [--torch [--torch-path DIR]] [--write]
      (--write appends a "## decoder_grad" entry to benchmarks/RESULTS.md)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax.tasks import shapes
from wrjax.vae import fit, init_train_state, make_train_step

sys.path.insert(0, str(Path(__file__).parent))
from torch_reference import torch_step_ms  # noqa: E402 - torch-only module beside this script

BATCH = 32
REFERENCE = "convtranspose/plain"
CONFIGS = (
    "convtranspose/plain",
    "subpixel/plain",
    "subpixel/fast",
    "convtranspose/fast",
    "resize/fast",
    "pixelshuffle/fast",
)
EXACT = ("subpixel/plain", "subpixel/fast", "convtranspose/fast")


def _model(preset: str, config: str):
    upsample, speed = config.split("/")
    return shapes.make_model(preset, upsample=upsample, fast=speed == "fast")


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def make_jax_step(preset: str, config: str, batch):
    """A compiled, warmed-up train step; returns ``(run, compile_seconds)``."""
    model = _model(preset, config)
    params = shapes.init_params(jax.random.key(0), model)
    opt = optax.adam(1e-3)
    state = init_train_state(params, opt)
    step = jax.jit(make_train_step(model, opt, beta=1.0))
    w = jnp.ones((BATCH,), jnp.float32)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    jax.block_until_ready(step(key, state, batch, w))  # compile + warm up
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(step(key, state, batch, w))
    return (lambda: step(key, state, batch, w)), compile_s


def make_fit_run(preset: str, config: str, data, num_steps: int):
    """``wrjax.vae.fit`` over ``num_steps`` steps (one ``lax.scan``), compiled and warmed up."""
    model = _model(preset, config)
    params = shapes.init_params(jax.random.key(0), model)
    opt = optax.adam(1e-3)
    state = init_train_state(params, opt)
    step = make_train_step(model, opt, beta=1.0)
    w = jnp.ones((data.shape[0],), jnp.float32)

    def run():
        return fit(jax.random.key(1), state, step, data, w, num_steps=num_steps, batch_size=BATCH)

    jax.block_until_ready(run())
    return run


def interleaved_ms(runs: dict, rounds: int, per_round: int) -> dict:
    """Median step time per entry, timing the entries in turn for ``rounds`` rounds so that
    load from other processes falls on all of them alike."""
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(median_ms(run, per_round))
    return {name: statistics.median(t) for name, t in times.items()}


def grad_error(preset: str, config: str, batch) -> float:
    """Max |g - g_ref| / max |g_ref| over all parameter gradients, same params, same key."""
    from wrjax.vae import elbo_terms

    ref_model = _model(preset, REFERENCE)
    params = shapes.init_params(jax.random.key(0), ref_model)
    model = _model(preset, config)

    def loss(p, m):
        return -jnp.mean(elbo_terms(jax.random.key(2), p, m, batch).elbo)

    g_ref = jax.jit(jax.grad(lambda p: loss(p, ref_model)))(params)
    g = jax.jit(jax.grad(lambda p: loss(p, model)))(params)
    num = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)))
    den = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(g_ref))
    return num / den


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="steps timed per round (median)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over the configs (median)")
    ap.add_argument("--scan-steps", type=int, default=16, help="steps of the timed fit (0: skip)")
    ap.add_argument("--models", nargs="+", default=["squares2d", "dsprites"])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--scan-configs", nargs="+", default=[REFERENCE, "subpixel/plain", "subpixel/fast"])
    ap.add_argument("--torch", action="store_true", help="also time PyTorch (if it imports)")
    ap.add_argument(
        "--torch-path",
        default=None,
        help="site-packages of a separate venv holding torch, appended to sys.path",
    )
    ap.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.torch_path:
        sys.path.append(args.torch_path)  # appended: this venv's numpy/jax keep precedence

    rng = np.random.default_rng(0)
    lines = []
    for preset in args.models:
        batch_np = (rng.random((BATCH, 64, 64)) < 0.1).astype(np.uint8)
        batch = jnp.asarray(batch_np)
        runs, errs = {}, {}
        for config in args.configs:
            runs[config], comp = make_jax_step(preset, config, batch)
            errs[config] = grad_error(preset, config, batch) if config in EXACT else None
            extra = f", grad rel. error vs {REFERENCE} {errs[config]:.1e}" if errs[config] is not None else ""
            print(f"{preset:9s} {config:20s} compiled in {comp:.1f} s{extra}", flush=True)
        step_ms = interleaved_ms(runs, args.rounds, args.repeats)
        scan_ms = {}
        if args.scan_steps > 0:
            data = jnp.asarray((rng.random((256, 64, 64)) < 0.1).astype(np.uint8))
            fit_runs = {c: make_fit_run(preset, c, data, args.scan_steps) for c in args.scan_configs}
            total = interleaved_ms(fit_runs, max(1, args.rounds // 2), 1)
            scan_ms = {c: v / args.scan_steps for c, v in total.items()}
        ref = step_ms.get(REFERENCE)
        lines.append(
            f"- `{preset}` model, one train step (Adam, batch {BATCH}); median over "
            f"{args.rounds} interleaved rounds of {args.repeats} steps:"
        )
        for config in args.configs:
            ratio = ""
            if ref and config != REFERENCE:
                ratio = f" ({ref / step_ms[config]:.2f}x the reference speed)"
            err = f"; gradient rel. error vs reference {errs[config]:.1e}" if errs[config] is not None else ""
            ref_tag = " (reference)" if config == REFERENCE else ""
            lines.append(f"  - {config}{ref_tag}: {step_ms[config]:.1f} ms{ratio}{err}")
            print(f"{preset:9s} {config:20s} step {step_ms[config]:8.1f} ms", flush=True)
        if scan_ms:
            lines.append(f"  - per step inside `wrjax.vae.fit` (one `lax.scan` of {args.scan_steps} steps):")
            for config, ms in scan_ms.items():
                lines.append(f"    - {config}: {ms:.1f} ms ({ms / step_ms[config]:.1f}x its jitted step)")
                print(f"{preset:9s} {config:20s} in fit {ms:8.1f} ms/step", flush=True)
        if args.torch:
            t = torch_step_ms(preset, batch_np, args.rounds * args.repeats)
            if t is None:
                print("torch not importable; skipped")
            else:
                ms, ver = t
                print(f"{preset:9s} torch {ver} ConvTranspose2d step {ms:8.1f} ms", flush=True)
                best = step_ms.get("subpixel/fast", float("nan"))
                lines.append(
                    f"  - PyTorch {ver} CPU, same model (ConvTranspose2d), Adam step: {ms:.1f} ms; "
                    f"subpixel/fast / torch = {best / ms:.2f}"
                )

    if args.write:
        header = (
            f"\n### {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
            f"{os.cpu_count()} CPU cores (shared with other jobs: load varies), jax {jax.__version__}\n\n"
            f"Command: `python benchmarks/decoder_grad.py {' '.join(sys.argv[1:])}`\n\n"
        )
        path = Path(__file__).with_name("RESULTS.md")
        text = path.read_text() if path.exists() else "# Benchmark results\n"
        section = "## decoder_grad"
        entry = header + "\n".join(lines) + "\n"
        if section in text:
            # Append the entry at the end of our section (before the next "## " heading).
            start = text.index(section)
            nxt = text.find("\n## ", start + len(section))
            end = len(text) if nxt < 0 else nxt
            text = text[:end].rstrip("\n") + "\n" + entry + text[end:]
        else:
            text = text.rstrip("\n") + f"\n\n{section}\n" + entry
        path.write_text(text)
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
