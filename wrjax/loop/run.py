"""The host driver of Algorithm 1: records, replay, resume, callbacks, progress.

One run::

    for cycle c = 0, 1, ...:                           (a cycle = retrain_every evaluations)
        retrain: weights of every point so far (eq. 3, k of cycle c), fine-tune the VAE
                 (cycle 0: the initial weighted training; later cycles only with retraining)
        checkpoint (train state, queried data, counters)
        begin_cycle: Z <- encoder means of the whole buffer; optimiser.init
        repeat until the cycle's evaluations are done:
            candidates <- optimiser.propose(Z, scores)              (ranked, e.g. by EI)
            take the first candidate whose decoding is valid and novel; record the others as
            discarded (they do not count toward the budget)
            evaluate the objective; record; append the point to the buffer

The steps are those of :mod:`wrjax.loop.steps`; here the host decoder, the validity and
novelty checks, the objective and the records run between them. ``run`` on an existing
workdir resumes from the last cycle checkpoint and replays the records after it
(:mod:`wrjax.loop.records`), so an interrupted run yields exactly the records of an
uninterrupted one.

A run directory has one writer at a time (a lock file, ``run.lock``, with the holder's pid
and host in ``run.lock.owner``); checkpoints are verified against the checksum their JSON
records, and a damaged latest one falls back to the previous one (see
:mod:`wrjax.loop.records` for the records' own crash consistency).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from wrjax import buffer as buf
from wrjax import checkpoint as ckpt
from wrjax.loop import steps
from wrjax.loop.config import LSOConfig
from wrjax.loop.optimizers import Optimizer
from wrjax._checks import check_objective_value
from wrjax.loop.records import (FAILED, RecordBook, append_process_start, append_proposal,
                                 load_process_starts, load_proposals, load_records, new_record,
                                 repair_records, summarize)
from wrjax.loop.state import LSOState, init_state
from wrjax.task import Task
from wrjax.typing import PyTree

__all__ = ["run", "RunResult", "RunError", "RunLockedError"]


class RunError(RuntimeError):
    """A run directory that cannot be used as it is; the message says why and what to do."""


class RunLockedError(RunError):
    """Another process holds the run directory (the message names it)."""


class RunResult(NamedTuple):
    """What :func:`run` returns (everything is also on disk in ``workdir``)."""

    records: list[dict]
    scores: np.ndarray  # (B,) scores of the ``ok`` evaluations, in order
    curves: dict[str, np.ndarray]  # TopK curves over ``scores``
    params: PyTree  # final model parameters
    status: str  # "complete" or "stalled"
    summary: dict


def run(
    key: jax.Array,
    task: Task,
    config: LSOConfig,
    *,
    optimizer: Optimizer,
    workdir: str | os.PathLike,
    callbacks: Sequence[Callable[[str, dict], None]] = (),
    progress: bool = True,
) -> RunResult:
    """Run (or resume) latent-space optimisation with weighted retraining.

    Args:
      key: PRNG key; every random choice is derived from it by ``fold_in``, so a run is a
        deterministic function of (key, task, config, optimizer) on a given machine.
      task: the problem (:class:`wrjax.Task`).
      config: :class:`wrjax.LSOConfig`.
      optimizer: the latent-space optimiser, e.g. :func:`wrjax.make_gp_ei` or
        :func:`wrjax.grid_optimizer`.
      workdir: where records, checkpoints and the summary go. If it already holds a run with
        the same settings, that run is resumed; different settings are an error.
      callbacks: ``fn(event, payload)`` called with ``"record"`` (each record), ``"retrain"``
        (cycle, fine-tune losses) and ``"done"`` (the summary).
      progress: show a tqdm progress bar over evaluations.

    Returns:
      :class:`RunResult`.
    """
    if not isinstance(key, jax.Array):
        raise ValueError("key must be a jax PRNG key, e.g. jax.random.key(0)")
    if not isinstance(optimizer, Optimizer):
        raise ValueError(f"optimizer must be a wrjax Optimizer, got {type(optimizer).__name__}")
    if len(task.initial_keys) != len(task.y):
        raise ValueError(f"task.initial_keys has {len(task.initial_keys)} entries, the data {len(task.y)}")
    workdir = Path(workdir)
    config_json = run_config_json(task, config, optimizer)
    lock = _lock_workdir(workdir)
    try:
        return _run_locked(key, task, config, optimizer, workdir, config_json, callbacks, progress)
    finally:
        lock.release()


def run_config_json(task: Task, config: LSOConfig, optimizer: Optimizer) -> dict:
    """The JSON record of a run's configuration, as ``config.json`` and ``summary.json`` hold it."""
    config_json = {"task": task.name, **config.to_json(), "optimizer": optimizer.name,
                   "optimizer_config": optimizer.config}  # fmt: skip
    return json.loads(json.dumps(config_json, default=str))


def _run_locked(key, task, config, optimizer, workdir, config_json, callbacks, progress) -> RunResult:
    _claim_workdir(workdir, config_json)
    t_start = time.time()  # before the resume: replaying a cycle is part of this process's time
    host = _Host(task, config, optimizer, workdir)
    state = init_state(key, task.x, task.y, task.params, host.trainer.tx, budget=config.budget,
                       cycle_len=config.cycle_len, latent_dim=_latent_dim(task))  # fmt: skip
    state, resumed, book = host.resume(state, callbacks)
    append_process_start(workdir, t_start, int(state.n_evals))
    t_run = time.time()
    status = "complete"
    try:
        host.open_bar(progress, int(state.n_evals))
        while int(state.n_evals) < config.budget:
            if not resumed:
                state = host.retrain(state, book)
            resumed = False
            state, status = host.cycle(state, book)
            if status != "complete":
                why = ("the optimiser has nothing left to propose" if status == "exhausted" else
                       f"{host.discards} discarded suggestions in a row")  # fmt: skip
                warnings.warn(f"run stopped after {int(state.n_evals)} evaluations: {why} "
                              "(see records.jsonl)")  # fmt: skip
                status = "stalled"
                break
            state = state._replace(cycle=state.cycle + 1)
    finally:
        host.close()
        book.close()
    t_end = time.time()
    scores, curves, summary = summarize(task.name, config_json, book.records, status,
                                        config.cycle_len, t_end - t_run, load_proposals(workdir),
                                        load_process_starts(workdir), t_end)  # fmt: skip
    ckpt.atomic_write_bytes(workdir / "summary.json", json.dumps(summary, indent=1).encode())
    book.notify("done", summary)
    return RunResult(book.records, scores, curves, state.train.params, status, summary)


def _lock_workdir(workdir: Path):
    """Take ``workdir``'s single-writer lock at once, or ``RunLockedError`` naming the holder."""
    import filelock

    workdir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(workdir / "run.lock"), timeout=0)
    owner = workdir / "run.lock.owner"
    try:
        lock.acquire()
    except filelock.Timeout:
        try:
            who = json.loads(owner.read_text())
            holder = f"pid {who['pid']} on {who['host']} (since {who['since']})"
        except Exception:  # noqa: BLE001 - the holder may not have written it yet
            holder = "another process"
        raise RunLockedError(f"{workdir} is in use by {holder}; wait for it to finish, or stop "
                             "it, then run again (one process per run directory)") from None
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    ckpt.atomic_write_bytes(owner, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                               "since": since}).encode())  # fmt: skip
    return lock


def _claim_workdir(workdir: Path, config_json: dict) -> None:
    """Create ``workdir`` with ``config.json``, or check an existing run's settings."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    if not path.exists():
        ckpt.atomic_write_bytes(path, json.dumps(config_json, indent=2).encode())
        return
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is damaged ({e}); restore it, or delete it to resume with the "
                       "current settings") from None
    if old != config_json:
        diff = sorted(k for k in set(old) | set(config_json) if old.get(k) != config_json.get(k))
        raise ValueError(
            f"{workdir} holds a run with a different config (fields {diff}); "
            "use a new workdir or the same settings to resume"
        )


def _latent_dim(task: Task) -> int:
    x1 = jax.tree.map(lambda a: np.asarray(a[:1]), task.x)
    return int(jax.eval_shape(lambda p, x: steps.encode_all(task.model, p, x), task.params, x1).shape[1])


class _Host:
    """The host side of one run: novelty keys, known scores, progress, discard count."""

    def __init__(self, task: Task, config: LSOConfig, optimizer: Optimizer, workdir: Path):
        self.task, self.config, self.workdir = task, config, workdir
        self.trainer = steps.make_trainer(task, config)
        self.n0 = len(task.y)
        self.seen: set[str] = set(task.initial_keys) | set(task.seen_keys)
        self.known: dict[str, float] = dict(zip(task.initial_keys, map(float, np.asarray(task.y, np.float32))))
        self.discards = 0
        self.pending_path = workdir / "pending.json"
        self.pending: dict | None = None
        self.bar = _NoBar()
        # Jit boundary: traceable optimisers and the bookkeeping steps, once per run.
        if optimizer.traceable:
            self.opt_init, self.opt_propose = jax.jit(optimizer.init), jax.jit(optimizer.propose)
        else:
            self.opt_init, self.opt_propose = optimizer.init, optimizer.propose
        self.traceable = optimizer.traceable
        self.append = _jit_without_opt(steps.append)
        self.add_pseudo = _jit_without_opt(steps.add_pseudo)
        # begin_cycle stays eager: its encoder is its own jitted program (jitting it again
        # inside a larger program may fuse differently and move the latents by an ulp).

    # ---- resume -----------------------------------------------------------------------------

    def resume(self, state: LSOState, callbacks) -> tuple[LSOState, bool, RecordBook]:
        """Restore the last cycle checkpoint, if records exist; returns the record book."""
        repair_records(self.workdir / "records.jsonl")
        old = load_records(self.workdir)
        if self.pending_path.exists():
            try:
                self.pending = json.loads(self.pending_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):  # written atomically: not expected
                warnings.warn(f"ignoring damaged {self.pending_path}")
        seq, resumed = 0, False
        for last in _checkpoints(self.workdir / "checkpoints"):
            try:
                meta = _checkpoint_meta(last)
                if meta["seq"] > len(old):
                    raise RunError(
                        f"{self.workdir / 'records.jsonl'} has {len(old)} records but checkpoint "
                        f"{last.name} was taken after record {meta['seq']}: records were lost. "
                        "Restore records.jsonl from a copy, or delete the checkpoints taken after "
                        f"record {len(old)} (their .msgpack and .json in {last.parent}) to resume "
                        "from an earlier one, re-evaluating the lost points"
                    )
                if not old and meta["seq"] == 0:
                    break  # nothing recorded yet: start afresh (the same as resuming)
                restored = self._restore(state, last, meta)
            except ckpt.CheckpointError as e:
                warnings.warn(f"{e}; falling back to the previous checkpoint")
                continue
            state, seq, resumed = restored, meta["seq"], True
            self.seen.update(r["key"] for r in old[:seq] if r.get("key") is not None)
            self.known.update((r["key"], float(r["score"])) for r in old[:seq] if r["status"] == "ok")
            break
        return state, resumed, RecordBook(self.workdir / "records.jsonl", old[:seq], old[seq:], callbacks)

    def _restore(self, state: LSOState, path, meta: dict) -> LSOState:
        n_q = meta["num_queried"]
        x0 = self.task.x
        target = {
            "state": state.train,
            "x": jax.tree.map(lambda a: np.zeros((n_q, *np.shape(a)[1:]), np.asarray(a).dtype), x0),
            "y": np.zeros((n_q,), np.float32),
        }
        saved = ckpt.load_pytree(path.with_suffix(".msgpack"), target)
        x = jax.tree.map(lambda a, b: np.concatenate([np.asarray(a), b]), x0, saved["x"])
        y = np.concatenate([np.asarray(self.task.y, np.float32), saved["y"]])
        return state._replace(
            buffer=buf.buffer_from_data(x, y, state.buffer.y.shape[0]), train=saved["state"],
            cycle=np.int32(meta["cycle"]), n_evals=np.int32(meta["n_evals"]),
            proposal=np.int32(meta["proposal"]),
        )  # fmt: skip

    # ---- one cycle ----------------------------------------------------------------------------

    def retrain(self, state: LSOState, book: RecordBook) -> LSOState:
        """Fine-tune (when this cycle retrains) and checkpoint the cycle's start."""
        cycle, n_evals = int(state.cycle), int(state.n_evals)
        num_steps = self.config.finetune_steps_at(cycle, self.n0)
        if num_steps > 0:
            # say what the bar is waiting for (the first fine-tune also compiles)
            self.bar.set_postfix_str(f"fine-tuning: {num_steps} steps"
                                     + (", compiling" if cycle == 0 else ""))  # fmt: skip
            key = jax.random.fold_in(state.streams.finetune, cycle)
            state, info = steps.retrain(key, state, trainer=self.trainer, num_steps=num_steps,
                                        k=self.config.k_at(cycle))  # fmt: skip
            loss = np.asarray(info.loss)
            book.notify("retrain", {"cycle": cycle, "n_evals": n_evals, "steps": num_steps,
                                    "loss_first": float(loss[0]), "loss_last": float(loss[-1])})  # fmt: skip
        self.bar.set_postfix_str("querying" + (" (the first query compiles)" if cycle == 0 else ""))
        # the bar's rate (hence its ETA) counts query time only, not the fine-tune just done
        self.bar.unpause()
        b, n0 = state.buffer, self.n0
        n_q = int(b.count) - n0
        ckpt.save_pytree(
            self.workdir / "checkpoints" / f"cycle_{cycle:03d}",
            {"state": state.train, "x": jax.tree.map(lambda a: np.asarray(a[n0 : n0 + n_q]), b.x),
             "y": np.asarray(b.y[n0 : n0 + n_q])},
            {"cycle": cycle, "n_evals": n_evals, "seq": book.seq, "proposal": int(state.proposal),
             "num_queried": n_q, "k": self.config.k_at(cycle), "time": time.time()},
            checksum=True,
        )  # fmt: skip
        return state

    def cycle(self, state: LSOState, book: RecordBook) -> tuple[LSOState, str]:
        """The queries of one cycle (Algorithm 1, lines 4-8); returns the run status."""
        config = self.config
        state = steps.begin_cycle(state._replace(opt=None), model=self.task.model)
        state = state._replace(opt=self.opt_init(self._context(state, True, config.cycle_len)))
        start, first = int(state.n_evals), True
        while True:
            n_evals = int(state.n_evals)
            done = n_evals - start
            if done >= config.cycle_len or n_evals >= config.budget:
                return state, "complete"
            remaining = min(config.cycle_len - done, config.budget - n_evals)
            state, outcome = self.query(state, book, self._context(state, first, remaining))
            first = False
            if outcome == "stalled":
                return state, "stalled"
            if outcome == "empty":
                # The optimiser has nothing left to suggest (e.g. every grid decoding is
                # already known). With retraining, end the cycle early: the retrained model
                # decodes differently. Without, the run is over.
                if config.retrain_every is not None and done > 0:
                    return state, "complete"
                return state, "exhausted"

    def _context(self, state: LSOState, cycle_start: bool, remaining: int):
        if self.traceable:  # arrays only: the optimiser is jitted
            return steps.propose_context(state, cycle_start=cycle_start, remaining=remaining)
        return steps.propose_context(state, cycle_start=cycle_start, remaining=remaining,
                                     task=self.task, seen=self.seen)  # fmt: skip

    def query(self, state: LSOState, book: RecordBook, ctx) -> tuple[LSOState, str]:
        """One proposal: judge its candidates in order, evaluate the first valid novel one.

        Returns ``(state, outcome)``, outcome ``"evaluated"``, ``"discarded"`` (every
        candidate was discarded), ``"empty"`` (no candidate) or ``"stalled"``.
        """
        task, p = self.task, int(state.proposal)
        proposal, opt = self.opt_propose(jax.random.fold_in(state.streams.propose, p), state.opt, ctx)
        state = state._replace(opt=opt, proposal=state.proposal + 1)
        if proposal.info:
            book.notify("proposal", append_proposal(self.workdir, int(state.cycle), p, proposal.info))
        zs, objects = _host_candidates(proposal)
        if objects is None and len(zs):
            objects = task.decode(jax.random.fold_in(state.streams.decode, p), ctx.params, zs)
        cycle = int(state.cycle)
        for z, obj in zip(zs, objects or []):
            rec = new_record(book.seq, z, cycle, p)
            if self._judge(rec, obj) is not None:
                if rec["key"] in self.known:
                    state = self.add_pseudo(state, z, np.float32(self.known[rec["key"]]))
                book.emit(rec)
                self.discards += 1
                if self.discards >= self.config.max_consecutive_discards:
                    return state, "stalled"
                continue
            state = self._evaluate(state, book, rec, obj, z)
            return state, "evaluated"
        return state, ("discarded" if objects else "empty")

    def _judge(self, rec: dict, obj) -> str | None:
        """Fill a record's text/key; its status if the candidate is discarded, else None."""
        task = self.task
        if not task.valid(obj):
            rec["status"] = "invalid"
            rec["text"] = None if obj is None else _safe_text(task, obj)
            return rec["status"]
        key = task.novelty_key(obj)
        rec["text"], rec["key"] = task.text(obj), key
        rec["status"] = "duplicate" if key in self.seen else None
        return rec["status"]

    def _evaluate(self, state: LSOState, book: RecordBook, rec: dict, obj, z) -> LSOState:
        """Evaluate a valid novel object (or take the replayed result) and append it."""
        rec["eval"] = int(state.n_evals)
        old = book.replayed(rec["seq"])
        pending = self.pending
        if old is not None and old.get("key") == rec["key"] and old["status"] in ("ok", *FAILED):
            rec["status"], rec["score"], rec["error"] = old["status"], old["score"], old["error"]
        elif pending is not None and all(pending.get(f) == rec[f] for f in ("seq", "key", "eval")):
            # The last run called the objective here and never recorded a result: the call
            # hung or took the process down. Do not call it again.
            rec["status"], rec["score"] = "objective-error", None
            rec["error"] = "the objective never returned (the process stopped during the call); not retried"
        else:
            ckpt.atomic_write_bytes(self.pending_path, json.dumps(
                {f: rec[f] for f in ("seq", "eval", "key", "text")}).encode())  # fmt: skip
            rec["status"], rec["score"], rec["error"] = _call_objective(
                self.task, obj, self.config.objective_timeout)  # fmt: skip
        self.seen.add(rec["key"])
        # The record goes to the log as soon as the objective returns (before the append,
        # whose first call compiles): a kill after this point never turns a returned call
        # into a "never returned" one.
        book.emit(rec)
        self.pending = None
        self.pending_path.unlink(missing_ok=True)
        if rec["status"] == "ok":
            self.known[rec["key"]] = float(rec["score"])
            state = self.append(state, self.task.to_data(obj), np.float32(rec["score"]), z)
        else:
            state = steps.count_failed_eval(state)
        self.discards = 0
        self.bar.update(1)
        return state

    def open_bar(self, enabled: bool, initial: int) -> None:
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.config.budget, initial=initial, desc=self.task.name,
                            unit="eval", dynamic_ncols=True)  # fmt: skip

    def close(self) -> None:
        self.bar.close()


