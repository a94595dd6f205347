"""A tiny synthetic task that runs the whole loop in seconds (tests, smoke runs, examples).

Objects are binary strings of ``length`` bits; the score is the number of ones (the
"area" of a 1-D shape). The initial data is a random ``data_fraction`` of the strings with
at most ``max_ones`` ones, so, as in the paper's shapes task, the best points lie outside
the data and weighted retraining has to move the latent space towards them, while the
decoder still produces many novel strings near the data. The model is a small MLP VAE
with a 2-D latent space, pretrained briefly (uniform weights) when the task is built.

Bad-input hooks for tests: ``fail_keys`` (the objective raises), ``nan_keys`` (it returns
NaN) and ``invalid_keys`` (the decoding counts as invalid).
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax import vae
from wrjax.task import Task

__all__ = ["BitVAE", "make_toy_task", "bits_key"]


class BitVAE(nn.Module):
    """MLP VAE over bit strings ``(B, L)`` with a ``latent_dim``-D latent space."""

    length: int = 12
    latent_dim: int = 2
    hidden: int = 64

    def setup(self):
        self.enc = nn.Dense(self.hidden)
        self.mean = nn.Dense(self.latent_dim)
        self.logvar = nn.Dense(self.latent_dim)
        self.dec1 = nn.Dense(self.hidden)
        self.dec2 = nn.Dense(self.length)

    def encode(self, x):
        h = nn.relu(self.enc(x.astype(jnp.float32)))
        return self.mean(h), self.logvar(h)

    def decode(self, z):
        return self.dec2(nn.relu(self.dec1(z.astype(jnp.float32))))

    def __call__(self, x):
        return self.decode(self.encode(x)[0])


def bits_key(bits) -> str:
    """``"0110..."``: the text form and novelty key of a bit string."""
    return "".join(str(int(b)) for b in np.asarray(bits).ravel())


def _bits_area(bits: jax.Array) -> jax.Array:
    """Pure-JAX objective on decoded rows ``(B, L)``: the number of ones."""
    return jnp.sum(bits, axis=-1, dtype=jnp.int32).astype(jnp.float32)


def make_toy_task(
    key: jax.Array,
    *,
    length: int = 12,
    max_ones: int = 4,
    data_fraction: float = 0.5,
    pretrain_steps: int = 300,
    fail_keys=(),
    nan_keys=(),
    invalid_keys=(),
    grid_size: int = 41,
) -> Task:
    """Build the toy :class:`wrjax.Task` (pretraining takes a second or two on a CPU)."""
    if not 0 <= max_ones < length:
        raise ValueError(f"need 0 <= max_ones < length, got {max_ones}, {length}")
    rows = [
        [1 if i in ones else 0 for i in range(length)]
        for m in range(max_ones + 1)
        for ones in itertools.combinations(range(length), m)
    ]
    x = np.asarray(rows, np.uint8)
    # A fixed subset (independent of ``key``): the task's data is part of its definition.
    keep = np.random.default_rng(length * 100 + max_ones).random(len(x)) < data_fraction
    keep[0] = True
    x = x[keep]
    y = x.sum(1).astype(np.float32)
    model = BitVAE(length=length)
    k_init, k_fit = jax.random.split(key)
    params = model.init(k_init, jnp.zeros((1, length), jnp.float32))["params"]
    if pretrain_steps:
        opt = optax.adam(3e-3)
        step = vae.make_train_step(model, opt, beta=0.1)
        state, _ = vae.fit(
            k_fit, vae.init_train_state(params, opt), step, jnp.asarray(x), jnp.ones(len(x)),
            num_steps=pretrain_steps, batch_size=32,
        )  # fmt: skip
        params = state.params
    fail, nan, invalid = set(fail_keys), set(nan_keys), set(invalid_keys)

    def jax_decode(params, z):
        """Rounded Bernoulli means ``(B, L)`` uint8 (pure JAX)."""
        return (vae.decode_logits(model, params, jnp.asarray(z, jnp.float32)) > 0).astype(jnp.uint8)

    def decode(key, params, z):
        bits = np.asarray(jax_decode(params, z))
        return [None if bits_key(b) in invalid else b for b in bits]

    def objective(bits):
        k = bits_key(bits)
        if k in fail:
            raise RuntimeError(f"objective failed on {k}")
        if k in nan:
            return float("nan")
        return float(np.sum(bits))

    g = np.linspace(-3, 3, grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    return Task(
        name="toy",
        model=model,
        params=params,
        x=x,
        y=y,
        initial_keys=[bits_key(r) for r in x],
        decode=decode,
        objective=objective,
        to_data=lambda bits: np.asarray(bits, np.uint8),
        novelty_key=bits_key,
        beta=0.1,
        jax_decode=jax_decode,
        jax_objective=_bits_area,
        grid=grid,
    )
