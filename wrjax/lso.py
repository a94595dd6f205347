"""Latent-space optimisation with weighted retraining: Algorithm 1 of the paper.

A thin Python outer loop threads explicit state through the retrain cycles; the numerical
work (weights, fine-tuning, encoding, the GP and acquisition) happens in jitted functions
over fixed-capacity buffers, so nothing recompiles as the dataset grows.

One run::

    for cycle c = 0, 1, ...:                           (a cycle = retrain_every evaluations)
        weights <- weight_fn(scores of every point so far)          (eq. 3; k may follow a schedule)
        fine-tune the VAE on the weighted data                      (cycle 0: the initial weighted
                                                                     training; later cycles only
                                                                     when retrain_every is set)
        checkpoint (params, optimiser state, queried data, counters)
        Z <- encoder means of the whole buffer
        repeat until the cycle's evaluations are done:
            candidates <- optimiser.propose(Z, scores)              (ranked, e.g. by EI)
            take the first candidate whose decoding is valid and novel; record the others as
            discarded (they do not count toward the budget)
            evaluate the objective; record; add the point to the buffer

Run records are written to ``workdir/records.jsonl`` one line per decision, flushed before
the next step starts. ``run`` on an existing workdir resumes: it reloads the last cycle
checkpoint and *replays* the records written after it (the objective is not called again
for a record that already exists), so an interrupted run yields exactly the records of an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Hashable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax import buffer as buf
from wrjax import checkpoint as ckpt
from wrjax import metrics
from wrjax import vae
from wrjax.resampling import duplicate_copies
from wrjax.typing import PyTree
from wrjax.weighting import KSchedule, constant_k, make_weight_fn

__all__ = [
    "Task",
    "LSOConfig",
    "Proposal",
    "ProposeContext",
    "Optimizer",
    "RunResult",
    "run",
    "load_records",
    "gp_ei_optimizer",
    "grid_optimizer",
    "encode_all",
    "STATUSES",
]

#: Record statuses. ``ok``: evaluated, added to the data. ``invalid``: the decoding is not a
#: valid object. ``duplicate``: the object is in the training data or was already queried.
#: ``objective-error``: the objective raised or returned NaN/inf (counts toward the budget,
#: since the evaluation was spent, but is excluded from the data, the weights and the GP).
STATUSES = ("ok", "invalid", "duplicate", "objective-error")


# --------------------------------------------------------------------------------------------
# What a task provides
# --------------------------------------------------------------------------------------------


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
      jax_objective: optional pure-JAX ``decoder output (B, ...) -> (B,)`` scores, for
        optimisers that score decodings for free (the shapes grid) and for compiled runs.
      grid: optional ``(G, D)`` latent grid for the ``"grid"`` optimiser.
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
    jax_objective: Callable[[jax.Array], jax.Array] | None = None
    grid: np.ndarray | None = None
    seen_keys: Sequence[str] = ()

    def text(self, obj) -> str:
        return (self.to_text or self.novelty_key)(obj)

    def valid(self, obj) -> bool:
        return obj is not None if self.is_valid is None else bool(self.is_valid(obj))


# --------------------------------------------------------------------------------------------
# Optimisers over the latent space
# --------------------------------------------------------------------------------------------


class ProposeContext(NamedTuple):
    """What an optimiser sees when asked for candidates (host arrays, read only)."""

    z: np.ndarray  # (C, D) float32 latents of the buffer (encoder means; queried points: their z)
    y: np.ndarray  # (C,) float32 scores
    mask: np.ndarray  # (C,) bool valid rows
    in_cycle: np.ndarray  # (C,) bool rows queried in the current cycle (and pseudo rows)
    params: PyTree  # current model parameters
    task: Task
    cycle: int
    cycle_start: bool  # True for the first proposal after a (re)training
    seen: frozenset | set  # novelty keys of the data and of every queried point
    remaining: int  # evaluations left in this cycle
    include_capacity: int  # static upper bound on in_cycle.sum() during the run


class Proposal(NamedTuple):
    """Ranked candidates, best first; ``objects`` are their decodings when already known."""

    z: np.ndarray  # (R, D) float32
    objects: list | None = None
    info: dict | None = None


class Optimizer(NamedTuple):
    """A latent-space optimiser: ``init() -> state``; ``propose(key, state, ctx) -> (Proposal, state)``.

    ``init`` is called at the start of every cycle (the model, hence the latent space, has
    just changed), so optimiser state lives within a cycle; this is also what makes a resumed
    run replay exactly. ``ctx.cycle_start`` is True on the first proposal of a cycle.
    """

    init: Callable[[], Any]
    propose: Callable[[jax.Array, Any, ProposeContext], tuple[Proposal, Any]]
    name: str = "custom"


def gp_ei_optimizer(config=None) -> Optimizer:
    """Sparse-GP expected improvement (appendix C.2) via :func:`wrjax.bo.bo_suggest`.

    The GP is refitted after every query, warm-started within a cycle and refitted cold
    (k-means inducing points, a new random subset) at the start of each cycle, when the
    latents have been re-encoded. The current cycle's queries are forced into the GP data.
    """
    from wrjax.bo import BOConfig, bo_suggest

    config = BOConfig() if config is None else config

    def propose(key, state, ctx: ProposeContext):
        # A fixed n_include for the whole run keeps the compiled programs unchanged.
        bo_config = dataclasses.replace(
            config, n_include=max(config.n_include, ctx.include_capacity)
        )
        cands, new_state, info = bo_suggest(
            key, ctx.z, ctx.y, ctx.mask, config=bo_config, state=state,
            refit_inducing=ctx.cycle_start, include=ctx.in_cycle,
        )  # fmt: skip
        stats = {
            "elbo": float(info.elbo),
            "jitter": float(info.jitter),
            "acq_best": float(info.acquisition_values[0]) if len(info.acquisition_values) else None,
            "fit_seconds": float(info.fit_seconds),
            "acq_seconds": float(info.acquisition_seconds),
        }
        return Proposal(np.asarray(cands, np.float32), None, stats), new_state

    return Optimizer(lambda: None, propose, "gp-ei")


def grid_optimizer(grid: np.ndarray | None = None, *, batch_size: int = 512) -> Optimizer:
    """Exhaustive search over a latent grid, as in the paper's shapes task (§6.1).

    Every grid point is decoded (once per model version, in batches) and scored with the
    task's *pure-JAX* objective, which the paper treats as free; the candidates are the grid
    points whose decodings are valid and unseen, best score first, one per distinct decoding.
    Only the points the loop then evaluates count toward the budget.
    """

    def propose(key, state, ctx: ProposeContext):
        task = ctx.task
        if task.jax_objective is None:
            raise ValueError(f"the grid optimiser needs task {task.name!r} to have a jax_objective")
        g = np.asarray(task.grid if grid is None else grid, np.float32)
        if g.ndim != 2 or g.shape[1] != ctx.z.shape[1]:
            raise ValueError(f"grid must be (G, {ctx.z.shape[1]}), got {g.shape}")
        if state is None or ctx.cycle_start:
            scores = np.concatenate([
                np.asarray(_grid_scores(task, ctx.params, jnp.asarray(g[i : i + batch_size])))
                for i in range(0, len(g), batch_size)
            ])  # fmt: skip
            order = np.argsort(-scores, kind="stable")
            objects = task.decode(key, ctx.params, g[order])
            ranked, seen_local = [], set()
            for i, obj in zip(order, objects):
                if not task.valid(obj):
                    continue
                k = task.novelty_key(obj)
                if k in seen_local:
                    continue
                seen_local.add(k)
                ranked.append((i, obj, k))
            state = ranked
        keep = [(i, obj) for i, obj, k in state if k not in ctx.seen]
        z = g[[i for i, _ in keep]] if keep else np.zeros((0, g.shape[1]), np.float32)
        return Proposal(z, [o for _, o in keep], {"grid_candidates": len(keep)}), state

    return Optimizer(lambda: None, propose, "grid")


def _grid_scores(task: Task, params, z):
    return _decode_and_score(task.model, task.jax_objective, params, z)


@functools.partial(jax.jit, static_argnames=("model", "objective"))
def _decode_and_score(model, objective, params, z):
    return objective(vae.decode_logits(model, params, z))


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LSOConfig:
    """Settings of one run of Algorithm 1 (validated on construction).

    Attributes:
      budget: number of objective evaluations (the paper: 500).
      retrain_every: evaluations between retrains; ``None`` never retrains after the
        initial training (the paper: 50).
      k: rank-weighting strength (eq. 3); ``inf`` is uniform weighting (no weighting).
      k_schedule: optional :class:`wrjax.KSchedule` (``k`` per cycle); overrides ``k``.
      weighting: ``"rank"`` (default), ``"uniform"``, ``"dbas"``, ``"cem-pi"``, ``"rwr"``.
      weighting_params: extra parameters of the non-rank schemes, e.g. ``(("alpha", 0.1),)``.
      variance_reduction: how weights reach the minibatches: ``"sample"`` (draw with
        ``p ∝ w``; the authors' shapes and chemistry code), ``"duplicate"`` (appendix A.2
        copies above ``w_max``, weights in the loss; the paper's text), or ``"none"``
        (weights in the loss, plain epoch).
      w_max: the A.2 cap on a copy's weight (relative to the mean weight 1).
      initial_finetune_epochs: length of the cycle-0 weighted training on the initial data
        (the authors: 1 epoch for shapes and chemistry; 0 skips it).
      finetune_epochs: length of each later retrain, in epochs of the *initial* dataset (the
        authors: 0.1), so the number of steps, and hence the compiled program, stays fixed.
      finetune_steps: if set, overrides ``finetune_epochs`` with a number of steps.
      batch_size, learning_rate: fine-tuning minibatch size and Adam learning rate.
      reset_optimizer: a fresh Adam state at every retrain (the authors' expressions code)
        instead of continuing the previous one.
      from_scratch: re-initialise the model before each retrain instead of fine-tuning.
      optimizer: ``"gp-ei"``, ``"grid"`` or an :class:`Optimizer`.
      bo: a :class:`wrjax.bo.BOConfig` for ``"gp-ei"`` (default: the authors' settings).
      max_consecutive_discards: stop the run (status ``stalled``) after this many discarded
        suggestions in a row.
      seed: recorded for reference; randomness comes from the key given to :func:`run`.
    """

    budget: int = 500
    retrain_every: int | None = 50
    k: float = 1e-3
    k_schedule: KSchedule | None = None
    weighting: str = "rank"
    weighting_params: tuple = ()
    variance_reduction: str = "sample"
    w_max: float = 5.0
    initial_finetune_epochs: float = 1.0
    finetune_epochs: float = 0.1
    finetune_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    reset_optimizer: bool = False
    from_scratch: bool = False
    optimizer: Any = "gp-ei"
    bo: Any = None
    max_consecutive_discards: int = 200
    seed: int = 0

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"LSOConfig.{field} {why}, got {getattr(self, field)!r}")

        if not isinstance(self.budget, (int, np.integer)) or self.budget < 1:
            bad("budget", "must be a positive integer")
        if self.retrain_every is not None and (
            not isinstance(self.retrain_every, (int, np.integer)) or self.retrain_every < 1
        ):
            bad("retrain_every", "must be None (never) or a positive integer")
        if not (self.k > 0):  # also rejects NaN
            bad("k", "must be > 0 (inf = no weighting)")
        if self.weighting not in ("rank", "uniform", "dbas", "cem-pi", "rwr"):
            bad("weighting", "must be one of 'rank', 'uniform', 'dbas', 'cem-pi', 'rwr'")
        if self.variance_reduction not in ("sample", "duplicate", "none"):
            bad("variance_reduction", "must be 'sample', 'duplicate' or 'none'")
        if not self.w_max >= 1:
            bad("w_max", "must be >= 1")
        for f in ("initial_finetune_epochs", "finetune_epochs"):
            if not getattr(self, f) >= 0:
                bad(f, "must be >= 0")
        if self.finetune_steps is not None and self.finetune_steps < 0:
            bad("finetune_steps", "must be None or >= 0")
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            bad("batch_size", "must be a positive integer")
        if not self.learning_rate > 0:
            bad("learning_rate", "must be > 0")
        if not (self.optimizer in ("gp-ei", "grid") or isinstance(self.optimizer, Optimizer)):
            bad("optimizer", "must be 'gp-ei', 'grid' or an Optimizer")
        if self.max_consecutive_discards < 1:
            bad("max_consecutive_discards", "must be >= 1")
        try:
            self.weight_fn(0)
        except ValueError as e:
            raise ValueError(f"LSOConfig.weighting_params: {e}") from None

    def k_at(self, cycle: int) -> float:
        return (self.k_schedule or constant_k(self.k))(cycle)

    def weight_fn(self, cycle: int):
        params = dict(self.weighting_params)
        if self.weighting == "rank":
            return make_weight_fn("rank", k=self.k_at(cycle), **params)
        return make_weight_fn(self.weighting, **params)

    def to_json(self) -> dict:
        """A JSON-able description (callables by name) used to detect a changed config."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Optimizer):
                v = f"<optimizer {v.name}>"
            elif isinstance(v, KSchedule):
                v = [v(c) for c in range(12)]
            elif dataclasses.is_dataclass(v):
                v = dataclasses.asdict(v)
            elif isinstance(v, float) and math.isinf(v):
                v = "inf"
            out[f.name] = v
        return json.loads(json.dumps(out, default=str))


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def _record_line(rec: dict) -> str:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return v

    return json.dumps({k: clean(v) for k, v in rec.items()}, allow_nan=False)


class _RecordLog:
    """Append-only JSON-lines log; every line is flushed and fsynced before returning."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "a", encoding="utf-8")

    def write(self, rec: dict) -> None:
        self.f.write(_record_line(rec) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def load_records(workdir: str | os.PathLike) -> list[dict]:
    """The records of a run, in order (a torn last line from a crash is ignored)."""
    path = Path(workdir) / "records.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


# --------------------------------------------------------------------------------------------
# Jitted helpers
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class RunResult(NamedTuple):
    """What :func:`run` returns (everything is also on disk in ``workdir``)."""

    records: list[dict]
    scores: np.ndarray  # (B,) scores of the ``ok`` evaluations, in order
    curves: dict[str, np.ndarray]  # TopK curves over ``scores``
    params: PyTree  # final model parameters
    status: str  # "complete" or "stalled"
    summary: dict


def _num_steps(epochs: float, n: int, batch: int) -> int:
    return int(math.ceil(epochs * n / batch)) if epochs > 0 else 0


def run(
    key: jax.Array,
    task: Task,
    config: LSOConfig,
    *,
    workdir: str | os.PathLike,
    callbacks: Sequence[Callable[[str, dict], None]] = (),
    progress: bool = True,
) -> RunResult:
    """Run (or resume) latent-space optimisation with weighted retraining.

    Args:
      key: PRNG key; every random choice is derived from it by ``fold_in``, so a run is a
        deterministic function of (key, task, config) on a given machine.
      task: the problem (:class:`Task`).
      config: :class:`LSOConfig`.
      workdir: where records, checkpoints and the summary go. If it already holds a run with
        the same config, that run is resumed; a different config is an error.
      callbacks: ``fn(event, payload)`` called with ``"record"`` (each record), ``"retrain"``
        (cycle, fine-tune losses) and ``"done"`` (the summary).
      progress: show a tqdm progress bar over evaluations.

    Returns:
      :class:`RunResult`.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    y0 = np.asarray(task.y, np.float32)
    n0 = len(y0)
    if not isinstance(key, jax.Array):
        raise ValueError("key must be a jax PRNG key, e.g. jax.random.key(0)")
    if len(task.initial_keys) != n0:
        raise ValueError(f"task.initial_keys has {len(task.initial_keys)} entries, the data {n0}")
    config_json = {"task": task.name, **config.to_json()}
    config_path = workdir / "config.json"
    if config_path.exists():
        old = json.loads(config_path.read_text())
        if old != config_json:
            diff = sorted(k for k in set(old) | set(config_json) if old.get(k) != config_json.get(k))
            raise ValueError(
                f"{workdir} holds a run with a different config (fields {diff}); "
                "use a new workdir or the same settings to resume"
            )
    else:
        ckpt.atomic_write_bytes(config_path, json.dumps(config_json, indent=2).encode())

    capacity = n0 + config.budget
    buffer = buf.buffer_from_data(task.x, y0, capacity)
    seen: set[str] = set(task.initial_keys) | set(task.seen_keys)
    known_scores: dict[str, float] = dict(zip(task.initial_keys, map(float, y0)))
    adam = optax.adam(config.learning_rate)
    step_fn = vae.make_train_step(
        task.model, adam, beta=task.beta, likelihood=task.likelihood,
        latent_noise_std=task.latent_noise_std,
    )  # fmt: skip
    train_state = vae.init_train_state(task.params, adam)
    init_params = task.params
    optimizer = _resolve_optimizer(config)

    # ---- resume: the last cycle checkpoint, then replay what was recorded after it ----
    old_records = load_records(workdir)
    cycle, n_evals, seq, proposal_no = 0, 0, 0, 0
    queried_x, queried_y = [], []
    start_cycle_from_ckpt = False
    ckpt_dir = workdir / "checkpoints"
    last = _last_checkpoint(ckpt_dir)
    if last is not None and old_records:
        meta = ckpt.load_metadata(last)
        cycle, n_evals, seq, proposal_no = meta["cycle"], meta["n_evals"], meta["seq"], meta["proposal"]
        seen.update(r["key"] for r in old_records[:seq] if r.get("key") is not None)
        known_scores.update(
            (r["key"], float(r["score"])) for r in old_records[:seq] if r["status"] == "ok"
        )
        n_q = meta["num_queried"]
        target = {
            "state": train_state,
            "x": jax.tree.map(lambda a: np.zeros((n_q, *np.shape(a)[1:]), np.asarray(a).dtype), task.x),
            "y": np.zeros((n_q,), np.float32),
        }
        saved = ckpt.load_pytree(last, target)
        train_state = saved["state"]
        for i in range(n_q):
            buffer = buf.append(buffer, jax.tree.map(lambda a: a[i], saved["x"]), saved["y"][i])
        start_cycle_from_ckpt = True
    replay = {r["seq"]: r for r in old_records[seq:]}
    log = _RecordLog(workdir / "records.jsonl")
    records = old_records[:seq]

    base_finetune = jax.random.fold_in(key, 0)
    base_propose = jax.random.fold_in(key, 1)
    base_decode = jax.random.fold_in(key, 2)
    base_init = jax.random.fold_in(key, 3)

    steps_first = _num_steps(config.initial_finetune_epochs, n0, config.batch_size)
    steps_later = (
        config.finetune_steps
        if config.finetune_steps is not None
        else _num_steps(config.finetune_epochs, n0, config.batch_size)
    )
    cycle_len = config.retrain_every or config.budget
    status = "complete"
    consecutive_discards = 0
    bar = _progress(progress, config.budget, n_evals, task.name)
    t_run = time.time()
    try:
        while n_evals < config.budget:
            # ---------------- (re)training: Algorithm 1, line 3 ----------------
            if not start_cycle_from_ckpt:
                retrain = cycle == 0 or config.retrain_every is not None
                num_steps = steps_first if cycle == 0 else steps_later
                if retrain and num_steps > 0:
                    train_state, fit_info = _finetune(
                        jax.random.fold_in(base_finetune, cycle), train_state, step_fn, buffer,
                        config, cycle, num_steps, init_params, adam, jax.random.fold_in(base_init, cycle), task,
                    )  # fmt: skip
                    loss = np.asarray(fit_info.loss)
                    for cb in callbacks:
                        cb("retrain", {"cycle": cycle, "n_evals": n_evals, "steps": num_steps,
                                       "loss_first": float(loss[0]), "loss_last": float(loss[-1])})
                n_q = int(buffer.count) - n0
                ckpt.save_pytree(
                    ckpt_dir / f"cycle_{cycle:03d}",
                    {
                        "state": train_state,
                        "x": jax.tree.map(lambda a: np.asarray(a[n0 : n0 + n_q]), buffer.x),
                        "y": np.asarray(buffer.y[n0 : n0 + n_q]),
                    },
                    {"cycle": cycle, "n_evals": n_evals, "seq": seq, "proposal": proposal_no,
                     "num_queried": n_q, "k": config.k_at(cycle), "time": time.time()},
                )  # fmt: skip
            start_cycle_from_ckpt = False
            params = train_state.params

            # ---------------- queries of this cycle: lines 4-8 ----------------
            z_buffer = np.array(encode_all(task.model, params, buffer.x))
            in_cycle = np.zeros(capacity, bool)
            # Duplicates the optimiser proposed in this cycle, with the score the duplicated
            # object already has: shown to the optimiser (not the VAE) so that a re-proposal
            # moves away from them instead of proposing the same known point again.
            pseudo = _PseudoRows(4 * cycle_len, z_buffer.shape[1])
            opt_state = optimizer.init()
            cycle_evals = 0
            first = True
            while cycle_evals < cycle_len and n_evals < config.budget:
                remaining = min(cycle_len - cycle_evals, config.budget - n_evals)
                ctx = ProposeContext(
                    np.concatenate([z_buffer, pseudo.z]),
                    np.concatenate([np.asarray(buffer.y), pseudo.y]),
                    np.concatenate([np.asarray(buffer.mask), pseudo.mask]),
                    np.concatenate([in_cycle, pseudo.mask]),
                    params, task, cycle, first, frozenset(seen), remaining, 5 * cycle_len,
                )  # fmt: skip
                proposal, opt_state = optimizer.propose(
                    jax.random.fold_in(base_propose, proposal_no), opt_state, ctx
                )
                first = False
                dec_key = jax.random.fold_in(base_decode, proposal_no)
                proposal_no += 1
                objects = proposal.objects
                if objects is None and len(proposal.z):
                    objects = task.decode(dec_key, params, np.asarray(proposal.z, np.float32))
                evaluated = False
                for z, obj in zip(proposal.z, objects or []):
                    rec = {
                        "seq": seq, "eval": None, "status": None, "text": None, "key": None,
                        "score": None, "z": [float(v) for v in z], "model_version": cycle,
                        "cycle": cycle, "proposal": proposal_no - 1, "wall_time": None,
                        "error": None,
                    }  # fmt: skip
                    if not task.valid(obj):
                        rec["status"] = "invalid"
                        rec["text"] = None if obj is None else _safe_text(task, obj)
                    else:
                        k = task.novelty_key(obj)
                        rec["text"], rec["key"] = task.text(obj), k
                        rec["status"] = "duplicate" if k in seen else None
                    if rec["status"] is not None:
                        if rec["key"] in known_scores:
                            pseudo.add(z, known_scores[rec["key"]])
                        seq = _emit(rec, replay, log, records, callbacks, t_run)
                        consecutive_discards += 1
                        if consecutive_discards >= config.max_consecutive_discards:
                            status = "stalled"
                            break
                        continue
                    # A valid, novel object: evaluate it (or take the recorded result).
                    rec["eval"] = n_evals
                    old = replay.get(seq)
                    if old is not None and old.get("key") == rec["key"] and old["status"] in ("ok", "objective-error"):
                        rec["status"], rec["score"], rec["error"] = old["status"], old["score"], old["error"]
                    else:
                        rec["status"], rec["score"], rec["error"] = _evaluate(task, obj)
                    seen.add(rec["key"])
                    if rec["status"] == "ok":
                        known_scores[rec["key"]] = float(rec["score"])
                        buffer = buf.append(buffer, task.to_data(obj), np.float32(rec["score"]))
                        row = int(buffer.count) - 1
                        z_buffer[row] = z
                        in_cycle[row] = True
                    seq = _emit(rec, replay, log, records, callbacks, t_run)
                    n_evals += 1
                    cycle_evals += 1
                    consecutive_discards = 0
                    bar.update(1)
                    evaluated = True
                    break
                if status == "stalled":
                    break
                if not evaluated and not objects:
                    # The optimiser has nothing left to suggest (e.g. every grid decoding is
                    # already known). With retraining, end the cycle early: the retrained
                    # model decodes differently. Without, the run is over.
                    if config.retrain_every is not None and cycle_evals > 0:
                        break
                    status = "stalled"
                    break
            if status == "stalled":
                warnings.warn(
                    f"run stopped after {n_evals} evaluations: {consecutive_discards} discarded "
                    "suggestions in a row (see records.jsonl)"
                )
                break
            cycle += 1
    finally:
        bar.close()
        log.close()

    scores = np.array([r["score"] for r in records if r["status"] == "ok"], np.float32)
    curves = metrics.topk_curves(scores)
    summary = _summary(task, config_json, records, scores, curves, status, cycle_len, time.time() - t_run)
    ckpt.atomic_write_bytes(workdir / "summary.json", json.dumps(summary, indent=1).encode())
    for cb in callbacks:
        cb("done", summary)
    return RunResult(records, scores, curves, train_state.params, status, summary)


class _PseudoRows:
    """A small ring buffer of (z, known score) rows for the optimiser's data."""

    def __init__(self, capacity: int, dim: int):
        self.z = np.zeros((capacity, dim), np.float32)
        self.y = np.zeros((capacity,), np.float32)
        self.mask = np.zeros((capacity,), bool)
        self.i = 0

    def add(self, z, y: float) -> None:
        j = self.i % len(self.y)
        self.z[j], self.y[j], self.mask[j] = z, y, True
        self.i += 1


def _resolve_optimizer(config: LSOConfig) -> Optimizer:
    if isinstance(config.optimizer, Optimizer):
        return config.optimizer
    if config.optimizer == "grid":
        return grid_optimizer()
    return gp_ei_optimizer(config.bo)


def _last_checkpoint(ckpt_dir: Path):
    if not ckpt_dir.exists():
        return None
    found = sorted(ckpt_dir.glob("cycle_*.msgpack"))
    return found[-1] if found else None


def _safe_text(task: Task, obj) -> str | None:
    try:
        return task.text(obj)
    except Exception:  # an invalid object may not have a text form
        return repr(obj)[:200]


def _evaluate(task: Task, obj) -> tuple[str, float | None, str | None]:
    """Call the host objective; exceptions and non-finite values become ``objective-error``."""
    try:
        value = float(task.objective(obj))
    except Exception as e:  # the objective is user code: record, don't crash the run
        return "objective-error", None, f"{type(e).__name__}: {e}"[:500]
    if not math.isfinite(value):
        return "objective-error", None, f"non-finite score {value}"
    return "ok", value, None


def _emit(rec, replay, log, records, callbacks, t_run) -> int:
    """Write one record (or confirm it against the replayed log); returns the next seq."""
    seq = rec["seq"]
    old = replay.pop(seq, None)
    if old is not None and all(old.get(k) == rec.get(k) for k in ("status", "key", "eval")):
        rec = old  # identical decision: keep the original record (and its wall time)
    else:
        if old is not None:
            _orphan(log, replay, old)
        rec["wall_time"] = time.time()
        log.write(rec)
    records.append(rec)
    for cb in callbacks:
        cb("record", rec)
    return seq + 1


def _orphan(log: _RecordLog, replay: dict, first: dict) -> None:
    """The resumed run diverged from the log: move the stale tail aside (never delete it)."""
    stale = [first, *[replay[s] for s in sorted(replay)]]
    replay.clear()
    orphan_path = log.path.with_name("records.orphaned.jsonl")
    with open(orphan_path, "a", encoding="utf-8") as f:
        for r in stale:
            f.write(_record_line(r) + "\n")
    keep = [line for line in log.path.read_text(encoding="utf-8").splitlines()
            if json.loads(line)["seq"] < first["seq"]]  # fmt: skip
    ckpt.atomic_write_bytes(log.path, ("\n".join(keep) + ("\n" if keep else "")).encode())
    log.f.close()
    log.f = open(log.path, "a", encoding="utf-8")
    warnings.warn(
        f"resumed run diverged from the log at record {first['seq']}; "
        f"{len(stale)} old records moved to {orphan_path.name}"
    )


def _finetune(key, train_state, step_fn, buffer, config, cycle, num_steps, init_params, adam, init_key, task):
    weights = config.weight_fn(cycle)(buffer.y, buffer.mask)
    if config.from_scratch:
        params = task.model.init(init_key, jax.tree.map(lambda a: a[:1], buffer.x))["params"]
        train_state = vae.init_train_state(params, adam)
    elif config.reset_optimizer:
        train_state = vae.init_train_state(train_state.params, adam)
    data, mask = buffer.x, buffer.mask
    mode = "sample" if config.variance_reduction == "sample" else "epoch"
    if config.variance_reduction == "duplicate":
        idx, copy_w = duplicate_copies(weights, config.w_max, mask=buffer.mask)
        data = jax.tree.map(lambda a: a[idx], buffer.x)
        weights, mask = copy_w, copy_w > 0
    return vae.fit(
        key, train_state, step_fn, data, weights,
        num_steps=num_steps, batch_size=config.batch_size, mode=mode, mask=mask,
    )  # fmt: skip


def _summary(task, config_json, records, scores, curves, status, cycle_len, seconds) -> dict:
    counts = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: -r["score"])
    final = {k: (None if len(v) == 0 or np.isnan(v[-1]) else float(v[-1])) for k, v in curves.items()}
    return {
        "task": task.name,
        "config": config_json,
        "status": status,
        "num_evaluations": int(len(scores)) + counts["objective-error"],
        "counts": counts,
        "final": final,
        "best": [{"text": r["text"], "score": r["score"], "eval": r["eval"]} for r in ok[:10]],
        "retrain_points": list(range(cycle_len, int(config_json["budget"]), cycle_len))
        if config_json.get("retrain_every")
        else [],
        "curves": {k: [None if np.isnan(x) else float(x) for x in v] for k, v in curves.items()},
        "seconds": seconds,
    }


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="eval", dynamic_ncols=True)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass
