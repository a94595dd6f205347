"""Run records: an append-only JSON-lines log, replay on resume, the run summary.

``workdir/records.jsonl`` has one line per decision, flushed and fsynced before the next
step starts. On resume the records written after the last cycle checkpoint are *replayed*:
each decision the resumed run makes is checked against the log, an identical one keeps the
original line (and its wall time), and a recorded evaluation is not repeated. If the run
diverges, the stale tail is moved to ``records.orphaned.jsonl`` (never deleted).

Crash consistency: a torn last line (a kill mid-write) is cut away before anything is
appended, its bytes kept in ``records.jsonl.torn`` (:func:`repair_records`). Before the
objective is called, the evaluation is written to ``pending.json``; a resume that reaches
the same evaluation with that file still there knows the call never returned (it hung or
killed the process) and records it as ``objective-error`` instead of calling it again.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from wrjax import checkpoint as ckpt
from wrjax import metrics

__all__ = ["STATUSES", "FAILED", "load_records", "repair_records", "RecordBook", "new_record", "summarize",
           "append_proposal", "load_proposals", "optimizer_summary", "append_process_start",
           "load_process_starts", "run_seconds", "PROCESSES_FILE"]

#: Record statuses. ``ok``: evaluated, added to the data. ``invalid``: the decoding is not a
#: valid object. ``duplicate``: the object is in the training data or was already queried.
#: ``objective-error``: the objective raised, returned something that is not a finite
#: float32 number, or never returned (the process died during the call) (counts toward the
#: budget, since the evaluation was spent, but is excluded from the data, the weights and
#: the GP). ``objective-timeout``: the call ran past ``LSOConfig.objective_timeout`` (counted
#: the same way).
STATUSES = ("ok", "invalid", "duplicate", "objective-error", "objective-timeout")
#: The statuses of a spent evaluation that added nothing to the data.
FAILED = ("objective-error", "objective-timeout")


def new_record(seq: int, z, cycle: int, proposal: int) -> dict:
    """A record with every field present (in the order they are written)."""
    return {
        "seq": seq, "eval": None, "status": None, "text": None, "key": None, "score": None,
        "z": [float(v) for v in z], "model_version": cycle, "cycle": cycle,
        "proposal": proposal, "wall_time": None, "error": None,
    }  # fmt: skip


def _record_line(rec: dict) -> str:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return v

    return json.dumps({k: clean(v) for k, v in rec.items()}, allow_nan=False)


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


def repair_records(path: Path) -> int:
    """Cut a torn last line off ``records.jsonl``; returns the number of bytes cut.

    The torn bytes are appended to ``records.jsonl.torn`` first (never lost). A damaged line
    *before* the last one is not a crash's trace: ``ValueError`` naming the line.
    """
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    # A complete file ends with "\n": the last piece is empty. Otherwise it is torn, unless
    # it happens to be a whole record whose newline did not make it to disk.
    cut = len(data) - len(lines[-1])
    for i, line in enumerate(lines[:-1]):
        try:
            json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i == len(lines) - 2 and not lines[-1]:
                cut = len(data) - len(line) - 1  # a damaged, newline-terminated last line
                break
            raise ValueError(f"{path}: line {i + 1} is not a JSON record (only the last line "
                             "can be torn by a crash); fix or remove it to resume") from None
    if cut == len(data):
        return 0
    torn = path.with_name(path.name + ".torn")
    with open(torn, "ab") as f:
        f.write(data[cut:] + b"\n")
        f.flush()
        os.fsync(f.fileno())
    with open(path, "r+b") as f:
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    warnings.warn(f"{path}: cut a torn last line ({len(data) - cut} bytes, kept in {torn.name})")
    return len(data) - cut


class RecordBook:
    """The records of a run so far, the log on disk and the tail to replay.

    ``records[i]["seq"] == i``: the next record's ``seq`` is ``len(records)``.
    """

    def __init__(self, path: Path, kept: list[dict], replay: Sequence[dict],
                 callbacks: Sequence[Callable[[str, dict], None]]):
        self.path = path
        self.records = list(kept)
        self.replay = {r["seq"]: r for r in replay}
        self.callbacks = tuple(callbacks)
        self._f = open(path, "a", encoding="utf-8")

    @property
    def seq(self) -> int:
        return len(self.records)

    def replayed(self, seq: int) -> dict | None:
        """The logged record at ``seq`` from before the resume, if any."""
        return self.replay.get(seq)

    def emit(self, rec: dict) -> None:
        """Write one record (or confirm it against the replayed log) and tell the callbacks."""
        old = self.replay.pop(rec["seq"], None)
        if old is not None and all(old.get(k) == rec.get(k) for k in ("status", "key", "eval")):
            rec = old  # identical decision: keep the original record (and its wall time)
        else:
            if old is not None:
                self._orphan(old)
            rec["wall_time"] = time.time()
            self._f.write(_record_line(rec) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        self.records.append(rec)
        self.notify("record", rec)

    def notify(self, event: str, payload: dict) -> None:
        for cb in self.callbacks:
            cb(event, payload)

    def _orphan(self, first: dict) -> None:
        """The resumed run diverged from the log: move the stale tail aside."""
        stale = [first, *[self.replay[s] for s in sorted(self.replay)]]
        self.replay.clear()
        orphan_path = self.path.with_name("records.orphaned.jsonl")
        with open(orphan_path, "a", encoding="utf-8") as f:
            for r in stale:
                f.write(_record_line(r) + "\n")
        keep = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if json.loads(line)["seq"] < first["seq"]]  # fmt: skip
        self._f.close()
        ckpt.atomic_write_bytes(self.path, ("\n".join(keep) + ("\n" if keep else "")).encode())
        self._f = open(self.path, "a", encoding="utf-8")
        warnings.warn(
            f"resumed run diverged from the log at record {first['seq']}; "
            f"{len(stale)} old records moved to {orphan_path.name}"
        )

    def close(self) -> None:
        self._f.close()


def query_seconds(records: list[dict]) -> dict:
    """Wall seconds per query of a run: the time between one proposal's last record and the
    next proposal's within a cycle (the optimiser's proposal, decoding and evaluation; the
    retrain between cycles is excluded). ``{"median", "p90", "count"}``, ``None`` values when
    no cycle has two proposals.

    >>> recs = [dict(cycle=0, proposal=p, wall_time=t) for p, t in [(0, 0.0), (1, 0.5), (1, 0.6),
    ...         (2, 1.6)]] + [dict(cycle=1, proposal=0, wall_time=9.0)]
    >>> query_seconds(recs)
    {'median': 0.8, 'p90': 0.96, 'count': 2}
    """
    last: dict[tuple, float] = {}
    for r in records:
        if r.get("wall_time") is not None and r.get("proposal") is not None:
            last[(r.get("cycle"), r["proposal"])] = float(r["wall_time"])
    gaps = [t - last[(c, p - 1)] for (c, p), t in last.items() if (c, p - 1) in last]
    if not gaps:
        return {"median": None, "p90": None, "count": 0}
    return {"median": round(float(np.median(gaps)), 4), "p90": round(float(np.percentile(gaps, 90)), 4),
            "count": len(gaps)}


#: ``workdir/proposals.jsonl``: one line per proposal with the optimiser's diagnostics
#: (``Proposal.info``: for the GP optimisers the bound, fit steps and seconds, whether it
#: refitted). A diagnostic log beside ``records.jsonl``, not replayed: a resumed run appends
#: the replayed proposals again, and readers keep the last line of each proposal.
PROPOSALS_FILE = "proposals.jsonl"


def _json_value(v):
    return v.tolist() if hasattr(v, "tolist") else str(v)


def append_proposal(workdir: Path, cycle: int, proposal: int, info: dict) -> dict:
    """Append one proposal's diagnostics to ``workdir/proposals.jsonl``; returns the entry."""
    entry = {"cycle": int(cycle), "proposal": int(proposal), **info}
    line = json.dumps(entry, default=_json_value, allow_nan=True)
    with open(Path(workdir) / PROPOSALS_FILE, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return json.loads(line)


def load_proposals(workdir: Path) -> list[dict]:
    """The proposals' diagnostics in order, the last line of each ``(cycle, proposal)``
    (damaged lines, e.g. a torn last one, are skipped)."""
    path = Path(workdir) / PROPOSALS_FILE
    if not path.exists():
        return []
    last: dict[tuple, dict] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            e = json.loads(line)
            last[(int(e["cycle"]), int(e["proposal"]))] = e
        except (ValueError, KeyError, TypeError):
            continue
    return [last[k] for k in sorted(last)]


#: ``workdir/processes.jsonl``: one line per process that ran (or resumed) the run, written as
#: it starts: ``{"start": unix time, "evals": evaluations in the checkpoint it resumed from,
#: "pid", "host"}``.
#: It lets the summary give a resumed run's wall time over all its processes.
PROCESSES_FILE = "processes.jsonl"


def append_process_start(workdir: Path, start: float, n_evals: int) -> None:
    """Record that a process started (or resumed) the run in ``workdir`` at ``start``."""
    entry = {"start": float(start), "evals": int(n_evals), "pid": os.getpid(), "host": socket.gethostname()}
    with open(Path(workdir) / PROCESSES_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def load_process_starts(workdir: Path) -> list[float]:
    """The start times of the processes that ran the run in ``workdir``, sorted (damaged
    lines, e.g. a torn last one, are skipped; no file: ``[]``)."""
    path = Path(workdir) / PROCESSES_FILE
    if not path.exists():
        return []
    starts = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            t = float(json.loads(line)["start"])
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(t):
            starts.append(t)
    return sorted(starts)


def run_seconds(starts: Sequence[float], records: list[dict], end: float) -> float:
    """Wall seconds a run spent over all the processes that ran it.

    The last process ran from its start to ``end``. An earlier one (stopped or killed) is
    counted from its start to its last record's ``wall_time`` (a record written before the
    next process started): time after its last record is not known and not counted, and what
    it did after that is redone, and counted, by the next process. Records older than the
    first start come from processes that ran before the log existed; they count from the
    first such record to the last (a lower bound). With no ``starts`` the result is 0.0 and
    callers fall back to their own clock.

    >>> recs = [dict(wall_time=t) for t in (12.0, 15.0, 31.0, 40.0)]
    >>> run_seconds([10.0, 30.0], recs, end=45.0)   # (15 - 10) + (45 - 30)
    20.0
    >>> run_seconds([14.0], recs, end=45.0)          # unlogged (12 to 12) + (45 - 14)
    31.0
    """
    starts = sorted(float(s) for s in starts)
    if not starts:
        return 0.0
    times = sorted(float(r["wall_time"]) for r in records if r.get("wall_time") is not None)
    before = [t for t in times if t < starts[0]]
    total = (before[-1] - before[0]) if before else 0.0
    for i, s in enumerate(starts):
        if i + 1 == len(starts):
            total += max(float(end) - s, 0.0)
            continue
        inside = [t for t in times if s <= t < starts[i + 1]]
        total += (inside[-1] - s) if inside else 0.0
    return total


def _other_starts(audits: list[dict]) -> dict:
    other = np.array([a["ei_ratio_other_starts"] for a in audits if "ei_ratio_other_starts" in a], float)
    if not len(other):
        return {}
    return {"other_starts_ei_ratio_median": round(float(np.nanmedian(other)), 4),
            "other_starts_share_above_0.9": round(float(np.mean(other >= 0.9)), 4)}


def optimizer_summary(entries: list[dict]) -> dict | None:
    """What the GP's fits cost over a run: refits, their steps and seconds (median, max),
    from :func:`load_proposals`; None when no entry has ``fit_steps``.

    >>> optimizer_summary([dict(refitted=True, fit_steps=95, fit_seconds=17.0),
    ...                    dict(refitted=False, fit_steps=0, fit_seconds=0.01),
    ...                    dict(refitted=True, fit_steps=12, fit_seconds=4.0)])
    {'proposals': 3, 'refits': 2, 'fit_steps': {'median': 53.5, 'max': 95}, 'fit_seconds': {'median': 10.5, 'max': 17.0}}
    """
    fits = [e for e in entries if e.get("fit_steps") is not None]
    if not fits:
        return None
    refits = [e for e in fits if e.get("refitted", True)]
    out = {"proposals": len(entries), "refits": len(refits)}
    for name in ("fit_steps", "fit_seconds"):
        vals = [e[name] for e in refits if e.get(name) is not None]
        out[name] = ({"median": round(float(np.median(vals)), 4), "max": max(vals)} if vals
                     else {"median": None, "max": None})  # fmt: skip
    audits = [e["audit"] for e in entries if e.get("audit")]
    if audits:  # GPFitConfig(audit_every=...): how often skipping the refit changed the pick
        ratio = np.array([a["ei_ratio"] for a in audits], float)
        out["audit"] = {
            "count": len(audits),
            "ei_ratio_median": round(float(np.nanmedian(ratio)), 4),
            "ei_ratio_p10": round(float(np.nanpercentile(ratio, 10)), 4),
            "share_ei_ratio_above_0.9": round(float(np.mean(ratio >= 0.9)), 4),
            **_other_starts(audits),
            "distance_median": round(float(np.median([a["distance"] for a in audits])), 4),
            "seconds": round(float(sum(a["seconds"] for a in audits)), 1),
        }
    return out


def summarize(task_name: str, config_json: dict, records: list[dict], status: str,
              cycle_len: int, seconds: float, proposals: list[dict] | None = None,
              process_starts: Sequence[float] = (), end: float | None = None,
              ) -> tuple[np.ndarray, dict, dict]:
    """``(scores, curves, summary)`` of a finished (or stalled) run (``proposals``: the
    entries of :func:`load_proposals`, summarised by :func:`optimizer_summary`).

    ``seconds`` is the last process's own time on the run; with ``process_starts`` (from
    :func:`load_process_starts`) and ``end`` the summary's ``"seconds"`` is the run's wall
    time over all its processes (:func:`run_seconds`), ``"processes"`` their number and
    ``"seconds_last_process"`` the last one's time."""
    scores = np.array([r["score"] for r in records if r["status"] == "ok"], np.float32)
    curves = metrics.topk_curves(scores)
    counts = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    if not counts["objective-timeout"]:  # listed only when it happened (as before it existed)
        del counts["objective-timeout"]
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: -r["score"])
    final = {k: (None if len(v) == 0 or np.isnan(v[-1]) else float(v[-1])) for k, v in curves.items()}
    summary = {
        "task": task_name,
        "config": config_json,
        "status": status,
        "num_evaluations": int(len(scores)) + sum(counts.get(s, 0) for s in FAILED),
        "counts": counts,
        "final": final,
        "best": [{"text": r["text"], "score": r["score"], "eval": r["eval"]} for r in ok[:10]],
        "retrain_points": list(range(cycle_len, int(config_json["budget"]), cycle_len))
        if config_json.get("retrain_every")
        else [],
        "curves": {k: [None if np.isnan(x) else float(x) for x in v] for k, v in curves.items()},
        "seconds": seconds,
        "query_seconds": query_seconds(records),
    }
    if process_starts:
        total = run_seconds(process_starts, records, time.time() if end is None else end)
        summary.update(seconds=round(max(total, seconds), 3), processes=len(process_starts),
                       seconds_last_process=seconds)
    opt = optimizer_summary(proposals or [])
    if opt is not None:  # only where the optimiser reports fits (as before it existed otherwise)
        summary["optimizer"] = opt
    return scores, curves, summary
