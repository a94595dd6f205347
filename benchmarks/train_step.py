"""Microbenchmark: the jitted weighted-ELBO train step for a small conv VAE (batch 32, 64x64).

Compares, in one run on the same model and data:
  * ``wrjax.make_train_step`` with per-example loss weights (weighted retraining),
  * a plain unweighted ELBO step written directly with optax (the reference: what a user
    without wrjax would write), to show what weighting costs,
  * ``wrjax.fit``: the same step scanned ``lax.scan`` over a plan of minibatches gathered on
    the device, per step, against calling the jitted step from a Python loop.

Models: ``squares2d`` (default; the shapes task's VAE, ``wrjax.tasks.shapes.make_model``, whose
convolutions avoid XLA:CPU's slow conv-gradient path) or ``small`` (the plain flax conv VAE
below, which hits it: XLA:CPU computes conv weight gradients far slower inside ``lax.scan``
than in a standalone jitted step, jax issue 12868).

Run:  python benchmarks/train_step.py [--model squares2d|small] [--repeats 7] [--steps 50]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import wrjax


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


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50, help="steps per timed call")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", choices=["squares2d", "small"], default="squares2d")
    args = ap.parse_args()

    key = jax.random.key(0)
    n = 1024
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((n, 64, 64)) < 0.2, jnp.uint8)
    if args.model == "small":
        model = SmallConvVAE()
        params = model.init(key, x[:1])["params"]
    else:
        from wrjax.tasks import shapes

        model = shapes.make_model("squares2d")
        params = shapes.init_params(key, model)
    opt = optax.adam(1e-3)
    state = wrjax.init_train_state(params, opt)
    w = wrjax.rank_weights(jnp.asarray(rng.normal(size=n), jnp.float32), 1e-3)
    batch = x[: args.batch]
    lw = n * w[: args.batch]

    weighted_step = jax.jit(wrjax.make_train_step(model, opt, beta=1.0))

    # Reference: an unweighted ELBO step written directly with flax/optax.
    def plain_loss(p, k, xb):
        mean, logvar = model.apply({"params": p}, xb, method=model.encode)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(k, mean.shape)
        logits = model.apply({"params": p}, z, method=model.decode)
        ll = -optax.sigmoid_binary_cross_entropy(logits, xb.astype(jnp.float32)).sum((1, 2))
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1 - logvar, -1)
        return jnp.mean(kl - ll)

    @jax.jit
    def plain_step(k, st, xb):
        loss, g = jax.value_and_grad(plain_loss)(st.params, k, xb)
        upd, os = opt.update(g, st.opt_state, st.params)
        return wrjax.TrainState(optax.apply_updates(st.params, upd), os, st.step + 1), loss

    step_fn = wrjax.make_train_step(model, opt, beta=1.0)

    def run_weighted_loop():
        s = state
        for i in range(args.steps):
            s, _ = weighted_step(jax.random.fold_in(key, i), s, batch, lw)
        return s.params

    def run_plain_loop():
        s = state
        for i in range(args.steps):
            s, _ = plain_step(jax.random.fold_in(key, i), s, batch)
        return s.params

    def run_fit():
        s, _ = wrjax.fit(key, state, step_fn, x, w, num_steps=args.steps, batch_size=args.batch)
        return s.params

    for fn in (run_weighted_loop, run_plain_loop, run_fit):  # compile + warm up
        jax.block_until_ready(fn())

    t_weighted = median_seconds(run_weighted_loop, args.repeats) / args.steps * 1e3
    t_plain = median_seconds(run_plain_loop, args.repeats) / args.steps * 1e3
    t_fit = median_seconds(run_fit, args.repeats) / args.steps * 1e3

    machine = f"{platform.machine()} CPU, {jax.local_device_count()} device(s) [{jax.devices()[0].platform}], jax {jax.__version__}"
    rows = [
        ("wrjax weighted step (jit, Python loop)", t_weighted, t_weighted / t_plain),
        ("plain unweighted ELBO step (reference)", t_plain, 1.0),
        ("wrjax.fit (lax.scan, device-side batches)", t_fit, t_fit / t_plain),
    ]
    lines = [
        "| step | median ms/step | ratio to reference |",
        "|---|---|---|",
        *[f"| {name} | {ms:.2f} | {r:.2f} |" for name, ms, r in rows],
    ]
    print(f"machine: {machine}; model {args.model}; batch {args.batch}, {args.steps} steps/call, median of {args.repeats}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
