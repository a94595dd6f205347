"""Deprecated module: the retraining loop now lives in :mod:`wrjax.loop` and the task
contract in :mod:`wrjax.task`. The old names are re-exported here for existing imports
(``from wrjax.lso import Task`` does not import the loop)."""

from wrjax.task import Task

_LOOP_NAMES = (
    "LSOConfig", "Proposal", "ProposeContext", "Optimizer", "RunResult", "run", "load_records",
    "grid_optimizer", "encode_all", "STATUSES",
)  # fmt: skip

__all__ = ["Task", *_LOOP_NAMES, "gp_ei_optimizer"]


def __getattr__(name):
    if name in _LOOP_NAMES:
        import wrjax.loop

        return getattr(wrjax.loop, name)
    if name == "gp_ei_optimizer":
        from wrjax.bo import make_gp_ei

        return make_gp_ei
    raise AttributeError(f"module 'wrjax.lso' has no attribute {name!r}")
