"""The expression grammar VAE's pretraining (the authors' recipe), on ``wrjax.vae.train``, and
the ``expressions`` subcommand of ``experiments/pretrain.py``.

Two modes:

* from scratch with rank weights of strength ``--k`` (the authors' pretraining: one model
  per k, ``--epochs`` passes, batch 512, Adam 1e-3, ReduceLROnPlateau);
* ``--init CHECKPOINT``: fine-tune an existing model (fresh Adam) with weights of strength
  ``--k``, e.g. one epoch from the unweighted model, as the paper does for chemistry.

The shipped checkpoints were made by (in this order)::

    python experiments/pretrain.py expressions --k inf --epochs 20
    python experiments/pretrain.py expressions --k 1e-3 --epochs 1 --batch-size 600 \\
        --init checkpoints/expressions/expr-k_inf

giving ``checkpoints/expressions/expr-k_inf`` and ``expr-k_1e-3`` (they record the command's
old spelling, ``python experiments/pretrain_expressions.py ...``, same arguments).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax.resampling import duplicate_copies
from wrjax.tasks.expressions.data import ExpressionData, load_expressions
from wrjax.tasks.expressions.model import (
    LATENT_NOISE_STD,
    GrammarVAE,
    init_params,
    log_likelihood,
    make_expressions_train_step,
)
from wrjax.typing import PyTree
from wrjax.vae import History, init_train_state, train
from wrjax.weighting import rank_weights

__all__ = ["PretrainInfo", "pretrain", "PRESETS", "add_arguments", "main"]

#: ``experiments/pretrain.py expressions`` has no presets: its flags default to the
#: authors' pretraining (the shipped models' two commands are in the module docstring).
PRESETS: tuple[str, ...] = ()

_F32 = jnp.float32


class PretrainInfo(NamedTuple):
    """What :func:`pretrain` did: the training history (one chunk per epoch; ``metrics``
    holds each epoch's ``val_loss`` and ``learning_rate``) and the data split."""

    history: History
    num_train: int  # training points (before duplication)
    num_copies: int  # rows after duplicate_copies (steps per epoch = ceil(copies / batch))
    num_val: int
    val_indices: np.ndarray  # rows of the data held out

    @property
    def train_loss(self) -> list[float]:
        """Mean weighted -ELBO over each epoch's steps."""
        return self.history.loss

    @property
    def val_loss(self) -> list[float]:
        """Weighted -ELBO on the held-out split after each epoch (``nan`` without one)."""
        return [m.get("val_loss", math.nan) for m in self.history.metrics]

    @property
    def learning_rate(self) -> list[float]:
        """The Adam step size of each epoch."""
        return [m["learning_rate"] for m in self.history.metrics]


def _plateau(val: float, best: float, wait: int, lr: float, *, factor, patience, min_lr, min_delta):
    """Keras ``ReduceLROnPlateau`` (mode min, absolute ``min_delta``, cooldown 0).

    Not ``optax.contrib.reduce_on_plateau``: that one scales the *updates* by a factor fed
    with a loss at every update (accumulated over ``accumulation_size`` steps, relative
    ``rtol`` plus absolute ``atol``), while this schedule sets Adam's step size once per
    epoch from the held-out loss, which the compiled training steps never see.
    """
    if val < best - min_delta:
        return val, 0, lr
    wait += 1
    if wait >= patience:
        return best, 0, max(lr * factor, min_lr)
    return best, wait, lr


def pretrain(
    key: jax.Array,
    model: GrammarVAE | None = None,
    params: PyTree | None = None,
    *,
    k: float,
    num_epochs: int,
    batch_size: int = 512,
    learning_rate: float = 1e-3,
    data: ExpressionData | None = None,
    holdout_fraction: float = 0.1,
    w_max: float = 1.0,
    plateau_factor: float = 0.2,
    plateau_patience: int = 1,
    min_learning_rate: float = 1e-4,
    time_limit_s: float | None = None,
    progress: bool | str | None = "expressions",
) -> tuple[PyTree, PretrainInfo]:
    """Train the grammar VAE with the rank-weighted ELBO (the authors' pretraining).

    Rank weights (eq. 3) with strength ``k`` are computed over the training split; points
    heavier than ``w_max`` times the mean weight are duplicated (appendix A.2; the authors'
    ``reduce_weight_variance`` splits weights into copies of at most 1, i.e. ``w_max = 1``)
    and each epoch walks once through the copies with the copy weights in the loss (one
    ``wrjax.vae.train`` chunk per epoch, each with its own key). Adam (``eps = 1e-7``,
    Keras's) with Keras's ``ReduceLROnPlateau`` on the held-out loss.

    Args:
      key: PRNG key (split, parameter init, per-epoch batch plans).
      model: default :class:`GrammarVAE` ``()``.
      params: start from these (fine-tuning) instead of a fresh init; Adam starts fresh.
      k: rank-weight strength (``inf`` = unweighted).
      num_epochs: passes over the (duplicated) training data.
      batch_size: minibatch size (authors: 512 pretraining, 600 fine-tuning).
      learning_rate: initial Adam step size.
      data: default :func:`load_expressions` ``()``.
      holdout_fraction: random share held out for the plateau schedule and metrics
        (Keras's ``validation_split = 0.1``).
      w_max: duplication threshold (``>= 1``).
      plateau_factor, plateau_patience, min_learning_rate: the LR schedule; patience 0
        disables it.
      time_limit_s: stop after the epoch that passes this many seconds.
      progress: ``wrjax.vae.train``'s: a label or ``True`` prints one line per epoch,
        ``None`` is silent.

    Returns:
      ``(params, PretrainInfo)``.
    """
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    data = data if data is not None else load_expressions()
    model = model or GrammarVAE()
    split_key, init_key, train_key, val_key = jax.random.split(key, 4)

    n = len(data.expressions)
    perm = np.asarray(jax.random.permutation(split_key, n))
    n_val = int(round(holdout_fraction * n))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if train_idx.size == 0:
        raise ValueError("no training data left after the hold-out split")

    weights = rank_weights(data.scores[train_idx], k)
    copy_idx, copy_w = duplicate_copies(weights, w_max)
    keep = np.asarray(copy_w) > 0
    rows = train_idx[np.asarray(copy_idx)[keep]]
    x_train = jnp.asarray(data.one_hot[rows])
    w_train = jnp.asarray(np.asarray(copy_w)[keep])
    steps_per_epoch = math.ceil(rows.size / batch_size)

    if params is None:
        params = init_params(init_key, model)
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate, eps=1e-7)
    state = init_train_state(params, optimizer)
    step_fn = make_expressions_train_step(model, optimizer)
    schedule = {"best": math.inf, "wait": 0, "lr": learning_rate}  # the host's copy of the LR

    if n_val:
        x_val = jnp.asarray(data.one_hot[val_idx])
        w_val = rank_weights(data.scores[val_idx], k)  # sums to 1

        @jax.jit
        def val_loss_fn(params, key, x_val, w_val):
            mean, logvar = model.apply({"params": params}, x_val, method=model.encode)
            eps = LATENT_NOISE_STD * jax.random.normal(key, mean.shape, _F32)
            z = mean + jnp.exp(0.5 * logvar) * eps
            logits = model.apply({"params": params}, z, method=model.decode)
            kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)
            neg_elbo = -log_likelihood(logits, x_val) + kl / model.latent_dim
            return jnp.sum(w_val * neg_elbo)

    def validate(state):
        val = float(val_loss_fn(state.params, val_key, x_val, w_val)) if n_val else math.nan
        return {"val_loss": val, "learning_rate": schedule["lr"]}

    def on_chunk(state, history):
        if not (n_val and plateau_patience > 0):
            return None
        lr = schedule["lr"]
        schedule["best"], schedule["wait"], new_lr = _plateau(
            history.metrics[-1]["val_loss"], schedule["best"], schedule["wait"], lr,
            factor=plateau_factor, patience=plateau_patience, min_lr=min_learning_rate,
            min_delta=1e-4,
        )
        if new_lr == lr:
            return None
        schedule["lr"] = new_lr
        hp = dict(state.opt_state.hyperparams, learning_rate=jnp.asarray(new_lr, _F32))
        return state._replace(opt_state=state.opt_state._replace(hyperparams=hp))

    epoch_keys = jax.random.split(train_key, num_epochs)
    state, history = train(
        train_key, state, step_fn, x_train, w_train, num_steps=num_epochs * steps_per_epoch,
        batch_size=batch_size, mode="epoch", chunk_steps=steps_per_epoch,
        chunk_key=lambda done: epoch_keys[done // steps_per_epoch], validate=validate,
        on_chunk=on_chunk, time_limit_s=time_limit_s, progress=progress,
    )  # fmt: skip
    info = PretrainInfo(history, int(train_idx.size), int(rows.size), n_val, val_idx)
    return state.params, info


# ---------------------------------------------------------------------------------------------
# The ``expressions`` subcommand of experiments/pretrain.py
# ---------------------------------------------------------------------------------------------


_RECORDED_ARGS = ("k", "epochs", "batch_size", "lr", "seed", "w_max", "holdout", "norm", "init",
                  "prior_samples", "data_dir", "out", "time_limit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's own flags (``--out``, a checkpoint stem, ``--seed`` and ``--time-limit``
    are ``experiments/pretrain.py``'s)."""
    p = parser
    p.add_argument("--k", type=float, default=math.inf, help="rank-weight strength (inf: none)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--w-max", type=float, default=1.0, help="duplicate-copy threshold")
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--norm", choices=["none", "layer"], default="layer")
    p.add_argument("--init", type=Path, default=None, help="checkpoint to fine-tune from")
    p.add_argument("--prior-samples", type=int, default=1000)
    p.add_argument("--data-dir", type=Path, default=None)


def main(args: argparse.Namespace) -> None:
    """Run one pretraining and save it with ``args.save`` to ``--out`` (default
    ``checkpoints/expressions/expr-k_K``): the per-epoch history, the reconstruction accuracy
    on the held-out split (and its best decile by score) and the prior samples' validity."""
    from wrjax.checkpoint import load_model
    from wrjax.tasks.expressions.data import novelty_key
    from wrjax.tasks.expressions.model import (
        build_model,
        decode_expressions,
        model_config,
        reconstruction_accuracy,
    )
    from wrjax.tasks.expressions.objective import score_batch
    from wrjax.tasks.expressions.task import CHECKPOINT_PREFIX
    from wrjax.weighting import format_k

    out = args.out or args.checkpoint_dir / f"{CHECKPOINT_PREFIX}-k_{format_k(args.k)}"
    key = jax.random.key(args.seed)
    train_key, prior_key, decode_key = jax.random.split(key, 3)

    data = load_expressions(data_dir=args.data_dir)
    if args.init is not None:
        model, params, init_meta = load_model(args.init, build_model)
    else:
        model, params, init_meta = GrammarVAE(norm=args.norm), None, None

    t0 = time.perf_counter()
    params, info = pretrain(
        train_key, model, params, k=args.k, num_epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, data=data, holdout_fraction=args.holdout, w_max=args.w_max,
        time_limit_s=args.time_limit,
    )  # fmt: skip
    train_seconds = time.perf_counter() - t0

    val_x = data.one_hot[info.val_indices]
    recon = reconstruction_accuracy(model, params, val_x)
    # Best 10% of the held-out points by score: what the weighting should favour.
    top = np.argsort(-data.scores[info.val_indices])[: max(1, len(info.val_indices) // 10)]
    recon_top = reconstruction_accuracy(model, params, val_x[top])
    z = jax.random.normal(prior_key, (args.prior_samples, model.latent_dim))
    voted = decode_expressions(decode_key, model, params, z, num_samples=5)
    single = decode_expressions(decode_key, model, params, z, num_samples=1)
    valid = [v for v in voted if v is not None]
    prior_scores = score_batch(valid) if valid else np.array([])
    metrics = {
        "final_train_loss": info.train_loss[-1],
        "final_val_loss": info.val_loss[-1],
        "reconstruction_accuracy": recon,
        "reconstruction_accuracy_best_decile": recon_top,
        "prior_validity": float(np.mean([v is not None for v in voted])),
        "prior_validity_single_decode": float(np.mean([v is not None for v in single])),
        "prior_unique_valid": len({novelty_key(v) for v in valid}),
        "prior_score_mean": float(prior_scores.mean()) if valid else None,
        "prior_score_max": float(prior_scores.max()) if valid else None,
    }
    record = {
        "task": "expressions",
        "k": args.k if not math.isinf(args.k) else "inf",
        "mode": "fine-tune" if args.init is not None else "from scratch",
        "init_checkpoint": str(args.init) if args.init is not None else None,
        "init_command": init_meta.get("command") if init_meta else None,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k in _RECORDED_ARGS},
        "seconds": round(train_seconds, 1),
        "data": {
            "num_data": len(data.expressions),
            "num_train": info.num_train,
            "num_copies": info.num_copies,
            "num_val": info.num_val,
            "val_indices": [int(i) for i in info.val_indices],
        },
        "metrics": metrics,
        "history": info.history._asdict(),
        "loss": "per example sum(masked BCE)/12 + KL/25, noise std 0.01 (Kusner et al.)",
    }
    args.save(out, params, config=model_config(model), record=record)
    print(f"k {record['k']}, {record['mode']}, {record['seconds']} s of training: {metrics}")
