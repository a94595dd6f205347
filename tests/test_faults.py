"""Fault injection: damaged files, hung and misbehaving objectives, a second writer, CLI misuse.

Each test reproduces a failure measured in issue 14 and checks the recovery (or the refusal,
with a message that names the file and what to do) against an uninterrupted run.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import ablation
from experiments import plot as plot_cli
from experiments import run as run_cli
from wrjax import loop as lso
from wrjax.loop import LSOConfig
from wrjax.loop.run import RunError, RunLockedError, _call_objective
from wrjax.tasks.toy import make_toy_task

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy():
    return make_toy_task(jax.random.key(0))


def strip(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


CFG = LSOConfig(budget=8, retrain_every=3, batch_size=16)
KEY = 7


def _run(task, workdir, cfg=CFG, **kw):
    return lso.run(jax.random.key(KEY), task, cfg, optimizer=lso.grid_optimizer(task), workdir=workdir,
                   progress=False, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def full(toy, tmp_path_factory):
    """An uninterrupted run (budget 8, retrain every 3: checkpoints cycle_000..cycle_002)."""
    d = tmp_path_factory.mktemp("full")
    res = _run(toy, d)
    assert sorted(p.name for p in (d / "checkpoints").glob("*.msgpack")) == [
        "cycle_000.msgpack", "cycle_001.msgpack", "cycle_002.msgpack"]  # fmt: skip
    return d, res


def _copy(full, tmp_path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(full[0], d)
    (d / "summary.json").unlink()
    return d


# ---- 1. setting directories ------------------------------------------------------------------


def test_runs_differing_in_budget_or_preset_get_their_own_directories(tmp_path):
    """The README's ``--preset paper`` after the quick start used to hit the quick start's dir."""
    run_cli.main(["toy", "--budget", "2", "--retrain-every", "2", "--workdir", str(tmp_path),
                  "--no-progress", "--no-plot"])  # fmt: skip
    # Same k and retrain interval, another budget: formerly "different config (fields ['budget'])".
    run_cli.main(["toy", "--budget", "3", "--retrain-every", "2", "--workdir", str(tmp_path),
                  "--no-progress", "--no-plot"])  # fmt: skip
    dirs = sorted(str(p.parent.parent.relative_to(tmp_path)) for p in tmp_path.glob("toy/*/*/seed0/summary.json"))
    assert dirs == ["toy/smoke-b2-grid/k1e-3_r2", "toy/smoke-b3-grid/k1e-3_r2"]
    base = {"k": 1e-3, "retrain_every": 2, "budget": 3}
    names = {run_cli.setting_dir(tmp_path, "toy", p, dict(base, **o))
             for p in ("smoke", "paper") for o in ({}, {"optimizer": "gp-ei"}, {"budget": 4})}
    assert len(names) == 6  # preset, optimiser and budget each change the directory


# ---- 2. single writer ------------------------------------------------------------------------


def test_a_second_process_on_the_same_run_is_refused_naming_the_holder(toy, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from wrjax.loop.run import _lock_workdir
            lock = _lock_workdir(Path({str(tmp_path)!r}))
            print("locked", flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE, cwd=REPO, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.time()
        with pytest.raises(RunLockedError, match=rf"in use by pid {holder.pid} on "):
            _run(toy, tmp_path)
        assert time.time() - t0 < 30  # at once, not after waiting for the holder
        assert not (tmp_path / "records.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (killed: the OS released its lock): the run proceeds.
    res = _run(toy, tmp_path, LSOConfig(budget=2, retrain_every=None, initial_finetune_epochs=0))
    assert res.status == "complete"


# ---- 3. crash-consistent files ---------------------------------------------------------------


def test_a_torn_last_record_is_cut_and_kept_aside(full, toy, tmp_path):
    d = _copy(full, tmp_path)
    path = d / "records.jsonl"
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    torn = data[: last_start + 25]  # the last line cut mid-way, no newline
    path.write_bytes(torn)
    with pytest.warns(UserWarning, match="torn last line"):
        res = _run(toy, d)
    assert strip(res.records) == strip(full[1].records)
    assert strip(lso.load_records(d)) == strip(full[1].records)  # no glued line, no copies
    assert (d / "records.jsonl.torn").read_bytes() == torn[last_start:] + b"\n"


def test_a_damaged_line_before_the_last_is_refused(full, toy, tmp_path):
    d = _copy(full, tmp_path)
    lines = (d / "records.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = b'{"seq": 2, "ev\n'
    (d / "records.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match="line 3 is not a JSON record"):
        _run(toy, d)


def test_records_shorter_than_the_checkpoint_are_refused_not_dropped(full, toy, tmp_path):
    d = _copy(full, tmp_path)
    seq = json.loads((d / "checkpoints" / "cycle_002.json").read_text())["seq"]
    lines = (d / "records.jsonl").read_text().splitlines(keepends=True)
    (d / "records.jsonl").write_text("".join(lines[: seq - 3]))
    before = (d / "records.jsonl").read_bytes()
    with pytest.raises(RunError, match=rf"has {seq - 3} records but checkpoint cycle_002.json .* records were lost"):
        _run(toy, d)
    assert (d / "records.jsonl").read_bytes() == before
    assert not (d / "summary.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "zero-bytes", "blob-missing", "json-missing", "json-corrupt"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(full, toy, tmp_path, damage):
    d = _copy(full, tmp_path)
    blob, meta = d / "checkpoints" / "cycle_002.msgpack", d / "checkpoints" / "cycle_002.json"
    if damage == "truncated":
        blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    elif damage == "zero-bytes":
        blob.write_bytes(b"")
    elif damage == "blob-missing":
        blob.unlink()
    elif damage == "json-missing":  # a kill between the blob's and the metadata's writes
        meta.unlink()
    else:
        meta.write_text(meta.read_text()[:40])
    name = "cycle_002.json" if damage.startswith("json") else "cycle_002.msgpack"
    calls = []
    counting = toy.replace(objective=lambda o: calls.append(1) or toy.objective(o))
    with pytest.warns(UserWarning, match=rf"{name}.*falling back to the previous checkpoint"):
        res = _run(counting, d)
    assert strip(res.records) == strip(full[1].records)
    assert calls == []  # every evaluation came from the log
    assert lso.load_records(d) == lso.load_records(full[0])  # the log is untouched


def test_a_corrupt_config_json_is_an_error_naming_it(full, toy, tmp_path):
    d = _copy(full, tmp_path)
    (d / "config.json").write_text('{"task": "toy", "bud')
    with pytest.raises(RunError, match=r"config.json is damaged"):
        _run(toy, d)


# ---- 4. the objective's contract -------------------------------------------------------------


class _Obj:
    def __init__(self, fn):
        self.objective = fn


@pytest.mark.parametrize(
    "value,status",
    [("5", "objective-error"), (True, "objective-error"), (np.bool_(True), "objective-error"),
     (np.array([1.0, 2.0]), "objective-error"), (np.zeros((0,)), "objective-error"),
     (1e39, "objective-error"), (-1e39, "objective-error"), (np.float64(4e38), "objective-error"),
     (None, "objective-error"), (float("inf"), "objective-error"), (b"5", "objective-error"),
     (3, "ok"), (np.int64(-2), "ok"), (np.float32(2.5), "ok"), (np.array([[1.5]]), "ok"), (3e38, "ok")],
)  # fmt: skip
def test_only_finite_float32_numbers_are_scores(value, status):
    got, score, error = _call_objective(_Obj(lambda o: value), None)
    assert got == status, error
    if status == "ok":
        assert score == float(np.asarray(value).reshape(()))
    else:
        assert score is None and error


def test_a_score_beyond_float32_does_not_break_the_run(toy, tmp_path):
    """1e39 was recorded ``ok``; the next retrain crashed, and so did every resume."""
    first = []

    def objective(o):
        if not first:
            first.append(toy.novelty_key(o))
            return 1e39
        return toy.objective(o)

    res = _run(toy.replace(objective=objective), tmp_path, LSOConfig(budget=5, retrain_every=2, batch_size=16))
    assert res.status == "complete"
    assert res.records[[r["key"] for r in res.records].index(first[0])]["status"] == "objective-error"
    assert np.isfinite(res.scores).all() and len(res.scores) == 4


def test_a_hung_objective_times_out_and_counts(toy, tmp_path):
    hang = []

    def objective(o):
        if not hang:
            hang.append(toy.novelty_key(o))
            time.sleep(30)
        return toy.objective(o)

    cfg = LSOConfig(budget=3, retrain_every=None, initial_finetune_epochs=0, objective_timeout=0.5)
    t0 = time.time()
    res = _run(toy.replace(objective=objective), tmp_path, cfg)
    assert time.time() - t0 < 25
    statuses = [r["status"] for r in res.records if r["eval"] is not None]
    assert statuses == ["objective-timeout", "ok", "ok"]
    assert res.summary["num_evaluations"] == 3 and res.summary["counts"]["objective-timeout"] == 1
    assert "objective_timeout" in json.loads((tmp_path / "config.json").read_text())
    assert "objective_timeout" not in LSOConfig().to_json()  # old runs' config.json still match


class Crash(BaseException):
    """Stands for the process dying inside the objective (a segfault, an OOM kill)."""


def test_a_point_that_took_the_process_down_is_not_called_again(toy, tmp_path):
    cfg = LSOConfig(budget=6, retrain_every=3, batch_size=16)
    evals = []

    def crashing(o):
        evals.append(toy.novelty_key(o))
        if len(evals) == 4:
            raise Crash
        return toy.objective(o)

    with pytest.raises(Crash):
        _run(toy.replace(objective=crashing), tmp_path, cfg)
    pending = json.loads((tmp_path / "pending.json").read_text())
    assert pending["key"] == evals[3] and pending["eval"] == 3
    called = []
    res = _run(toy.replace(objective=lambda o: called.append(toy.novelty_key(o)) or toy.objective(o)),
               tmp_path, cfg)  # fmt: skip
    assert evals[3] not in called
    crashed = [r for r in res.records if r["key"] == evals[3]]
    assert len(crashed) == 1 and crashed[0]["status"] == "objective-error"
    assert "never returned" in crashed[0]["error"]
    assert res.summary["num_evaluations"] == 6 and not (tmp_path / "pending.json").exists()


# ---- 5. the CLI ------------------------------------------------------------------------------


def _usage_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("usage:")
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "main,argv,expect",
    [(ablation.main, ["toy", "--preset", "bogus"], "invalid choice: 'bogus'"),
     (run_cli.main, ["toy", "--preset", "cpu"], "task 'toy' has no preset 'cpu'"),
     (run_cli.main, ["toy", "--k", "abc"], "--k: invalid float value"),
     (run_cli.main, ["toy", "--k", "-1", "--no-plot"], "LSOConfig.k must be > 0"),
     (run_cli.main, ["toy", "--budget", "0"], "--budget: must be an integer >= 1"),
     (plot_cli.main, ["x", "--metric", "top5"], "invalid choice: 'top5'")],
)  # fmt: skip
def test_user_errors_are_one_usage_line_with_exit_2(main, argv, expect, capsys, tmp_path):
    last = _usage_error(main, [*argv, "--workdir", str(tmp_path)] if main is not plot_cli.main else argv, capsys)
    assert expect in last


def test_plot_of_a_directory_without_runs_is_a_usage_error(tmp_path, capsys):
    assert "no seed*/summary.json under" in _usage_error(plot_cli.main, [str(tmp_path)], capsys)


def test_help_lists_the_presets(capsys):
    with pytest.raises(SystemExit):
        run_cli.main(["--help"])
    out = capsys.readouterr().out
    assert "toy: smoke, paper" in out and "capped-smoke" in out


def test_report_only_never_overwrites_a_table_with_an_empty_one(tmp_path, capsys):
    table = tmp_path / "toy" / "paper-b60-grid" / "ablation.md"
    table.parent.mkdir(parents=True)
    table.write_text("| a good table |\n")
    err = _usage_error(ablation.main, ["toy", "--report-only", "--workdir", str(tmp_path)], capsys)
    assert "no finished seeds" in err
    assert table.read_text() == "| a good table |\n"


# ---- 6. public API validation ----------------------------------------------------------------

import jax.numpy as jnp  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import wrjax  # noqa: E402
from wrjax._checks import K_MIN  # noqa: E402


@pytest.fixture(scope="module")
def fit_setup(toy):
    import optax

    step = wrjax.vae.make_train_step(toy.model, optax.adam(1e-3), likelihood=toy.likelihood)
    state = wrjax.init_train_state(toy.params, optax.adam(1e-3))
    return step, state, np.asarray(toy.x[:20])


@pytest.mark.parametrize(
    "weights,match",
    [(np.ones(10), r"one entry per data row: shape \(20,\), got \(10,\)"),
     (np.ones(40), r"shape \(20,\), got \(40,\)"),
     (np.zeros(20), "all zero"),
     (np.r_[np.ones(19), -1.0], ">= 0"),
     (np.r_[np.ones(19), np.nan], "finite"),
     (np.ones((20, 1)), "one entry per data row"),
     # positive in float64, but 0 in float32 (found by hypothesis: weights 1.6e-140 gave NaN
     # loss weights before fit refused them)
     (np.full(20, 1.6e-140), "below float32's smallest normal")],
)  # fmt: skip
def test_fit_rejects_weights_that_do_not_fit_the_data(fit_setup, weights, match):
    step, state, x = fit_setup
    with pytest.raises(ValueError, match=match):
        wrjax.fit(jax.random.key(0), state, step, x, weights, num_steps=2, batch_size=4)


def test_fit_with_weights_zero_only_on_masked_rows_trains(fit_setup):
    step, state, x = fit_setup
    mask = np.arange(20) < 15
    w = np.where(mask, 1.0, 0.0)
    new, info = wrjax.fit(jax.random.key(0), state, step, x, w, num_steps=2, batch_size=4, mask=mask)
    assert np.isfinite(np.asarray(info.loss)).all()
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(new.params))


def test_rank_weights_of_wide_integer_scores_keep_the_order():
    s = np.array([2**40, 2**40 + 2**20, 5, -(2**35)], np.int64)  # beyond int32
    w = np.asarray(wrjax.rank_weights(s, k=1e-3))
    assert list(np.argsort(-w)) == [1, 0, 2, 3]
    np.testing.assert_allclose(w, np.asarray(wrjax.rank_weights(s.astype(np.float64), k=1e-3)))
    for dt in (np.int8, np.uint16, np.int32, np.uint64):
        w = np.asarray(wrjax.rank_weights(np.array([3, 1, 2], dt), k=1.0))
        assert list(np.argsort(-w)) == [0, 2, 1]


@pytest.mark.parametrize("k", ["1e-3", "abc", True, 0, -1.0, float("nan"), 1e-45, 1e-39, np.array([1.0, 2.0])])
def test_bad_k_is_rejected(k):
    with pytest.raises(ValueError, match="k must"):
        wrjax.rank_weights([1.0, 2.0, 3.0], k=k)
    with pytest.raises(ValueError, match="k must"):
        LSOConfig(k=k)


def test_the_smallest_accepted_k_gives_finite_weights():
    for n in (1, 2, 1000):
        w = np.asarray(wrjax.rank_weights(np.arange(n, dtype=np.float32), k=K_MIN))
        assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0) and w[-1] == pytest.approx(1.0)
    assert np.isfinite(np.asarray(wrjax.rank_weights([1.0, 2.0], k=np.float32(1e-30)))).all()


def test_a_nan_score_under_jit_gives_nan_weights_not_the_best_weight():
    w = jax.jit(lambda s: wrjax.rank_weights(s, k=1e-3))(jnp.array([1.0, jnp.nan, 3.0]))
    assert np.isnan(np.asarray(w)).all()
    masked = jax.jit(lambda s, m: wrjax.rank_weights(s, 1e-3, m))(jnp.array([1.0, jnp.nan, 3.0]),
                                                                  jnp.array([True, False, True]))
    assert np.isfinite(np.asarray(masked)).all() and float(masked[1]) == 0.0


hostile_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=hnp.arrays(np.float64, st.integers(1, 30), elements=hostile_floats),
       k=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3), st.booleans()))
def test_rank_weights_on_hostile_inputs_are_weights_or_a_valueerror(s, k):
    """Never NaN, never an exception other than ValueError: a valid distribution or a refusal."""
    valid_k = not isinstance(k, (str, bool)) and not np.isnan(k) and k >= K_MIN
    valid_s = np.isfinite(s).all() and (np.abs(s) <= np.finfo(np.float32).max).all()
    if not (valid_k and valid_s):
        with pytest.raises(ValueError):
            wrjax.rank_weights(s, k=k)
        return
    w = np.asarray(wrjax.rank_weights(s, k=k))
    assert np.isfinite(w).all() and (w >= 0).all() and w.sum() == pytest.approx(1.0, rel=1e-5)
    order = np.argsort(-s, kind="stable")
    assert (np.diff(w[order]) <= 1e-7).all()  # a higher score never gets less weight


@settings(max_examples=40, deadline=None)
@example(w=np.array([1.58941663e-140]), n=1, batch=1, mode="epoch")
@given(w=hnp.arrays(np.float64, st.integers(1, 12), elements=hostile_floats),
       n=st.integers(1, 12), batch=st.integers(1, 6), mode=st.sampled_from(["sample", "epoch"]))
def test_weighted_batches_on_hostile_weights_are_in_range_or_a_valueerror(w, n, batch, mode):
    from wrjax.resampling import weighted_batches

    try:
        wrjax._checks.check_weights(w, n)
    except ValueError:
        return  # refused at the public boundary (fit)
    plan = weighted_batches(jax.random.key(0), jnp.asarray(w, jnp.float32), num_steps=3, batch_size=batch,
                            mode=mode)  # fmt: skip
    idx = np.asarray(plan.indices)
    assert idx.shape == (3, batch) and (idx >= 0).all() and (idx < n).all()
    assert np.isfinite(np.asarray(plan.loss_weights)).all()
    assert (w[idx.ravel()] > 0).all() or mode == "epoch"  # sampling never draws a zero-weight row


# ---- 7. kill -9 at random moments (slow) -----------------------------------------------------

_CHILD = """
import sys, jax
from wrjax import loop as lso
from wrjax.loop import LSOConfig
from wrjax.tasks.toy import make_toy_task
toy = make_toy_task(jax.random.key(0))
cfg = LSOConfig(budget=12, retrain_every=4, batch_size=16)
print("start", flush=True)
lso.run(jax.random.key(3), toy, cfg, optimizer=lso.grid_optimizer(toy), workdir=sys.argv[1], progress=False)
print("done", flush=True)
"""


def _child(workdir):
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(workdir)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_identical_records(tmp_path):
    """20 SIGKILLs at random moments of a toy run, each followed by a resume: the final
    records equal an uninterrupted run's, and no evaluation is lost or doubled."""
    ref = _child(tmp_path / "ref")
    assert ref.stdout.readline().strip() == "start"
    t0 = time.time()
    assert ref.communicate(timeout=600)[0].split() == ["done"]
    duration = time.time() - t0  # kill anywhere in a run's life (compiling, training, querying)
    expected = strip(lso.load_records(tmp_path / "ref"))
    rng = np.random.default_rng(14)
    rounds, kills = 0, 0
    work = tmp_path / "cut0"
    while kills < 20:
        p = _child(work)
        assert p.stdout.readline().strip() == "start"  # jax imported, the run is starting
        time.sleep(float(rng.uniform(0.0, duration)))
        if p.poll() is None:
            os.kill(p.pid, 9)
            p.wait()
            kills += 1
            continue
        assert p.communicate()[0].split() == ["done"]  # the run completed before this kill
        assert strip(lso.load_records(work)) == expected
        rounds += 1
        work = tmp_path / f"cut{rounds}"
    while _child(work).communicate(timeout=600)[0].split() != ["start", "done"]:
        pass
    assert strip(lso.load_records(work)) == expected
    assert json.loads((work / "summary.json").read_text())["num_evaluations"] == 12
    print(f"{kills} kills survived over {rounds + 1} runs (a run: {duration:.0f} s); records identical")


