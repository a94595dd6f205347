"""Pretrain the SELFIES VAE of the chemical task on ZINC250k and save a checkpoint.

The vocabulary is built from the whole JT-VAE training split (so that every training molecule
can be encoded later by the optimiser); the model trains on all of it or on a random
``--num-train`` subset, for ``--num-steps`` updates or until ``--time-limit`` seconds.

Examples::

    # the reconstructing model (checkpoints/chem/selfies_gru_vae): resumable, run it again
    # with the same arguments to continue from its training state after an interruption
    python experiments/pretrain_chem.py --preset gru --epochs 20 --batch-size 128 \
        --lr 1e-3 --beta 0.1 --warmup-steps 4000 --free-bits 0.1
    # write the evaluated checkpoint from the latest training state without training more
    python experiments/pretrain_chem.py --preset gru --epochs 20 --finalize
    # the first CPU model (checkpoints/chem/selfies_vae_cpu; parallel decoder, 0% exact
    # reconstruction, kept for its recorded results)
    python experiments/pretrain_chem.py --preset cpu --num-steps 4000 --batch-size 128
    # the larger model, for an accelerator (the authors: 30 epochs, batch 32, lr 7e-4)
    python experiments/pretrain_chem.py --preset accelerator --epochs 30 --batch-size 32 \\
        --lr 7e-4 --out checkpoints/chem/selfies_vae_accel

Writes ``OUT.msgpack`` (parameters) and ``OUT.json``: the command, machine, times, config,
vocabulary, training history, reconstruction on held-out molecules (ZINC valid split),
validity / uniqueness / novelty of prior samples and their score distribution vs ZINC.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import jax
import numpy as np
import selfies as sf

from wrjax import parallel
from wrjax.checkpoint import load_metadata, load_pytree, save_pytree
from wrjax.tasks import chem
from wrjax.tasks import chem_model as cm
from wrjax.vae import init_train_state

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "checkpoints" / "chem"
PRESETS = {"cpu": cm.cpu_config, "gru": cm.gru_config, "accelerator": cm.accelerator_config}
DEFAULT_NAMES = {"cpu": "selfies_vae_cpu", "gru": "selfies_gru_vae", "accelerator": "selfies_vae_accelerator"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    p.add_argument("--time-limit", type=float, default=None, help="seconds of training")
    p.add_argument("--chunk-steps", type=int, default=100)
    p.add_argument("--free-bits", type=float, default=0.0, help="KL floor, nats per dimension")
    p.add_argument(
        "--checkpoint-every", type=float, default=300.0,
        help="seconds between saves of the resumable training state OUT.train.*",
    )
    p.add_argument(
        "--finalize", action="store_true",
        help="no training: evaluate the latest training state and write the checkpoint",
    )
    p.add_argument(
        "--fresh", action="store_true", help="ignore an existing training state (start over)"
    )
    p.add_argument(
        "--data-parallel", action="store_true",
        help="split each batch over all devices (jax.sharding; see wrjax.parallel)",
    )
    p.add_argument(
        "--distributed", action="store_true",
        help="multi-host: call jax.distributed.initialize() first (cluster from the environment)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-eval", type=int, default=2000, help="held-out molecules")
    p.add_argument("--prior-samples", type=int, default=1000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument(
        "--out", type=Path, default=None, help="default checkpoints/chem/<preset's name>"
    )
    args = p.parse_args(argv)
    if (args.num_steps is None) == (args.epochs is None):
        p.error("give exactly one of --num-steps and --epochs")
    return args


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


def main(argv=None) -> dict:
    """Run one pretraining; returns the metadata written beside the checkpoint."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = args.out or DEFAULT_OUT / DEFAULT_NAMES[args.preset]
    if args.distributed:
        parallel.initialize_distributed()
    t_start = time.perf_counter()
    key = jax.random.key(args.seed)
    train_key, prior_key = jax.random.split(key)
    rng = np.random.default_rng(args.seed)

    # Data: SELFIES of the whole training split (cached), vocabulary, tokens.
    sel_train = chem.zinc_selfies("train", data_dir=args.data_dir, processes=args.processes)
    vocab = chem.build_vocab(sel_train)
    make_config = PRESETS[args.preset]
    if args.max_len is None:
        config = make_config(vocab.size)
    else:
        config = make_config(vocab.size, max_len=args.max_len)
    tokens, ok = chem.selfies_to_tokens(sel_train, vocab, max_len=config.max_len)
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

    t0 = time.perf_counter()
    train_path = Path(f"{out}.train")
    optimizer = cm.pretrain_optimizer(
        args.lr, num_steps=steps, lr_decay=args.lr_decay, clip_norm=args.clip_norm
    )
    state, info = None, None
    if train_path.with_suffix(".train.msgpack").exists() and not args.fresh:
        state, info, saved_args = load_training_state(train_path, config, optimizer)
        changed = [
            k for k in TRAINING_ARGS if saved_args.get(k) != vars(args).get(k)
        ]
        if changed:
            raise SystemExit(
                f"{train_path}.msgpack was trained with other {changed}; pass the same "
                "arguments to resume, or --fresh to start over"
            )
        print(f"resuming from {train_path}.msgpack at step {int(state.step)}", flush=True)
    elif args.finalize:
        raise SystemExit(f"--finalize needs a training state at {train_path}.msgpack")
    last_save = [time.perf_counter()]

    def save_state(st, inf, force=False):
        if force or time.perf_counter() - last_save[0] >= args.checkpoint_every:
            save_training_state(train_path, st, inf, args, argv)
            last_save[0] = time.perf_counter()

    if not args.finalize:
        state, info = cm.pretrain(
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
            info=info,
            on_chunk=save_state,
            mesh=parallel.data_mesh() if args.data_parallel else None,
        )
        save_state(state, info, force=True)
    train_seconds = info.seconds[-1] if info.seconds else 0.0
    params = state.params
    model = cm.SelfiesVAE(config)
    steps_done = int(state.step)

    # Held-out reconstruction: the first --num-eval encodable molecules of the valid split.
    t0 = time.perf_counter()
    sel_valid = chem.zinc_selfies("valid", data_dir=args.data_dir, processes=args.processes)
    v_tokens, v_ok = chem.selfies_to_tokens(sel_valid, vocab, max_len=config.max_len)
    v_tokens = v_tokens[v_ok][: args.num_eval]
    recon = cm.reconstruction_metrics(model, params, v_tokens, vocab)
    seen = rng.choice(rows.size, min(args.num_eval, rows.size), replace=False)
    train_recon = cm.reconstruction_metrics(model, params, train_tokens[seen], vocab)

    # Prior samples: validity, uniqueness, novelty, scores vs ZINC.
    known = chem.NoveltyChecker(
        chem.zinc_novelty_keys("train", data_dir=args.data_dir, processes=args.processes),
        canonical=True,
    )
    samples = cm.sample_prior_smiles(prior_key, model, params, vocab, args.prior_samples)
    rates = cm.sample_metrics(samples, known)
    sample_scores = chem.penalized_logp_batch(samples, progress=False)
    zinc_train_scores = chem.zinc_scores("train", data_dir=args.data_dir, processes=args.processes)
    # Canonical SELFIES lengths of the samples: how close they come to max_len.
    lengths = [sf.len_selfies(s) for s in chem.to_selfies_batch(samples, progress=False) if s]
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
        "command": "python experiments/pretrain_chem.py " + shlex.join(argv),
        "commands_of_training_sessions": info_commands(train_path, argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "jax_devices": [str(d) for d in jax.devices()],
            "jax": jax.__version__,
        },
        "seconds": {
            "data": t_data,
            "train": train_seconds,
            "eval": eval_seconds,
            "total": time.perf_counter() - t_start,
        },
        "steps": steps_done,
        "epochs": steps_done * args.batch_size / rows.size,
        "num_train": int(rows.size),
        "num_params": cm.num_params(params),
        "beta": args.beta,
        "free_bits": args.free_bits,
        "learning_rate": args.lr,
        "score": {"floor": -6.0, "constants": "zinc250k"},
        "history": info._asdict(),
        "results": results,
    }
    cm.save_checkpoint(out, params, config, vocab, meta)
    size = out.with_suffix(".msgpack").stat().st_size
    print(f"saved {out}.msgpack ({size / 1e6:.2f} MB) after {train_seconds:.0f}s of training")
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


