"""The chemistry results as in the paper's Table 1: top-3 molecules per setting, and a grid image.

    python -m experiments.chem_report [--runs runs/ablation/chem] [--out experiments/results/chem]

Reads every ``SETTING/seedS/records.jsonl`` under ``--runs`` (what ``experiments.run chem``
writes), and writes to ``--out``:

* ``top3.md``: per setting, the three best unique molecules over its seeds (penalized logP as
  recorded, heavy-atom count beside it, because penalized logP rewards sheer size), and per
  seed the best score;
* ``best_molecules.png``: the best molecule of every setting and seed, drawn with RDKit, each
  labelled with its setting, score and heavy-atom count.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rdkit import Chem
from rdkit.Chem import Draw


def load_ok_records(seed_dir: Path) -> list[dict]:
    """The successfully scored records of one run, best first."""
    lines = (seed_dir / "records.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines if line.strip()]
    return sorted((r for r in recs if r["status"] == "ok"), key=lambda r: -r["score"])


def heavy_atoms(smiles: str) -> int | None:
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else mol.GetNumHeavyAtoms()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/ablation/chem"))
    ap.add_argument("--out", type=Path, default=Path("experiments/results/chem"))
    args = ap.parse_args(argv)

    settings = sorted(d for d in args.runs.iterdir() if d.is_dir() and any(d.glob("seed*/records.jsonl")))
    if not settings:
        raise SystemExit(f"no SETTING/seed*/records.jsonl under {args.runs}")
    lines = ["| setting | seeds | 1st (heavy atoms) | 2nd | 3rd | per-seed best |", "|---|---|---|---|---|---|"]
    best_mols, legends, smiles_rows = [], [], []
    for setting in settings:
        per_seed, pooled = [], {}
        for seed_dir in sorted(setting.glob("seed*")):
            if not (seed_dir / "records.jsonl").exists():
                continue
            ok = load_ok_records(seed_dir)
            if not ok:
                continue
            per_seed.append(ok[0]["score"])
            for r in ok:
                pooled.setdefault(r["key"], r)
            best = ok[0]
            n = heavy_atoms(best["text"])
            best_mols.append(Chem.MolFromSmiles(best["text"]))
            legends.append(f"{setting.name} {seed_dir.name}: {best['score']:.2f} ({n} heavy)")
        top = sorted(pooled.values(), key=lambda r: -r["score"])[:3]
        cells = [f"{r['score']:.2f} ({heavy_atoms(r['text'])})" for r in top] + ["-"] * (3 - len(top))
        lines.append(f"| {setting.name} | {len(per_seed)} | {' | '.join(cells)} | "
                     f"{', '.join(f'{s:.2f}' for s in per_seed)} |")
        smiles_rows += [f"- {setting.name}, {i + 1}: `{r['text']}` ({r['score']:.2f})" for i, r in enumerate(top)]

    args.out.mkdir(parents=True, exist_ok=True)
    table = "\n".join(lines) + "\n\nThe molecules:\n\n" + "\n".join(smiles_rows) + "\n"
    (args.out / "top3.md").write_text(table)
    png = Draw.MolsToGridImage(best_mols, molsPerRow=min(4, len(best_mols)), subImgSize=(320, 280),
                               legends=legends, returnPNG=True)  # fmt: skip
    (args.out / "best_molecules.png").write_bytes(png)
    print(table)
    print(f"grid: {args.out / 'best_molecules.png'}")


if __name__ == "__main__":
    main()
