"""Algorithm 1 of the paper (latent-space optimisation with weighted retraining).

* :mod:`~wrjax.loop.config`: :class:`LSOConfig`, the run's settings.
* :mod:`~wrjax.loop.state`: :class:`LSOState`, the run's state as one pytree.
* :mod:`~wrjax.loop.steps`: the pure steps (retrain, begin_cycle, query, append).
* :mod:`~wrjax.loop.optimizers`: the optimiser protocol and the grid optimiser.
* :mod:`~wrjax.loop.records`: the record log, replay and summary.
* :mod:`~wrjax.loop.run`: the host driver :func:`run` (records, resume, callbacks).
* :mod:`~wrjax.loop.compiled`: the compiled driver (one XLA program, for JAX tasks).
"""

from wrjax.loop.compiled import CompiledRunResult, make_compiled_run, make_seeds_run
from wrjax.loop.config import LSOConfig
from wrjax.loop.optimizers import GridState, Optimizer, Proposal, grid_optimizer, hash_rows
from wrjax.loop.records import STATUSES, load_records
from wrjax.loop.run import RunResult, run
from wrjax.loop.state import LSOState, PseudoRows, Streams, init_state
from wrjax.loop.steps import ProposeContext, Trainer, encode_all, make_trainer, retrain, query

__all__ = [
    "LSOConfig", "LSOState", "PseudoRows", "Streams", "init_state", "Trainer", "make_trainer",
    "retrain", "query", "ProposeContext", "encode_all", "Optimizer", "Proposal", "GridState",
    "grid_optimizer", "hash_rows", "STATUSES", "load_records", "RunResult", "run",
    "CompiledRunResult", "make_compiled_run", "make_seeds_run",
]  # fmt: skip
