"""Presets of the chemistry task (``wrjax.tasks.chem``, paper §6.3).

The authors' chemistry fine-tunes: 0.1 epoch at batch 32, the first one 1 epoch, weighted
*sampling*; the fine-tune of the SELFIES VAE costs about 55 ms a step on this CPU.

* ``smoke``: a check that it all works (about 1-2 minutes): 2,000 molecules, a tiny GP;
* ``cpu``: the paper's budget and retraining on 10,000 molecules with a small GP (100
  inducing, 500 + 1,500 points): about 1.5-2 s a query in the loop and 30 s a retrain + cold
  refit on the 2 shared cores (about 20 minutes a seed);
* ``paper``: the authors': the whole training split, 500 inducing points, 2,000 + 8,000
  points;
* ``capped-*``: the size-constrained objective (molecules over 38 heavy atoms score the floor
  and count), with the reconstructing GRU model;
* ``gru-*``: the paper's penalized logP (uncapped) with the reconstructing GRU model (the
  plain presets keep the first model, which the first-wave results used).
"""

from __future__ import annotations

from experiments.configs import RunConfig, small_gp, tiny_gp

PRESETS = ("smoke", "cpu", "paper", "capped-smoke", "capped-cpu", "capped-paper",
           "gru-smoke", "gru-cpu", "gru-paper")  # fmt: skip

_LOOP = dict(batch_size=32, finetune_epochs=0.1, initial_finetune_epochs=1.0,
             variance_reduction="sample", k=1e-3)  # fmt: skip
_TASKS = {"capped": dict(objective="plogp_capped", checkpoint="gru"),
          "gru": dict(objective="plogp", checkpoint="gru")}  # fmt: skip


def get_config(preset: str) -> RunConfig:
    """The :class:`RunConfig` of a preset (``ValueError`` naming the presets otherwise)."""
    if preset not in PRESETS:
        raise ValueError(f"chem has presets {PRESETS}, not {preset!r}")
    family, _, size = preset.rpartition("-")
    task = dict(_TASKS.get(family, {}))
    if size == "smoke":
        return RunConfig(loop=dict(_LOOP, budget=10, retrain_every=5),
                         task=dict(task, num_initial=2000), bo=tiny_gp(), seeds=(0,))
    seeds = (0, 1, 2, 3, 4) if family or size == "paper" else (0, 1, 2)
    loop = dict(_LOOP, budget=500, retrain_every=50)
    if size == "cpu":
        return RunConfig(loop=loop, task=dict(task, num_initial=10_000), bo=small_gp(),
                         seeds=seeds)
    return RunConfig(loop=loop, task=task, seeds=seeds)  # paper: all 220,011, the default GP


def build_task(key, config: RunConfig):
    """:func:`wrjax.tasks.chem.make_chem_task` with the preset's options (``k`` is ignored by
    the builder: the shipped models are unweighted, the loop's first fine-tune applies k)."""
    from wrjax.tasks.chem import make_chem_task

    names = ("num_initial", "objective", "checkpoint")
    opts = {n: config.task[n] for n in names if n in config.task}
    return make_chem_task(key, k=config.loop.get("k"), **opts)


def constraint(config: RunConfig):
    """For ``"constrained-ei"``: the heavy atoms of the molecule each token row spells,
    feasible at most 38 (ZINC's largest)."""
    from wrjax.tasks import chem

    vocab = chem.load_checkpoint(config.task.get("checkpoint")).vocab

    def heavy_atoms(task, rows):
        counts = [chem.heavy_atom_count(s) for s in chem.decode_tokens(rows, vocab)]
        return [float("nan") if c is None else float(c) for c in counts]

    return heavy_atoms, float(chem.ZINC_MAX_HEAVY_ATOMS)
