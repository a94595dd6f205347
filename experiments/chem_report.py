"""The chemistry ablation as in the paper's Table 1, with the cheap baselines as rows of the
same tables, and the round trip of the molecules each run found.

    python -m experiments.chem_report [--runs runs/ablation/chem/capped-cpu-b500-gp-ei]
        [--baselines runs/chem-baselines/plogp_capped] [--objective plogp_capped]
        [--roundtrip [--checkpoint gru]] [--out experiments/results/chem/capped]

``--runs`` is a directory of settings (``SETTING/seedS/records.jsonl``, what
``experiments.run chem`` writes); ``--baselines`` one of ``experiments.chem_baselines``'
objective directories (``METHOD/seed_S/records.jsonl``). Writes to ``--out``:

* ``table.md``: per row (setting or baseline), Top1/10/50 over seeds (mean ± s.e.; TopK = the
  K-th best evaluated molecule, the paper's), evaluations, time per seed, the best molecule's
  score and heavy atoms (penalized logP rewards sheer size), and with ``--roundtrip`` the
  round-trip fractions below;
* ``top3.md``: per row, the three best unique molecules over its seeds with heavy atoms and
  SMILES, and each seed's best;
* ``topk.png``: TopK against evaluations, mean ± s.e., every row;
* ``best_molecules.png``: the best molecule of every row and seed, drawn with RDKit.

Round trip (``--roundtrip``): of each run's 50 best molecules, the fraction whose
encode (mean) -> greedy decode scores within 0.5 of the molecule itself, through the shipped
pretrained model (``--checkpoint``) and, for the optimiser's runs, through the run's final
model (its last cycle checkpoint: after the fine-tunes of weighted retraining, the model that
proposed its last queries). A molecule the model cannot tokenise counts as a failure.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from flax import serialization
from rdkit import Chem
from rdkit.Chem import Draw

from wrjax import metrics

KS = (1, 10, 50)
ROUNDTRIP_TOP = 50
ROUNDTRIP_TOL = 0.5
# The paper's ablation settings in its order, with what each one is.
LABELS = {
    "kinf_rnever": "plain LSO (k = inf, no retraining)",
    "kinf_r50": "retraining only (k = inf, every 50)",
    "k1e-3_rnever": "weighting only (k = 1e-3, no retraining)",
    "k1e-3_r50": "weighted retraining (k = 1e-3, every 50)",
    "random": "random search in the BO box",
    "ga": "genetic algorithm (SELFIES)",
}


def load_records(seed_dir: Path) -> list[dict]:
    """All records of one run in evaluation order (the loop's ``seq`` order; the baselines
    write theirs in that order)."""
    lines = (seed_dir / "records.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def scored(records: list[dict]) -> list[dict]:
    """The evaluated molecules (status ``ok``), in evaluation order."""
    return [r for r in records if r["status"] == "ok"]


def heavy_atoms(smiles: str) -> int | None:
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else mol.GetNumHeavyAtoms()


def best_unique(records: list[dict], n: int) -> list[dict]:
    """The ``n`` best evaluated molecules, one per novelty key, best first."""
    seen, out = set(), []
    for r in sorted(scored(records), key=lambda r: -r["score"]):
        if r["key"] not in seen:
            seen.add(r["key"])
            out.append(r)
            if len(out) == n:
                break
    return out


def run_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.glob("seed*") if (d / "records.jsonl").exists())


def collect_rows(runs: Path | None, baselines: Path | None) -> list[tuple[str, list[Path]]]:
    """``(name, seed directories)`` per row: the settings in the paper's order, then others,
    then the baselines."""
    rows = []
    if runs is not None:
        settings = {d.name: run_dirs(d) for d in sorted(runs.iterdir()) if d.is_dir()}
        order = [s for s in LABELS if s in settings] + sorted(set(settings) - set(LABELS))
        rows += [(s, settings[s]) for s in order if settings[s]]
    if baselines is not None:
        rows += [(m, run_dirs(baselines / m)) for m in ("random", "ga") if run_dirs(baselines / m)]
    if not rows:
        raise SystemExit(f"no seed*/records.jsonl under {runs} or {baselines}")
    return rows


def run_seconds(seed_dir: Path) -> float | None:
    try:
        s = json.loads((seed_dir / "summary.json").read_text())
    except FileNotFoundError:
        return None
    return s.get("wall_seconds", s.get("seconds"))


def final_params(seed_dir: Path):
    """The params of a run's last cycle checkpoint (None if it has none)."""
    cycles = sorted((seed_dir / "checkpoints").glob("cycle_*.msgpack"))
    if not cycles:
        return None
    raw = serialization.msgpack_restore(cycles[-1].read_bytes())
    return raw["state"]["params"]


