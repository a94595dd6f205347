"""Settings of one run of Algorithm 1, validated once when built."""

from __future__ import annotations

import dataclasses
import math

from wrjax._checks import check_choice, check_int, check_positive
from wrjax.typing import KSchedule, WeightFn
from wrjax.weighting import format_k, k_values, make_cycle_weight_fn

__all__ = ["LSOConfig", "WEIGHTINGS", "VARIANCE_REDUCTIONS"]

WEIGHTINGS = ("rank", "uniform", "dbas", "cem-pi", "rwr")
VARIANCE_REDUCTIONS = ("sample", "duplicate", "none")


@dataclasses.dataclass(frozen=True)
class LSOConfig:
    """Settings of one run of Algorithm 1 (validated on construction).

    The optimiser over the latent space is not a setting: it is passed to
    :func:`wrjax.run` (``optimizer=wrjax.make_gp_ei(...)`` or ``wrjax.grid_optimizer()``).

    Attributes:
      budget: number of objective evaluations (the paper: 500).
      retrain_every: evaluations between retrains; ``None`` never retrains after the
        initial training (the paper: 50).
      k: rank-weighting strength (eq. 3): a float (``inf`` is uniform weighting, i.e. no
        weighting) or a schedule ``cycle -> k`` such as :func:`wrjax.geometric_k`. Checked
        here for every cycle of the run.
      weighting: ``"rank"`` (default), ``"uniform"``, ``"dbas"``, ``"cem-pi"``, ``"rwr"``.
      weighting_params: extra parameters of the non-rank schemes, e.g. ``(("alpha", 0.1),)``.
      variance_reduction: how weights reach the minibatches: ``"sample"`` (draw with
        ``p ∝ w``; the authors' shapes and chemistry code), ``"duplicate"`` (appendix A.2
        copies above ``w_max``, weights in the loss; the paper's text), or ``"none"``
        (weights in the loss, plain epoch).
      w_max: the A.2 cap on a copy's weight (relative to the mean weight 1).
      initial_finetune_epochs: length of the cycle-0 weighted training on the initial data
        (the authors: 1 epoch for shapes and chemistry; 0 skips it).
      finetune_epochs: length of each later retrain, in epochs of the *initial* dataset (the
        authors: 0.1), so the number of steps, and hence the compiled program, stays fixed.
      finetune_steps: if set, overrides ``finetune_epochs`` with a number of steps.
      batch_size, learning_rate: fine-tuning minibatch size and Adam learning rate.
      reset_optimizer: a fresh Adam state at every retrain (the authors' expressions code)
        instead of continuing the previous one.
      from_scratch: re-initialise the model before each retrain instead of fine-tuning.
      max_consecutive_discards: stop the run (status ``stalled``) after this many discarded
        suggestions in a row.
      seed: recorded for reference; randomness comes from the key given to :func:`wrjax.run`.
      objective_timeout: seconds one objective call may take (``None``, the default: no
        limit). The objective then runs in a worker thread; a call past the limit is recorded
        as ``objective-timeout`` (it counts toward the budget) and the thread is abandoned
        (a thread cannot be killed: an objective that may hang forever should be a process).

    >>> LSOConfig(budget=100, retrain_every=50, k=1e-3).cycle_k
    (0.001, 0.001)
    >>> LSOConfig(k=0.0)
    Traceback (most recent call last):
    ...
    ValueError: LSOConfig.k must be > 0 (use k=inf for uniform weights), got 0.0
    """

    budget: int = 500
    retrain_every: int | None = 50
    k: float | KSchedule = 1e-3
    weighting: str = "rank"
    weighting_params: tuple = ()
    variance_reduction: str = "sample"
    w_max: float = 5.0
    initial_finetune_epochs: float = 1.0
    finetune_epochs: float = 0.1
    finetune_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    reset_optimizer: bool = False
    from_scratch: bool = False
    max_consecutive_discards: int = 200
    seed: int = 0
    objective_timeout: float | None = None

    def __post_init__(self):
        try:
            self._validate()
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith("LSOConfig.") else f"LSOConfig.{msg}") from None

    def _validate(self):
        check_int("budget", self.budget, minimum=1)
        if self.retrain_every is not None:
            check_int("retrain_every", self.retrain_every, minimum=1)
        # k is checked at every cycle of the run, here and only here.
        cycle_k = k_values(self.k, self.num_cycles)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("variance_reduction", self.variance_reduction, VARIANCE_REDUCTIONS)
        if not self.w_max >= 1:
            raise ValueError(f"w_max must be >= 1, got {self.w_max!r}")
        for f in ("initial_finetune_epochs", "finetune_epochs"):
            if not getattr(self, f) >= 0:
                raise ValueError(f"{f} must be >= 0, got {getattr(self, f)!r}")
        if self.finetune_steps is not None:
            check_int("finetune_steps", self.finetune_steps, minimum=0)
        check_int("batch_size", self.batch_size, minimum=1)
        check_positive("learning_rate", self.learning_rate)
        check_int("max_consecutive_discards", self.max_consecutive_discards, minimum=1)
        if self.objective_timeout is not None:
            if isinstance(self.objective_timeout, bool):
                raise ValueError(f"objective_timeout must be seconds > 0 or None, got {self.objective_timeout!r}")
            check_positive("objective_timeout", self.objective_timeout)
        try:
            weight_fn = make_cycle_weight_fn(self.weighting, **dict(self.weighting_params))
        except (TypeError, ValueError) as e:
            raise ValueError(f"weighting_params: {e}") from None
        # Derived once: frozen, so stored past __setattr__ (not fields: not in eq/hash/json).
        object.__setattr__(self, "_cycle_k", cycle_k)
        object.__setattr__(self, "_weight_fn", weight_fn)

    @property
    def cycle_len(self) -> int:
        """Evaluations per retrain cycle (the whole budget without retraining)."""
        return self.retrain_every or self.budget

    @property
    def num_cycles(self) -> int:
        """Retrain cycles in the run (the last may be shorter)."""
        return -(-self.budget // self.cycle_len)

    @property
    def cycle_k(self) -> tuple[float, ...]:
        """``k`` at each cycle ``0 .. num_cycles - 1``."""
        return self._cycle_k

    @property
    def weight_fn(self) -> WeightFn:
        """``(scores, mask, k) -> weights`` of the chosen scheme (``k`` ignored unless rank)."""
        return self._weight_fn

    def k_at(self, cycle: int) -> float:
        """``k`` at a retrain cycle (held at the last value past the run's cycles)."""
        return self._cycle_k[min(cycle, len(self._cycle_k) - 1)]

    def finetune_steps_at(self, cycle: int, n0: int) -> int:
        """Fine-tune steps at the start of ``cycle`` on ``n0`` initial points (0: none)."""
        if cycle == 0:
            return _num_steps(self.initial_finetune_epochs, n0, self.batch_size)
        if self.retrain_every is None:
            return 0
        if self.finetune_steps is not None:
            return self.finetune_steps
        return _num_steps(self.finetune_epochs, n0, self.batch_size)

    def to_json(self) -> dict:
        """A JSON-able description used to detect a changed config on resume."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        k = self.k
        if callable(k):
            out["k"] = {"schedule": format_k(k), "values": list(self.cycle_k)}
        elif math.isinf(k):
            out["k"] = "inf"
        out["weighting_params"] = [list(p) for p in self.weighting_params]
        if self.objective_timeout is None:  # the default: absent, as in runs made before it
            del out["objective_timeout"]
        return out


def _num_steps(epochs: float, n: int, batch: int) -> int:
    return int(math.ceil(epochs * n / batch)) if epochs > 0 else 0

