"""Type aliases shared across wrjax (jaxtyping shape strings are documentation only)."""

from __future__ import annotations

from typing import Any, Callable

import jax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

PyTree = Any
Scalar = float | jax.Array
#: maps (scores (N,), mask (N,)) to normalised weights (N,), exactly 0 on masked slots.
WeightFn = Callable[..., jax.Array]

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Float",
    "Int",
    "PRNGKeyArray",
    "PyTree",
    "Scalar",
    "WeightFn",
]
