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


def _lines(path: Path) -> list[str]:
    """The records as written, wall times included."""
    rec = path / "records.jsonl"
    return rec.read_text().splitlines() if rec.exists() else []


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


def test_jobs_get_an_absolute_workdir(tmp_path, monkeypatch):
    """A Ray worker runs in the folder where its cluster's `ray start` ran: a relative
    --workdir would put the runs there and leave the sweep's report with no finished seeds."""
    monkeypatch.chdir(tmp_path)
    args, preset = sweep.parse_args(ARGS + ["--workdir", "rel/sweep"])
    jobs = sweep.jobs_of(args, preset)
    assert len(jobs) == 8 and {j[-1] for j in jobs} == {str(tmp_path / "rel" / "sweep")}


def test_num_cpus_is_for_a_local_ray_instance():
    with pytest.raises(SystemExit) as e:
        sweep.main(["toy", "--engine", "local", "--address", "auto", "--num-cpus", "2"])
    assert e.value.code == 2


# ---- the Ray engine (only where Ray is installed: pip install -e ".[sweep]") ----------------

GRID = [(math.inf, None), (math.inf, 3), (1e-3, None), (1e-3, 3)]  # the sweep's four settings
RAY_ARGS = ARGS[:-4] + ["--engine", "ray", "--num-cpus", "2"]  # a 2-CPU local Ray instance
# ray.init in this process starts Ray's servers by fork+exec, after JAX started its threads
IN_PROCESS_RAY = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def _run_dirs(workdir: Path) -> list[Path]:
    return [setting_dir(workdir, "toy", "smoke", {"budget": 6, "k": k, "retrain_every": r})
            / f"seed{s}" for k, r in GRID for s in (0, 1)]  # fmt: skip


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The grid's eight runs one after another in this process: the records to match."""
    pytest.importorskip("ray")
    work = tmp_path_factory.mktemp("sequential")
    cache: dict = {}
    for k, r in GRID:
        run_setting("toy", "smoke", {"budget": 6, "k": k, "retrain_every": r}, [0, 1], work,
                    progress=False, task_cache=cache)  # fmt: skip
    return work


@IN_PROCESS_RAY
def test_ray_sweep_asks_no_more_than_the_local_instance_has():
    pytest.importorskip("ray")
    with pytest.raises(SystemExit, match="asks for 1.0 GPUs"):
        sweep.main(["toy", "--engine", "ray", "--num-cpus", "1", "--gpus-per-run", "1",
                    "--workdir", "unused"])  # fmt: skip


@pytest.mark.slow
@IN_PROCESS_RAY
def test_ray_sweep_equals_sequential_runs(tmp_path, sequential):
    pytest.importorskip("ray")
    table = sweep.main(RAY_ARGS + ["--workdir", str(tmp_path)])
    assert "k1e-3_r3" in table and "kinf_rnever" in table
    for a, b in zip(_run_dirs(tmp_path), _run_dirs(sequential)):
        assert _records(a) == _records(b), a
    assert (_run_dirs(tmp_path)[0].parents[1] / "ablation.md").exists()


@pytest.mark.slow
def test_ray_sweep_survives_a_killed_worker(tmp_path, sequential):
    """SIGKILL the Ray workers running jobs mid-run: Ray retries the jobs (max_retries), each
    resumes from its checkpoint, and the sweep ends with the records of sequential runs; every
    record written before the kill is kept as written (no evaluation repeated)."""
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")  # a dependency of Ray's
    cmd = [sys.executable, "-m", "experiments.sweep", *RAY_ARGS, "--workdir", str(tmp_path)]
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    dirs = _run_dirs(tmp_path)
    try:
        deadline = time.time() + 300
        while len(_lines(dirs[0])) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert len(_lines(dirs[0])) >= 2, (tmp_path / "sweep.log").read_text()
        # the workers running a job: descendants of the sweep (via its raylet) titled ray::run_job
        workers = []
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                if " ".join(p.cmdline()).startswith("ray::run_job"):
                    workers.append(p)
            except psutil.NoSuchProcess:
                pass
        assert workers
        for w in workers:
            w.kill()
        psutil.wait_procs(workers, timeout=30)
        before = [_lines(d) for d in dirs]
        assert 2 <= len(before[0]) < 6  # the first run was cut mid-run
        assert proc.wait(timeout=600) == 0, (tmp_path / "sweep.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    for d, ref, old in zip(dirs, _run_dirs(sequential), before):
        assert _records(d) == _records(ref), d
        assert _lines(d)[: len(old)] == old, d  # the lines from before the kill, wall times too
        assert not (d / "records.orphaned.jsonl").exists()
