"""The cheap chemistry baselines at the optimisers' budget: random search in the BO box and a
SELFIES genetic algorithm.

A latent-space optimiser's result is evidence only beside these:

* ``random``: points drawn uniformly in the box the BO searches (the authors' ``+- 1.1 x
  q99.9 |z|`` of the encoded data), greedily decoded, kept when valid and novel, evaluated;
* ``ga``: :func:`wrjax.tasks.chem.ga.run_ga`, started from the best molecules of the same data.

Both use the optimisation data of the chemistry task (the whole ZINC250k training split and its
scores) and the same novelty rule (new = not in the training split and not queried before), and
count every evaluated molecule, as the loop does. Each run writes ``records.jsonl`` (the loop's
fields) and ``summary.json`` under ``OUT/<objective>/<method>/seed_<n>/``; a finished run is
not repeated. ``--report`` tabulates the finished runs (Top1/10/50 mean +- s.e. over seeds, and
the best molecules with their heavy-atom counts).

Examples::

    python -m experiments.chem_baselines --objective plogp_capped --method ga random --seeds 0 1 2 3 4
    python -m experiments.chem_baselines --objective plogp plogp_capped --report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from wrjax import acquisition
from wrjax.checkpoint import atomic_write_bytes
from wrjax.metrics import mean_and_stderr, topk_curves
from wrjax.tasks import chem
from wrjax.tasks.chem import ga as chem_ga
from wrjax.tasks.chem import model as cm

DEFAULT_OUT = Path("runs") / "chem-baselines"  # relative to the working directory, as run.py's runs/
METHODS = ("random", "ga")
KS = (1, 10, 50)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--objective", nargs="+", choices=chem.OBJECTIVES, default=["plogp_capped"])
    p.add_argument("--method", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--budget", type=int, default=500)
    p.add_argument("--checkpoint", default="gru", help="for random: a path or a shipped name")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--report", action="store_true", help="tabulate finished runs; run nothing")
    args = p.parse_args(argv)
    if args.budget < 1:
        p.error("--budget must be >= 1")
    return args


class _Data:
    """The optimisation data, loaded once for all runs."""

    def __init__(self):
        self.smiles = chem.load_zinc("train")
        self.keys = chem.zinc_novelty_keys("train", progress=False)
        self.seen = frozenset(k for k in self.keys if k is not None)
        self._z = None

    def scores(self, objective: str) -> np.ndarray:
        # ZINC's largest molecule has 38 heavy atoms, so both objectives agree on the data.
        del objective
        return chem.zinc_scores("train", progress=False)

    def latents(self, model: cm.ChemModel) -> np.ndarray:
        if self._z is None:
            self._z = model.encode(self.smiles, errors="nan")
        return self._z


def _record(seq, smiles, key, score, status, error):
    return {
        "seq": seq, "eval": None, "status": status, "text": smiles, "key": key,
        "score": score, "error": error, "z": None, "model_version": None,
    }


def run_ga(data: _Data, objective: str, seed: int, budget: int) -> list[dict]:
    recs = chem_ga.run_ga(
        seed,
        data.smiles,
        data.scores(objective),
        chem.make_objective(objective),
        budget=budget,
        seen_keys=data.seen,
    )
    return [_record(i, r.smiles, r.key, r.score, r.status, r.error) for i, r in enumerate(recs)]


def run_random(
    data: _Data, model: cm.ChemModel, objective: str, seed: int, budget: int
) -> list[dict]:
    z = data.latents(model)
    box = np.asarray(acquisition.data_bounds(z[~np.isnan(z[:, 0])]))
    fn = chem.make_objective(objective)
    key = jax.random.key(seed)
    known, records = set(data.seen), []
    draws = 0
    while len(records) < budget:
        key, sub = jax.random.split(key)
        u = np.asarray(jax.random.uniform(sub, (256, z.shape[1])))
        draws += 256
        for smiles in model.decode(box[0] + u * (box[1] - box[0])):
            k = chem.novelty_key(smiles) if smiles else None
            if k is None or k in known:
                continue  # invalid or already known: not an evaluation, as in the loop
            known.add(k)
            score, status, error = chem_ga._evaluate(fn, smiles)
            records.append(_record(len(records), smiles, k, score, status, error))
            if len(records) == budget:
                break
        if draws > 200 * budget:
            break  # the box decodes to known molecules only: stop, marked in the summary
    return records


def summarize(records: list[dict], budget: int, seconds: float) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    scores = np.array([r["score"] for r in ok], np.float64)
    best = sorted(ok, key=lambda r: -r["score"])[:3]
    return {
        "evaluations": len(records),
        "budget": budget,
        "status": "complete" if len(records) >= budget else "stalled",
        "topk_final": {
            # the K-th best, as wrjax.metrics.topk_curve (the paper's TopK)
            f"top{k}": float(np.sort(scores)[::-1][k - 1]) if len(scores) >= k else None
            for k in KS
        },
        "best": [
            {"smiles": r["text"], "score": r["score"], "heavy_atoms": chem.heavy_atom_count(r["text"])}
            for r in best
        ],
        "seconds": seconds,
    }


def _write_run(path: Path, records: list[dict], summary: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    atomic_write_bytes(path / "records.jsonl", text.encode())
    # The summary last: its presence marks the run finished.
    atomic_write_bytes(path / "summary.json", json.dumps(summary, indent=2).encode())


def run_all(args) -> None:
    data, model = None, None
    jobs = [(o, m, s) for o in args.objective for m in args.method for s in args.seeds]
    for objective, method, seed in tqdm(jobs, desc="baseline runs"):
        path = args.out / objective / method / f"seed_{seed}"
        if (path / "summary.json").exists():
            continue
        data = data or _Data()
        t0 = time.perf_counter()
        if method == "ga":
            records = run_ga(data, objective, seed, args.budget)
        else:
            model = model or cm.load_model(args.checkpoint)
            records = run_random(data, model, objective, seed, args.budget)
        summary = summarize(records, args.budget, time.perf_counter() - t0)
        _write_run(path, records, summary)
        tqdm.write(f"{objective} {method} seed {seed}: {summary['topk_final']} ({summary['status']})")


def load_scores(run: Path) -> np.ndarray:
    recs = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines() if x]
    return np.array([r["score"] for r in recs if r["status"] == "ok"], np.float64)


def report(args) -> str:
    lines = ["| objective | method | seeds | " + " | ".join(f"Top{k}" for k in KS) + " | best (heavy atoms) |",
             "|---|---|---|" + "---|" * len(KS) + "---|"]
    for objective in args.objective:
        for method in args.method:
            runs = sorted((args.out / objective / method).glob("seed_*/summary.json"))
            if not runs:
                continue
            curves = [topk_curves(load_scores(r.parent), KS) for r in runs]
            cells = []
            for k in KS:
                stats = mean_and_stderr([c[f"top{k}"] for c in curves])
                cells.append(f"{stats.mean[-1]:.2f} ± {stats.stderr[-1]:.2f}")
            best = max(
                (b for r in runs for b in json.loads(r.read_text())["best"][:1]),
                key=lambda b: b["score"],
            )
            lines.append(
                f"| {objective} | {method} | {len(runs)} | " + " | ".join(cells)
                + f" | {best['score']:.2f} ({best['heavy_atoms']}) |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if not args.report:
        run_all(args)
    print(report(args))


if __name__ == "__main__":
    main()
