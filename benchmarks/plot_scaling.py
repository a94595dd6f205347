"""Draw the scaling curves of ``benchmarks/RESULTS.md`` from the benchmarks' JSON output.

* ``--train-step FILE ...``: JSON lines of ``benchmarks/train_step.py --json`` (one line per
  model, batch size and device count); draws ms/step against batch size, one line per
  (model, devices, row), PyTorch dashed, into ``OUT/train_step_scaling.png``;
* ``--bo-curve FILE``: the ``--curve-json`` file of ``benchmarks/bo_step.py --sections curve``;
  draws the per-query cost parts (seconds) against N and against M, log-log, into
  ``OUT/bo_query_cost.png``.

Run:  python benchmarks/plot_scaling.py --train-step runs/train_step.jsonl
          --bo-curve runs/bo_curve.json [--out benchmarks/figures]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# train_step.py's row names, shortened for a legend
SHORT = {
    "wrjax.fit (lax.scan, device-side batches)": "wrjax.fit",
    "jitted weighted step, Python loop, state donated": "jitted step (donated)",
    "plain unweighted ELBO step (optax), donated": "plain ELBO step",
    "PyTorch eager (reference)": "PyTorch eager",
}


def load_train_step(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"no train_step rows in {[str(p) for p in paths]}")
    return rows


def plot_train_step(rows: list[dict], out: Path) -> Path:
    """ms/step against batch size: one panel per model, one line per (row, devices)."""
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        lines: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for r in rows:
            if r["model"] != model:
                continue
            for name, ms in r["ms"].items():
                # PyTorch runs on one process whatever the JAX device count: one line for it
                devices = 1 if name.startswith("PyTorch") else r["devices"]
                lines.setdefault((name, devices), []).append((r["batch"], ms))
        for (name, devices), pts in sorted(lines.items()):
            pts = sorted(set(pts))
            label = SHORT.get(name, name) + (f", {devices} devices" if devices > 1 else "")
            style = "--" if name.startswith("PyTorch") else ("-" if devices == 1 else ":")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="median ms / step",
               title=f"train step, {model}")  # fmt: skip
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(rows[0].get("machine", ""), fontsize=8)
    fig.tight_layout()
    path = out / "train_step_scaling.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bo_curve(curve: dict, out: Path) -> Path:
    """Query-cost parts (s) against N (at the most common M) and against M (at the most
    common N)."""
    rows = curve["rows"]
    m_of_n = max({r["M"] for r in rows}, key=lambda m: sum(r["M"] == m for r in rows))
    n_of_m = max({r["N"] for r in rows}, key=lambda n: sum(r["N"] == n for r in rows))
    parts = {"eval_s": "bound + gradient eval", "build_s": "predictor build",
             "update_s": "incremental update", "ei_s": "EI maximisation"}  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (var, fixed, value) in zip(axes, [("N", "M", m_of_n), ("M", "N", n_of_m)]):
        sel = sorted((r for r in rows if r[fixed] == value), key=lambda r: r[var])
        xs = [r[var] for r in sel]
        for key, label in parts.items():
            ax.plot(xs, [r[key] for r in sel], marker="o", label=label)
        ax.plot(xs, [r["update_s"] + r["ei_s"] for r in sel], "k-", lw=2, marker="s",
                label="incremental query (update + EI)")  # fmt: skip
        ax.plot(xs, [20 * r["eval_s"] + r["build_s"] + r["ei_s"] for r in sel], "k--", marker="s",
                label="refit query (20 evals + build + EI)")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel=var, ylabel="seconds",
               title=f"BO query cost against {var} ({fixed} = {value:,}, D = {curve['dim']})")  # fmt: skip
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(curve.get("machine", ""), fontsize=8)
    fig.tight_layout()
    path = out / "bo_query_cost.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--train-step", type=Path, nargs="+", default=[])
    ap.add_argument("--bo-curve", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("figures"))
    args = ap.parse_args(argv)
    if not args.train_step and not args.bo_curve:
        ap.error("give --train-step and/or --bo-curve")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.train_step:
        print(plot_train_step(load_train_step(args.train_step), args.out))
    if args.bo_curve:
        print(plot_bo_curve(json.loads(args.bo_curve.read_text()), args.out))


if __name__ == "__main__":
    main()
