"""experiments.pack_runs: a packed, interrupted run resumes elsewhere with identical records and
no evaluation repeated; only the newest verifying checkpoint travels."""

import tarfile

import jax
import pytest

from experiments import pack_runs
from wrjax import loop as lso
from wrjax.loop import LSOConfig
from wrjax.tasks.toy import make_toy_task


class Interrupt(Exception):
    pass


def strip(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


def test_packed_interrupted_run_resumes_elsewhere_identically(tmp_path):
    toy = make_toy_task(jax.random.key(0))
    cfg = LSOConfig(budget=14, retrain_every=5, batch_size=16)
    key = jax.random.key(7)
    grid = lso.grid_optimizer(toy)
    full = lso.run(key, toy, cfg, optimizer=grid, workdir=tmp_path / "full", progress=False)

    def interrupt(event, payload):
        if event == "record" and payload["seq"] == 11:  # in the third cycle
            raise Interrupt

    cut = tmp_path / "bg" / "compare" / "seed0"
    with pytest.raises(Interrupt):
        lso.run(key, toy, cfg, optimizer=grid, workdir=cut, progress=False, callbacks=[interrupt])
    ckpts = sorted(p.name for p in (cut / "checkpoints").glob("*.msgpack"))
    assert ckpts == ["cycle_000.msgpack", "cycle_001.msgpack", "cycle_002.msgpack"]
    # the newest checkpoint is damaged: the pack takes the newest one that verifies
    (cut / "checkpoints" / "cycle_002.msgpack").write_bytes(b"damaged")
    (tmp_path / "bg" / "compare" / "notes.md").write_text("a table")
    out = tmp_path / "pack" / "runs.tar.gz"
    pack_runs.main([str(tmp_path / "bg" / "compare"), str(out)])
    names = set(tarfile.open(out).getnames())
    kept = ["config.json", "records.jsonl", "processes.jsonl", "checkpoints/cycle_001.json",
            "checkpoints/cycle_001.msgpack"]
    kept += ["pending.json"] if (cut / "pending.json").exists() else []  # a proposal in flight
    assert names == {f"compare/seed0/{n}" for n in kept} | {"compare/notes.md"}
    elsewhere = tmp_path / "elsewhere"
    with tarfile.open(out) as tar:
        tar.extractall(elsewhere, filter="data")
    calls = []
    counting = toy.replace(objective=lambda o: calls.append(1) or toy.objective(o))
    resumed = lso.run(key, counting, cfg, optimizer=grid, workdir=elsewhere / "compare" / "seed0",
                      progress=False)  # fmt: skip
    assert strip(resumed.records) == strip(full.records)
    # the 12 evaluations recorded before the interruption are replayed, not repeated
    assert len(calls) == sum(r["eval"] is not None for r in full.records[12:])
    assert resumed.summary["processes"] == 2  # the process log travelled with the run


def test_without_its_checkpoint_a_run_replays_from_the_start_and_a_complete_run_needs_none(tmp_path):
    toy = make_toy_task(jax.random.key(0))
    cfg = LSOConfig(budget=10, retrain_every=4, batch_size=16)
    key = jax.random.key(3)
    grid = lso.grid_optimizer(toy)
    full = lso.run(key, toy, cfg, optimizer=grid, workdir=tmp_path / "runs" / "done", progress=False)

    def interrupt(event, payload):
        if event == "record" and payload["seq"] == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        lso.run(key, toy, cfg, optimizer=grid, workdir=tmp_path / "runs" / "cut", progress=False,
                callbacks=[interrupt])  # fmt: skip
    out = tmp_path / "runs.tar.gz"
    pack_runs.main([str(tmp_path / "runs"), str(out), "--checkpoint-limit-mb", "0"])
    names = set(tarfile.open(out).getnames())
    assert not any("checkpoints" in n for n in names)  # over the limit, and the complete run needs none
    assert "runs/done/summary.json" in names
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "elsewhere", filter="data")
    calls = []
    counting = toy.replace(objective=lambda o: calls.append(1) or toy.objective(o))
    resumed = lso.run(key, counting, cfg, optimizer=grid, workdir=tmp_path / "elsewhere" / "runs" / "cut",
                      progress=False)  # fmt: skip
    assert strip(resumed.records) == strip(full.records)
    assert len(calls) == sum(r["eval"] is not None for r in full.records[7:])
