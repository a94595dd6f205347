"""The retraining loop (Algorithm 1) end to end on the tiny toy task."""

import json
import math
import time
import warnings

import jax
import numpy as np
import pytest

import wrjax
from wrjax import loop as lso
from wrjax.bo import AcquisitionConfig, GPFitConfig
from wrjax.loop import LSOConfig, Optimizer, Proposal
from wrjax.tasks.toy import make_toy_task


def bits(s):
    return np.array([int(c) for c in s], np.uint8)


@pytest.fixture(scope="module")
def toy():
    return make_toy_task(jax.random.key(0))


def scripted_optimizer(script):
    """Proposes the scripted objects one per call (None = an invalid decoding).

    The position in the script lives in a closure: the loop re-initialises optimiser state
    at every cycle, and the script must run on across cycles.
    """
    position = [0]

    def propose(key, state, ctx):
        i = position[0]
        if i >= len(script):
            return Proposal(np.zeros((0, 2), np.float32), []), state
        position[0] += 1
        return Proposal(np.full((1, 2), float(i), np.float32), [script[i]]), state

    return Optimizer(lambda ctx: None, propose, "scripted")


def strip(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


def test_budget_statuses_and_retrain_schedule(toy, tmp_path):
    train = toy.initial_keys
    # Strings with 6 ones: none is in the data (at most 4 ones), all distinct.
    novel = ["1" * 5 + "0" * i + "1" + "0" * (6 - i) for i in range(6)]
    assert len(set(novel)) == 6 and not set(novel) & set(train)
    fail_task = make_toy_task(
        jax.random.key(0), fail_keys=[novel[2]], nan_keys=[novel[3]]
    )
    script = [
        bits(novel[0]),
        bits(train[5]),  # in the training data -> duplicate
        None,  # invalid decoding
        bits(novel[1]),
        bits(novel[0]),  # already queried -> duplicate
        bits(novel[2]),  # objective raises
        bits(novel[3]),  # objective returns NaN
        bits(novel[4]),
        bits(novel[5]),
    ]
    events = []
    cfg = LSOConfig(
        budget=5, retrain_every=2, initial_finetune_epochs=0.1, finetune_steps=2, batch_size=8,
    )  # fmt: skip
    res = lso.run(
        jax.random.key(1), fail_task, cfg, optimizer=scripted_optimizer(script),
        workdir=tmp_path, progress=False,
        callbacks=[lambda ev, p: events.append((ev, p))],
    )  # fmt: skip
    statuses = [r["status"] for r in res.records]
    assert statuses == [
        "ok", "duplicate", "invalid", "ok", "duplicate", "objective-error", "objective-error", "ok",
    ]  # fmt: skip
    # Discards do not count toward the budget; objective errors do (the evaluation was spent).
    assert [r["eval"] for r in res.records] == [0, None, None, 1, None, 2, 3, 4]
    assert "RuntimeError" in res.records[5]["error"] and "non-finite" in res.records[6]["error"]
    # Errors are excluded from the data: TopK runs over the 3 ok scores only.
    np.testing.assert_allclose(res.scores, [bits(novel[i]).sum() for i in (0, 1, 4)])
    # Retrain schedule: the initial training, then after evaluations 2 and 4.
    retrains = [p["n_evals"] for ev, p in events if ev == "retrain"]
    assert retrains == [0, 2, 4]
    assert [r["model_version"] for r in res.records] == [0, 0, 0, 0, 1, 1, 1, 2]
    # Records on disk equal the returned ones and every line is valid JSON.
    assert strip(lso.load_records(tmp_path)) == strip(res.records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["counts"] == {"ok": 3, "invalid": 1, "duplicate": 2, "objective-error": 2}
    assert summary["num_evaluations"] == 5 and summary["status"] == "complete"
    assert summary["retrain_points"] == [2, 4]
    # Seconds per query: one gap per pair of consecutive proposals within a cycle, recomputed
    # here from the records' own clock times.
    last = {}
    for r in res.records:
        last[(r["cycle"], r["proposal"])] = r["wall_time"]
    gaps = [t - last[(c, p - 1)] for (c, p), t in last.items() if (c, p - 1) in last]
    q = summary["query_seconds"]
    assert q["count"] == len(gaps) > 0
    assert q["median"] == pytest.approx(np.median(gaps), abs=1e-4)


def test_consecutive_discards_are_capped(toy, tmp_path):
    script = [bits(toy.initial_keys[i]) for i in range(10)]  # all duplicates
    cfg = LSOConfig(budget=3, retrain_every=None, initial_finetune_epochs=0, max_consecutive_discards=4)
    with pytest.warns(UserWarning, match="discarded"):
        res = lso.run(jax.random.key(0), toy, cfg, optimizer=scripted_optimizer(script),
                      workdir=tmp_path, progress=False)  # fmt: skip
    assert res.status == "stalled"
    assert [r["status"] for r in res.records] == ["duplicate"] * 4


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at", [3, 11])
def test_resumed_run_gives_identical_records(toy, tmp_path, stop_at):
    cfg = LSOConfig(budget=14, retrain_every=5, batch_size=16)
    key = jax.random.key(7)
    grid = lso.grid_optimizer(toy)
    full = lso.run(key, toy, cfg, optimizer=grid, workdir=tmp_path / "full", progress=False)

    def interrupt(event, payload):
        if event == "record" and payload["seq"] == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        lso.run(key, toy, cfg, optimizer=grid, workdir=tmp_path / "cut", progress=False,
                callbacks=[interrupt])  # fmt: skip
    partial = lso.load_records(tmp_path / "cut")
    assert len(partial) == stop_at + 1
    calls = []
    counting = toy.replace(objective=lambda o: calls.append(1) or toy.objective(o))
    resumed = lso.run(key, counting, cfg, optimizer=grid, workdir=tmp_path / "cut", progress=False)
    assert strip(resumed.records) == strip(full.records)
    assert strip(lso.load_records(tmp_path / "cut")) == strip(lso.load_records(tmp_path / "full"))
    # Evaluations recorded before the interruption were not repeated.
    assert len(calls) == sum(r["eval"] is not None for r in full.records[stop_at + 1 :])
    np.testing.assert_array_equal(resumed.scores, full.scores)
    # The summary's time spans both processes: the first one up to its last record, the second
    # one whole (recomputed from the process log and the records' clock times).
    log = [json.loads(line) for line in (tmp_path / "cut" / "processes.jsonl").read_text().splitlines()]
    # (the second resumed from the last cycle checkpoint: a whole number of 5-evaluation cycles)
    assert [e["evals"] for e in log] == [0, sum(r["eval"] is not None for r in partial) // 5 * 5]
    first, second = log[0]["start"], log[1]["start"]
    s = resumed.summary
    assert s["processes"] == 2 and full.summary["processes"] == 1
    first_process = partial[-1]["wall_time"] - first
    assert 0 < first_process < second - first
    # the second process: from its start (before its resume) to its end, so at least its own
    # time after the resume, at most until now
    assert first_process + s["seconds_last_process"] <= s["seconds"] + 1e-3
    assert s["seconds"] <= first_process + (time.time() - second)


def test_changed_config_in_existing_workdir_is_rejected(toy, tmp_path):
    cfg = LSOConfig(budget=2, retrain_every=None, initial_finetune_epochs=0)
    grid = lso.grid_optimizer(toy)
    lso.run(jax.random.key(0), toy, cfg, optimizer=grid, workdir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"different config \(fields \['budget'\]\)"):
        lso.run(jax.random.key(0), toy, LSOConfig(budget=3, retrain_every=None, initial_finetune_epochs=0),
                optimizer=grid, workdir=tmp_path, progress=False)  # fmt: skip


@pytest.mark.parametrize(
    "field,value",
    [
        ("budget", 0),
        ("retrain_every", 0),
        ("k", 0.0),
        ("k", math.nan),
        ("k", -1.0),
        ("k", lambda c: 1.0 - c),
        ("variance_reduction", "copies"),
        ("weighting", "softmax"),
        ("batch_size", 0),
        ("w_max", 0.5),
        ("learning_rate", 0.0),
    ],
)
def test_invalid_config_names_the_field(field, value):
    # (the schedule 1 - c reaches k = 0 at cycle 1 of the default 10-cycle run)
    with pytest.raises(ValueError, match=rf"LSOConfig\.{field}"):
        LSOConfig(**{field: value})


def test_k_is_a_float_or_a_schedule_checked_once():
    sched = wrjax.geometric_k(1.0, 1e-2, num_cycles=2)
    cfg = LSOConfig(budget=6, retrain_every=2, k=sched)
    np.testing.assert_allclose(cfg.cycle_k, [1.0, 0.1, 0.01], rtol=1e-12)
    assert cfg.k_at(7) == cfg.cycle_k[-1]
    assert cfg.to_json()["k"] == {"schedule": "geom1e0-1e-2-2", "values": list(cfg.cycle_k)}
    assert LSOConfig(k=math.inf).to_json()["k"] == "inf"
    assert wrjax.format_k(1e-3) == "1e-3" and wrjax.format_k(sched) == "geom1e0-1e-2-2"


def test_weighting_params_are_checked_eagerly():
    with pytest.raises(ValueError, match="weighting_params"):
        LSOConfig(weighting="rank", weighting_params=(("alpha", 1.0),))


def test_the_optimizer_is_an_argument_of_run(toy, tmp_path):
    with pytest.raises(ValueError, match="optimizer must be a wrjax Optimizer"):
        lso.run(jax.random.key(0), toy, LSOConfig(budget=2), optimizer="grid", workdir=tmp_path)


def test_weighted_retraining_beats_plain_lso_on_the_toy(toy, tmp_path):
    """The paper's claim in miniature: with the same keys and budget, weighted retraining
    (k = 1e-3, retrain every 5) ends above plain LSO (k = inf, no retraining), which stays
    within the data's best (4 ones) or barely above it."""
    grid = lso.grid_optimizer(toy)
    top1, beyond = {}, {}
    for name, k, r in [("plain", math.inf, None), ("weighted", 1e-3, 5)]:
        cfg = LSOConfig(budget=20, retrain_every=r, k=k, batch_size=16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plain LSO's grid runs dry: "stalled"
            res = lso.run(jax.random.key(3), toy, cfg, optimizer=grid, workdir=tmp_path / name,
                          progress=False)  # fmt: skip
        top1[name] = res.curves["top1"][-1]
        beyond[name] = int(np.sum(res.scores > toy.y.max()))  # queried points beyond the data
    assert top1["weighted"] > max(top1["plain"], toy.y.max()), top1
    assert beyond["weighted"] > 2 * beyond["plain"], beyond


def test_no_retrace_between_queries(toy, tmp_path, trace_counter):
    """The grid optimiser's programs are traced once per run, not once per query or cycle."""
    decode = trace_counter(toy.jax_decode)
    task = toy.replace(jax_decode=decode)
    cfg = LSOConfig(budget=9, retrain_every=3, batch_size=16, finetune_steps=2)
    lso.run(jax.random.key(0), task, cfg, optimizer=lso.grid_optimizer(task), workdir=tmp_path,
            progress=False)  # fmt: skip
    # init (decode in lax.map) + propose: one trace each, for 3 cycles and 9 queries
    assert decode.count == 2


def test_gp_ei_optimizer_runs_through_the_loop(toy, tmp_path):
    fit = GPFitConfig(num_inducing=16, n_best=40, n_random=40, cold_kernel_steps=10, cold_steps=20,
                      warm_steps=10)  # fmt: skip
    acquisition = AcquisitionConfig(ascent_steps=20, num_restarts=6, num_random_starts=3)
    cfg = LSOConfig(budget=4, retrain_every=2, batch_size=16, finetune_steps=5)
    res = lso.run(jax.random.key(5), toy, cfg, optimizer=wrjax.make_gp_ei(fit, acquisition),
                  workdir=tmp_path, progress=False)  # fmt: skip
    assert res.status == "complete"
    assert sum(r["eval"] is not None for r in res.records) == 4
    ok = [r for r in res.records if r["status"] == "ok"]
    assert all(r["key"] not in set(toy.initial_keys) for r in ok)
    assert len({r["key"] for r in ok}) == len(ok)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["optimizer"] == "gp-ei" and config["optimizer_config"]["fit"]["num_inducing"] == 16
    # every proposal's fit is logged beside the records: one line per proposal, the cycle
    # starts cold (refitted, the default subset-greedy fit's steps), and the summary says so
    logged = [json.loads(line) for line in (tmp_path / "proposals.jsonl").read_text().splitlines()]
    proposals = sorted({(r["cycle"], r["proposal"]) for r in res.records})
    assert [(e["cycle"], e["proposal"]) for e in logged] == proposals
    starts = [e for i, e in enumerate(logged) if i == 0 or e["cycle"] != logged[i - 1]["cycle"]]
    assert len(starts) == 2 and all(e["refitted"] and e["fit_steps"] > fit.cold_warmup_steps for e in starts)
    opt = res.summary["optimizer"]
    assert opt["proposals"] == len(logged) and opt["refits"] == sum(e["refitted"] for e in logged)
    assert opt["fit_steps"]["max"] == max(e["fit_steps"] for e in logged)


def test_load_proposals_keeps_the_last_line_of_each_and_skips_damage(tmp_path):
    from wrjax.loop.records import append_proposal, load_proposals

    append_proposal(tmp_path, 0, 0, {"fit_steps": 5, "elbo": np.float64(1.5)})
    append_proposal(tmp_path, 0, 1, {"fit_steps": 2})
    append_proposal(tmp_path, 0, 1, {"fit_steps": 3})  # a resumed run's replay of proposal 1
    with open(tmp_path / "proposals.jsonl", "a") as f:
        f.write('{"cycle": 1, "propo')  # a torn last line
    got = load_proposals(tmp_path)
    assert [(e["proposal"], e["fit_steps"]) for e in got] == [(0, 5), (1, 3)]
    assert got[0]["elbo"] == 1.5 and load_proposals(tmp_path / "missing") == []


def test_optimizer_summary_aggregates_the_audits_by_numpy():
    from wrjax.loop.records import optimizer_summary

    rng = np.random.default_rng(0)
    ratios, dists = rng.uniform(0, 1.2, 23), rng.uniform(0, 0.5, 23)
    entries = [dict(refitted=False, fit_steps=0, fit_seconds=0.1,
                    **({"audit": dict(ei_ratio=r, distance=d, seconds=0.5)} if i % 2 else {}))
               for i, (r, d) in enumerate(zip(ratios, dists))]  # fmt: skip
    got = optimizer_summary(entries)["audit"]
    odd = slice(1, None, 2)
    assert got["count"] == 11 and got["seconds"] == 5.5
    assert got["ei_ratio_median"] == round(float(np.median(ratios[odd])), 4)
    assert got["ei_ratio_p10"] == round(float(np.percentile(ratios[odd], 10)), 4)
    assert got["share_ei_ratio_above_0.9"] == round(float(np.mean(ratios[odd] >= 0.9)), 4)
    assert got["distance_median"] == round(float(np.median(dists[odd])), 4)
    assert "audit" not in optimizer_summary([dict(refitted=True, fit_steps=3, fit_seconds=1.0)])
