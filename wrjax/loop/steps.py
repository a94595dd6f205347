"""The steps of Algorithm 1 as pure functions over :class:`~wrjax.loop.state.LSOState`.

* :func:`retrain`: weights of the whole buffer (eq. 3) -> fine-tune the VAE (line 3).
* :func:`begin_cycle`: encode the buffer with the new model, start the cycle's bookkeeping.
* :func:`query`: propose -> decode -> score -> append (lines 4-8), for tasks whose decoder and
  objective are JAX (the compiled driver scans it). The host driver runs the same sequence
  with the host decoder, validity and novelty checks, records and objective in between
  (``wrjax.loop.run``); both use :func:`propose_context` and :func:`append`.

Where the jit boundary is: nothing here is jitted. The host driver calls :func:`retrain`
eagerly (its numerical pieces, :func:`wrjax.rank_weights` and :func:`wrjax.fit`, are
jitted programs keyed on the run's static trainer) and jits the small bookkeeping steps
once per run; the compiled driver traces everything into one program.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from wrjax import buffer as buf
from wrjax import vae
from wrjax.loop.config import LSOConfig
from wrjax.loop.state import PSEUDO_ROWS_PER_EVAL, LSOState, PseudoRows
from wrjax.resampling import duplicate_copies
from wrjax.task import Task
from wrjax.typing import PRNGKeyArray, PyTree, WeightFn

__all__ = [
    "Trainer", "make_trainer", "retrain", "begin_cycle", "ProposeContext", "propose_context",
    "include_capacity", "append", "count_failed_eval", "add_pseudo", "query", "QueryOut", "encode_all",
]  # fmt: skip


class Trainer(NamedTuple):
    """How a run fine-tunes (fixed for the run; hashable, so static under jit)."""

    model: nn.Module
    tx: optax.GradientTransformation  # Adam at the config's learning rate
    step_fn: Callable  # vae.make_train_step(model, tx, ...)
    weight_fn: WeightFn  # (scores, mask, k) -> weights
    variance_reduction: str  # "sample", "duplicate" or "none"
    w_max: float
    batch_size: int
    reset_optimizer: bool
    from_scratch: bool


def make_trainer(task: Task, config: LSOConfig) -> Trainer:
    """The run's :class:`Trainer` from the task's model and likelihood and the config."""
    tx = optax.adam(config.learning_rate)
    step_fn = vae.make_train_step(
        task.model, tx, beta=task.beta, likelihood=task.likelihood,
        latent_noise_std=task.latent_noise_std,
    )  # fmt: skip
    return Trainer(task.model, tx, step_fn, config.weight_fn, config.variance_reduction,
                   config.w_max, config.batch_size, config.reset_optimizer, config.from_scratch)


def retrain(
    key: PRNGKeyArray, state: LSOState, *, trainer: Trainer, num_steps: int, k
) -> tuple[LSOState, vae.TrainInfo]:
    """Fine-tune on the weighted buffer: Algorithm 1, line 3.

    Args:
      key: the cycle's fine-tune key (minibatches). A ``from_scratch`` re-initialisation
        draws from the state's ``init`` stream at the state's cycle.
      state: the run state; its buffer holds every point so far.
      trainer: the run's :class:`Trainer` (static).
      num_steps: fine-tune steps (static; > 0).
      k: this cycle's rank-weighting ``k`` (float or traced scalar; ignored unless rank).

    Returns:
      ``(state with the new train state, vae.TrainInfo)``.
    """
    b = state.buffer
    weights = trainer.weight_fn(b.y, b.mask, k)
    train = state.train
    if trainer.from_scratch:
        init_key = jax.random.fold_in(state.streams.init, state.cycle)
        params = trainer.model.init(init_key, jax.tree.map(lambda a: a[:1], b.x))["params"]
        train = vae.init_train_state(params, trainer.tx)
    elif trainer.reset_optimizer:
        train = vae.init_train_state(train.params, trainer.tx)
    data, mask = b.x, b.mask
    if trainer.variance_reduction == "duplicate":
        idx, copy_w = duplicate_copies(weights, trainer.w_max, mask=mask)
        data = jax.tree.map(lambda a: a[idx], b.x)
        weights, mask = copy_w, copy_w > 0
    mode = "sample" if trainer.variance_reduction == "sample" else "epoch"
    train, info = vae.fit(
        key, train, trainer.step_fn, data, weights,
        num_steps=num_steps, batch_size=trainer.batch_size, mode=mode, mask=mask,
    )  # fmt: skip
    return state._replace(train=train), info


def begin_cycle(state: LSOState, *, model: nn.Module) -> LSOState:
    """Encode the buffer with the current model (the latents changed) and clear the cycle's
    forced rows and pseudo rows; the optimiser state is left to the driver to re-initialise."""
    z = encode_all(model, state.train.params, state.buffer.x)
    p = state.pseudo
    pseudo = PseudoRows(jnp.zeros_like(p.z), jnp.zeros_like(p.y), jnp.zeros_like(p.mask),
                        jnp.zeros_like(p.count))
    return state._replace(z=z, in_cycle=jnp.zeros_like(state.in_cycle), pseudo=pseudo, opt=None)


class ProposeContext(NamedTuple):
    """What an optimiser sees when asked for candidates (read only).

    Arrays are device arrays. The optimiser's data are the buffer's rows followed by the
    pseudo rows (``C + P`` rows); ``task`` and ``seen`` are host objects, ``None`` in the
    compiled driver and for traceable optimisers.
    """

    z: jax.Array  # (C + P, D) float32 latents (encoder means; queried points: their z)
    y: jax.Array  # (C + P,) float32 scores
    mask: jax.Array  # (C + P,) bool valid rows
    in_cycle: jax.Array  # (C + P,) bool rows queried in the current cycle (and pseudo rows)
    x: PyTree  # the buffer's rows (leaves (C, ...)), valid where mask[:C]
    params: PyTree  # current model parameters
    cycle: int | jax.Array
    cycle_start: bool | jax.Array  # True for the first proposal after a (re)training
    remaining: int | jax.Array  # evaluations left in this cycle
    include_capacity: int  # static upper bound on in_cycle.sum() during the run
    task: Task | None = None
    seen: "frozenset | set | None" = None  # novelty keys of the data and of queried points


def propose_context(state: LSOState, *, cycle_start, remaining, task=None, seen=None):
    """The :class:`ProposeContext` of the state (pure; host extras optional)."""
    b, p = state.buffer, state.pseudo
    return ProposeContext(
        jnp.concatenate([state.z, p.z]),
        jnp.concatenate([b.y, p.y]),
        jnp.concatenate([b.mask, p.mask]),
        jnp.concatenate([state.in_cycle, p.mask]),
        b.x, state.train.params, state.cycle, cycle_start, remaining,
        include_capacity(state),
        task, seen,
    )  # fmt: skip


def include_capacity(state: LSOState) -> int:
    """Most rows ever flagged ``in_cycle`` in a cycle: its evaluations plus every pseudo row,
    ``(1 + PSEUDO_ROWS_PER_EVAL) * cycle_len`` (static, so the GP's programs never change)."""
    per_eval = PSEUDO_ROWS_PER_EVAL
    return state.pseudo.y.shape[0] // per_eval * (1 + per_eval)


def append(state: LSOState, x_row: PyTree, y, z) -> LSOState:
    """Add an evaluated point: a buffer row, its latent ``z (D,)`` and its in-cycle flag."""
    row = state.buffer.count
    buffer = buf.append(state.buffer, x_row, y)
    return state._replace(
        buffer=buffer,
        z=state.z.at[row].set(jnp.asarray(z, jnp.float32)),
        in_cycle=state.in_cycle.at[row].set(True),
        n_evals=state.n_evals + 1,
    )


def count_failed_eval(state: LSOState) -> LSOState:
    """An evaluation that failed (objective error): spent, but nothing joins the data."""
    return state._replace(n_evals=state.n_evals + 1)


def add_pseudo(state: LSOState, z, y) -> LSOState:
    """Show a re-proposed known point (its known score) to the optimiser, not the VAE."""
    p = state.pseudo
    j = p.count % p.y.shape[0]
    return state._replace(pseudo=PseudoRows(
        p.z.at[j].set(jnp.asarray(z, jnp.float32)), p.y.at[j].set(jnp.asarray(y, jnp.float32)),
        p.mask.at[j].set(True), p.count + 1,
    ))  # fmt: skip


class QueryOut(NamedTuple):
    """One query of the compiled driver."""

    z: jax.Array  # (D,) the queried latent point
    score: jax.Array  # () float32, NaN when the optimiser had nothing to propose
    ok: jax.Array  # () bool, whether a point was evaluated


def query(key: PRNGKeyArray, state: LSOState, *, optimizer, task: Task, cycle_start,
          remaining) -> tuple[LSOState, QueryOut]:
    """Propose -> decode -> score -> append with a traceable optimiser and a JAX task.

    The optimiser proposes decoded rows (``Proposal.objects``) that are valid and novel by
    construction (the grid optimiser's are); the first is scored with ``task.jax_objective``
    and appended. With nothing to propose (``ok`` False) the state is unchanged but for the
    proposal counter.
    """
    ctx = propose_context(state, cycle_start=cycle_start, remaining=remaining)
    proposal, opt = optimizer.propose(key, state.opt, ctx)
    state = state._replace(opt=opt, proposal=state.proposal + 1)
    z, row, ok = proposal.z[0], proposal.objects[0], proposal.ok[0]
    score = task.jax_objective(row[None])[0].astype(jnp.float32)
    new = append(state, row, score, z)

    def pick(a, b):
        return jax.tree.map(lambda u, v: jnp.where(ok, u, v), a, b)

    state = state._replace(buffer=pick(new.buffer, state.buffer), z=pick(new.z, state.z),
                           in_cycle=pick(new.in_cycle, state.in_cycle),
                           n_evals=pick(new.n_evals, state.n_evals))  # fmt: skip
    return state, QueryOut(z, jnp.where(ok, score, jnp.nan), ok)


def encode_all(model: nn.Module, params: PyTree, x: PyTree, *, batch_size: int = 1024) -> jax.Array:
    """Encoder means of every row of ``x`` (leading axis ``C``) in batches: ``(C, D)`` float32.

    Batches run one after another (``lax.map``), so memory stays at one batch's activations.
    """
    n = jax.tree.leaves(x)[0].shape[0]
    return _encode_all(model, params, x, min(batch_size, n))


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def _encode_all(model, params, x, batch_size):
    n = jax.tree.leaves(x)[0].shape[0]
    pad = (-n) % batch_size
    xp = jax.tree.map(lambda a: jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]), x)
    chunks = jax.tree.map(lambda a: a.reshape(-1, batch_size, *a.shape[1:]), xp)
    z = jax.lax.map(lambda c: vae.encode_mean(model, params, c), chunks)
    return z.reshape(-1, z.shape[-1])[:n].astype(jnp.float32)
