"""The compiled driver: Algorithm 1 as one XLA program, for tasks written in JAX.

When the decoder and the objective are pure JAX (``Task.jax_decode``/``jax_objective``, e.g.
the shapes area) and the optimiser is traceable (:func:`wrjax.grid_optimizer`), the whole
run is a ``lax.scan`` over cycles of the host driver's steps (:mod:`wrjax.loop.steps`):
:func:`~wrjax.loop.steps.retrain`, :func:`~wrjax.loop.steps.begin_cycle`, the optimiser's
``init``, then a ``lax.scan`` of :func:`~wrjax.loop.steps.query`. With the same key, task,
config and optimiser it queries what :func:`wrjax.run` queries (tested), without records,
checkpoints or a host round trip per query; ``jax.vmap`` over keys runs several seeds in
one program.

Differences from the host driver: every decoding counts as valid and ``task.seen_keys`` is
not consulted (novelty is "not in the buffer", by row hashes); when the optimiser runs out
of candidates the remaining queries of the cycle are empty (``ok`` False) instead of the
cycle ending early.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from wrjax.loop import steps
from wrjax.loop.config import LSOConfig
from wrjax.loop.optimizers import Optimizer
from wrjax.loop.run import _latent_dim
from wrjax.loop.state import LSOState, init_state
from wrjax.task import Task

__all__ = ["CompiledRunResult", "make_compiled_run", "make_seeds_run"]


class CompiledRunResult(NamedTuple):
    """The queries of one compiled run, in order (``budget`` of them)."""

    scores: jax.Array  # (budget,) float32; NaN where the optimiser had nothing to propose
    valid: jax.Array  # (budget,) bool
    z: jax.Array  # (budget, D) latent points queried
    state: LSOState  # the final state (``state.train.params``: the final model)


def make_compiled_run(task: Task, config: LSOConfig, *, optimizer: Optimizer
                      ) -> Callable[[jax.Array, object], CompiledRunResult]:
    """Build ``run(key, params) -> CompiledRunResult``: Algorithm 1 as one pure function.

    Jit it (``jax.jit(run)``) or vmap it over keys (:func:`make_seeds_run`). ``params`` are
    the starting model parameters (``task.params`` for the task's own).

    Raises:
      ValueError: without ``task.jax_decode``/``jax_objective``, with an optimiser that is
        not traceable, or when ``budget`` is not a multiple of ``retrain_every``.
    """
    if task.jax_decode is None or task.jax_objective is None:
        raise ValueError(f"a compiled run needs task {task.name!r} to have jax_decode and jax_objective")
    if not optimizer.traceable:
        raise ValueError(f"a compiled run needs a traceable optimiser, not {optimizer.name!r}")
    if config.budget % config.cycle_len:
        raise ValueError(f"budget {config.budget} must be a multiple of retrain_every {config.cycle_len} here")
    trainer = steps.make_trainer(task, config)
    n0, n_cycles, r = len(task.y), config.num_cycles, config.cycle_len
    first_steps, later_steps = config.finetune_steps_at(0, n0), config.finetune_steps_at(1, n0)
    cycle_k = jnp.asarray(config.cycle_k, jnp.float32)
    latent_dim = _latent_dim(task)

    def retrain(state: LSOState, num_steps: int) -> LSOState:
        if num_steps == 0:
            return state
        key = jax.random.fold_in(state.streams.finetune, state.cycle)
        state, _ = steps.retrain(key, state, trainer=trainer, num_steps=num_steps, k=cycle_k[state.cycle])
        return state

    def one_query(state: LSOState, i):
        key = jax.random.fold_in(state.streams.propose, state.proposal)
        return steps.query(key, state, optimizer=optimizer, task=task, cycle_start=i == 0,
                           remaining=r - i)  # fmt: skip

    def one_cycle(state: LSOState, c):
        # Cycle 0's initial training has its own length; it ran before the scan.
        state = jax.lax.cond(c > 0, lambda s: retrain(s, later_steps), lambda s: s, state)
        state = steps.begin_cycle(state, model=task.model)
        ctx = steps.propose_context(state, cycle_start=True, remaining=r)
        state = state._replace(opt=optimizer.init(ctx))
        state, out = jax.lax.scan(one_query, state, jnp.arange(r))
        return state._replace(cycle=state.cycle + 1), out

    def run(key: jax.Array, params) -> CompiledRunResult:
        state = init_state(key, task.x, task.y, params, trainer.tx, budget=config.budget,
                           cycle_len=r, latent_dim=latent_dim)  # fmt: skip
        state = retrain(state, first_steps)
        # The scanned carry needs the optimiser state's structure: one init outside.
        state, out = jax.lax.scan(one_cycle, _with_opt_shape(state, optimizer, r), jnp.arange(n_cycles))
        return CompiledRunResult(out.score.reshape(-1), out.ok.reshape(-1),
                                 out.z.reshape(config.budget, -1), state)  # fmt: skip

    return run


def _with_opt_shape(state: LSOState, optimizer: Optimizer, r: int) -> LSOState:
    """``state`` with ``opt`` a zero-filled optimiser state, so ``lax.scan`` sees its shape."""
    ctx = steps.propose_context(state, cycle_start=True, remaining=r)
    shape = jax.eval_shape(optimizer.init, ctx)
    return state._replace(opt=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape))


def make_seeds_run(run_fn, *, mode: str = "auto"):
    """Several seeds in one compiled program: ``run(keys (S,), params)``.

    Args:
      run_fn: from :func:`make_compiled_run`.
      mode: ``"vmap"`` (the seeds batched: one program, every kernel S times wider),
        ``"map"`` (``lax.map``: one program, the seeds in sequence, each at single-seed
        speed) or ``"auto"``: ``"map"`` on CPU, ``"vmap"`` on accelerators.

    Why both: on a 2-core CPU (``benchmarks/RESULTS.md``, ``## shapes_seeds``) the vmapped
    program was 4.7x *slower* than the seeds one after another, because once the seeds'
    parameters differ, vmap batches the convolution kernels, which XLA:CPU runs slowly;
    accelerators are where batching the seeds pays off.
    """
    if mode == "auto":
        mode = "map" if jax.default_backend() == "cpu" else "vmap"
    if mode == "vmap":
        return jax.jit(jax.vmap(run_fn, in_axes=(0, None)))
    if mode == "map":
        return jax.jit(lambda keys, params: jax.lax.map(lambda k: run_fn(k, params), keys))
    raise ValueError(f"mode must be 'auto', 'vmap' or 'map', got {mode!r}")
