"""Plot TopK against the number of evaluations, as in the paper's Figs. 3-4.

    python experiments/plot.py SETTING_DIR [SETTING_DIR ...] --out topk.png [--metric top1]

A SETTING_DIR holds one ``seed*/summary.json`` per seed (what ``experiments.run`` writes).
Each setting is drawn as the mean over seeds with a ± one-standard-error band; grey dashed
vertical lines mark the retrain points.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from wrjax import metrics  # noqa: E402


METRICS = ("top1", "top10", "top50")


def load_setting(setting_dir: Path) -> list[dict]:
    summaries = [json.loads(p.read_text()) for p in sorted(Path(setting_dir).glob("seed*/summary.json"))]
    if not summaries:
        raise ValueError(f"no seed*/summary.json under {setting_dir}")
    return summaries


def plot_settings(setting_dirs, out, *, metric_names=("top1", "top10", "top50"), title=None, labels=None):
    """Draw one panel per metric, one line (mean ± s.e.) per setting; save to ``out`` (PNG)."""
    loaded = [load_setting(Path(d)) for d in setting_dirs]
    # Drop metrics no run reached (e.g. Top50 in a run of fewer than 50 evaluations).
    metric_names = [
        m for m in metric_names
        if any(v is not None for group in loaded for s in group for v in s["curves"][m])
    ] or list(metric_names[:1])  # fmt: skip
    fig, axes = plt.subplots(1, len(metric_names), figsize=(5 * len(metric_names), 3.6), squeeze=False)
    retrain_points = set()
    for i, (d, summaries) in enumerate(zip(setting_dirs, loaded)):
        label = labels[i] if labels else Path(d).name
        for s in summaries:
            retrain_points.update(s.get("retrain_points", []))
        for ax, name in zip(axes[0], metric_names):
            curves = [np.array([np.nan if v is None else v for v in s["curves"][name]], float) for s in summaries]
            st = metrics.mean_and_stderr(curves)
            x = np.arange(1, len(st.mean) + 1)
            (line,) = ax.plot(x, st.mean, label=f"{label} (n={len(summaries)})")
            ax.fill_between(x, st.mean - st.stderr, st.mean + st.stderr, color=line.get_color(), alpha=0.25)
    for ax, name in zip(axes[0], metric_names):
        for r in sorted(retrain_points):
            ax.axvline(r, color="grey", lw=0.6, ls="--", alpha=0.6)
        ax.set_xlabel("objective evaluations")
        ax.set_ylabel(name.capitalize())
        ax.grid(alpha=0.2)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("topk.png"))
    ap.add_argument("--metric", nargs="+", default=list(METRICS), choices=METRICS)
    ap.add_argument("--title")
    args = ap.parse_args(argv)
    try:
        print(plot_settings(args.settings, args.out, metric_names=args.metric, title=args.title))
    except (ValueError, json.JSONDecodeError) as e:
        ap.error(str(e))


if __name__ == "__main__":
    main()