#: Arguments that must not change between the sessions of one resumable training.
TRAINING_ARGS = (
    "preset", "max_len", "num_steps", "epochs", "batch_size", "lr", "lr_decay", "beta",
    "warmup_steps", "clip_norm", "num_train", "chunk_steps", "seed", "free_bits",
)


def save_training_state(path: Path, state, info: cm.PretrainInfo, args, argv) -> None:
    """Write the resumable training state (params, Adam moments, step, history) atomically."""
    commands = info_commands(path, argv)
    meta = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "history": info._asdict(),
        "step": int(state.step),
        "commands": commands,
    }
    # The blob first, then the JSON: the JSON's step names a blob at least that new.
    save_pytree(path.with_suffix(".train"), state, meta)


def info_commands(path: Path, argv) -> list[str]:
    """The commands of every session of this training so far (this one last)."""
    cmd = "python experiments/pretrain_chem.py " + shlex.join(argv)
    meta_path = Path(f"{path}.json")
    old = json.loads(meta_path.read_text()).get("commands", []) if meta_path.exists() else []
    return old if old and old[-1] == cmd else old + [cmd]


def load_training_state(path: Path, config, optimizer):
    """The state, history and arguments saved by :func:`save_training_state`."""
    meta = load_metadata(path.with_suffix(".train"))
    params = jax.eval_shape(lambda: cm.init_params(jax.random.key(0), config))
    target = jax.eval_shape(lambda p: init_train_state(p, optimizer), params)
    target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), target)
    state = load_pytree(path.with_suffix(".train"), target)
    state = jax.tree.map(jax.numpy.asarray, state)
    info = cm.PretrainInfo(**meta["history"])
    if int(state.step) != meta["step"]:
        raise SystemExit(f"{path}: state step {int(state.step)} != recorded {meta['step']}")
    return state, info, meta["args"]


if __name__ == "__main__":
    main()
