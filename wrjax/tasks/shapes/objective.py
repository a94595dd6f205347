"""The shapes objective: the area, the number of pixels on after rounding the decoded
Bernoulli means. Pure JAX, so a whole optimisation run can be one compiled program."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from wrjax.typing import PyTree

__all__ = ["binarize", "area", "prior_sample_areas"]

_F32 = jnp.float32


def binarize(values: jax.Array, *, logits: bool = True) -> jax.Array:
    """Round decoded Bernoulli means to a binary image.

    Args:
      values: ``(B, 64, 64)`` decoder logits (``logits=True``) or probabilities / images.
      logits: whether ``values`` are logits (then the mean is ``sigmoid(values)``).

    Returns:
      ``(B, 64, 64)`` bool, ``round(mean)`` with 0.5 rounding to 0 (``numpy.around``).
    """
    values = jnp.asarray(values)
    mean = jax.nn.sigmoid(values.astype(_F32)) if logits else values.astype(_F32)
    return mean > 0.5


def area(values: jax.Array, *, logits: bool = True) -> jax.Array:
    """The objective: pixels on after rounding the decoded Bernoulli means.

    Args:
      values: ``(B, H, W)`` logits (default), or probabilities/binary images with
        ``logits=False``.

    Returns:
      ``(B,)`` float32 areas (pixel counts; maximum 4096). Pure JAX, jittable.
    """
    on = binarize(values, logits=logits)
    return jnp.sum(on.reshape(on.shape[0], -1), axis=1, dtype=jnp.int32).astype(_F32)


def prior_sample_areas(
    key: jax.Array, model: Any, params: PyTree, *, num_samples: int = 1000
) -> jax.Array:
    """Areas of images decoded (and rounded) from ``z ~ N(0, I)`` (the paper's Fig. 3 right).

    Returns ``(num_samples,)`` float32.
    """
    z = jax.random.normal(key, (num_samples, model.latent_dim), _F32)
    return area(model.apply({"params": params}, z, method=model.decode))
