"""Pretraining the SELFIES VAE on ZINC250k: the recipe (:func:`pretrain`, on
:func:`wrjax.vae.train`) and the ``chem`` subcommand of ``experiments/pretrain.py``.

The vocabulary is built from the whole JT-VAE training split (so that every training molecule
can be encoded later by the optimiser); the model trains on all of it or on a random
``--num-train`` subset, for ``--num-steps`` updates or until ``--time-limit`` seconds.

Examples::

    # the reconstructing model (checkpoints/chem/selfies_gru_vae): resumable, run it again
    # with the same arguments to continue from its training state after an interruption
    python experiments/pretrain.py chem --preset gru --epochs 30 --batch-size 128 \\
        --lr 1e-3 --beta 0.1 --warmup-steps 4000 --free-bits 0.1 --chunk-steps 200 \\
        --checkpoint-every 600
    # write the evaluated checkpoint from the latest training state without training more
    python experiments/pretrain.py chem --preset gru --epochs 30 ... --finalize
    # the first CPU model (checkpoints/chem/selfies_vae_cpu; parallel decoder, 0% exact
    # reconstruction, kept for its recorded results)
    python experiments/pretrain.py chem --preset cpu --num-steps 4000 --batch-size 128
    # the larger model, for an accelerator (the authors: 30 epochs, batch 32, lr 7e-4)
    python experiments/pretrain.py chem --preset accelerator --epochs 30 --batch-size 32 \\
        --lr 7e-4 --out checkpoints/chem/selfies_vae_accel

Writes ``OUT.msgpack`` (parameters) and ``OUT.json``: the command, machine, times, config,
vocabulary, training history, reconstruction on held-out molecules (ZINC valid split),
validity / uniqueness / novelty of prior samples and their score distribution vs ZINC; and,
during training, the resumable state ``OUT.train.{msgpack,json}`` (parameters, Adam moments,
step, history, the arguments), every ``--checkpoint-every`` seconds and at the end. A run
whose ``OUT.train.*`` exists resumes from it, and refuses arguments that change the training
(:data:`TRAINING_ARGS`) unless ``--fresh``. Sessions of the old script
``experiments/pretrain_chem.py`` resume the same way (its arguments are these).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import optax
import selfies as sf

from wrjax import parallel
from wrjax.checkpoint import load_metadata, load_pytree, save_pytree
from wrjax.tasks.chem import data
from wrjax.tasks.chem import model as cm
from wrjax.tasks.chem.novelty import NoveltyChecker
from wrjax.tasks.chem.objective import penalized_logp_batch
from wrjax.tasks.chem.selfies import build_vocab, selfies_to_tokens, to_selfies_batch
from wrjax.typing import PyTree
from wrjax.vae import History, TrainState, init_train_state, train
from wrjax.weighting import rank_weights

__all__ = [
    "pretrain",
    "pretrain_optimizer",
    "PRESETS",
    "DEFAULT_NAMES",
    "TRAINING_ARGS",
    "add_arguments",
    "main",
]

_F32 = np.float32


def pretrain_optimizer(
    learning_rate: float,
    *,
    num_steps: int,
    lr_decay: bool = False,
    clip_norm: float | None = 20.0,
) -> optax.GradientTransformation:
    """The optimiser :func:`pretrain` uses (also to rebuild its state's structure on resume)."""
    lr = optax.cosine_decay_schedule(learning_rate, num_steps, 0.1) if lr_decay else learning_rate
    return cm.make_optimizer(lr, clip_norm=clip_norm)


def pretrain(
    key: jax.Array,
    tokens: np.ndarray,
    *,
    config: cm.SelfiesVAEConfig,
    num_steps: int,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    beta: float = 0.1,
    warmup_steps: int = 0,
    clip_norm: float | None = 20.0,
    lr_decay: bool = False,
    k: float = math.inf,
    scores: np.ndarray | None = None,
    params: PyTree | None = None,
    chunk_steps: int = 100,
    progress: bool = True,
    time_limit_s: float | None = None,
    free_bits: float = 0.0,
    state: TrainState | None = None,
    history: History | None = None,
    on_chunk: Callable[[TrainState, History], TrainState | None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[TrainState, History]:
    """Train the SELFIES VAE on ``tokens (N, L)`` with the (weighted) ELBO, through
    :func:`wrjax.vae.train`.

    Args:
      key: PRNG key (split into the initialisation and the training key; the minibatches of
        the chunk after ``done`` updates come from ``fold_in(train_key, done)``, so a resumed
        run draws the same batches as an uninterrupted one).
      tokens: ``(N, max_len)`` int token ids (from :func:`wrjax.tasks.chem.encode_selfies`).
      config: the model; ``config.max_len`` must equal ``tokens.shape[1]``.
      num_steps: number of updates (one epoch is ``ceil(N / batch_size)``).
      batch_size, learning_rate, clip_norm: Adam with gradient clipping.
      beta: final KL weight; ``warmup_steps`` > 0 anneals it linearly from 0.
      lr_decay: cosine decay of the learning rate to 10% over ``num_steps``.
      k: rank-weighting strength; ``inf`` (default, as the authors' chemistry pretraining)
        is uniform. Finite ``k`` needs ``scores`` and weights the loss by eq. 3.
      params: initial parameters (continue training) instead of a fresh init.
      chunk_steps: updates per compiled ``fit`` call (the granularity of the history, the
        progress line, ``on_chunk`` and ``time_limit_s``).
      time_limit_s: stop after the chunk that passes this wall time (of this call).
      free_bits: KL floor in nats per latent dimension (``wrjax.vae.free_bits_kl``).
      state, history: a :class:`wrjax.vae.TrainState` and its :class:`wrjax.vae.History` to
        *resume* from (written by a previous call's ``on_chunk``); training continues at
        ``state.step`` up to ``num_steps``.
      on_chunk: called after every chunk with the state and history (e.g. to checkpoint).
      mesh: data-parallel training over this device mesh (:mod:`wrjax.parallel`): state and
        data replicated, each minibatch split over the devices; ``batch_size`` must divide
        by the device count. ``None``: the default device.

    Returns:
      ``(TrainState, History)``.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] != config.max_len:
        raise ValueError(f"tokens must be (N, {config.max_len}), got {tokens.shape}")
    if tokens.shape[0] == 0:
        raise ValueError("no training data")
    if tokens.min() < 0 or tokens.max() >= config.vocab_size:
        raise ValueError(f"token ids must be in [0, {config.vocab_size})")
    if num_steps < 1 or batch_size < 1 or chunk_steps < 1:
        raise ValueError("num_steps, batch_size and chunk_steps must be >= 1")
    if math.isinf(k):
        weights = jax.numpy.ones((tokens.shape[0],), _F32)
    else:
        if scores is None or np.shape(scores) != (tokens.shape[0],):
            raise ValueError("a finite k needs scores of shape (N,)")
        weights = rank_weights(jax.numpy.asarray(scores, _F32), k)

    init_key, train_key = jax.random.split(key)
    optimizer = pretrain_optimizer(
        learning_rate, num_steps=num_steps, lr_decay=lr_decay, clip_norm=clip_norm
    )
    if state is None:
        first = cm.init_params(init_key, config) if params is None else params
        state = init_train_state(first, optimizer)
        history = History.empty()
    elif history is None:
        raise ValueError("resuming needs the history saved with the state")
    step_fn = cm.make_chem_train_step(
        cm.SelfiesVAE(config), optimizer, beta=cm.kl_warmup(beta, warmup_steps),
        free_bits=free_bits,
    )  # fmt: skip
    tokens = jax.numpy.asarray(tokens, jax.numpy.int32)
    sharding = None
    if mesh is not None:
        if batch_size % mesh.size:
            raise ValueError(f"batch_size {batch_size} must divide by the {mesh.size} devices")
        state, tokens, weights = parallel.replicate((state, tokens, weights), mesh)
        sharding = parallel.batch_sharding(mesh)
    return train(
        train_key, state, step_fn, tokens, weights, num_steps=num_steps, batch_size=batch_size,
        chunk_steps=chunk_steps, history=history, on_chunk=on_chunk, time_limit_s=time_limit_s,
        progress=progress, batch_sharding=sharding,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The `chem` subcommand of experiments/pretrain.py
# ---------------------------------------------------------------------------------------------

PRESETS = {"cpu": cm.cpu_config, "gru": cm.gru_config, "accelerator": cm.accelerator_config}
DEFAULT_NAMES = {
    "cpu": "selfies_vae_cpu", "gru": "selfies_gru_vae", "accelerator": "selfies_vae_accelerator",
}  # fmt: skip
#: Arguments that must not change between the sessions of one resumable training.
TRAINING_ARGS = (
    "preset", "max_len", "num_steps", "epochs", "batch_size", "lr", "lr_decay", "beta",
    "warmup_steps", "clip_norm", "num_train", "chunk_steps", "seed", "free_bits",
)  # fmt: skip
#: How the commands of the sessions are spelled: this one, and the old script's.
COMMAND = "python experiments/pretrain.py chem"
_OLD_COMMAND = "python experiments/pretrain_chem.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``chem`` subcommand's arguments: those of the old ``experiments/pretrain_chem.py``
    but ``--out`` (default ``checkpoints/chem/<preset's name>``), ``--seed`` and
    ``--time-limit``, which ``experiments/pretrain.py`` gives every subcommand."""
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--max-len", type=int, default=None, help="default: the preset's")
    p.add_argument("--num-steps", type=int, default=None)
    p.add_argument("--epochs", type=float, default=None, help="alternative to --num-steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-decay", action="store_true", help="cosine decay to 10%% over the run")
    p.add_argument("--beta", type=float, default=0.2, help="final KL weight")
    p.add_argument("--warmup-steps", type=int, default=1000, help="linear KL annealing")
    p.add_argument("--clip-norm", type=float, default=20.0)
    p.add_argument("--num-train", type=int, default=None, help="random training subset")
    p.add_argument("--chunk-steps", type=int, default=100)
    p.add_argument("--free-bits", type=float, default=0.0, help="KL floor, nats per dimension")
    p.add_argument(
        "--checkpoint-every", type=float, default=300.0,
        help="seconds between saves of the resumable training state OUT.train.*",
    )  # fmt: skip
    p.add_argument(
        "--finalize", action="store_true",
        help="no training: evaluate the latest training state and write the checkpoint",
    )  # fmt: skip
    p.add_argument(
        "--fresh", action="store_true", help="ignore an existing training state (start over)"
    )
    p.add_argument(
        "--data-parallel", action="store_true",
        help="split each batch over all devices (jax.sharding; see wrjax.parallel)",
    )  # fmt: skip
    p.add_argument(
        "--distributed", action="store_true",
        help="multi-host: call jax.distributed.initialize() first (cluster from the environment)",
    )  # fmt: skip
    p.add_argument("--num-eval", type=int, default=2000, help="held-out molecules")
    p.add_argument("--prior-samples", type=int, default=1000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=None)


def _check_args(args) -> None:
    if (args.num_steps is None) == (args.epochs is None):
        raise SystemExit("give exactly one of --num-steps and --epochs")


def _summary(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    q = np.percentile(x, [5, 25, 50, 75, 95]) if x.size else [math.nan] * 5
    return {
        "n": int(x.size),
        "mean": float(x.mean()) if x.size else math.nan,
        "std": float(x.std()) if x.size else math.nan,
        "max": float(x.max()) if x.size else math.nan,
        "percentiles_5_25_50_75_95": [float(v) for v in q],
    }


def _args_record(args) -> dict:
    """The arguments as JSON (the dispatcher's own attributes left out)."""
    skip = {"save", "command", "extra", "checkpoint_dir"}
    return {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if not k.startswith("_") and k not in skip and not callable(v)
    }


def _session_args(command: str) -> str:
    """A command's arguments, whichever spelling of the script it was recorded with."""
    for prefix in (COMMAND, _OLD_COMMAND):
        if command == prefix or command.startswith(prefix + " "):
            return command[len(prefix):].strip()
    return command


def info_commands(path: Path, command: str) -> list[str]:
    """The commands of every session of this training so far (this one last; a session
    recorded under the old script's name counts as the same command)."""
    meta_path = Path(f"{path}.json")
    old = json.loads(meta_path.read_text()).get("commands", []) if meta_path.exists() else []
    if old and _session_args(old[-1]) == _session_args(command):
        return old
    return old + [command]


def save_training_state(path: Path, state, history: History, args, command: str) -> None:
    """Write the resumable training state (params, Adam moments, step, history) atomically."""
    meta = {
        "args": _args_record(args),
        "history": history._asdict(),
        "step": int(state.step),
        "commands": info_commands(path, command),
    }
    # The blob first, then the JSON: the JSON's step names a blob at least that new.
    save_pytree(path, state, meta)


def load_training_state(path: Path, config, optimizer):
    """The state, history and arguments saved by :func:`save_training_state`."""
    meta = load_metadata(path)
    params = jax.eval_shape(lambda: cm.init_params(jax.random.key(0), config))
    target = jax.eval_shape(lambda p: init_train_state(p, optimizer), params)
    target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), target)
    state = jax.tree.map(jax.numpy.asarray, load_pytree(path, target))
    history = History.from_dict(meta["history"])
    if int(state.step) != meta["step"]:
        raise SystemExit(f"{path}: state step {int(state.step)} != recorded {meta['step']}")
    return state, history, meta["args"]


def changed_training_args(saved: dict, args) -> list[str]:
    """The :data:`TRAINING_ARGS` whose values differ from the saved session's."""
    now = vars(args)
    return [k for k in TRAINING_ARGS if saved.get(k) != now.get(k)]


def main(args: argparse.Namespace) -> dict:
    """Run one pretraining session (the protocol of ``experiments/pretrain.py``: ``args``
    carries ``out``, ``seed``, ``time_limit``, ``command``, ``checkpoint_dir`` and ``save``);
    returns the record written beside the checkpoint."""
    _check_args(args)
    command = args.command
    out = Path(args.out) if args.out else Path(args.checkpoint_dir) / DEFAULT_NAMES[args.preset]
    if args.distributed:
        if args.time_limit is not None:  # each process would stop after its own chunk: a hang
            raise SystemExit("--time-limit is not supported with --distributed")
        parallel.initialize_distributed()
    # several processes (--distributed): each trains its share, only the first one writes
    writer = jax.process_index() == 0
    t_start = time.perf_counter()
    key = jax.random.key(args.seed)
    train_key, prior_key = jax.random.split(key)
    rng = np.random.default_rng(args.seed)

    # Data: SELFIES of the whole training split (cached), vocabulary, tokens.
    sel_train = data.zinc_selfies("train", data_dir=args.data_dir, processes=args.processes)
    vocab = build_vocab(sel_train)
    make_config = PRESETS[args.preset]
    if args.max_len is None:
        config = make_config(vocab.size)
    else:
        config = make_config(vocab.size, max_len=args.max_len)
    tokens, ok = selfies_to_tokens(sel_train, vocab, max_len=config.max_len)
    rows = np.flatnonzero(ok)
    if args.num_train is not None:
        rows = np.sort(rng.choice(rows, size=min(args.num_train, rows.size), replace=False))
    train_tokens = tokens[rows]
    steps = args.num_steps or math.ceil(args.epochs * rows.size / args.batch_size)
    print(
        f"vocab {vocab.size} symbols, max_len {config.max_len}, {rows.size} training molecules "
        f"({int((~ok).sum())} not encodable), {steps} steps of {args.batch_size}",
        flush=True,
    )
    t_data = time.perf_counter() - t_start

    train_path = Path(f"{out}.train")
    optimizer = pretrain_optimizer(
        args.lr, num_steps=steps, lr_decay=args.lr_decay, clip_norm=args.clip_norm
    )
    state, history = None, None
    if Path(f"{train_path}.msgpack").exists() and not args.fresh:
        state, history, saved_args = load_training_state(train_path, config, optimizer)
        changed = changed_training_args(saved_args, args)
        if changed:
            raise SystemExit(
                f"{train_path}.msgpack was trained with other {changed}; pass the same "
                "arguments to resume, or --fresh to start over"
            )
        print(f"resuming from {train_path}.msgpack at step {int(state.step)}", flush=True)
    elif args.finalize:
        raise SystemExit(f"--finalize needs a training state at {train_path}.msgpack")
    last_save = [time.perf_counter()]

    def save_state(st, hist, force=False):
        if force or time.perf_counter() - last_save[0] >= args.checkpoint_every:
            if writer:  # the state is replicated: every process holds all of it
                save_training_state(train_path, st, hist, args, command)
            last_save[0] = time.perf_counter()

    mesh = parallel.data_mesh() if args.data_parallel else None
    if mesh is not None:
        n = jax.process_count()
        print(f"data-parallel over {mesh.size} devices, {n} process(es)", flush=True)
    if not args.finalize:
        state, history = pretrain(
            train_key,
            train_tokens,
            config=config,
            num_steps=steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            beta=args.beta,
            warmup_steps=args.warmup_steps,
            clip_norm=args.clip_norm,
            lr_decay=args.lr_decay,
            chunk_steps=args.chunk_steps,
            time_limit_s=args.time_limit,
            free_bits=args.free_bits,
            state=state,
            history=history,
            on_chunk=save_state,
            mesh=mesh,
        )
        save_state(state, history, force=True)
    train_seconds = history.seconds[-1] if history.seconds else 0.0
    params = state.params
    if jax.process_count() > 1:  # replicated over the processes: evaluate a local copy
        params = jax.tree.map(np.asarray, params)
    model = cm.SelfiesVAE(config)
    steps_done = int(state.step)

    # Held-out reconstruction: the first --num-eval encodable molecules of the valid split.
    t0 = time.perf_counter()
    sel_valid = data.zinc_selfies("valid", data_dir=args.data_dir, processes=args.processes)
    v_tokens, v_ok = selfies_to_tokens(sel_valid, vocab, max_len=config.max_len)
    v_tokens = v_tokens[v_ok][: args.num_eval]
    recon = cm.reconstruction_metrics(model, params, v_tokens, vocab)
    seen = rng.choice(rows.size, min(args.num_eval, rows.size), replace=False)
    train_recon = cm.reconstruction_metrics(model, params, train_tokens[seen], vocab)

    # Prior samples: validity, uniqueness, novelty, scores vs ZINC.
    known = NoveltyChecker(
        data.zinc_novelty_keys("train", data_dir=args.data_dir, processes=args.processes),
        canonical=True,
    )
    samples = cm.sample_prior_smiles(prior_key, model, params, vocab, args.prior_samples)
    rates = cm.sample_metrics(samples, known)
    sample_scores = penalized_logp_batch(samples, progress=False)
    zinc_train_scores = data.zinc_scores("train", data_dir=args.data_dir, processes=args.processes)
    # Canonical SELFIES lengths of the samples: how close they come to max_len.
    lengths = [sf.len_selfies(s) for s in to_selfies_batch(samples, progress=False) if s]
    eval_seconds = time.perf_counter() - t0

    results = {
        "reconstruction": recon._asdict(),
        "reconstruction_train_subset": train_recon._asdict(),
        "prior_samples": rates._asdict(),
        "prior_sample_scores": _summary(sample_scores),
        "prior_sample_selfies_lengths": _summary(lengths),
        "zinc_train_scores": _summary(zinc_train_scores),
        "examples": samples[:10],
    }
    meta = {
        "command": command,
        "commands_of_training_sessions": info_commands(train_path, command),
        "args": _args_record(args),
        "data": {"dataset": "zinc250k", "split": "train", "num_train": int(rows.size)},
        "seconds": {
            "data": t_data,
            "train": train_seconds,
            "eval": eval_seconds,
            "total": time.perf_counter() - t_start,
        },
        "metrics": {
            "reconstruction": recon._asdict(),
            "prior_samples": rates._asdict(),
        },
        "steps": steps_done,
        "epochs": steps_done * args.batch_size / rows.size,
        "num_train": int(rows.size),
        "num_params": cm.num_params(params),
        "beta": args.beta,
        "free_bits": args.free_bits,
        "learning_rate": args.lr,
        "score": {"floor": -6.0, "constants": "zinc250k"},
        "history": history._asdict(),
        "results": results,
    }
    if writer:
        args.save(out, params, config=config.to_json(), record={**meta, "vocab": vocab.to_json()})
    print(f"after {train_seconds:.0f}s of training")
    print(
        f"held-out reconstruction: token {recon.token_accuracy:.3f}, sequence "
        f"{recon.sequence_accuracy:.3f}, molecule {recon.molecule_accuracy:.3f} (n={recon.num})"
    )
    print(
        f"prior samples: validity {rates.validity:.3f}, uniqueness {rates.uniqueness:.3f}, "
        f"novelty {rates.novelty:.3f}; score mean {results['prior_sample_scores']['mean']:.2f} "
        f"(ZINC train {results['zinc_train_scores']['mean']:.2f})"
    )
    return meta
