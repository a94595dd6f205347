"""Numerical precision policy.

wrjax computes in float32 by default: the VAEs, the weights and the training steps.
The sparse GP and the acquisition optimiser need float64 (their Cholesky factors lose
positive-definiteness in float32: the authors' float32 GP crashed several official
chemistry runs). They get it from a *scoped* x64 switch, so importing wrjax never changes
the process-wide ``jax_enable_x64`` flag.

Rules:
  * Functions that need float64 are wrapped with :func:`float64_scope`, which enters
    ``jax.enable_x64(True)`` for the duration of the call, and create their arrays with an
    explicit ``dtype=jnp.float64``.
  * Everything else states ``jnp.float32`` explicitly where it creates floats, so it stays
    float32 even in a process that turned x64 on globally.
  * A float64 array that leaves a float64 scope is silently demoted by the next JAX op run
    outside it; callers that keep GP outputs convert them with ``np.asarray`` first.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import jax

F = TypeVar("F", bound=Callable)


def float64_scope(fn: F) -> F:
    """Run ``fn`` with JAX's 64-bit types enabled (scoped; the global flag is untouched).

    Jit *inside* the decorated function: jax caches traces per x64 setting, so a function
    jitted inside the scope is traced in float64 every time.
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def is_tracer(x) -> bool:
    """True when ``x`` is an abstract value inside a jax transformation (no concrete data)."""
    return isinstance(x, jax.core.Tracer)
