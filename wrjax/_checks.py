"""Input validation shared by the public entry points.

One rule for where checks happen: a public function validates its concrete inputs once, at
its boundary, and raises ``ValueError`` naming the offending argument; the pure functions it
calls (and anything running under ``jit``) do not check again. Inside a jax transformation
there is nothing concrete to check, so every helper here skips traced values: under ``jit``
invalid input shows as NaN or as a status in the result, never as an exception.
"""

from __future__ import annotations

import math

import numpy as np

from wrjax.precision import is_tracer

__all__ = ["check_masked_scores", "check_positive", "check_int", "check_choice", "check_unit"]


def check_masked_scores(scores, mask=None, *, name: str = "scores") -> None:
    """Scores of a fixed-capacity buffer: ``(N,)`` real, finite where ``mask (N,)`` is True.

    Raises ``ValueError`` for a non 1-D or non-real ``scores``, a mask of another shape or
    dtype, an empty mask, or a non-finite score on a valid slot (masked slots may hold
    anything). A traced ``scores`` or ``mask`` is not checked.

    >>> check_masked_scores([1.0, float("nan")], [True, False])   # NaN on padding: fine
    >>> check_masked_scores([1.0, float("nan")])
    Traceback (most recent call last):
    ...
    ValueError: scores must be finite on valid slots; slot 1 is nan (1 non-finite in all). Record such points and mask them out.
    """
    if is_tracer(scores):
        return
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {s.dtype}")
    if mask is not None and is_tracer(mask):
        return
    m = np.ones(s.shape, bool) if mask is None else np.asarray(mask)
    if m.shape != s.shape:
        raise ValueError(f"mask shape {m.shape} does not match {name} shape {s.shape}")
    if m.dtype != np.bool_:
        raise ValueError(f"mask must be boolean, got dtype {m.dtype}")
    if not m.any():
        raise ValueError("no valid point: the mask selects nothing (empty dataset)")
    bad = ~np.isfinite(s) & m
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be finite on valid slots; slot {i} is {s[i]} "
            f"({int(bad.sum())} non-finite in all). Record such points and mask them out."
        )


def check_positive(name: str, value, *, hint: str = "") -> None:
    """``value > 0`` (NaN fails; ``inf`` passes). Traced values are not checked."""
    if is_tracer(value):
        return
    v = float(value)
    if math.isnan(v) or v <= 0:
        raise ValueError(f"{name} must be > 0{hint}, got {v}")


def check_int(name: str, value, *, minimum: int = 0) -> None:
    """``value`` is an integer (Python or NumPy, not bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_unit(name: str, value) -> None:
    """``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
