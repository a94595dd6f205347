"""The task registry of the experiment scripts: name -> (task builder, presets).

A preset is a dict of :class:`wrjax.LSOConfig` fields plus ``seeds``, the optimiser
(``optimizer``: ``"grid"`` or ``"gp-ei"``, and ``bo``: a :class:`wrjax.bo.BOConfig` for
``"gp-ei"``; see :func:`make_optimizer`) and the task builder's own options. ``smoke`` is a short run for checking that everything works;
``paper`` follows the paper (budget 500, retrain every 50, k = 1e-3) and the authors'
released settings (``../shared/AUTHORS-SETTINGS.md``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class TaskEntry(NamedTuple):
    build: Callable[..., Any]  # (key, preset_name, **options) -> wrjax.Task
    presets: dict[str, dict]
    #: for "constrained-ei": builder options -> (constraint(task, rows) -> (C,), threshold)
    constraint: Callable[..., tuple[Callable, float]] | None = None


#: Optimisers selectable by name (``--optimizer``, presets' ``optimizer``).
OPTIMIZERS = ("gp-ei", "grid", "random", "thompson", "trust-region-ei", "trust-region-ts",
              "constrained-ei")  # fmt: skip


def make_optimizer(task, optimizer: str = "gp-ei", bo=None, constraint=None):
    """The run's optimiser from a preset's names: the grid, GP-EI with ``bo``'s two halves
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


def _toy(key, preset, **_):
    from wrjax.tasks.toy import make_toy_task

    return make_toy_task(key)


def _shapes(key, preset, *, k=None, **_):
    from wrjax.tasks.shapes_task import make_shapes_task

    return make_shapes_task(key, "squares2d" if preset != "dsprites" else "dsprites", k=k)


def _expressions(key, preset, *, k=None, num_initial=5000, **_):
    from wrjax.tasks.expressions import make_expressions_task

    return make_expressions_task(key, k=k, num_initial=num_initial)


# The authors' expressions fine-tune: 1 epoch of the 5,000 points at batch 600 (about 9
# steps), a fresh Adam each retrain, on the duplicated data (A.2).
_EXPR = dict(optimizer="gp-ei", batch_size=600, finetune_epochs=1.0, initial_finetune_epochs=0.0,
             reset_optimizer=True, variance_reduction="duplicate")


