"""Transition only: the dict presets of the tasks whose ``experiments/configs/<task>.py`` is
not written yet, served through the configs interface (removed once every task has one)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from experiments.configs import RunConfig, small_gp, tiny_gp


def _shapes(key, preset, *, k=None, **_):
    from wrjax.tasks.shapes import make_shapes_task

    return make_shapes_task(key, "squares2d" if preset != "dsprites" else "dsprites", k=k)


def _expressions(key, preset, *, k=None, num_initial=5000, **_):
    from wrjax.tasks.expressions import make_expressions_task

    return make_expressions_task(key, k=k, num_initial=num_initial)


def _chem(key, preset, *, k=None, num_initial=None, objective="plogp", checkpoint=None, **_):
    from wrjax.tasks.chem import make_chem_task

    return make_chem_task(key, k=k, num_initial=num_initial, objective=objective,
                          checkpoint=checkpoint)  # fmt: skip


def _chem_constraint(*, checkpoint=None, **_):
    from wrjax.tasks import chem

    vocab = chem.load_checkpoint(checkpoint).vocab

    def heavy_atoms(task, rows):
        counts = [chem.heavy_atom_count(s) for s in chem.decode_tokens(rows, vocab)]
        return [float("nan") if c is None else float(c) for c in counts]

    return heavy_atoms, float(chem.ZINC_MAX_HEAVY_ATOMS)


_EXPR = dict(optimizer="gp-ei", batch_size=600, finetune_epochs=1.0, initial_finetune_epochs=0.0,
             reset_optimizer=True, variance_reduction="duplicate")
_CHEM = dict(optimizer="gp-ei", batch_size=32, finetune_epochs=0.1, initial_finetune_epochs=1.0,
             variance_reduction="sample")

PRESETS = {
    "shapes": {
        "smoke": dict(budget=100, retrain_every=50, k=1e-3, optimizer="grid", batch_size=32,
                      variance_reduction="sample", seeds=[0]),
        "paper": dict(budget=500, retrain_every=50, k=1e-3, optimizer="grid", batch_size=32,
                      variance_reduction="sample", seeds=[0, 1, 2, 3, 4]),
    },
    "expressions": {
        "smoke": dict(_EXPR, budget=10, retrain_every=5, k=1e-3, seeds=[0], bo=tiny_gp()),
        "cpu": dict(_EXPR, budget=500, retrain_every=50, k=1e-3, seeds=[0, 1, 2], bo=small_gp()),
        "paper": dict(_EXPR, budget=500, retrain_every=50, k=1e-3, seeds=[0, 1, 2]),
    },
    "chem": {
        "smoke": dict(_CHEM, budget=10, retrain_every=5, k=1e-3, num_initial=2000, seeds=[0],
                      bo=tiny_gp()),
        "cpu": dict(_CHEM, budget=500, retrain_every=50, k=1e-3, num_initial=10_000,
                    seeds=[0, 1, 2], bo=small_gp()),
        "paper": dict(_CHEM, budget=500, retrain_every=50, k=1e-3, seeds=[0, 1, 2, 3, 4]),
        "capped-smoke": dict(_CHEM, budget=10, retrain_every=5, k=1e-3, num_initial=2000,
                             seeds=[0], bo=tiny_gp(), objective="plogp_capped", checkpoint="gru"),
        "capped-cpu": dict(_CHEM, budget=500, retrain_every=50, k=1e-3, num_initial=10_000,
                           seeds=[0, 1, 2, 3, 4], bo=small_gp(), objective="plogp_capped",
                           checkpoint="gru"),
        "capped-paper": dict(_CHEM, budget=500, retrain_every=50, k=1e-3, seeds=[0, 1, 2, 3, 4],
                             objective="plogp_capped", checkpoint="gru"),
    },
}
_BUILD = {"shapes": _shapes, "expressions": _expressions, "chem": _chem}


def module(task: str) -> SimpleNamespace:
    from wrjax import LSOConfig

    lso = {f.name for f in dataclasses.fields(LSOConfig)}

    def get_config(preset):
        p = dict(PRESETS[task][preset])
        return RunConfig(
            loop={k: v for k, v in p.items() if k in lso},
            task={"preset": preset, **{k: v for k, v in p.items()
                                       if k not in lso and k not in ("optimizer", "bo", "seeds")}},
            optimizer=p.get("optimizer", "gp-ei"), bo=p.get("bo"), seeds=tuple(p.get("seeds", [0])))

    def build_task(key, config):
        opts = dict(config.task)
        return _BUILD[task](key, opts.pop("preset"), k=config.loop.get("k"), **opts)

    ns = SimpleNamespace(PRESETS=tuple(PRESETS[task]), get_config=get_config, build_task=build_task)
    if task == "chem":
        ns.constraint = lambda config: _chem_constraint(**config.task)
    return ns
