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

__all__ = ["check_masked_scores", "check_positive", "check_int", "check_choice", "check_unit",
           "check_objective_value", "check_k", "check_weights", "FLOAT32_MAX", "K_MIN"]

#: Scores are float32 in the buffer, the weights and the GP: a score beyond this overflows.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: The smallest rank-weighting ``k`` (float32's smallest normal number): the best point's raw
#: weight ``1 / (k N)`` is at most ``1 / k``, finite for any ``k`` from here on; a smaller
#: ``k`` is a subnormal or 0 in float32 and the weights overflow to NaN. (Already at
#: ``k = 1e-10`` the best point holds all but ~1e-9 of the weight.)
K_MIN = float(np.finfo(np.float32).tiny)


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
    if np.issubdtype(s.dtype, np.floating):
        big = (np.abs(s.astype(np.float64)) > FLOAT32_MAX) & m
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise ValueError(f"{name} must be within float32's range on valid slots; slot {i} is {s[i]}")


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


def check_objective_value(value) -> float:
    """An objective's return value as a float, or ``ValueError`` saying why it is not a score.

    A score is a real number (Python, NumPy, or a size-1 array of a real dtype), finite and
    within float32's range; ``bool`` and strings are not numbers here.

    >>> check_objective_value(np.array([2.5]))
    2.5
    >>> check_objective_value("5")
    Traceback (most recent call last):
    ...
    ValueError: objective returned str '5', not a number
    """
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"objective returned {type(value).__name__} {value!r}, not a number")
    if is_tracer(value):
        raise ValueError("objective returned a traced value; it must return a concrete number")
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything array-like may fail its own way
        raise ValueError(f"objective returned {type(value).__name__}, not a number") from None
    if arr.size != 1:
        raise ValueError(f"objective returned an array of shape {arr.shape}, not one number")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"objective returned dtype {arr.dtype}, not a real number")
    v = float(arr.reshape(()))
    if not math.isfinite(v):
        raise ValueError(f"non-finite score {v}")
    if abs(v) > FLOAT32_MAX:
        raise ValueError(f"score {v!r} is outside float32's range (|score| <= {FLOAT32_MAX:.4g})")
    return v


def check_k(name: str, value, *, hint: str = "") -> None:
    """A rank-weighting strength: a real number (not bool or str), ``K_MIN <= k <= inf``.

    Traced values are not checked.

    >>> check_k("k", 1e-45)
    Traceback (most recent call last):
    ...
    ValueError: k must be >= 1.175e-38 (float32's smallest normal number; a smaller k makes the weights NaN), got 1e-45
    """
    if is_tracer(value):
        return
    if isinstance(value, (bool, np.bool_, str, bytes)) or not (
        isinstance(value, (int, float, np.integer, np.floating))
        or (isinstance(value, np.ndarray) or hasattr(value, "__array__")) and np.ndim(value) == 0
    ):
        raise ValueError(f"{name} must be a real number > 0{hint}, got {type(value).__name__} {value!r}")
    v = float(np.asarray(value))
    if math.isnan(v) or v <= 0:
        raise ValueError(f"{name} must be > 0{hint}, got {v}")
    if v < K_MIN:
        raise ValueError(f"{name} must be >= {K_MIN:.4g} (float32's smallest normal number; a smaller "
                         f"k makes the weights NaN), got {v:g}")


def check_weights(weights, n_rows: int, mask=None, *, name: str = "weights") -> None:
    """Dataset weights for ``n_rows`` rows: ``(n_rows,)``, finite, ``>= 0`` and not all zero
    on valid slots (``mask``). Traced values are not checked."""
    if is_tracer(weights) or (mask is not None and is_tracer(mask)):
        return
    w = np.asarray(weights)
    if w.ndim != 1 or w.shape[0] != n_rows:
        raise ValueError(f"{name} must have one entry per data row: shape ({n_rows},), got {w.shape}")
    if w.dtype == np.bool_ or not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {w.dtype}")
    m = np.ones(w.shape, bool) if mask is None else np.asarray(mask, bool)
    wv = w[m] if m.shape == w.shape else w
    if not np.isfinite(wv).all():
        raise ValueError(f"{name} must be finite on valid rows")
    if (wv < 0).any():
        raise ValueError(f"{name} must be >= 0, got {float(wv.min())} at a valid row")
    if not (wv > 0).any():
        raise ValueError(f"{name} are all zero on valid rows: nothing to train on")
    if float(wv.max()) < float(np.finfo(np.float32).tiny):  # compared as Python floats: no float32 cast
        # training runs in float32 and XLA:CPU flushes subnormals: they would all be 0 there
        raise ValueError(f"{name} are all below float32's smallest normal number (largest "
                         f"{float(wv.max()):.3g}); rescale them (any scale works)")
    if float(np.sum(wv, dtype=np.float64)) > FLOAT32_MAX:
        raise ValueError(f"{name} sum beyond float32's range; rescale them (any scale works)")