def _small_gp(num_inducing=100, n_best=500, n_random=1500, **kw):
    """A sparse GP small enough for this 2-core CPU (the authors: 500 inducing, 2,000 + 8,000
    points). About 0.2-0.6 s per warm-started query at D = 25 instead of about 15 s."""
    from wrjax.bo import BOConfig

    kw = dict(dict(num_restarts=10, ascent_steps=100, warm_steps=10), **kw)
    kw.setdefault("num_random_starts", kw["num_restarts"] // 2)
    return BOConfig(num_inducing=num_inducing, n_best=n_best, n_random=n_random, **kw)


# For smoke runs: a sparse GP that only checks the plumbing.
_TINY_GP = _small_gp(num_inducing=32, n_best=200, n_random=300, num_restarts=4, ascent_steps=50,
                     cold_kernel_steps=30, cold_steps=30)


def _chem(key, preset, *, k=None, num_initial=None, objective="plogp", checkpoint=None, **_):
    from wrjax.tasks.chem_task import make_chem_task

    return make_chem_task(key, k=k, num_initial=num_initial, objective=objective,
                          checkpoint=checkpoint)  # fmt: skip


def _chem_constraint(*, checkpoint=None, **_):
    """Heavy atoms of the molecule each token row spells, feasible at most 38 (ZINC's largest)."""
    from wrjax.tasks import chem
    from wrjax.tasks import chem_model as cm

    vocab = cm.load_checkpoint(checkpoint).vocab

    def heavy_atoms(task, rows):
        counts = [chem.heavy_atom_count(s) for s in chem.decode_tokens(rows, vocab)]
        return [float("nan") if c is None else float(c) for c in counts]

    return heavy_atoms, float(chem.ZINC_MAX_HEAVY_ATOMS)


# The authors' chemistry fine-tunes: 0.1 epoch at batch 32, the first one 1 epoch, weighted
# *sampling*; the fine-tune of the SELFIES VAE costs about 55 ms a step on this CPU.
_CHEM = dict(optimizer="gp-ei", batch_size=32, finetune_epochs=0.1, initial_finetune_epochs=1.0,
             variance_reduction="sample")


REGISTRY: dict[str, TaskEntry] = {
    "toy": TaskEntry(
        _toy,
        {
            "smoke": dict(budget=20, retrain_every=5, k=1e-3, optimizer="grid", batch_size=16, seeds=[0]),
            "paper": dict(budget=60, retrain_every=10, k=1e-3, optimizer="grid", batch_size=16, seeds=[0, 1, 2]),
        },
    ),
    "shapes": TaskEntry(
        _shapes,
        {
            # The authors' released setup (squares2d): 0.1-epoch fine-tunes at batch 32, the
            # first one 1 epoch, weighted *sampling*, the 50x50 grid optimiser.
            "smoke": dict(budget=100, retrain_every=50, k=1e-3, optimizer="grid", batch_size=32,
                          variance_reduction="sample", seeds=[0]),
            "paper": dict(budget=500, retrain_every=50, k=1e-3, optimizer="grid", batch_size=32,
                          variance_reduction="sample", seeds=[0, 1, 2, 3, 4]),
        },
    ),
    "expressions": TaskEntry(
        _expressions,
        {
            "smoke": dict(_EXPR, budget=10, retrain_every=5, k=1e-3, seeds=[0],
                          bo=_TINY_GP),
            # The paper's budget and retraining with the small GP above (see RESULTS.md).
            "cpu": dict(_EXPR, budget=500, retrain_every=50, k=1e-3, seeds=[0, 1, 2], bo=_small_gp()),
            "paper": dict(_EXPR, budget=500, retrain_every=50, k=1e-3, seeds=[0, 1, 2]),
        },
    ),
    "chem": TaskEntry(
        _chem,
        {
            # A check that it all works (about 1-2 minutes): 2,000 molecules, a tiny GP.
            "smoke": dict(_CHEM, budget=10, retrain_every=5, k=1e-3, num_initial=2000, seeds=[0],
                          bo=_TINY_GP),
            # The paper's budget and retraining on 10,000 molecules with a small GP (100
            # inducing, 500 + 1,500 points): about 1.5-2 s a query in the loop and 30 s a
            # retrain + cold refit on the 2 shared cores (about 20 minutes a seed).
            "cpu": dict(_CHEM, budget=500, retrain_every=50, k=1e-3, num_initial=10_000,
                        seeds=[0, 1, 2],
                        bo=_small_gp()),
            # The authors': the whole training split, 500 inducing points, 2,000 + 8,000 points.
            "paper": dict(_CHEM, budget=500, retrain_every=50, k=1e-3, seeds=[0, 1, 2, 3, 4]),
            # The size-constrained objective (molecules over 38 heavy atoms score the floor
            # and count), with the reconstructing GRU model.
            "capped-smoke": dict(_CHEM, budget=10, retrain_every=5, k=1e-3, num_initial=2000,
                                 seeds=[0], bo=_TINY_GP, objective="plogp_capped",
                                 checkpoint="gru"),
            "capped-cpu": dict(_CHEM, budget=500, retrain_every=50, k=1e-3, num_initial=10_000,
                               seeds=[0, 1, 2, 3, 4], bo=_small_gp(),
                               objective="plogp_capped", checkpoint="gru"),
            "capped-paper": dict(_CHEM, budget=500, retrain_every=50, k=1e-3,
                                 seeds=[0, 1, 2, 3, 4], objective="plogp_capped",
                                 checkpoint="gru"),
        },
        constraint=_chem_constraint,
    ),
}


def get(name: str) -> TaskEntry:
    if name not in REGISTRY:
        raise SystemExit(f"unknown task {name!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[name]
