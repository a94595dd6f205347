"""The toy task as a :class:`wrjax.Task`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wrjax import vae
from wrjax.task import Task
from wrjax.tasks.toy.data import bits_key, toy_data
from wrjax.tasks.toy.model import BitVAE, init_params
from wrjax.tasks.toy.objective import bits_area, make_objective
from wrjax.tasks.toy.pretrain import pretrain

__all__ = ["make_toy_task"]


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
    """Build the toy :class:`wrjax.Task`; the model is pretrained briefly (uniform weights)
    from ``key`` (a second or two on a CPU).

    Bad-input hooks for tests: ``fail_keys`` (the objective raises), ``nan_keys`` (it returns
    NaN) and ``invalid_keys`` (the decoding counts as invalid).
    """
    x, y = toy_data(length, max_ones, data_fraction)
    model = BitVAE(length=length)
    k_init, k_fit = jax.random.split(key)
    params = init_params(k_init, model)
    if pretrain_steps:
        params, _ = pretrain(k_fit, model, params, x, num_steps=pretrain_steps)
    invalid = set(invalid_keys)

    def jax_decode(params, z):
        """Rounded Bernoulli means ``(B, L)`` uint8 (pure JAX)."""
        return (vae.decode_logits(model, params, jnp.asarray(z, jnp.float32)) > 0).astype(jnp.uint8)

    def decode(key, params, z):
        bits = np.asarray(jax_decode(params, z))
        return [None if bits_key(b) in invalid else b for b in bits]

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
        objective=make_objective(fail_keys, nan_keys),
        to_data=lambda bits: np.asarray(bits, np.uint8),
        novelty_key=bits_key,
        beta=0.1,
        jax_decode=jax_decode,
        jax_objective=bits_area,
        grid=grid,
    )
