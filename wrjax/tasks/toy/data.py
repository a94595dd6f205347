"""The toy data: all bit strings with at most ``max_ones`` ones, a fixed random share kept."""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["toy_data", "bits_key"]


def toy_data(length: int = 12, max_ones: int = 4, data_fraction: float = 0.5
             ) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: ``x (N, length)`` uint8 bit strings with at most ``max_ones`` ones (a fixed
    ``data_fraction`` of them, independent of any key: the data is part of the task's
    definition), ``y (N,)`` float32 their scores."""
    if not 0 <= max_ones < length:
        raise ValueError(f"need 0 <= max_ones < length, got {max_ones}, {length}")
    rows = [
        [1 if i in ones else 0 for i in range(length)]
        for m in range(max_ones + 1)
        for ones in itertools.combinations(range(length), m)
    ]
    x = np.asarray(rows, np.uint8)
    keep = np.random.default_rng(length * 100 + max_ones).random(len(x)) < data_fraction
    keep[0] = True
    x = x[keep]
    return x, x.sum(1).astype(np.float32)


def bits_key(bits) -> str:
    """``"0110..."``: the text form and novelty key of a bit string."""
    return "".join(str(int(b)) for b in np.asarray(bits).ravel())
