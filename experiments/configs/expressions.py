"""Presets of the arithmetic-expression task (``wrjax.tasks.expressions``, paper §6.2).

The authors' expressions fine-tune: 1 epoch of the 5,000 points at batch 600 (about 9 steps),
a fresh Adam each retrain, on the duplicated data (A.2).

* ``smoke``: a check that it all works: budget 10, a retrain every 5, a tiny GP;
* ``cpu``: the paper's budget and retraining with a small GP (100 inducing, 500 + 1,500
  points; see ``experiments/RESULTS.md``);
* ``paper``: the paper's budget and retraining with the authors' GP.
"""

from __future__ import annotations

from experiments.configs import RunConfig, small_gp, tiny_gp

PRESETS = ("smoke", "cpu", "paper")

_LOOP = dict(batch_size=600, finetune_epochs=1.0, initial_finetune_epochs=0.0,
             reset_optimizer=True, variance_reduction="duplicate", k=1e-3)  # fmt: skip


def get_config(preset: str) -> RunConfig:
    """The :class:`RunConfig` of a preset (``ValueError`` naming the presets otherwise)."""
    if preset == "smoke":
        return RunConfig(loop=dict(_LOOP, budget=10, retrain_every=5), bo=tiny_gp(), seeds=(0,))
    if preset == "cpu":
        return RunConfig(loop=dict(_LOOP, budget=500, retrain_every=50), bo=small_gp(),
                         seeds=(0, 1, 2))
    if preset == "paper":
        return RunConfig(loop=dict(_LOOP, budget=500, retrain_every=50), seeds=(0, 1, 2))
    raise ValueError(f"expressions has presets {PRESETS}, not {preset!r}")


def build_task(key, config: RunConfig):
    """:func:`wrjax.tasks.expressions.make_expressions_task` with the run's k (the shipped
    model of that k, else the unweighted one) and ``num_initial`` (default 5,000)."""
    from wrjax.tasks.expressions import make_expressions_task

    return make_expressions_task(key, k=config.loop.get("k"),
                                 num_initial=config.task.get("num_initial", 5000))
