"""``LSOState``: everything the next step of Algorithm 1 needs, as one pytree.

Both drivers thread it through the same pure steps (:mod:`wrjax.loop.steps`). What is not
an array (the novelty keys as strings, the records, the log file) belongs to the host
driver and stays there.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wrjax import buffer as buf
from wrjax import vae
from wrjax.typing import Bool, Float, Int, PRNGKeyArray, PyTree

__all__ = ["LSOState", "Streams", "PseudoRows", "init_state", "PSEUDO_ROWS_PER_EVAL"]

#: Slots per evaluation of a cycle for known points the optimiser re-proposed (duplicates
#: with a known score). Shown to the optimiser, never to the VAE, so that it moves away from
#: them; a ring buffer, so only the latest ``PSEUDO_ROWS_PER_EVAL * cycle_len`` are kept.
PSEUDO_ROWS_PER_EVAL = 4


class Streams(NamedTuple):
    """Independent PRNG streams of a run; a step folds in its counter (cycle or proposal)."""

    finetune: PRNGKeyArray  # fine-tune minibatches, per cycle
    propose: PRNGKeyArray  # the optimiser, per proposal
    decode: PRNGKeyArray  # stochastic decoders, per proposal
    init: PRNGKeyArray  # re-initialisation (from_scratch), per cycle


class PseudoRows(NamedTuple):
    """A ring buffer of (z, known score) rows for the optimiser's data."""

    z: Float[jax.Array, "P D"]
    y: Float[jax.Array, "P"]
    mask: Bool[jax.Array, "P"]
    count: Int[jax.Array, ""]  # rows added this cycle (the slot is count mod P)


class LSOState(NamedTuple):
    """The state of one run of Algorithm 1 (capacity ``C = N0 + budget``, latent size ``D``)."""

    buffer: buf.DataBuffer  # x (C, ...), y (C,) float32, mask (C,), count ()
    z: Float[jax.Array, "C D"]  # encoder means of the buffer; a queried row keeps its proposed z
    in_cycle: Bool[jax.Array, "C"]  # rows queried in the current cycle (forced into the GP data)
    pseudo: PseudoRows  # re-proposed known points of the current cycle
    train: vae.TrainState  # model parameters and Adam state (fine-tuning continues from it)
    opt: Any  # the latent optimiser's state, re-initialised at every cycle
    cycle: Int[jax.Array, ""]  # current retrain cycle
    n_evals: Int[jax.Array, ""]  # objective evaluations so far (errors included)
    proposal: Int[jax.Array, ""]  # optimiser calls so far
    streams: Streams


def init_state(key: PRNGKeyArray, x: PyTree, y, params: PyTree, tx, *, budget: int,
               cycle_len: int, latent_dim: int) -> LSOState:
    """The state before the first retrain: the data in a buffer of ``N0 + budget`` rows.

    Args:
      key: the run's key; its streams are ``fold_in(key, 0..3)``.
      x, y: initial data (leading axis ``N0``) and ``(N0,)`` finite scores.
      params, tx: the model's starting parameters and the fine-tune optimiser (optax).
      budget, cycle_len: evaluations in the run and per cycle (sizes of the buffers).
      latent_dim: ``D``.
    """
    y = np.asarray(y, np.float32)
    capacity = len(y) + budget
    n_pseudo = PSEUDO_ROWS_PER_EVAL * cycle_len
    zero = jnp.zeros((), jnp.int32)
    return LSOState(
        buffer=buf.buffer_from_data(x, y, capacity),
        z=jnp.zeros((capacity, latent_dim), jnp.float32),
        in_cycle=jnp.zeros((capacity,), bool),
        pseudo=PseudoRows(jnp.zeros((n_pseudo, latent_dim), jnp.float32),
                          jnp.zeros((n_pseudo,), jnp.float32), jnp.zeros((n_pseudo,), bool), zero),
        train=vae.init_train_state(params, tx),
        opt=None,
        cycle=zero,
        n_evals=zero,
        proposal=zero,
        streams=Streams(*(jax.random.fold_in(key, i) for i in range(4))),
    )  # fmt: skip
