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


def torch_step_ms(preset: str, batch_np: np.ndarray, repeats: int):
    """The same model in PyTorch (ConvTranspose2d decoder), Adam step, CPU. None if no torch."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    def conv(cin, cout, k, s):
        return nn.Conv2d(cin, cout, k, stride=s, padding=(k - 1) // 2)

    def convt(cin, cout, k, s):
        p = (k - 1) // 2
        return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=s - 1)

    if preset == "squares2d":
        enc_c = [(1, 4, 3, 1), (4, 8, 5, 2), (8, 8, 3, 1), (8, 16, 5, 2), (16, 16, 3, 1), (16, 16, 3, 1),
                 (16, 16, 5, 2), (16, 16, 3, 1), (16, 16, 3, 1), (16, 16, 5, 2), (16, 16, 3, 1)]
        enc_fc, d = [256, 32], 2
        dec_fc, start = [32, 256], (16, 4, 4)
        dec_c = [(16, 32, 3, 1), (32, 32, 5, 2), (32, 32, 3, 1), (32, 16, 5, 2), (16, 16, 3, 1),
                 (16, 16, 3, 1), (16, 16, 5, 2), (16, 8, 3, 1), (8, 8, 3, 1), (8, 8, 5, 2), (8, 1, 3, 1)]
    else:
        enc_c = [(1, 32, 5, 2), (32, 64, 5, 2), (64, 128, 5, 2)]
        enc_fc, d = [8192, 4096, 1024], 5
        dec_fc, start = [1024, 4096, 8192], (128, 8, 8)
        dec_c = [(128, 64, 5, 2), (64, 32, 5, 2), (32, 1, 5, 2)]
    enc = []
    for cin, cout, k, s in enc_c:
        enc += [conv(cin, cout, k, s), nn.ReLU()]
    enc.append(nn.Flatten())
    for a, b in zip(enc_fc[:-1], enc_fc[1:]):
        enc += [nn.Linear(a, b), nn.ReLU()]
    enc.append(nn.Linear(enc_fc[-1], 2 * d))
    dec = []
    for a, b in zip([d] + dec_fc[:-1], dec_fc):
        dec += [nn.Linear(a, b), nn.ReLU()]
    dec.append(nn.Unflatten(1, start))
    for i, (cin, cout, k, s) in enumerate(dec_c):
        dec.append(convt(cin, cout, k, s) if s > 1 else conv(cin, cout, k, s))
        if i < len(dec_c) - 1:
            dec.append(nn.ReLU())
    enc, dec = nn.Sequential(*enc), nn.Sequential(*dec)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.as_tensor(batch_np, dtype=torch.float32)[:, None]

    def step():
        out = enc(x)
        mu, logvar = out[:, :d], out[:, d:]
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = dec(z)
        nll = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
        kl = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(1)
        loss = (nll + kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), torch.__version__


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
