"""Shared test fixtures.

Precision: tests run with JAX's default float32, as users do; the GP tests get float64 from
wrjax's scoped switch (``wrjax.precision.float64_scope``), never from a global flag, so a
function that forgot its scope fails here instead of passing by accident.
"""

import jax
import numpy as np
import pytest

# Silent rank promotion hides shape bugs (optax and diffrax raise on it in their tests too).
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    """A fixed PRNG key; tests split it, never reuse it."""
    return jax.random.key(0)


@pytest.fixture
def rng():
    """A seeded NumPy generator for building independent reference data."""
    return np.random.default_rng(0)


class TraceCounter:
    """Counts how often a python function is traced by jax (each call at trace time)."""

    def __init__(self, fn):
        self.fn = fn
        self.count = 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.fn(*args, **kwargs)


@pytest.fixture
def trace_counter():
    return TraceCounter


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop jax's compiled programs after each test module.

    The suite compiles thousands of XLA:CPU programs in one process; each keeps memory
    mappings alive, and near the end of a full run the process hit the kernel's map limit
    (``vm.max_map_count`` 65530 here), which XLA reports by aborting inside a compile
    (seen twice in ``tests/test_lso.py``, never when the file runs alone).
    """
    yield
    import gc

    jax.clear_caches()
    gc.collect()
