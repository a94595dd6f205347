"""The problem contract: what a task gives the retraining loop.

Tasks import this module, never the loop (:mod:`wrjax.loop`); the loop reads a task only
through these fields. Host callables (``decode``, ``objective``, ...) run outside jit; the
optional pure-JAX pair ``jax_decode``/``jax_objective`` lets the grid optimiser score a
whole latent grid for free and the compiled driver (:func:`wrjax.loop.make_compiled_run`)
run Algorithm 1 as one XLA program.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np

from wrjax import vae
from wrjax.typing import PyTree

__all__ = ["Task"]


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything the loop needs to know about a problem.

    Attributes:
      name: short identifier (recorded in the run's config).
      model: a ``flax.linen.Module`` with ``encode``/``decode`` (see ``wrjax.vae``).
      params: the pretrained parameters to start from.
      x: initial data, a pytree of arrays with leading axis ``N0`` in the model's input format.
      y: ``(N0,)`` finite scores of ``x``, higher is better.
      initial_keys: novelty keys of the initial data (a point is novel when its key is
        neither here nor among the queried points).
      decode: ``(key, params, z (B, D) float32) -> list`` of decoded objects, ``None`` (or
        anything ``is_valid`` rejects) for an invalid decoding. Host callable.
      objective: ``object -> float`` on a valid object. Host callable; it may raise or return
        NaN: both are recorded as ``objective-error``.
      to_data: ``object -> one row`` of the model's input (leading axis dropped).
      novelty_key: ``object -> str``, equal for objects that count as the same.
      to_text: ``object -> str`` for the records (default: ``novelty_key``).
      is_valid: ``object -> bool`` (default: not ``None``).
      likelihood: ``(logits, x) -> (B,)`` for the weighted ELBO.
      beta: KL weight during fine-tuning.
      latent_noise_std: reparameterisation noise scale during fine-tuning.
      jax_decode: optional pure-JAX ``(params, z (B, D)) -> rows (B, ...)``: decodings in the
        model's input format (what ``to_data`` of the decoded object gives), every one valid.
        Equal objects must give equal rows (the grid optimiser hashes rows for novelty).
      jax_objective: optional pure-JAX ``rows (B, ...) -> (B,)`` float32 scores of
        ``jax_decode``'s rows, equal to ``objective`` on the same objects.
      grid: optional ``(G, D)`` latent grid for the grid optimiser.
      seen_keys: optional further novelty keys that count as already seen without being in
        the optimisation data (e.g. the rest of the model's training set).
    """

    name: str
    model: nn.Module
    params: PyTree
    x: PyTree
    y: np.ndarray
    initial_keys: Sequence[str]
    decode: Callable[[jax.Array, PyTree, np.ndarray], list]
    objective: Callable[[Any], float]
    to_data: Callable[[Any], PyTree]
    novelty_key: Callable[[Any], str]
    to_text: Callable[[Any], str] | None = None
    is_valid: Callable[[Any], bool] | None = None
    likelihood: Callable = vae.bernoulli_log_likelihood
    beta: float = 1.0
    latent_noise_std: float = 1.0
    jax_decode: Callable[[PyTree, jax.Array], jax.Array] | None = None
    jax_objective: Callable[[jax.Array], jax.Array] | None = None
    grid: np.ndarray | None = None
    seen_keys: Sequence[str] = ()

    def text(self, obj) -> str:
        return (self.to_text or self.novelty_key)(obj)

    def valid(self, obj) -> bool:
        return obj is not None if self.is_valid is None else bool(self.is_valid(obj))

    def replace(self, **changes) -> "Task":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)
