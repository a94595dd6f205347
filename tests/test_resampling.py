"""Duplicate-copy variance reduction (A.2) and weighted minibatch plans."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import wrjax


def reduce_variance_reference(weights, w_max):
    """The paper's appendix A.2 snippet, applied after scaling the weights to mean 1."""
    weights = np.asarray(weights, np.float64)
    weights = weights * len(weights) / weights.sum()
    idx, new_w = [], []
    for i, w in enumerate(weights):
        if w <= w_max:
            idx.append(i)
            new_w.append(w)
        else:
            n_copies = int(math.ceil(w / w_max))
            idx += [i] * n_copies
            new_w += [w / n_copies] * n_copies
    return np.array(idx), np.array(new_w)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("k", [1e-5, 1e-3, 0.1, math.inf])
def test_duplicate_copies_match_the_paper_snippet(use_jit, k, rng):
    scores = rng.normal(size=500)
    w = np.asarray(wrjax.rank_weights(scores, k))
    fn = jax.jit(wrjax.duplicate_copies, static_argnums=1) if use_jit else wrjax.duplicate_copies
    idx, cw = fn(w, 5.0)
    idx, cw = np.asarray(idx), np.asarray(cw)
    keep = cw > 0
    ref_idx, ref_w = reduce_variance_reference(w, 5.0)
    np.testing.assert_array_equal(idx[keep], ref_idx)
    np.testing.assert_allclose(cw[keep], ref_w, rtol=2e-4)
    # Total weight preserved (mean 1 over the 500 points) and no copy above w_max.
    np.testing.assert_allclose(cw.sum(), 500.0, rtol=1e-4)
    assert cw.max() <= 5.0 * (1 + 1e-6)
    assert len(cw) == wrjax.duplicate_capacity(500, 5.0)


def test_duplicate_copies_per_point_totals_and_masks(rng):
    w = rng.exponential(size=100) ** 4  # heavy-tailed
    mask = rng.random(100) < 0.7
    idx, cw = wrjax.duplicate_copies(w, 2.0, mask=jnp.asarray(mask))
    idx, cw = np.asarray(idx), np.asarray(cw)
    per_point = np.bincount(idx, weights=cw, minlength=100)
    scaled = np.where(mask, w, 0) * mask.sum() / w[mask].sum()
    np.testing.assert_allclose(per_point, scaled, rtol=1e-4, atol=1e-6)
    assert set(idx[cw > 0]) <= set(np.flatnonzero(mask))
    assert cw.max() <= 2.0 * (1 + 1e-6)


def test_duplicate_copies_rejects_bad_input():
    with pytest.raises(ValueError, match="w_max"):
        wrjax.duplicate_copies([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        wrjax.duplicate_copies([1.0, -2.0])
    with pytest.raises(ValueError, match="1-D"):
        wrjax.duplicate_copies(np.ones((2, 2)))


def test_sampled_batches_follow_the_weights_chi_square(key):
    p = np.array([0.5, 0.25, 0.15, 0.1, 0.0, 0.0])
    plan = wrjax.weighted_batches(key, jnp.asarray(p), num_steps=200, batch_size=50, mode="sample")
    counts = np.bincount(np.asarray(plan.indices).ravel(), minlength=6)
    assert counts[4:].sum() == 0  # zero weight is never drawn
    n = counts.sum()
    _, pvalue = scipy.stats.chisquare(counts[:4], n * p[:4])
    assert pvalue > 1e-3
    np.testing.assert_array_equal(plan.loss_weights, 1.0)


def test_epoch_batches_visit_each_valid_slot_once_per_epoch(key):
    mask = np.zeros(40, bool)
    mask[:30] = True
    w = np.where(mask, np.linspace(1, 2, 40), 0.0)
    plan = wrjax.weighted_batches(
        key, jnp.asarray(w), num_steps=6, batch_size=10, mode="epoch", mask=jnp.asarray(mask)
    )
    idx = np.asarray(plan.indices).ravel()
    # 60 draws = exactly two passes over the 30 valid slots, each pass a permutation.
    assert sorted(idx[:30]) == list(range(30)) and sorted(idx[30:]) == list(range(30))
    # loss weight = N_valid * w_i / sum(w): its mean over an epoch is exactly 1.
    lw = np.asarray(plan.loss_weights).ravel()
    np.testing.assert_allclose(lw[:30].mean(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(lw, 30 * w[idx] / w.sum(), rtol=1e-5)


def test_both_modes_estimate_the_same_weighted_mean(key):
    """E[mean(loss_weights * L[idx])] = sum_i p_i L_i in both modes."""
    rng = np.random.default_rng(3)
    w = rng.exponential(size=20)
    losses = rng.normal(size=20) + 3
    exact = (w / w.sum() * losses).sum()
    for mode, tol in [("epoch", 1e-4), ("sample", 0.02)]:
        plan = wrjax.weighted_batches(key, jnp.asarray(w), num_steps=1000, batch_size=20, mode=mode)
        est = np.mean(np.asarray(plan.loss_weights) * losses[np.asarray(plan.indices)])
        np.testing.assert_allclose(est, exact, rtol=tol)
