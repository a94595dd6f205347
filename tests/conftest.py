"""Shared test fixtures.

Precision: tests run with JAX's default float32, as users do; the GP tests get float64 from
wrjax's scoped switch (``wrjax.precision.float64_scope``), never from a global flag, so a
function that forgot its scope fails here instead of passing by accident.
"""

import os
import shutil
import tempfile

import numpy as np
import pytest

# One compilation cache per test session, shared by the session's processes. The suite
# compiles the same programs many times: each module starts with empty in-memory caches
# (``_release_compiled_programs`` below), pytest-xdist's workers compile the same models
# side by side, and the CLI, sweep and wheel tests start new Python processes. JAX's
# persistent cache turns those repeats into file reads. The folder is fresh for every
# session (made by the controller, or by a plain run, and inherited by xdist workers and
# subprocesses through the environment), so no result depends on an earlier run, and it
# is removed at the end. A size limit switches on JAX's file lock, which makes the writes
# of two workers safe.
_CACHE_ENV = "WRJAX_TEST_COMPILATION_CACHE"
_OWN_CACHE = _CACHE_ENV not in os.environ
if _OWN_CACHE:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="wrjax-test-jax-cache-")
os.environ.update(
    JAX_COMPILATION_CACHE_DIR=os.environ[_CACHE_ENV],
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.1",
    JAX_COMPILATION_CACHE_MAX_SIZE=str(8 << 30),
)

import jax  # noqa: E402  (after the environment above: jax reads it at import)

jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
jax.config.update("jax_compilation_cache_max_size", 8 << 30)


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # the process that made it
        shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)


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
