"""Rank weighting (eq. 3, A.1) and the authors' other schemes, against NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import wrjax
from wrjax import weighting


def rank_weights_reference(scores, k, mask):
    """Direct O(N^2) transcription of eq. 3 in float64."""
    scores = np.asarray(scores, np.float64)
    valid = np.flatnonzero(mask)
    n = len(valid)
    w = np.zeros(len(scores))
    for i in valid:
        rank = sum(scores[j] > scores[i] for j in valid)
        w[i] = 1.0 / (k * n + rank) if np.isfinite(k) else 1.0
    return w / w.sum()


@pytest.mark.parametrize("use_jit", [False, True])
@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.integers(-5, 5), min_size=1, max_size=30),  # small ints -> many ties
    mask_bits=st.lists(st.booleans(), min_size=30, max_size=30),
    k=st.sampled_from([1e-5, 1e-3, 0.1, 1.0, 10.0, math.inf]),
)
def test_rank_weights_match_direct_count(use_jit, data, mask_bits, k):
    scores = np.asarray(data, np.float32)
    mask = np.asarray(mask_bits[: len(scores)])
    mask[0] = True  # at least one valid point
    fn = jax.jit(wrjax.rank_weights) if use_jit else wrjax.rank_weights
    got = np.asarray(fn(scores, k, mask))
    np.testing.assert_allclose(got, rank_weights_reference(scores, k, mask), rtol=2e-5, atol=1e-7)
    assert np.all(got[~mask] == 0.0)
    np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-5)


def test_rank_weights_match_paper_a4_snippet_without_ties(rng):
    # Appendix A.4's argsort-argsort implementation (valid when there are no ties).
    scores = rng.normal(size=200)
    k = 1e-3
    ranks = np.argsort(np.argsort(-scores))
    ref = 1 / (k * len(scores) + ranks)
    ref = ref / ref.sum()
    np.testing.assert_allclose(wrjax.rank_weights(scores, k), ref, rtol=1e-5)


def test_ties_share_a_rank():
    w = np.asarray(wrjax.rank_weights([2.0, 5.0, 2.0, 1.0], k=1.0))
    assert w[0] == w[2]
    assert w[1] > w[0] > w[3]


@pytest.mark.parametrize("k", [1e-3, 1e-2, 0.1])
@pytest.mark.parametrize("q1,q2", [(0.0, 0.1), (0.1, 0.5), (0.5, 1.0)])
def test_quantile_weight_fraction_matches_appendix_a1(k, q1, q2, rng):
    """A.1: weight on quantile [q1, q2] ~ ln((k+q2)/(k+q1)) / ln(1+1/k), for any N with kN >> 1."""
    expected = math.log((k + q2) / (k + q1)) / math.log1p(1 / k)
    fractions = []
    for n in (20_000, 100_000):
        scores = rng.permutation(n).astype(np.float32)  # distinct scores; rank r = n-1-score
        w = np.asarray(wrjax.rank_weights(scores, k), np.float64)
        order = np.argsort(-scores)  # best first
        fractions.append(w[order[int(q1 * n) : int(q2 * n)]].sum())
    # The A.1 derivation drops O(1/(kN)) terms; at kN >= 20 that is a few percent.
    np.testing.assert_allclose(fractions, expected, rtol=0.05)
    np.testing.assert_allclose(fractions[0], fractions[1], rtol=0.05)  # independent of N


def test_max_rank_weight_matches_authors_numbers():
    assert wrjax.max_rank_weight(1e-3) == pytest.approx(145, rel=0.01)
    assert wrjax.max_rank_weight(1e-1) == pytest.approx(4.2, rel=0.01)
    n = 100_000
    w = np.asarray(wrjax.rank_weights(np.arange(n, dtype=np.float32), 1e-3))
    assert w.max() * n == pytest.approx(wrjax.max_rank_weight(1e-3), rel=0.01)


def test_k_inf_is_uniform_over_valid_slots():
    mask = np.array([True, False, True, True])
    w = wrjax.rank_weights([1.0, 9.0, 3.0, -2.0], math.inf, mask)
    np.testing.assert_allclose(w, [1 / 3, 0, 1 / 3, 1 / 3], rtol=1e-6)


@pytest.mark.parametrize("k", [0.0, -1.0, math.nan])
def test_invalid_k_raises(k):
    with pytest.raises(ValueError, match="k must be > 0"):
        wrjax.rank_weights([1.0, 2.0], k)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_valid_scores_raise(bad):
    with pytest.raises(ValueError, match="finite"):
        wrjax.rank_weights([1.0, bad, 2.0], 1e-3)
    # ... but a non-finite score on a masked slot is fine (recorded, excluded).
    w = wrjax.rank_weights([1.0, bad, 2.0], 1e-3, np.array([True, False, True]))
    assert np.asarray(w)[1] == 0.0 and np.isfinite(np.asarray(w)).all()


def test_empty_mask_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="no valid point"):
        wrjax.rank_weights([1.0, 2.0], 1e-3, np.array([False, False]))
    with pytest.raises(ValueError, match="1-D"):
        wrjax.rank_weights(np.ones((2, 2)), 1e-3)
    with pytest.raises(ValueError, match="does not match"):
        wrjax.rank_weights([1.0, 2.0], 1e-3, np.array([True]))
    with pytest.raises(ValueError, match="boolean"):
        wrjax.rank_weights([1.0, 2.0], 1e-3, np.array([1, 0]))


def test_rank_weights_do_not_retrace_as_the_buffer_fills(trace_counter):
    counted = trace_counter(wrjax.rank_weights)
    fn = jax.jit(counted)
    capacity = 64
    scores = jnp.asarray(np.random.default_rng(1).normal(size=capacity), jnp.float32)
    for n_valid, k in [(1, 1e-3), (10, 1e-3), (40, 0.1), (64, 1.0)]:
        mask = jnp.arange(capacity) < n_valid
        w = fn(scores, jnp.float32(k), mask)
        np.testing.assert_allclose(
            w, rank_weights_reference(scores, k, np.asarray(mask)), rtol=2e-5, atol=1e-7
        )
    assert counted.count == 1


def test_dbas_weights_against_scipy(rng):
    y = rng.normal(size=50)
    mask = rng.random(50) < 0.8
    w = np.asarray(wrjax.dbas_weights(y, mask, quantile=0.9, noise=0.3))
    y_q = np.quantile(y[mask], 0.9)
    ref = np.where(mask, scipy.stats.norm.sf(y_q, loc=y, scale=0.3), 0.0)
    np.testing.assert_allclose(w, ref / ref.sum(), rtol=1e-4, atol=1e-7)


def test_cem_pi_weights_against_numpy(rng):
    y = rng.normal(size=40)
    w = np.asarray(wrjax.cem_pi_weights(y, quantile=0.75))
    ref = (y >= np.quantile(y, 0.75)).astype(float)
    np.testing.assert_allclose(w, ref / ref.sum(), rtol=1e-6)


def test_rwr_weights_against_numpy_and_stable_for_large_alpha(rng):
    y = rng.normal(size=30) * 100
    mask = np.ones(30, bool)
    mask[3] = False
    w = np.asarray(wrjax.rwr_weights(y, mask, alpha=0.05))
    ref = np.where(mask, np.exp(0.05 * (y - y[mask].max())), 0.0)
    np.testing.assert_allclose(w, ref / ref.sum(), rtol=1e-4, atol=1e-8)
    assert np.isfinite(np.asarray(wrjax.rwr_weights(y * 1e4, alpha=10.0))).all()


def test_make_weight_fn_dispatch_and_errors():
    y = np.array([3.0, 1.0, 2.0])
    np.testing.assert_allclose(
        weighting.make_weight_fn("rank", k=0.5)(y), wrjax.rank_weights(y, 0.5), rtol=1e-7
    )
    np.testing.assert_allclose(weighting.make_weight_fn("uniform")(y), [1 / 3] * 3, rtol=1e-6)
    with pytest.raises(ValueError, match="needs k"):
        weighting.make_weight_fn("rank")
    with pytest.raises(ValueError, match="unknown weighting scheme"):
        weighting.make_weight_fn("softmax")


def test_k_schedules():
    assert wrjax.constant_k(1e-3)(7) == 1e-3
    sched = wrjax.geometric_k(1.0, 1e-4, num_cycles=4)
    got = [sched(c) for c in range(6)]
    np.testing.assert_allclose(got, [1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-4], rtol=1e-9)
    with pytest.raises(ValueError):
        wrjax.geometric_k(1.0, 0.0, 3)
