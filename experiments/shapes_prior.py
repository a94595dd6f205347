"""Areas of shapes sampled from each pretrained model's prior, per k (the paper's Fig. 3 right).

    python -m experiments.shapes_prior [--preset squares2d] [--num-samples 1000]
                                       [--out experiments/results/shapes]

For each shipped checkpoint ``PRESET-k_*`` of the shapes task (``checkpoints/shapes/``, found
through ``wrjax.paths``; trained with rank weights of strength k), decodes ``z ~ N(0, I)``,
rounds the Bernoulli means and counts the pixels on.
Writes ``prior_areas.png`` (violins: the training set, then one per k) and
``prior_areas.md`` (mean, median, 5-95% and max, and the fraction above the training set's
largest area).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from wrjax import checkpoint, paths  # noqa: E402
from wrjax.tasks import shapes  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="squares2d")
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/shapes"))
    args = ap.parse_args(argv)

    ks = sorted(map(float, paths.shipped_ks("shapes", args.preset)), reverse=True)
    if not ks:
        raise SystemExit(f"no shipped shapes checkpoints {args.preset}-k_*")
    data = shapes.load_shapes(args.preset)
    train = np.asarray(data.areas[data.train_idx], np.float64)
    groups = {"training data": train}
    for k in ks:
        path = paths.checkpoint_for_k("shapes", args.preset, k, fallback=None)
        model, params, _ = checkpoint.load_model(path, shapes.build_model)
        areas = shapes.prior_sample_areas(jax.random.key(args.seed), model, params, num_samples=args.num_samples)
        groups["k = inf" if math.isinf(k) else f"k = {k:g}"] = np.asarray(areas, np.float64)

    args.out.mkdir(parents=True, exist_ok=True)
    top = train.max()
    lines = [f"Areas of {args.num_samples} prior samples per model ({args.preset}); training max {top:.0f}.", "",
             "| model | mean | median | 5-95% | max | share > training max |", "|---|---|---|---|---|---|"]
    for name, a in groups.items():
        lo, hi = np.percentile(a, [5, 95])
        lines.append(f"| {name} | {a.mean():.0f} | {np.median(a):.0f} | {lo:.0f}-{hi:.0f} | {a.max():.0f} "
                     f"| {np.mean(a > top):.1%} |")
    table = "\n".join(lines)
    (args.out / "prior_areas.md").write_text(table + "\n")

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.violinplot(list(groups.values()), showmedians=True)
    ax.set_xticks(range(1, len(groups) + 1), list(groups))
    ax.axhline(top, color="grey", ls="--", lw=0.8)
    ax.set_ylabel("area (pixels)")
    ax.set_title(f"{args.preset}: areas of prior samples per weighting k")
    fig.tight_layout()
    fig.savefig(args.out / "prior_areas.png", dpi=120)
    print(table)
    print(f"plot: {args.out / 'prior_areas.png'}")


if __name__ == "__main__":
    main()
