"""The experiment CLI and the ablation runner on the toy task: records, summaries, plots."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import ablation
from experiments import run as run_cli


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def test_run_cli_writes_records_summary_and_plot(workdir, capsys):
    run_cli.main(["toy", "--budget", "4", "--retrain-every", "2", "--seeds", "0", "1",
                  "--workdir", str(workdir), "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert "| k1e-3_r2 | 2 |" in out
    setting = workdir / "toy" / "smoke-b4-grid" / "k1e-3_r2"
    for seed in (0, 1):
        records = [json.loads(line) for line in (setting / f"seed{seed}" / "records.jsonl").read_text().splitlines()]
        assert sum(r["eval"] is not None for r in records) == 4
        summary = json.loads((setting / f"seed{seed}" / "summary.json").read_text())
        scores = [r["score"] for r in records if r["status"] == "ok"]
        assert summary["final"]["top1"] == pytest.approx(max(scores))
        assert summary["curves"]["top1"] == pytest.approx(np.maximum.accumulate(scores).tolist())
        assert (setting / f"seed{seed}" / "checkpoints" / "cycle_000.msgpack").exists()
    png = setting / "topk.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablation_runs_the_four_settings(workdir):
    ablation.main(["toy", "--preset", "smoke", "--budget", "3", "--retrain-every", "2",
                   "--workdir", str(workdir / "abl"), "--no-progress"])  # fmt: skip
    group = workdir / "abl" / "toy" / "smoke-b3-grid"
    table = (group / "ablation.md").read_text()
    for name in ("kinf_rnever", "kinf_r2", "k1e-3_rnever", "k1e-3_r2"):
        assert f"| {name} | 1 |" in table
    assert (group / "ablation_topk.png").stat().st_size > 1000
    # --report-only rebuilds the same table from the summaries on disk, running nothing.
    (group / "ablation.md").unlink()
    ablation.main(["toy", "--preset", "smoke", "--budget", "3", "--retrain-every", "2",
                   "--workdir", str(workdir / "abl"), "--report-only"])  # fmt: skip
    rebuilt = (group / "ablation.md").read_text()
    # The last two columns (time per seed, time per query) are wall-clock figures and differ.
    strip = lambda t: [line.rsplit("|", 3)[0] for line in t.splitlines()]  # noqa: E731
    assert strip(rebuilt) == strip(table)


def test_setting_names():
    assert run_cli.setting_name(float("inf"), None) == "kinf_rnever"
    assert run_cli.setting_name(1e-3, 50) == "k1e-3_r50"
    assert run_cli.parse_retrain("none") is None and run_cli.parse_retrain("5") == 5


def test_shapes_prior_areas_grow_as_k_falls(tmp_path, capsys):
    """The paper's Fig. 3 (right) on the shipped checkpoints: lower k, larger prior shapes."""
    from experiments import shapes_prior

    shapes_prior.main(["--num-samples", "200", "--out", str(tmp_path)])
    rows = [line.split("|") for line in (tmp_path / "prior_areas.md").read_text().splitlines()
            if line.startswith("| k = ")]  # fmt: skip
    ks = [float(r[1].split("=")[1]) for r in rows]
    means = [float(r[2]) for r in rows]
    assert ks == sorted(ks, reverse=True) and len(ks) == 4  # inf, 0.1, 1e-3, 1e-5
    assert all(a < b for a, b in zip(means, means[1:])), means
    assert (tmp_path / "prior_areas.png").stat().st_size > 0


