"""Experiment configs as code: one module per task, ``experiments/configs/<task>.py``.

Each task module defines

* ``PRESETS: tuple[str, ...]``: the preset names (``smoke`` first: the short check);
* ``get_config(preset) -> RunConfig``;
* ``build_task(key, config) -> wrjax.Task``: the task for a run of ``config``
  (``config.task`` holds the builder's options, ``config.loop["k"]`` the run's k);
* optionally ``constraint(config) -> (fn(task, rows) -> (C,), threshold)`` for the
  ``"constrained-ei"`` optimiser.

``experiments/tasks.py`` is the registry over these modules and ``python -m experiments.run
TASK --preset P`` runs one. Shared pieces of several tasks' presets live here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunConfig", "small_gp", "tiny_gp"]


@dataclass(frozen=True)
class RunConfig:
    """One preset of a task: everything a run depends on but the seed.

    Attributes:
      loop: :class:`wrjax.LSOConfig` fields (``budget``, ``retrain_every``, ``k``, ...; not
        ``seed``).
      task: the task builder's options (``build_task`` of the task's config module).
      optimizer: a name of ``experiments.tasks.OPTIMIZERS``.
      bo: the sparse-GP settings of the GP optimisers (``None``: the authors' defaults).
      seeds: the seeds a run of the preset covers.
    """

    loop: dict[str, Any]
    task: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "gp-ei"
    bo: Any = None  # wrjax.bo.BOConfig | None
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        if "seed" in self.loop:
            raise ValueError("loop must not set 'seed' (the run's seed comes from seeds)")
        object.__setattr__(self, "loop", dict(self.loop))
        object.__setattr__(self, "task", dict(self.task))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))

    def with_loop(self, **loop) -> "RunConfig":
        """A copy with these :class:`wrjax.LSOConfig` fields replaced."""
        return dataclasses.replace(self, loop={**self.loop, **loop})

    def lso_config(self, seed: int):
        """The :class:`wrjax.LSOConfig` of one seed's run."""
        from wrjax import LSOConfig

        return LSOConfig(**self.loop, seed=int(seed))


def small_gp(num_inducing=100, n_best=500, n_random=1500, **kw):
    """A sparse GP small enough for a 2-core CPU (the authors: 500 inducing, 2,000 + 8,000
    points). About 0.2-0.6 s per warm-started query at D = 25 instead of about 15 s."""
    from wrjax.bo import BOConfig

    # cold_fit="authors": the cold fit of every cpu-preset run recorded in RESULTS.md (the
    # faster "subset-greedy" default came later; at M = 100 both take seconds)
    kw = dict(dict(num_restarts=10, ascent_steps=100, warm_steps=10, cold_fit="authors"), **kw)
    kw.setdefault("num_random_starts", kw["num_restarts"] // 2)
    return BOConfig(num_inducing=num_inducing, n_best=n_best, n_random=n_random, **kw)


def tiny_gp():
    """For smoke runs: a sparse GP that only checks the plumbing."""
    return small_gp(num_inducing=32, n_best=200, n_random=300, num_restarts=4, ascent_steps=50,
                    cold_kernel_steps=30, cold_steps=30)
