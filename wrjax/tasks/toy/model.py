"""The toy VAE: a small MLP over bit strings with a 2-D latent space."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from wrjax.typing import PyTree

__all__ = ["BitVAE", "init_params", "build_model"]


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


def init_params(key: jax.Array, model: BitVAE) -> PyTree:
    """Fresh parameters of ``model``."""
    return model.init(key, jnp.zeros((1, model.length), jnp.float32))["params"]


def build_model(metadata: dict) -> tuple[BitVAE, PyTree]:
    """The ``build_fn`` of ``wrjax.checkpoint.load_model``: the model from the record's
    ``config`` and the structure of its params."""
    model = BitVAE(**metadata["config"])
    return model, jax.eval_shape(lambda key: init_params(key, model), jax.random.key(0))