def _jit_without_opt(fn, **jit_kwargs):
    """Jit a bookkeeping step over the state but the optimiser's (host) state, passed around it."""
    jitted = jax.jit(fn, **jit_kwargs)

    def call(state: LSOState, *args, **kwargs) -> LSOState:
        return jitted(state._replace(opt=None), *args, **kwargs)._replace(opt=state.opt)

    return call


def _host_candidates(proposal) -> tuple[np.ndarray, list | None]:
    """A proposal as host data: ``(z (R, D) float32, objects or None)``."""
    z = np.asarray(proposal.z, np.float32)
    objects = proposal.objects
    if proposal.ok is not None:  # a traceable optimiser: rows with an ok flag
        ok = np.asarray(proposal.ok, bool)
        z = z[ok]
        objects = None if objects is None else [np.asarray(r) for r in np.asarray(objects)[ok]]
    elif objects is not None:
        objects = list(objects)
    return z, objects


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    """The cycle checkpoints (``.json`` paths, blob or metadata present), newest first."""
    if not ckpt_dir.exists():
        return []
    stems = {p.with_suffix(".json") for p in ckpt_dir.glob("cycle_*.msgpack")}
    stems |= set(ckpt_dir.glob("cycle_*.json"))
    return sorted(stems, reverse=True)


