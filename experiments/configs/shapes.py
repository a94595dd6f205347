"""Run presets of the shapes task (paper §6.1), for ``python -m experiments.run shapes``.

The authors' released setup (squares2d): 0.1-epoch fine-tunes at batch 32, the first one
1 epoch (``wrjax.LSOConfig``'s defaults), weighted *sampling*, and the 50x50 grid optimiser;
the model is the shipped one pretrained with the run's ``k`` (``checkpoints/shapes/``), else the
unweighted one.

* ``smoke``: 100 evaluations, one retrain after 50 (about a minute on 2 CPU cores);
* ``paper``: the paper's budget (500) and retraining (every 50), k = 1e-3, 5 seeds.
"""

from __future__ import annotations

from experiments.configs import RunConfig, small_gp, tiny_gp

PRESETS: tuple[str, ...] = ("smoke", "paper")

_LOOP = dict(k=1e-3, batch_size=32, variance_reduction="sample")
_BUDGETS = {"smoke": (100, 50, (0,)), "paper": (500, 50, (0, 1, 2, 3, 4))}


def get_config(preset: str) -> RunConfig:
    """The preset's loop settings, task options (the data/model preset ``squares2d``), grid
    optimiser and seeds."""
    if preset not in PRESETS:
        raise ValueError(f"shapes has presets {PRESETS}, not {preset!r}")
    budget, retrain_every, seeds = _BUDGETS[preset]
    # The GP is only for the GP optimisers of experiments.compare_optimizers (the paper's
    # shapes optimiser is the grid): in a 2-D latent space 100 inducing points on 2,000
    # points are plenty, where the authors' 500 on 10,000 would cost about 15 s a query.
    bo = tiny_gp() if preset == "smoke" else small_gp()
    return RunConfig(loop=dict(_LOOP, budget=budget, retrain_every=retrain_every),
                     task={"preset": "squares2d"}, optimizer="grid", bo=bo, seeds=seeds)


def build_task(key, config: RunConfig):
    """The shapes task with the model pretrained for the run's ``k`` (see
    :func:`wrjax.tasks.shapes.make_shapes_task`)."""
    from wrjax.tasks.shapes import make_shapes_task

    return make_shapes_task(key, k=config.loop.get("k"), **config.task)
