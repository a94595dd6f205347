"""Presets of the toy task (``wrjax.tasks.toy``): seconds per run, for tests and examples."""

from __future__ import annotations

from experiments.configs import RunConfig

PRESETS = ("smoke", "paper")


def get_config(preset: str) -> RunConfig:
    common = dict(k=1e-3, batch_size=16)
    if preset == "smoke":
        return RunConfig(loop=dict(common, budget=20, retrain_every=5), optimizer="grid", seeds=(0,))
    if preset == "paper":
        return RunConfig(loop=dict(common, budget=60, retrain_every=10), optimizer="grid",
                         seeds=(0, 1, 2))
    raise ValueError(f"toy has presets {PRESETS}, not {preset!r}")


def build_task(key, config: RunConfig):
    from wrjax.tasks.toy import make_toy_task

    return make_toy_task(key, **config.task)