def _checkpoint_meta(path: Path) -> dict:
    """A checkpoint's metadata if it is complete (``CheckpointError`` naming the file if not)."""
    meta = ckpt.load_metadata(path)
    if "blob_sha256" in meta:
        meta = ckpt.verify_checkpoint(path)
    elif not path.with_suffix(".msgpack").exists():  # saved before checksums
        raise ckpt.CheckpointError(f"incomplete checkpoint: {path.with_suffix('.msgpack')} is missing")
    for f in ("seq", "cycle", "n_evals", "proposal", "num_queried"):
        if not isinstance(meta.get(f), int):
            raise ckpt.CheckpointError(f"damaged checkpoint metadata {path}: no integer {f!r}")
    return meta


def _safe_text(task: Task, obj) -> str | None:
    try:
        return task.text(obj)
    except Exception:  # an invalid object may not have a text form
        return repr(obj)[:200]


def _call_objective(task: Task, obj, timeout: float | None = None) -> tuple[str, float | None, str | None]:
    """Call the host objective: ``(status, score, error)``.

    Exceptions, and values that are not a finite float32-range number, are
    ``objective-error``; with ``timeout`` the call runs in a daemon thread and one that has
    not returned after ``timeout`` seconds is ``objective-timeout`` (and abandoned).
    """
    box: dict = {}

    def call():
        try:
            box["value"] = task.objective(obj)
        except Exception as e:  # the objective is user code: record, don't crash the run
            box["error"] = e

    if timeout is None:
        call()
    else:
        worker = threading.Thread(target=call, name="wrjax-objective", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            return "objective-timeout", None, f"no result after {timeout:g} s (the call was abandoned)"
    if "error" in box:
        e = box["error"]
        return "objective-error", None, f"{type(e).__name__}: {e}"[:500]
    try:
        value = check_objective_value(box.get("value"))
    except ValueError as e:
        return "objective-error", None, str(e)[:500]
    return "ok", value, None


class _NoBar:
    def update(self, n):
        pass

    def set_postfix_str(self, text, refresh=True):
        pass

    def unpause(self):
        pass

    def close(self):
        pass
