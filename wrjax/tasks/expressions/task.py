"""The arithmetic-expression task (§6.2) for the retraining loop: :func:`make_expressions_task`."""

from __future__ import annotations

import os

import jax
import numpy as np

from wrjax import paths
from wrjax.checkpoint import load_model
from wrjax.tasks.expressions.data import load_expressions, novelty_key
from wrjax.tasks.expressions.grammar import expressions_to_one_hot
from wrjax.tasks.expressions.model import (
    LATENT_NOISE_STD,
    build_model,
    decode_expressions,
    log_likelihood,
)
from wrjax.tasks.expressions.objective import DEFAULT_TARGET, score, score_batch

__all__ = ["CHECKPOINT_PREFIX", "make_expressions_task"]

#: Shipped pretrained models ``checkpoints/expressions/expr-k_<k>`` (``inf`` and ``1e-3``; the
#: 1e-3 model is the inf one fine-tuned one epoch on the rank-weighted data, where the authors
#: pretrained one model per k from scratch). Other ks start from the ``inf`` model.
CHECKPOINT_PREFIX = "expr"


def make_expressions_task(
    key: jax.Array,
    *,
    k: float | None = None,
    num_initial: int = 5000,
    checkpoint: str | os.PathLike | None = None,
    target: str = DEFAULT_TARGET,
    num_samples: int = 5,
):
    """The arithmetic-expression task (§6.2) as a :class:`wrjax.lso.Task`.

    The optimisation data is a random ``num_initial`` of the 50,111 kept expressions (the
    authors': 5,000), drawn with ``key``; novelty is checked against all 50,111 (the model's
    training set) and the queried points. A decoding is valid when a majority-voted grammar
    decode completes (``num_samples`` stochastic decodes, as the authors). The model is
    ``checkpoint``, else the shipped one for ``k`` (``wrjax.paths.checkpoint_for_k``).
    """
    from wrjax.lso import Task

    data = load_expressions()
    n = len(data.expressions)
    if not 0 < num_initial <= n:
        raise ValueError(f"num_initial must be in (0, {n}], got {num_initial}")
    idx = np.sort(np.asarray(jax.random.choice(key, n, (num_initial,), replace=False)))
    path = checkpoint or paths.checkpoint_for_k("expressions", CHECKPOINT_PREFIX, k)
    model, params, _ = load_model(path, build_model)
    if target == DEFAULT_TARGET:
        y = np.asarray(data.scores[idx], np.float32)
    else:
        y = score_batch([data.expressions[i] for i in idx], target=target).astype(np.float32)
    train_keys = [novelty_key(e) for e in data.expressions]

    def decode(key, params, z):
        return decode_expressions(key, model, params, z, num_samples=num_samples)

    return Task(
        name="expressions",
        model=model,
        params=params,
        x=np.asarray(data.one_hot[idx], np.float32),
        y=y,
        initial_keys=[train_keys[i] for i in idx],
        seen_keys=train_keys,  # every training expression counts as seen, not only the subset
        decode=decode,
        objective=lambda expr: score(expr, target=target),
        to_data=lambda expr: expressions_to_one_hot([expr])[0].astype(np.float32),
        novelty_key=novelty_key,
        to_text=lambda expr: expr,
        is_valid=lambda expr: bool(expr),
        likelihood=log_likelihood,
        beta=1.0 / model.latent_dim,
        latent_noise_std=LATENT_NOISE_STD,
    )
