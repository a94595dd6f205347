"""TopK curves (C.3) and their aggregation over seeds, against NumPy references."""

import numpy as np
import pytest

import wrjax.metrics as metrics


def topk_reference(scores, k):
    out = np.full(len(scores), np.nan)
    for b in range(len(scores)):
        prefix = np.sort(scores[: b + 1])[::-1]
        if len(prefix) >= k:
            out[b] = prefix[k - 1]
    return out


@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_topk_curve_matches_numpy(k, rng):
    scores = np.round(rng.normal(size=120), 1).astype(np.float32)  # rounding -> ties
    np.testing.assert_allclose(metrics.topk_curve(scores, k), topk_reference(scores, k), rtol=1e-6)


def test_topk_curves_keys_and_monotone(rng):
    scores = rng.normal(size=60)
    curves = metrics.topk_curves(scores)
    assert set(curves) == {"top1", "top10", "top50"}
    top1 = curves["top1"]
    assert np.all(np.diff(top1) >= 0)
    assert np.isnan(curves["top50"][:49]).all() and not np.isnan(curves["top50"][49])


def test_topk_rejects_bad_k():
    for k in (0, -1, 2.5):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            metrics.topk_curve([1.0, 2.0], k)


def test_mean_and_stderr_against_numpy(rng):
    curves = [rng.normal(size=30) for _ in range(5)]
    stats = metrics.mean_and_stderr(curves)
    arr = np.stack(curves)
    np.testing.assert_allclose(stats.mean, arr.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.stderr, arr.std(0, ddof=1) / np.sqrt(5), rtol=1e-12)
    # Unequal lengths: each position uses the seeds that reached it.
    stats = metrics.mean_and_stderr([np.array([1.0, 2.0, 3.0]), np.array([3.0])])
    np.testing.assert_allclose(stats.mean, [2.0, 2.0, 3.0])
    np.testing.assert_allclose(stats.stderr, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(stats.n, [2, 1, 1])
    with pytest.raises(ValueError):
        metrics.mean_and_stderr([])
