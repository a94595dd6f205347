"""Pack the resumable state of every run under a folder into one ``.tar.gz``, small enough to
commit: a long comparison interrupted at a session's end then resumes elsewhere.

Each run directory (one holding ``config.json``) keeps ``config.json``, ``records.jsonl``, ``proposals.jsonl``,
``processes.jsonl`` (so a resumed run's time still spans all its processes), ``summary.json`` and
``pending.json`` where present, and, if it is not finished, only its
*newest* verified cycle checkpoint (``checkpoints/cycle_NNN.{json,msgpack}``): the run resumes
from that checkpoint and replays the records after it, so nothing is evaluated twice. A
checkpoint larger than ``--checkpoint-limit-mb`` is left out too: that run then replays all
its records from the start (recomputing its fine-tunes and proposals, evaluating nothing
again). A finished (complete or stalled) run needs no checkpoint: ``experiments.run``'s
``run_setting`` reads its ``summary.json`` back. Locks, older checkpoints and plots are left out; other files beside
the runs (tables, logs) are kept if under 1 MB.

    python -m experiments.pack_runs runs/bg/compare experiments/results/compare/runs.tar.gz
    tar xzf experiments/results/compare/runs.tar.gz -C runs/bg   # later, to resume
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

KEEP = ("config.json", "records.jsonl", "summary.json", "pending.json", "proposals.jsonl",
        "processes.jsonl")
SMALL = 1 << 20


def newest_checkpoint(run_dir: Path) -> list[Path]:
    """The ``.json`` and ``.msgpack`` of the newest cycle checkpoint that verifies (its blob
    matches the checksum its JSON records); ``[]`` if none does."""
    from wrjax import checkpoint as ckpt

    for meta in sorted((run_dir / "checkpoints").glob("cycle_*.json"), reverse=True):
        try:
            ckpt.verify_checkpoint(meta)
        except ckpt.CheckpointError:
            continue
        return [meta, meta.with_suffix(".msgpack")]
    return []


def _finished(run: Path) -> bool:
    try:
        return json.loads((run / "summary.json").read_text()).get("status") in ("complete", "stalled")
    except (OSError, ValueError):
        return False


def files_to_pack(root: Path, checkpoint_limit_mb: float = 5.0) -> list[Path]:
    """Every file :func:`pack` writes, as paths under ``root``."""
    runs = sorted(p.parent for p in root.rglob("config.json") if (p.parent / "records.jsonl").exists()
                  or (p.parent / "checkpoints").is_dir())  # fmt: skip
    chosen = []
    for run in runs:
        chosen += [run / name for name in KEEP if (run / name).exists()]
        ckpt = [] if _finished(run) else newest_checkpoint(run)
        if sum(p.stat().st_size for p in ckpt) <= checkpoint_limit_mb * 1e6:
            chosen += ckpt
    in_run = tuple(runs)
    for p in sorted(root.rglob("*")):
        if p.is_file() and not any(r in p.parents for r in in_run) and p.stat().st_size < SMALL:
            chosen.append(p)
    return chosen


def pack(root: Path, out: Path, checkpoint_limit_mb: float = 5.0) -> list[Path]:
    """Write ``out`` (gzip tar, paths relative to ``root``'s parent, so ``tar xzf OUT -C X``
    recreates ``X/<root name>/...``); returns the packed files."""
    root = root.resolve()
    if not root.is_dir():
        raise SystemExit(f"{root} is not a folder")
    files = files_to_pack(root, checkpoint_limit_mb)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=str(f.relative_to(root.parent)))
    tmp.replace(out)  # a reader never sees half a pack
    return files


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("root", type=Path, help="folder holding run directories")
    ap.add_argument("out", type=Path, help="the .tar.gz to write")
    ap.add_argument("--checkpoint-limit-mb", type=float, default=5.0,
                    help="leave out larger checkpoints (their runs replay from the start)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    files = pack(args.root, args.out, args.checkpoint_limit_mb)
    runs = sum(f.name == "config.json" for f in files)
    done = sum(f.name == "summary.json" for f in files)
    print(f"{args.out}: {runs} runs ({done} with a summary), {len(files)} files, "
          f"{args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
