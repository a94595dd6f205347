"""Trust regions, Thompson sampling and constrained EI against independent references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from wrjax import acquisition, constraints, gp, thompson
from wrjax import trust_region as tr
from wrjax.precision import float64_scope


# ------------------------------------------------------------------ trust region


def _turbo_reference(events, dim, q=1, length=0.8, lmin=0.5**7, lmax=1.6, succ_tol=3):
    """TuRBO's rule written out in plain Python (Eriksson et al. 2019, turbo_1.py)."""
    fail_tol = math.ceil(max(4.0 / q, dim / q))
    succ = fail = restarts = 0
    out = []
    for improved in events:
        if improved:
            succ, fail = succ + 1, 0
        else:
            succ, fail = 0, fail + 1
        if succ == succ_tol:
            length, succ = min(2.0 * length, lmax), 0
        elif fail == fail_tol:
            length, fail = length / 2.0, 0
        if length < lmin:
            length, restarts = 0.8, restarts + 1
        out.append((length, succ, fail, restarts))
    return out


def test_trust_region_follows_turbo_on_a_scripted_sequence():
    dim = 4
    config = tr.TrustRegionConfig()
    events = [True] * 3 + [False] * 4 + [True, False, True, True, True] + [False] * 40
    state = tr.init(jnp.zeros(dim), 0.0, config)
    best = 0.0
    update = jax.jit(lambda s, b, z: tr.update(s, config, batch_best=b, batch_best_point=z))
    for i, (improved, want) in enumerate(zip(events, _turbo_reference(events, dim))):
        score = best + 1.0 if improved else best - 1.0
        z = jnp.full((dim,), float(i))
        state = update(state, jnp.asarray(score), z)
        if improved:
            best = score
            np.testing.assert_array_equal(state.center, z)  # the region follows the incumbent
        got = (float(state.length), int(state.successes), int(state.failures), int(state.restarts))
        assert got == pytest.approx(want), f"after event {i}"
    assert int(state.restarts) >= 1  # the long failure streak shrank it below min_length


def test_tiny_improvements_are_not_successes():
    config = tr.TrustRegionConfig()
    state = tr.init(jnp.zeros(2), 10.0, config)
    state = tr.update(state, config, batch_best=jnp.asarray(10.005), batch_best_point=jnp.ones(2))
    # 10.005 < 10 + 1e-3 * 10: a failure for the counters, but still the new incumbent
    assert int(state.failures) == 1 and float(state.best) == pytest.approx(10.005)


def test_a_restarted_region_takes_its_first_score_as_incumbent():
    """TuRBO's restart: fresh side and counters, no incumbent, so any finite score succeeds
    and becomes the centre; a discard (score -inf) is still a failure."""
    config = tr.TrustRegionConfig()
    state = tr.init(jnp.zeros(3), 5.0, config)
    state = tr.update(state, config, batch_best=jnp.asarray(6.0), batch_best_point=jnp.ones(3))
    state = state._replace(length=jnp.asarray(0.1), failures=jnp.asarray(2, jnp.int32))
    fresh = tr.restart(state, jnp.full(3, 2.0), config)
    assert float(fresh.length) == np.float32(config.init_length) and float(fresh.best) == -np.inf
    assert (int(fresh.successes), int(fresh.failures), int(fresh.restarts)) == (0, 0, 1)
    np.testing.assert_array_equal(fresh.center, 2.0)
    missed = tr.update(fresh, config, batch_best=jnp.asarray(-jnp.inf), batch_best_point=jnp.ones(3))
    assert int(missed.failures) == 1 and float(missed.best) == -np.inf
    np.testing.assert_array_equal(missed.center, 2.0)
    hit = tr.update(fresh, config, batch_best=jnp.asarray(-1e6), batch_best_point=jnp.full(3, -1.0))
    assert int(hit.successes) == 1 and float(hit.best) == -1e6
    np.testing.assert_array_equal(hit.center, -1.0)


def test_bounds_are_lengthscale_weighted_and_clipped():
    config = tr.TrustRegionConfig(init_length=0.5)
    glob = jnp.array([[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]])
    state = tr.init(jnp.array([0.0, 0.0, 1.9]), 0.0, config)
    ls = jnp.array([1.0, 4.0, 0.25])
    lo, hi = tr.bounds(state, ls, glob)
    side = hi - lo
    # unclipped sides: 0.5 * w * 4 with w = ls / geomean(ls) = (1, 4, 0.25)
    np.testing.assert_allclose(side[0], 2.0, rtol=1e-6)
    np.testing.assert_allclose(hi[1] - lo[1], 4.0, rtol=1e-6)  # 8 wide, clipped to the box
    assert float(hi[2]) == pytest.approx(2.0) and float(lo[2]) == pytest.approx(1.65)
    assert bool(jnp.all(lo >= glob[0])) and bool(jnp.all(hi <= glob[1]))
    moved = tr.recenter(state, jnp.zeros(3))
    assert float(moved.length) == float(state.length)
    np.testing.assert_array_equal(moved.center, 0.0)


def test_trust_region_config_validation():
    with pytest.raises(ValueError):
        tr.TrustRegionConfig(init_length=2.0)
    with pytest.raises(ValueError):
        tr.TrustRegionConfig(batch_size=0)
    assert tr.TrustRegionConfig(batch_size=4).failures_allowed(56) == 14


# ------------------------------------------------------------------ Thompson sampling