def test_tables_mark_stalled_seeds():
    from experiments.run import format_table

    base = {"final": {"top1": 1.0, "top10": None, "top50": None}, "num_evaluations": 3,
            "counts": {"invalid": 0, "duplicate": 4}, "seconds": 1.0}  # fmt: skip
    table = format_table([dict(base, setting="k1e-3_r5", status="complete"),
                          dict(base, setting="k1e-3_r5", status="stalled"),
                          dict(base, setting="kinf_rnever", status="complete")])  # fmt: skip
    assert "| k1e-3_r5 (1 stalled) | 2 |" in table
    assert "| kinf_rnever | 1 |" in table
    # time per seed: a resumed run's summary seconds (all its processes), not the last
    # process's wall clock
    resumed = dict(base, setting="s", status="complete", seconds=300.0, processes=2, wall_seconds=40.0)
    fresh = dict(base, setting="s", status="complete", wall_seconds=100.0)
    assert "| 200 | n/a |" in format_table([resumed, fresh])


def test_process_log_with_a_torn_line_keeps_the_whole_ones(tmp_path):
    from wrjax.loop.records import PROCESSES_FILE, append_process_start, load_process_starts

    append_process_start(tmp_path, 30.0, 5)
    append_process_start(tmp_path, 10.0, 0)
    with open(tmp_path / PROCESSES_FILE, "a") as f:
        f.write('{"start": 50.0, "ev')  # killed mid-write
    assert load_process_starts(tmp_path) == [10.0, 30.0]
    assert load_process_starts(tmp_path / "missing") == []


