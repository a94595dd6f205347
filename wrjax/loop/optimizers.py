"""Optimisers over the latent space: an ``init``/``propose`` pair (optax/blackjax style).

An :class:`Optimizer` is built by a factory (:func:`grid_optimizer` here,
:func:`wrjax.bo.make_gp_ei` for sparse-GP expected improvement) and passed to
:func:`wrjax.run` or :func:`wrjax.loop.make_compiled_run`:

* ``init(ctx) -> state`` at the start of every cycle (the model, hence the latent space,
  has just changed, so optimiser state lives within a cycle; this is also what makes a
  resumed run replay exactly);
* ``propose(key, state, ctx) -> (Proposal, state)`` once per query; the loop takes the first
  valid, novel candidate and records the others as discarded.

``traceable=True`` promises that both are pure JAX over the arrays of ``ctx`` (its ``task``
and ``seen`` are then ``None``): the host driver jits them once per run and the compiled
driver traces them into its program.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wrjax.loop.steps import ProposeContext
from wrjax.task import Task

__all__ = ["Optimizer", "Proposal", "GridState", "grid_optimizer", "hash_rows"]


class Proposal(NamedTuple):
    """Ranked candidates, best first; ``objects`` are their decodings when already known.

    Host optimisers return NumPy/lists; traceable ones return arrays with ``ok`` marking
    the real candidates (static shapes).
    """

    z: Any  # (R, D) float32
    objects: Any = None  # list of R decoded objects, or rows (R, ...) of the model's input
    info: dict | None = None  # host diagnostics: workdir/proposals.jsonl and the "proposal" callback
    ok: Any = None  # (R,) bool for traceable optimisers; None: every row is a candidate


class Optimizer(NamedTuple):
    """A latent-space optimiser (see the module docstring)."""

    init: Callable[[ProposeContext], Any]
    propose: Callable[[jax.Array, Any, ProposeContext], tuple[Proposal, Any]]
    name: str = "custom"
    config: dict | None = None  # JSON-able settings, written to the run's config.json
    traceable: bool = False


# --------------------------------------------------------------------------------------------
# The grid optimiser (the paper's shapes optimiser, §6.1)
# --------------------------------------------------------------------------------------------


class GridState(NamedTuple):
    """The grid ranked once per cycle; ``propose`` walks down it."""

    order: jax.Array  # (G,) int32 grid rows, best score first (stable: ties by index)
    free: jax.Array  # (G,) bool, in ``order``: a distinct unseen decoding not yet proposed


def grid_optimizer(task: Task, *, grid=None, batch_size: int = 512) -> Optimizer:
    """Exhaustive search over a latent grid, the paper's shapes optimiser (§6.1).

    At the start of each cycle every grid point is decoded with ``task.jax_decode`` (in
    batches of ``batch_size``) and scored with ``task.jax_objective``, which the paper
    treats as free; the grid is ranked by score, keeping one point per distinct decoding
    and dropping decodings already in the data (rows compared by :func:`hash_rows`). Each
    ``propose`` returns the best point not yet proposed, with its decoding. Only the points
    the loop evaluates count toward the budget. Traceable: usable by both drivers.

    Args:
      task: a task with ``jax_decode`` and ``jax_objective`` (and ``grid`` unless given).
      grid: optional ``(G, D)`` float32 grid (default ``task.grid``).
      batch_size: grid points decoded at once (memory ~ batch x decoder activations).
    """
    if task.jax_decode is None or task.jax_objective is None:
        raise ValueError(f"the grid optimiser needs task {task.name!r} to have jax_decode and jax_objective")
    g = np.asarray(task.grid if grid is None else grid, np.float32)
    if g.ndim != 2 or g.shape[0] == 0:
        raise ValueError(f"grid must be a non-empty (G, D) array, got shape {g.shape}")
    decode, objective = task.jax_decode, task.jax_objective

    def init(ctx: ProposeContext) -> GridState:
        if ctx.z.shape[1] != g.shape[1]:
            raise ValueError(f"grid must be (G, {ctx.z.shape[1]}), got {g.shape}")
        scores, keys = _score_grid(decode, objective, ctx.params, jnp.asarray(g), batch_size)
        n_rows = jax.tree.leaves(ctx.x)[0].shape[0]
        return _rank_unseen(scores, keys, hash_rows(ctx.x), ctx.mask[:n_rows])

    def propose(key, state: GridState, ctx: ProposeContext):
        del key  # deterministic
        j = jnp.argmax(state.free)  # the first free entry (0 if none: then ok is False)
        ok = state.free[j]
        z = jnp.asarray(g)[state.order[j]][None]
        rows = decode(ctx.params, z)
        return Proposal(z, rows, None, ok[None]), state._replace(free=state.free.at[j].set(False))

    config = {"grid_points": int(g.shape[0]), "batch_size": batch_size}
    return Optimizer(init, propose, "grid", config, traceable=True)


def _score_grid(decode, objective, params, grid, batch_size):
    """``(scores (G,) float32, keys (G, 2) uint32)`` of every grid point's decoding."""
    n = grid.shape[0]
    size = min(batch_size, n)
    n_chunks = -(-n // size)
    padded = jnp.pad(grid, ((0, n_chunks * size - n), (0, 0)))

    def one(zc):
        rows = decode(params, zc)
        return objective(rows).astype(jnp.float32), hash_rows(rows)

    scores, keys = jax.lax.map(one, padded.reshape(n_chunks, size, -1))
    return scores.reshape(-1)[:n], keys.reshape(-1, 2)[:n]


def _rank_unseen(scores, keys, seen_keys, seen_mask) -> GridState:
    """Rank grid points best first; free = first of its decoding and not among the seen.

    One sort of the ``S + G`` keys: within a group of equal keys a seen key sorts first,
    then grid points by index; a grid point is kept iff it starts its group.
    """
    g, s = scores.shape[0], seen_keys.shape[0]
    k0 = jnp.concatenate([seen_keys[:, 0], keys[:, 0]])
    k1 = jnp.concatenate([seen_keys[:, 1], keys[:, 1]])
    src = jnp.concatenate([jnp.where(seen_mask, 0, 2), jnp.ones((g,), jnp.int32)]).astype(jnp.int32)
    idx = jnp.concatenate([jnp.full((s,), -1, jnp.int32), jnp.arange(g, dtype=jnp.int32)])
    k0s, k1s, srcs, idxs = jax.lax.sort((k0, k1, src, idx), num_keys=4)
    starts = jnp.concatenate([jnp.ones((1,), bool), (k0s[1:] != k0s[:-1]) | (k1s[1:] != k1s[:-1])])
    target = jnp.where(srcs == 1, idxs, g)  # seen keys and padding go to a dump slot
    keep = jnp.zeros((g + 1,), bool).at[target].max(starts & (srcs == 1))[:g]
    order = jnp.argsort(jnp.where(keep, -scores, jnp.inf), stable=True).astype(jnp.int32)
    return GridState(order, keep[order])


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with good avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_rows(x) -> jax.Array:
    """64-bit keys of the rows of a pytree (leaves ``(B, ...)``): ``(B, 2)`` uint32.

    Every element becomes a 32-bit word (integers by value, float32 by its bits); each half
    of the key is ``sum_i fmix32(word_i ^ salt_i)`` with its own per-position salts. Equal
    rows have equal keys; rows differing in one word never collide (``fmix32`` is a
    bijection), others with probability about ``2^-64``.

    >>> import numpy as np
    >>> k = np.asarray(hash_rows(np.array([[0, 1], [1, 0], [0, 1]], np.uint8)))
    >>> bool((k[0] == k[2]).all()), bool((k[0] == k[1]).all())
    (True, False)
    """
    words = []
    for leaf in jax.tree.leaves(x):
        a = jnp.asarray(leaf)
        a = a.reshape(a.shape[0], -1)
        if jnp.issubdtype(a.dtype, jnp.floating):
            a = jax.lax.bitcast_convert_type(a.astype(jnp.float32), jnp.uint32)
        words.append(a.astype(jnp.uint32))
    w = jnp.concatenate(words, axis=1)
    pos = jnp.arange(2 * w.shape[1], dtype=jnp.uint32).reshape(2, -1)
    salts = _fmix32(pos * jnp.uint32(0x9E3779B9) + jnp.uint32(0x7F4A7C15))  # (2, L)
    return jnp.sum(_fmix32(w[:, None, :] ^ salts[None]), axis=-1, dtype=jnp.uint32)