def test_chem_report_ranks_unique_molecules_with_heavy_atoms(tmp_path, capsys):
    from experiments import chem_report

    def rec(text, score, status="ok"):
        return json.dumps({"status": status, "text": text, "key": text, "score": score})

    runs, base = tmp_path / "runs", tmp_path / "baselines"
    for seed, lines in {"seed0": [rec("CCO", 1.0), rec("c1ccccc1", 3.0), rec("C1CC", None, "invalid")],
                        "seed1": [rec("CCO", 1.0), rec("CCCCCC", 2.0)]}.items():  # fmt: skip
        (runs / "k1e-3_r50" / seed).mkdir(parents=True)
        (runs / "k1e-3_r50" / seed / "records.jsonl").write_text("\n".join(lines) + "\n")
    (base / "ga" / "seed_0").mkdir(parents=True)
    (base / "ga" / "seed_0" / "records.jsonl").write_text(rec("CCCC", 0.5) + "\n" + rec("CCN", 4.0) + "\n")
    chem_report.main(["--runs", str(runs), "--baselines", str(base), "--out", str(tmp_path / "out")])
    top3 = (tmp_path / "out" / "top3.md").read_text()
    # Benzene 6 heavy atoms, hexane 6, ethanol 3; CCO counted once although found twice.
    assert "| weighted retraining (k = 1e-3, every 50) | 2 | 3.00 (6) | 2.00 (6) | 1.00 (3) | 3.00, 2.00 |" in top3
    assert "| genetic algorithm (SELFIES) | 1 | 4.00 (3) | 0.50 (4) | - | 4.00 |" in top3
    table = (tmp_path / "out" / "table.md").read_text().splitlines()
    # Top1 per seed 3 and 2: mean 2.5, s.e. std([3, 2], ddof=1) / sqrt(2) = 0.5; the rows in
    # the paper's order, the baselines last.
    assert table[2].startswith("| weighted retraining (k = 1e-3, every 50) | 2 | 2.50 ± 0.50 | n/a | n/a | 2 |")
    assert table[3].startswith("| genetic algorithm (SELFIES) | 1 | 4.00 ± 0.00 |")
    assert (tmp_path / "out" / "best_molecules.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "topk.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------
# Configs as code, the registry, the one pretraining command
# ---------------------------------------------------------------------------------------------


def test_toy_presets_as_code_keep_their_values():
    from experiments import tasks
    from experiments.configs import RunConfig

    smoke = tasks.get_config("toy", "smoke")
    assert isinstance(smoke, RunConfig)
    assert smoke.loop == dict(budget=20, retrain_every=5, k=1e-3, batch_size=16)
    assert (smoke.optimizer, smoke.bo, smoke.seeds, smoke.task) == ("grid", None, (0,), {})
    paper = tasks.get_config("toy", "paper")
    assert paper.loop == dict(budget=60, retrain_every=10, k=1e-3, batch_size=16)
    assert paper.seeds == (0, 1, 2)
    with pytest.raises(ValueError, match="presets"):
        tasks.get_config("toy", "nope")


def test_every_task_has_a_configs_module_with_presets():
    from experiments import tasks
    from experiments.configs import RunConfig

    for task in tasks.TASKS:
        module = tasks.configs(task)
        assert module.__name__ == f"experiments.configs.{task}", module
        assert "smoke" in module.PRESETS and callable(module.build_task)
        for preset in module.PRESETS:
            config = tasks.get_config(task, preset)
            assert isinstance(config, RunConfig) and config.seeds
            config.lso_config(0)  # a valid LSOConfig
    assert tasks.constraint("toy", tasks.get_config("toy", "smoke")) is None


def test_run_config_is_frozen_and_overrides_go_where_they_belong():
    import dataclasses

    from experiments.configs import RunConfig

    c = RunConfig(loop={"budget": 5, "k": 1e-3}, optimizer="grid")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.optimizer = "gp-ei"
    with pytest.raises(ValueError, match="seed"):
        RunConfig(loop={"seed": 1})
    o = run_cli.resolve_config("toy", "smoke", {"k": float("inf"), "budget": 3, "optimizer": "random"})
    assert o.loop["k"] == float("inf") and o.loop["budget"] == 3 and o.optimizer == "random"
    with pytest.raises(ValueError, match="LSOConfig"):
        run_cli.resolve_config("toy", "smoke", {"num_initial": 3})


def test_run_help_lists_every_task_and_its_presets(capsys):
    from experiments import tasks

    with pytest.raises(SystemExit):
        run_cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for task in tasks.TASKS:
        assert f"{task}: {', '.join(tasks.presets(task))}" in out


def test_pretrain_help_lists_the_tasks_and_presets(capsys):
    from experiments import pretrain

    with pytest.raises(SystemExit):
        pretrain.main(["--help"])
    out = capsys.readouterr().out
    for task in ("toy", "shapes", "expressions", "chem"):
        assert task in out
    assert "presets: default" in out and "squares2d" in out


def test_pretrain_toy_writes_a_model_record(tmp_path, capsys):
    import jax

    from experiments import pretrain
    from wrjax.checkpoint import MODEL_FORMAT, load_model, machine_description
    from wrjax.tasks import toy

    pretrain.main(["toy", "--steps", "20", "--seed", "3", "--out", str(tmp_path / "bits")])
    model, params, meta = load_model(tmp_path / "bits", toy.build_model)
    assert meta["format"] == MODEL_FORMAT and meta["config"] == {"length": 12, "latent_dim": 2, "hidden": 64}
    assert meta["command"] == f"python experiments/pretrain.py toy --steps 20 --seed 3 --out {tmp_path / 'bits'}"
    assert meta["seconds"] > 0 and meta["machine"]["cpu_count"] == machine_description()["cpu_count"]
    assert meta["history"]["step"] == [20]
    # The same as the package's own recipe with that seed.
    k_init, k_fit = jax.random.split(jax.random.key(3))
    x, _ = toy.toy_data()
    ref, _ = toy.pretrain(k_fit, model, toy.init_params(k_init, model), x, num_steps=20)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "wrote" in capsys.readouterr().out


def test_gp_refit_override_reaches_the_optimizer_config_and_the_run_directory(tmp_path):
    from experiments.run import resolve_config, setting_dir

    base = resolve_config("expressions", "smoke", {})
    inc = resolve_config("expressions", "smoke", {"refit": "incremental"})
    assert base.bo.refit == "every-query" and inc.bo.refit == "incremental"
    # Everything else of the preset's GP is kept.
    assert dataclasses.replace(inc.bo, refit="every-query") == base.bo
    d0 = setting_dir(tmp_path, "expressions", "smoke", {})
    d1 = setting_dir(tmp_path, "expressions", "smoke", {"refit": "incremental"})
    assert d0 != d1 and d1.parent.name.endswith("-incremental") and d0.name == d1.name


def test_gp_settings_override_the_presets_gp_and_name_the_directory(tmp_path):
    import argparse

    from experiments.run import parse_gp_setting, resolve_config, setting_dir

    assert parse_gp_setting("refit_every=25") == ("refit_every", 25)
    assert parse_gp_setting("refit_tol=1e-4") == ("refit_tol", 1e-4)
    assert parse_gp_setting("refit_max_uncovered=none") == ("refit_max_uncovered", None)
    assert parse_gp_setting("cold_fit=authors") == ("cold_fit", "authors")
    for bad in ("refit_every", "not_a_field=3"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=VALUE"):
            parse_gp_setting(bad)
    gp = {"refit_every": 25, "audit_every": 10}
    c = resolve_config("expressions", "smoke", {"refit": "incremental", "gp": gp})
    base = resolve_config("expressions", "smoke", {})
    assert dataclasses.replace(c.bo, refit="every-query", refit_every=base.bo.refit_every, audit_every=0) == base.bo
    assert (c.bo.refit, c.bo.refit_every, c.bo.audit_every) == ("incremental", 25, 10)
    d = setting_dir(tmp_path, "expressions", "smoke", {"refit": "incremental", "gp": gp})
    # the diagnostic audit_every does not change the results, so not the directory either
    assert d.parent.name == "smoke-b10-gp-ei-incremental-refit_every=25"
    with pytest.raises(ValueError, match="refit_every"):
        resolve_config("expressions", "smoke", {"gp": {"refit_every": -1}})
