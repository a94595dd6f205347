"""The task registry of the experiment scripts: a task name -> its ``experiments/configs`` module.

Each task's presets, builder and optional constraint live in ``experiments/configs/<task>.py``
(see :mod:`experiments.configs`); this module finds them and builds the optimiser a preset
names. ``smoke`` is a short run for checking that everything works; ``paper`` follows the
paper (budget 500, retrain every 50, k = 1e-3) and the authors' released settings.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TASKS = ("toy", "shapes", "expressions", "chem")

#: Optimisers selectable by name (``--optimizer``, a config's ``optimizer``).
OPTIMIZERS = ("gp-ei", "grid", "random", "thompson", "trust-region-ei", "trust-region-ts",
              "constrained-ei")  # fmt: skip


def configs(task: str) -> ModuleType:
    """``experiments.configs.<task>`` (``SystemExit`` naming the tasks if there is none)."""
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    return importlib.import_module(f"experiments.configs.{task}")


def presets(task: str) -> tuple[str, ...]:
    return tuple(configs(task).PRESETS)


def get_config(task: str, preset: str):
    """The :class:`experiments.configs.RunConfig` of a task's preset (``ValueError`` naming
    the task's presets if it has no such one)."""
    module = configs(task)
    if preset not in module.PRESETS:
        raise ValueError(f"task {task!r} has presets {list(module.PRESETS)}, not {preset!r}")
    return module.get_config(preset)


def build_task(task: str, key, config):
    return configs(task).build_task(key, config)


def constraint(task: str, config):
    """``(fn, threshold)`` of the task's constraint for ``"constrained-ei"``, or ``None``."""
    fn = getattr(configs(task), "constraint", None)
    return None if fn is None else fn(config)


def make_optimizer(task, optimizer: str = "gp-ei", bo=None, constraint=None):
    """The run's optimiser from a config's names: the grid, GP-EI with ``bo``'s two halves
    (default: the authors' settings), or one of :mod:`wrjax.latent_bo`'s on the same GP
    (``constraint``: ``(fn, threshold)`` for ``"constrained-ei"``)."""
    import wrjax
    from wrjax import latent_bo
    from wrjax.bo import BOConfig

    fit, acq = (bo or BOConfig()).split()
    if optimizer == "grid":
        return wrjax.grid_optimizer(task)
    if optimizer == "gp-ei":
        return wrjax.make_gp_ei(fit, acq)
    if optimizer == "random":
        return latent_bo.make_random_search(acq)
    if optimizer == "thompson":
        return latent_bo.make_thompson(fit, acq)
    if optimizer in ("trust-region-ei", "trust-region-ts"):
        method = "ei" if optimizer.endswith("ei") else "thompson"
        return latent_bo.make_trust_region(len(task.y), fit, acq, method=method)
    if optimizer == "constrained-ei":
        if constraint is None:
            raise SystemExit(f"task {task.name!r} has no constraint for 'constrained-ei'")
        fn, threshold = constraint
        return latent_bo.make_constrained_ei(fn, threshold, fit, acq)
    raise SystemExit(f"unknown optimizer {optimizer!r}; choose from {OPTIMIZERS}")
