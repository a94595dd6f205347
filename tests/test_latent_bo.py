"""The optimisers beyond global EI in the loop: they run to the budget and resume
exactly after an interruption (records identical to an uninterrupted run)."""

import json

import jax
import numpy as np
import pytest

from wrjax import latent_bo
from wrjax import loop as lso
from wrjax import trust_region as tr
from wrjax.bo import AcquisitionConfig, GPFitConfig
from wrjax.loop import LSOConfig
from wrjax.tasks.toy import make_toy_task

FIT = GPFitConfig(num_inducing=8, n_best=40, n_random=40, cold_kernel_steps=20, cold_steps=20,
                  warm_steps=5, kmeans_iters=3)  # fmt: skip
ACQ = AcquisitionConfig(num_restarts=6, num_random_starts=3, ascent_steps=20)


@pytest.fixture(scope="module")
def toy():
    return make_toy_task(jax.random.key(0))


def _optimizers(toy):
    def ones(task, rows):
        return np.asarray(rows).sum(axis=1)

    return {
        "random": latent_bo.make_random_search(ACQ, num_candidates=16),
        "thompson": latent_bo.make_thompson(FIT, ACQ, num_candidates=64, q=4),
        "tr-ei": latent_bo.make_trust_region(len(toy.y), FIT, ACQ),
        "tr-ts": latent_bo.make_trust_region(len(toy.y), FIT, ACQ, method="thompson",
                                             num_candidates=64),  # fmt: skip
        "cei": latent_bo.make_constrained_ei(ones, 7.0, FIT, ACQ),
    }