def roundtrip_fraction(model, params, molecules: list[dict], objective) -> float:
    """The fraction of ``molecules`` whose encode -> decode through ``model`` with
    ``params`` scores within :data:`ROUNDTRIP_TOL` of the molecule's own score."""
    from wrjax.tasks.chem import model as cm

    if not molecules:
        return math.nan
    smiles = [r["text"] for r in molecules]
    tokens, ok = model.tokens(smiles)
    hits = 0
    if ok.any():
        z = np.asarray(cm._encode_mean(model.module, params, tokens[ok]))
        decoded = cm.decode_smiles(model.module, params, z, model.vocab)
        for r, d in zip([m for m, o in zip(molecules, ok) if o], decoded):
            s = objective(d) if d else None
            hits += s is not None and math.isfinite(s) and abs(s - r["score"]) <= ROUNDTRIP_TOL
    return hits / len(molecules)


def fmt_stat(values) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    st = metrics.mean_and_stderr([np.array([v]) for v in values])
    return f"{st.mean[0]:.2f} ± {st.stderr[0]:.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--runs", type=Path, help="a directory of SETTING/seed*/ runs")
    ap.add_argument("--baselines", type=Path, help="an experiments.chem_baselines objective dir")
    ap.add_argument("--objective", choices=("plogp", "plogp_capped"),
                    help="for the round trip (default: plogp_capped if 'capped' is in --runs)")
    ap.add_argument("--roundtrip", action="store_true")
    ap.add_argument("--checkpoint", default="gru", help="the pretrained model of the round trip")
    ap.add_argument("--out", type=Path, default=Path("experiments/results/chem"))
    args = ap.parse_args(argv)
    if args.runs is None and args.baselines is None:
        args.runs = Path("runs/ablation/chem")
    t0 = time.perf_counter()
    rows = collect_rows(args.runs, args.baselines)
    objective_name = args.objective or (
        "plogp_capped" if "capped" in str(args.runs or args.baselines) else "plogp")

    model = objective = None
    if args.roundtrip:
        from wrjax.tasks import chem

        model = chem.load_model(args.checkpoint)
        objective = chem.make_objective(objective_name)

    head = ("| row | seeds | Top1 | Top10 | Top50 | evaluations | time/seed (s) | best (heavy atoms) |"
            + (" round trip, pretrained | round trip, final model |" if args.roundtrip else ""))
    table = [head, "|" + "---|" * (head.count("|") - 1)]
    top3 = ["| row | seeds | 1st (heavy atoms) | 2nd | 3rd | per-seed best |", "|---|---|---|---|---|---|"]
    smiles_rows, best_mols, legends, curve_rows = [], [], [], []
    for name, dirs in rows:
        finals = {k: [] for k in KS}
        curves, secs, per_seed, pooled, rt_pre, rt_final, n_evals = [], [], [], {}, [], [], []
        for d in dirs:
            recs = load_records(d)
            ok = scored(recs)
            if not ok:
                continue
            scores = np.array([r["score"] for r in ok], np.float64)
            curve = metrics.topk_curves(scores, KS)
            curves.append(curve)
            for k in KS:  # the curve's end: the K-th best of the run (NaN with fewer than K)
                finals[k].append(float(curve[f"top{k}"][-1]))
            n_evals.append(len(ok))
            secs.append(run_seconds(d))
            best = max(ok, key=lambda r: r["score"])
            per_seed.append(best["score"])
            for r in ok:
                if r["key"] not in pooled or r["score"] > pooled[r["key"]]["score"]:
                    pooled[r["key"]] = r
            best_mols.append(Chem.MolFromSmiles(best["text"]))
            legends.append(f"{name} {d.name}: {best['score']:.2f} ({heavy_atoms(best['text'])} heavy)")
            if args.roundtrip:
                found = best_unique(recs, ROUNDTRIP_TOP)
                rt_pre.append(roundtrip_fraction(model, model.params, found, objective))
                params = final_params(d)
                if params is not None:
                    rt_final.append(roundtrip_fraction(model, params, found, objective))
        if not per_seed:
            continue
        curve_rows.append((name, curves))
        top = sorted(pooled.values(), key=lambda r: -r["score"])[:3]
        best = top[0]
        cells = [fmt_stat(finals[k]) for k in KS]
        secs_ok = [s for s in secs if s is not None]
        secs_text = f"{np.mean(secs_ok):.0f}" if secs_ok else "n/a"
        line = (f"| {LABELS.get(name, name)} | {len(per_seed)} | {' | '.join(cells)} "
                f"| {np.mean(n_evals):.0f} | {secs_text} | {best['score']:.2f} ({heavy_atoms(best['text'])}) |")
        if args.roundtrip:
            line += f" {fmt_pct(rt_pre)} | {fmt_pct(rt_final)} |"
        table.append(line)
        tcells = [f"{r['score']:.2f} ({heavy_atoms(r['text'])})" for r in top] + ["-"] * (3 - len(top))
        top3.append(f"| {LABELS.get(name, name)} | {len(per_seed)} | {' | '.join(tcells)} | "
                    f"{', '.join(f'{s:.2f}' for s in per_seed)} |")
        smiles_rows += [f"- {name}, {i + 1}: `{r['text']}` ({r['score']:.2f}, "
                        f"{heavy_atoms(r['text'])} heavy atoms)" for i, r in enumerate(top)]

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(table) + "\n")
    top3_text = "\n".join(top3) + "\n\nThe molecules:\n\n" + "\n".join(smiles_rows) + "\n"
    (args.out / "top3.md").write_text(top3_text)
    plot_curves(curve_rows, args.out / "topk.png", title=str(args.runs or args.baselines))
    png = Draw.MolsToGridImage(best_mols, molsPerRow=min(5, len(best_mols)), subImgSize=(300, 260),
                               legends=legends, returnPNG=True)  # fmt: skip
    (args.out / "best_molecules.png").write_bytes(png)
    print("\n".join(table))
    print()
    print(top3_text)
    print(f"wrote {args.out}/table.md, top3.md, topk.png, best_molecules.png "
          f"({time.perf_counter() - t0:.0f} s)")


def fmt_pct(values) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "n/a"
    st = metrics.mean_and_stderr([np.array([v]) for v in values])
    return f"{100 * st.mean[0]:.0f}% ± {100 * st.stderr[0]:.0f}"


def plot_curves(curve_rows, out: Path, *, title: str) -> None:
    """TopK against evaluations (mean ± s.e. over seeds), one panel per K, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KS), figsize=(5 * len(KS), 3.8), squeeze=False)
    for name, curves in curve_rows:
        for ax, k in zip(axes[0], KS):
            st = metrics.mean_and_stderr([c[f"top{k}"] for c in curves])
            x = np.arange(1, len(st.mean) + 1)
            style = "--" if name in ("random", "ga") else "-"
            (line,) = ax.plot(x, st.mean, style, label=f"{LABELS.get(name, name)} (n={len(curves)})")
            ax.fill_between(x, st.mean - st.stderr, st.mean + st.stderr, color=line.get_color(), alpha=0.2)
    for ax, k in zip(axes[0], KS):
        ax.set_xlabel("objective evaluations")
        ax.set_ylabel(f"Top{k}")
        ax.grid(alpha=0.2)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