@pytest.fixture(scope="module")
def predictor():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(40, 2))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + 0.05 * rng.normal(size=40)

    @float64_scope
    def build():
        data = gp.make_data(x, y, np.ones(40, bool))
        params = gp.init_params(jax.random.key(1), data, num_inducing=8)
        return gp.build_predictor(params, data), data, params

    return build()


def _dense_sgpr_posterior(params, data, xs):
    """Titsias' SGPR posterior with explicit inverses, in NumPy (standardised units)."""
    ls, var, noise = (np.asarray(a, np.float64) for a in float64_scope(gp.constrain)(params))
    z = np.asarray(params.inducing)
    x, y = np.asarray(data.x), np.asarray(data.y)

    def k(a, b):
        d = ((a[:, None, :] - b[None, :, :]) / ls) ** 2
        return var * np.exp(-0.5 * d.sum(-1))

    kzz = k(z, z) + 1e-6 * np.mean(np.diag(k(z, z))) * np.eye(len(z))
    kzf, kzs = k(z, x), k(z, xs)
    sigma = kzz + kzf @ kzf.T / noise
    mean = kzs.T @ np.linalg.solve(sigma, kzf @ y) / noise
    cov = k(xs, xs) - kzs.T @ np.linalg.solve(kzz, kzs) + kzs.T @ np.linalg.solve(sigma, kzs)
    return mean, cov


def test_joint_posterior_matches_dense_reference_and_marginals(predictor):
    pred, data, params = predictor
    xs = np.random.default_rng(2).uniform(-2.5, 2.5, size=(30, 2))
    mean, cov = float64_scope(thompson.joint_posterior)(pred, xs)
    want_mean, want_cov = _dense_sgpr_posterior(params, data, xs)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-4, atol=1e-6)
    m2, v2 = float64_scope(lambda: gp.predict_standardized(pred, jnp.asarray(xs, jnp.float64)))()
    np.testing.assert_allclose(np.diag(cov), v2, rtol=1e-8, atol=1e-12)


def test_thompson_samples_have_the_posterior_mean_and_covariance(predictor):
    pred, data, params = predictor
    xs = np.random.default_rng(3).uniform(-2, 2, size=(6, 2))
    f = np.asarray(thompson.sample_posterior(jax.random.key(0), pred, xs, 40_000))
    mean, cov = float64_scope(thompson.joint_posterior)(pred, xs)
    mean = np.asarray(mean) * float(pred.y_std) + float(pred.y_mean)
    cov = np.asarray(cov) * float(pred.y_std) ** 2
    se = np.sqrt(np.diag(cov) / 40_000)
    assert np.all(np.abs(f.mean(0) - mean) < 5 * se + 1e-9)
    np.testing.assert_allclose(np.cov(f.T), cov, atol=0.05 * np.max(np.diag(cov)))


def test_thompson_batch_is_distinct_and_prefers_the_clear_maximum(predictor):
    pred, _, _ = predictor
    cand = np.random.default_rng(4).uniform(-2, 2, size=(50, 2))
    idx, vals = thompson.thompson_batch(jax.random.key(5), pred, cand, 8)
    assert len(set(np.asarray(idx).tolist())) == 8 and idx.shape == (8,)
    # one candidate where the posterior is certain and far above the rest: every draw's max
    mean, _ = float64_scope(gp.predict)(pred, cand)
    assert np.all(np.asarray(vals) >= np.asarray(mean).min())
    with pytest.raises(ValueError):
        thompson.thompson_batch(jax.random.key(5), pred, cand, 51)


# ------------------------------------------------------------------ constrained EI


def test_constrained_ei_equals_ei_times_closed_form_probability(rng):
    mean, var = rng.normal(size=20), rng.uniform(0.1, 2.0, size=20)
    c_mean, c_var = rng.normal(35, 5, size=20), rng.uniform(1, 9, size=20)
    tau, thr = 0.3, 38.0
    s = np.sqrt(var)
    u = (mean - tau) / s
    ei = s * (u * norm.cdf(u) + norm.pdf(u))
    pof = norm.cdf((thr - c_mean) / np.sqrt(c_var))
    got = constraints.constrained_ei(mean, var, tau, c_mean, c_var, thr)
    np.testing.assert_allclose(got, ei * pof, rtol=1e-5)
    log_got = constraints.constrained_log_ei(mean, var, tau, c_mean, c_var, thr)
    np.testing.assert_allclose(np.exp(np.asarray(log_got, np.float64)), ei * pof, rtol=1e-4)
    # far infeasible: the log stays finite (the maximiser still has a gradient)
    far = constraints.constrained_log_ei(0.0, 1.0, 0.0, 200.0, 1.0, 38.0)
    assert np.isfinite(far) and far < -1000


def test_constrained_log_ei_at_two_gps(predictor):
    pred, _, _ = predictor
    x = jnp.array([0.3, -0.4])
    tau, thr = 0.5, 0.0
    got = float64_scope(constraints.constrained_log_ei_at)(pred, pred, tau, thr, x)
    m, v = float64_scope(gp.predict_standardized)(pred, x[None, :])
    want = np.log(
        float(float64_scope(acquisition.expected_improvement)(m, v, tau)[0])
        * norm.cdf((thr - float(m[0])) / math.sqrt(float(v[0])))
    )
    assert float(got) == pytest.approx(want, rel=1e-6)
