"""The sweep engine: parallel jobs give the records of sequential runs; a killed worker's job
resumes without repeating evaluations."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import sweep
from experiments.run import run_setting, setting_dir


def _records(path: Path):
    return [{k: v for k, v in json.loads(x).items() if k != "wall_time"}
            for x in (path / "records.jsonl").read_text().splitlines()]  # fmt: skip


ARGS = ["toy", "--preset", "smoke", "--budget", "6", "--retrain-every", "3", "--seeds", "0", "1",
        "--engine", "local", "--workers", "2"]  # fmt: skip


def test_local_sweep_equals_sequential_runs(tmp_path):
    table = sweep.main(ARGS + ["--workdir", str(tmp_path / "sweep")])
    assert "k1e-3_r3" in table and "kinf_rnever" in table
    over = {"budget": 6}
    for k, r in [(math.inf, None), (math.inf, 3), (1e-3, None), (1e-3, 3)]:
        o = dict(over, k=k, retrain_every=r)
        run_setting("toy", "smoke", o, [1], tmp_path / "seq", progress=False)
        a = setting_dir(tmp_path / "sweep", "toy", "smoke", o) / "seed1"
        b = setting_dir(tmp_path / "seq", "toy", "smoke", o) / "seed1"
        assert _records(a) == _records(b)
    assert (setting_dir(tmp_path / "sweep", "toy", "smoke", dict(over, k=1e-3, retrain_every=3))
            .parent / "ablation.md").exists()  # fmt: skip


@pytest.mark.slow
def test_sweep_resumes_after_a_killed_worker(tmp_path):
    """Kill the whole sweep (its workers too) mid-run, start it again: the records equal an
    uninterrupted sweep's, and no evaluation recorded before the kill is repeated."""
    args = ARGS[:-4] + ["--engine", "local", "--workers", "1", "--workdir", str(tmp_path / "cut")]
    cmd = [sys.executable, "-m", "experiments.sweep", *args]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    first = setting_dir(tmp_path / "cut", "toy", "smoke", {"budget": 6, "k": math.inf,
                                                           "retrain_every": None}) / "seed0"  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:
        rec = first / "records.jsonl"
        if rec.exists() and len(rec.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _records(first)
    assert len(before) >= 2
    sweep.main(args)
    sweep.main(ARGS[:-4] + ["--engine", "local", "--workers", "1", "--workdir", str(tmp_path / "full")])
    full = setting_dir(tmp_path / "full", "toy", "smoke", {"budget": 6, "k": math.inf,
                                                           "retrain_every": None}) / "seed0"  # fmt: skip
    assert _records(first) == _records(full)
    assert _records(first)[: len(before)] == before


def test_ray_engine_without_ray_is_a_usage_error():
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit) as e:
            sweep.main(["toy", "--engine", "ray"])
        assert e.value.code == 2
    else:
        pytest.skip("Ray is installed: the usage error cannot occur")