def test_progress_bar_says_what_it_waits_for(tmp_path, capsys):
    import jax

    from wrjax import loop as lso
    from wrjax.tasks.toy import make_toy_task

    toy = make_toy_task(jax.random.key(0))
    cfg = lso.LSOConfig(budget=2, retrain_every=None, batch_size=16)
    lso.run(jax.random.key(0), toy, cfg, optimizer=lso.grid_optimizer(toy), workdir=tmp_path,
            progress=True)  # fmt: skip
    err = capsys.readouterr().err
    assert "fine-tuning" in err and "compiling" in err and "querying" in err


def test_ablation_defaults_to_the_same_preset_as_run(tmp_path, capsys):
    """Without --preset, ablation looks where run (default: smoke) writes."""
    err = _usage_error(ablation.main, ["toy", "--report-only", "--workdir", str(tmp_path)], capsys)
    assert "toy/smoke-b" in err


def test_a_stalled_run_says_why_and_is_marked(tmp_path):
    """An optimiser with nothing to propose: the warning names that cause (not "0 discarded
    suggestions"), and the summary says stalled."""
    import jax
    import numpy as np

    from wrjax import loop as lso
    from wrjax.loop import Optimizer, Proposal
    from wrjax.tasks.toy import make_toy_task

    toy = make_toy_task(jax.random.key(0))
    empty = Optimizer(lambda ctx: None,
                      lambda key, state, ctx: (Proposal(np.zeros((0, 2), np.float32), []), state),
                      "empty")  # fmt: skip
    cfg = lso.LSOConfig(budget=3, retrain_every=None, initial_finetune_epochs=0)
    with pytest.warns(UserWarning) as rec:
        res = lso.run(jax.random.key(0), toy, cfg, optimizer=empty, workdir=tmp_path, progress=False)
    msgs = [str(w.message) for w in rec]
    assert any("nothing left to propose" in m for m in msgs)
    assert not any("0 discarded" in m for m in msgs)
    assert res.status == "stalled" and res.summary["status"] == "stalled"
