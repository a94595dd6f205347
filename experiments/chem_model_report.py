"""Is the chemistry model a real model? Reconstruction, prior samples and round trips.

Measures a SELFIES VAE checkpoint the way the chemistry issue asks, before any optimisation
result is read:

* reconstruction of ``--num`` random molecules of the ZINC250k **test** split (encoder mean,
  greedy decode): exact (stereo-free canonical SMILES equal), token accuracy, mean Tanimoto
  (Morgan r=2, 2048 bits) of a molecule and its reconstruction beside that of random pairs, and
  how often latent noise of scale ``eps`` changes the decoding;
* ``--num`` prior samples ``z ~ N(0, I)``: validity, uniqueness, novelty against the training
  split, and their heavy-atom, QED, SA and penalized-logP distributions beside ZINC's (the same
  test molecules);
* optionally (``--run-dir``, repeatable), the round trip of the molecules that optimisation
  runs found: of the top ``--top`` molecules of each run, the fraction whose encode -> decode
  keeps the score within 0.5.

Example (the figures recorded in ``experiments/RESULTS.md``)::

    python -m experiments.chem_model_report --checkpoint checkpoints/chem/selfies_gru_vae

Writes ``--out`` (JSON, default ``experiments/results/chem/model_report.json``) and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np

from wrjax import paths
from wrjax.tasks import chem
from wrjax.tasks.chem import model as cm

# In a checkout the report is the recorded one; from an install it goes to the working directory.
DEFAULT_OUT = (paths.repo_root() or Path.cwd()) / "experiments" / "results" / "chem" / "model_report.json"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="gru", help="a path or a shipped name (gru, cpu)")
    p.add_argument("--num", type=int, default=1000, help="test molecules and prior samples")
    p.add_argument("--eps", type=float, default=0.1, help="latent noise scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", type=Path, action="append", default=[])
    p.add_argument("--top", type=int, default=50, help="molecules per run for the round trip")
    p.add_argument("--objective", choices=chem.OBJECTIVES, default="plogp",
                   help="rescores the round trip's decodes")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.num < 2:
        p.error("--num must be >= 2")
    return args


def summary(values) -> dict:
    """Mean, standard deviation and 5/50/95th percentiles of the finite values."""
    x = np.asarray([v for v in values if v is not None], np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"n": 0}
    p5, p50, p95 = np.percentile(x, [5, 50, 95])
    return {
        "n": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "p5": float(p5),
        "median": float(p50),
        "p95": float(p95),
        "max": float(x.max()),
    }


def descriptors(smiles: list[str]) -> dict:
    """Heavy atoms, QED, SA and penalized logP (uncapped) distributions of a set."""
    return {
        "heavy_atoms": summary([chem.heavy_atom_count(s) for s in smiles]),
        "qed": summary([chem.qed(s) for s in smiles]),
        "sa": summary([chem.sa_score(s) for s in smiles]),
        "plogp": summary(chem.penalized_logp_batch(smiles, progress=False)),
    }


def reconstruction(model: cm.ChemModel, smiles: list[str], key, eps: float) -> dict:
    """Exact reconstruction, Tanimoto and noise sensitivity on ``smiles``."""
    tokens, ok = model.tokens(smiles)
    smiles = [s for s, o in zip(smiles, ok) if o]
    z = model.encode(smiles)
    decoded = model.decode(z)
    truth = [chem.novelty_key(s) for s in smiles]
    got = [chem.novelty_key(s) for s in decoded]
    exact = np.mean([t is not None and t == g for t, g in zip(truth, got)])
    sims = [chem.tanimoto(a, b) for a, b in zip(smiles, decoded)]
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(smiles))
    random_pairs = [chem.tanimoto(smiles[i], smiles[j]) for i, j in zip(perm, perm[::-1])]
    noisy = model.decode(z + eps * np.asarray(jax.random.normal(key, z.shape)))
    changed = np.mean([chem.novelty_key(a) != chem.novelty_key(b) for a, b in zip(noisy, decoded)])
    rec = cm.reconstruction_metrics(model.module, model.params, tokens[ok], model.vocab)
    return {
        "num": len(smiles),
        "not_encodable": int((~ok).sum()),
        "exact": float(exact),
        "token_accuracy": rec.token_accuracy,
        "tanimoto_mean": float(np.nanmean(sims)),
        "tanimoto_random_pairs": float(np.nanmean(random_pairs)),
        "noise_changes_decode": float(changed),
        "eps": eps,
        "examples": [[a, b] for a, b in list(zip(smiles, decoded))[:5]],
    }


def prior(model: cm.ChemModel, key, num: int) -> tuple[dict, list[str]]:
    samples = model.sample(key, num)
    known = chem.NoveltyChecker(chem.zinc_novelty_keys("train", progress=False), canonical=True)
    rates = cm.sample_metrics(samples, known)
    return rates._asdict(), [s for s in samples if chem.novelty_key(s) is not None]


def round_trip(model: cm.ChemModel, run_dirs: list[Path], top: int, objective: str = "plogp") -> dict:
    """Of each run's ``top`` best unique molecules, the fraction that keeps its score (within
    0.5, rescored with ``objective``) through encode-decode (``experiments.chem_report``'s rule)."""
    from experiments.chem_report import best_unique, load_records, roundtrip_fraction

    fn = chem.make_objective(objective)
    out = {}
    for run in run_dirs:
        best = best_unique(load_records(run), top)
        out[str(run)] = {"num": len(best)} if not best else {
            "num": len(best), "kept_within_0.5": roundtrip_fraction(model, model.params, best, fn)}
    return out


def main(argv=None) -> dict:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    t0 = time.perf_counter()
    model = cm.load_model(args.checkpoint)
    k_noise, k_prior = jax.random.split(jax.random.key(args.seed))
    test = chem.load_zinc("test")
    rng = np.random.default_rng(args.seed)
    pick = [test[i] for i in rng.choice(len(test), min(args.num, len(test)), replace=False)]
    report = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_epochs": model.metadata.get("epochs"),
        "command": "python -m experiments.chem_model_report " + " ".join(argv or sys.argv[1:]),
        "reconstruction_test": reconstruction(model, pick, k_noise, args.eps),
    }
    rates, valid_samples = prior(model, k_prior, args.num)
    report["prior"] = rates
    report["prior_descriptors"] = descriptors(valid_samples)
    report["zinc_test_descriptors"] = descriptors(pick)
    if args.run_dir:
        report["round_trip"] = round_trip(model, args.run_dir, args.top, args.objective)
    report["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, allow_nan=True))
    print(markdown(report))
    return report


def markdown(r: dict) -> str:
    rec, pr = r["reconstruction_test"], r["prior"]
    pd, zd = r["prior_descriptors"], r["zinc_test_descriptors"]
    lines = [
        f"Checkpoint `{r['checkpoint']}` ({r['checkpoint_epochs']} epochs); {rec['num']} "
        f"test molecules ({rec['not_encodable']} not encodable); {r['seconds']:.0f} s.",
        "",
        "| reconstruction (test split) | value |",
        "|---|---|",
        f"| exact (stereo-free canonical SMILES) | {rec['exact']:.1%} |",
        f"| token accuracy | {rec['token_accuracy']:.3f} |",
        f"| mean Tanimoto to the input (random pairs) | {rec['tanimoto_mean']:.3f} "
        f"({rec['tanimoto_random_pairs']:.3f}) |",
        f"| decode changed by latent noise eps = {rec['eps']} | {rec['noise_changes_decode']:.1%} |",
        f"| prior validity / uniqueness / novelty | {pr['validity']:.1%} / "
        f"{pr['uniqueness']:.1%} / {pr['novelty']:.1%} |",
        "",
        "| distribution (mean, 5-95%) | prior samples | ZINC test |",
        "|---|---|---|",
    ]
    for name in ("heavy_atoms", "qed", "sa", "plogp"):
        a, b = pd[name], zd[name]
        fmt = lambda d: (  # noqa: E731
            f"{d['mean']:.2f} ({d['p5']:.2f} - {d['p95']:.2f})" if d.get("n") else "n/a"
        )
        lines.append(f"| {name} | {fmt(a)} | {fmt(b)} |")
    for run, rt in r.get("round_trip", {}).items():
        if rt.get("num"):
            lines.append(f"\nRound trip of `{run}`'s top {rt['num']}: "
                         f"{rt['kept_within_0.5']:.1%} keep their score within 0.5.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
