"""Type aliases shared across wrjax.

The jaxtyping shape strings (``Float[jax.Array, "C D"]``) are documentation: annotations
are not evaluated at run time (``from __future__ import annotations`` everywhere), so they
cost nothing and enforce nothing; shapes are checked at the public boundaries
(:mod:`wrjax._checks`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jaxtyping import ArrayLike, Bool, Float, Int, PRNGKeyArray

PyTree = Any
#: maps (scores (N,), mask (N,)[, k]) to normalised weights (N,), exactly 0 on masked slots.
WeightFn = Callable[..., jax.Array]
#: ``k`` as a function of the retrain cycle (0, 1, ...), e.g. :func:`wrjax.geometric_k`.
KSchedule = Callable[[int], float]

__all__ = [
    "ArrayLike",
    "Bool",
    "Float",
    "Int",
    "PRNGKeyArray",
    "PyTree",
    "WeightFn",
    "KSchedule",
]
