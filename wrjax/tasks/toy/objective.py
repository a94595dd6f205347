"""The toy objective: the number of ones, with bad-input hooks for tests."""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from wrjax.tasks.toy.data import bits_key

__all__ = ["bits_area", "make_objective"]


def bits_area(bits: jax.Array) -> jax.Array:
    """Pure-JAX objective on decoded rows ``(B, L)``: the number of ones (float32)."""
    return jnp.sum(bits, axis=-1, dtype=jnp.int32).astype(jnp.float32)


def make_objective(fail_keys: Iterable[str] = (), nan_keys: Iterable[str] = ()
                   ) -> Callable[[np.ndarray], float]:
    """The host objective ``bits -> float``; strings in ``fail_keys`` raise, those in
    ``nan_keys`` score NaN (fault-injection hooks for tests)."""
    fail, nan = set(fail_keys), set(nan_keys)

    def objective(bits) -> float:
        k = bits_key(bits)
        if k in fail:
            raise RuntimeError(f"objective failed on {k}")
        if k in nan:
            return float("nan")
        return float(np.sum(bits))

    return objective