def strip(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", ["random", "thompson", "tr-ei", "tr-ts", "cei"])
def test_optimizer_runs_and_resumes_exactly(toy, tmp_path, name):
    opt = _optimizers(toy)[name]
    cfg = LSOConfig(budget=8, retrain_every=4, batch_size=16, finetune_steps=2,
                    initial_finetune_epochs=0.1)  # fmt: skip
    key = jax.random.key(5)
    full = lso.run(key, toy, cfg, optimizer=opt, workdir=tmp_path / "full", progress=False)
    assert sum(r["eval"] is not None for r in full.records) == 8

    def interrupt(event, payload):
        if event == "record" and payload["seq"] == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        lso.run(key, toy, cfg, optimizer=opt, workdir=tmp_path / "cut", progress=False,
                callbacks=[interrupt])  # fmt: skip
    resumed = lso.run(key, toy, cfg, optimizer=opt, workdir=tmp_path / "cut", progress=False)
    assert strip(resumed.records) == strip(full.records)


def test_trust_region_init_replays_the_evaluations(toy):
    """init's replay of TuRBO's rule equals stepping the rule over the same scores live."""
    opt = latent_bo.make_trust_region(3, FIT, ACQ)
    y = np.array([1.0, 2.0, 0.5, 3.0, 2.5, 2.0, 4.0, 0.0], np.float32)
    mask = np.ones(8, bool)
    ctx = lso.ProposeContext(
        z=np.arange(16, dtype=np.float32).reshape(8, 2), y=y, mask=mask, in_cycle=~mask,
        x=np.zeros((8, 1)), params=None, cycle=0, cycle_start=True, remaining=1,
        include_capacity=1,
    )  # fmt: skip
    state = opt.init(ctx)
    cfg = tr.TrustRegionConfig()
    want = tr.init(np.zeros(2, np.float32), 2.0, cfg)
    for s in y[3:]:
        want = tr.update(want, cfg, batch_best=np.float32(s), batch_best_point=want.center)
    assert float(state.region.length) == float(want.length)
    assert int(state.region.successes) == int(want.successes) == 0
    assert int(state.region.failures) == int(want.failures) == 1  # 3 s, 2.5 f, 2 f, 4 s, 0 f
    np.testing.assert_array_equal(state.region.center, [12.0, 13.0])  # the best row's z
    assert state.rows_seen == 8


def test_factories_validate():
    with pytest.raises(ValueError):
        latent_bo.make_random_search(num_candidates=0)
    with pytest.raises(ValueError):
        latent_bo.make_thompson(q=5, num_candidates=4)
    with pytest.raises(ValueError):
        latent_bo.make_trust_region(10, method="ucb")


def test_compare_optimizers_writes_one_table(tmp_path):
    from experiments import compare_optimizers

    text = compare_optimizers.main(["toy", "--preset", "smoke", "--budget", "3", "--optimizers",
                                    "random", "--no-plain", "--workdir", str(tmp_path),
                                    "--no-progress"])  # fmt: skip
    assert "| WR + random | 1 |" in text
    table = (tmp_path / "compare" / "toy" / "smoke" / "compare.md").read_text()
    assert table == text
    runs = list((tmp_path / "compare" / "toy" / "smoke" / "random").rglob("records.jsonl"))
    assert len(runs) == 1
    with pytest.raises(SystemExit):
        compare_optimizers.main(["toy", "--preset", "bogus"])


def test_compare_optimizers_plain_row_uses_the_presets_optimizer_and_rereads_finished_seeds(
        tmp_path, monkeypatch):  # fmt: skip
    from experiments import compare_optimizers
    from experiments import run as run_cli

    argv = ["toy", "--preset", "smoke", "--budget", "3", "--optimizers", "random",
            "--workdir", str(tmp_path), "--no-progress"]  # fmt: skip
    first = compare_optimizers.main(argv)
    root = tmp_path / "compare" / "toy" / "smoke"
    # the toy preset's optimiser is the grid: the plain row is grid LSO without weighting
    (plain,) = (root / "plain").rglob("summary.json")
    assert json.loads(plain.read_text())["config"]["optimizer"] == "grid"

    def no_run(*a, **k):
        raise AssertionError("a finished seed was run again")

    monkeypatch.setattr(run_cli, "run", no_run)
    again = compare_optimizers.main(argv)  # every seed is complete: read back, nothing runs
    strip = lambda t: [line.rsplit("|", 3)[0] for line in t.splitlines()]  # noqa: E731
    assert strip(again) == strip(first)
    assert strip(compare_optimizers.main(argv + ["--report-only"])) == strip(first)
    only = compare_optimizers.main(argv + ["--plain-only"])  # read back too: run is patched out
    assert "plain LSO" in only and "WR + random" not in only
    with pytest.raises(SystemExit):
        compare_optimizers.main(argv + ["--plain-only", "--no-plain"])
    (random_summary,) = (root / "random").rglob("summary.json")
    moved = random_summary.with_name("summary.json.away")
    random_summary.rename(moved)  # an unfinished seed: report-only leaves its row out
    partial = compare_optimizers.main(argv + ["--report-only"])
    assert "plain LSO" in partial and "WR + random" not in partial
    moved.rename(random_summary)
    # a stalled run is finished too (its replay stalls at the same place): read back
    summary = json.loads(plain.read_text())
    plain.write_text(json.dumps(dict(summary, status="stalled")))
    assert "plain LSO (1 stalled)" in compare_optimizers.main(argv)
    # a summary of another configuration, or of no known status, is not reused: run decides
    plain.write_text(json.dumps(dict(summary, status="running")))
    with pytest.raises(AssertionError, match="run again"):
        compare_optimizers.main(argv)
    plain.write_text(json.dumps(dict(summary, config=dict(summary["config"], budget=4))))
    with pytest.raises(AssertionError, match="run again"):
        compare_optimizers.main(argv)


@pytest.mark.parametrize("counts", [True, False])
def test_a_discarded_proposal_is_a_failure_of_the_trust_region(counts):
    """Two proposals with no new row between them (the first one's candidates were all
    discarded): the second sees one more TuRBO failure, unless ``discard_is_failure=False``."""
    rng = np.random.default_rng(0)
    n = 48
    y = rng.normal(size=n).astype(np.float32)
    mask = np.ones(n, bool)
    ctx = lso.ProposeContext(
        z=rng.normal(size=(n, 2)).astype(np.float32), y=y, mask=mask, in_cycle=np.zeros(n, bool),
        x=np.zeros((n, 1)), params=None, cycle=0, cycle_start=True, remaining=5,
        include_capacity=1,
    )  # fmt: skip
    opt = latent_bo.make_trust_region(40, FIT, ACQ, discard_is_failure=counts)
    state = opt.init(ctx)
    before = int(state.region.failures)
    _, state = opt.propose(jax.random.key(0), state, ctx)
    assert int(state.region.failures) == before  # the first proposal has nothing to judge
    _, state = opt.propose(jax.random.key(1), state, ctx._replace(cycle_start=False))
    assert int(state.region.failures) == before + counts
    # a TuRBO failure count reaching the tolerance halves the side, as for evaluations
    cfg = tr.TrustRegionConfig()
    length = float(state.region.length)
    for i in range(cfg.failures_allowed(2) - int(state.region.failures)):
        _, state = opt.propose(jax.random.key(2 + i), state, ctx._replace(cycle_start=False))
    assert float(state.region.length) == (length / 2 if counts else length)


def test_discards_restart_the_region_away_from_the_incumbent():
    """After ``restart_after_discards`` proposals in a row with no new row, the region restarts
    (TuRBO's restart) at a point of the global box other than the incumbent, with no incumbent of
    its own; the next scored row, even one below the buffer's best, becomes its centre."""
    rng = np.random.default_rng(1)
    n = 48
    y = rng.normal(size=n).astype(np.float32)
    z = rng.normal(size=(n, 2)).astype(np.float32)
    mask = np.zeros(n + 1, bool)
    mask[:n] = True
    zz = np.concatenate([z, np.zeros((1, 2), np.float32)])
    yy = np.concatenate([y, [0.0]]).astype(np.float32)
    ctx = lso.ProposeContext(
        z=zz, y=yy, mask=mask, in_cycle=np.zeros(n + 1, bool), x=np.zeros((n + 1, 1)),
        params=None, cycle=0, cycle_start=True, remaining=9, include_capacity=1,
    )  # fmt: skip
    opt = latent_bo.make_trust_region(40, FIT, ACQ, restart_after_discards=3)
    state = opt.init(ctx)
    incumbent = z[np.argmax(y)]
    np.testing.assert_array_equal(state.region.center, incumbent)
    ctx = ctx._replace(cycle_start=False)
    for i in range(3):  # the first proposal, then two discarded ones: no restart yet
        _, state = opt.propose(jax.random.key(i), state, ctx)
        assert int(state.region.restarts) == 0 and state.discards == i
    _, state = opt.propose(jax.random.key(3), state, ctx)  # the third discard in a row
    reg = state.region
    assert int(reg.restarts) == 1 and state.discards == 0
    assert float(reg.length) == np.float32(tr.TrustRegionConfig().init_length)
    assert float(reg.best) == -np.inf and int(reg.failures) == 0
    box = latent_bo._box(zz, mask, ACQ)
    assert np.all(reg.center >= box[0]) and np.all(reg.center <= box[1])
    assert np.linalg.norm(np.asarray(reg.center) - incumbent) > 1e-3
    # a new row scoring below the buffer's best: the restarted region takes it as incumbent
    worst = float(y.min()) - 1.0
    new_z = np.array([0.25, -0.5], np.float32)
    zz2, yy2, mask2 = zz.copy(), yy.copy(), mask.copy()
    zz2[n], yy2[n], mask2[n] = new_z, worst, True
    _, state = opt.propose(jax.random.key(4), state, ctx._replace(z=zz2, y=yy2, mask=mask2))
    np.testing.assert_array_equal(state.region.center, new_z)
    assert float(state.region.best) == np.float32(worst) and int(state.region.successes) == 1


def test_without_restarts_discards_never_move_the_region():
    rng = np.random.default_rng(2)
    n = 48
    z, y = rng.normal(size=(n, 2)).astype(np.float32), rng.normal(size=n).astype(np.float32)
    ctx = lso.ProposeContext(
        z=z, y=y, mask=np.ones(n, bool), in_cycle=np.zeros(n, bool), x=np.zeros((n, 1)),
        params=None, cycle=0, cycle_start=True, remaining=9, include_capacity=1,
    )  # fmt: skip
    opt = latent_bo.make_trust_region(40, FIT, ACQ, restart_after_discards=None)
    state = opt.init(ctx)
    for i in range(12):
        _, state = opt.propose(jax.random.key(i), state, ctx._replace(cycle_start=i == 0))
    np.testing.assert_array_equal(state.region.center, z[np.argmax(y)])
    assert int(state.region.restarts) == 0 and state.discards == 11
    with pytest.raises(ValueError, match="restart_after_discards"):
        latent_bo.make_trust_region(40, restart_after_discards=0)


def test_compare_refit_reads_the_directories_experiments_run_writes(tmp_path):
    from experiments import compare_refit
    from experiments import run as run_cli

    # experiments.run --k 1e-3 --retrain-every 50 --gp-refit R (the RESULTS commands) and
    # compare_refit's rows name the same run directory, for each schedule
    for r in ("every-query", "every-query-converged", "incremental"):
        cli = run_cli.setting_dir(tmp_path, "expressions", "cpu",
                                  {"k": 1e-3, "retrain_every": 50, "refit": r})
        ours = run_cli.setting_dir(tmp_path, "expressions", "cpu", {"optimizer": "gp-ei", "refit": r})
        assert cli == ours and cli.parent.name == f"cpu-b500-gp-ei-{r}"
    with pytest.raises(SystemExit):  # nothing finished: no empty table written
        compare_refit.main(["expressions", "--preset", "cpu", "--workdir", str(tmp_path), "--report-only"])
    assert not list(tmp_path.rglob("*.md"))
    with pytest.raises(SystemExit):
        compare_refit.main(["toy", "--optimizer", "random"])
    with pytest.raises(SystemExit, match="2"):  # the incremental schedule is gp-ei's only
        compare_refit.parse_args(["toy", "--optimizer", "thompson"])
    args = compare_refit.parse_args(["toy", "--optimizer", "thompson", "--schedules", "every-query",
                                     "every-query-converged"])  # fmt: skip
    assert args.schedules == ["every-query", "every-query-converged"]


@pytest.mark.slow  # 60-150 s: two toy runs, each compiling its GP programs
def test_compare_refit_runs_both_schedules_and_reads_experiments_run_dirs(tmp_path, monkeypatch):
    import dataclasses

    from experiments import compare_refit, tasks
    from experiments import run as run_cli
    from experiments.configs import tiny_gp

    get_config = tasks.get_config  # the toy presets carry no GP: give them the smoke runs' one
    monkeypatch.setattr(tasks, "get_config",
                        lambda task, preset: dataclasses.replace(get_config(task, preset), bo=tiny_gp()))
    argv = ["toy", "--preset", "smoke", "--budget", "3", "--workdir", str(tmp_path), "--no-progress"]
    first = compare_refit.main(argv)
    assert "| WR + gp-ei, every-query | 1 |" in first and "| WR + gp-ei, incremental | 1 |" in first
    got = {}
    for path in tmp_path.rglob("summary.json"):
        cfg = json.loads(path.read_text())["config"]
        # an every-query config leaves the incremental fields out (older summaries compare equal)
        got[cfg["optimizer_config"]["fit"].get("refit", "every-query")] = path
    assert sorted(got) == ["every-query", "incremental"]
    # the same directories experiments.run gives the command line's --gp-refit
    assert got["incremental"].parent == run_cli.setting_dir(
        tmp_path, "toy", "smoke", {"budget": 3, "optimizer": "gp-ei", "refit": "incremental"}) / "seed0"

    def no_run(*a, **k):
        raise AssertionError("a finished seed was run again")

    monkeypatch.setattr(run_cli, "run", no_run)
    strip = lambda t: [line.rsplit("|", 3)[0] for line in t.splitlines()]  # noqa: E731
    assert strip(compare_refit.main(argv)) == strip(first)
    got["incremental"].rename(got["incremental"].with_name("summary.json.away"))
    partial = compare_refit.main(argv + ["--report-only"])
    assert "every-query" in partial and "incremental |" not in partial
    assert (tmp_path / "toy" / "compare_refit-smoke.md").read_text() == partial
