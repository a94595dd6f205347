"""Tests for wrjax.acquisition: EI, log-EI, incumbents, the box, and the multi-start maximiser.

References: SciPy's normal distribution (closed-form EI), numerical integration of the EI
integral with ``scipy.integrate.quad`` in the far tail, NumPy quantiles, a brute-force
duplicate check, and synthetic surfaces with known optima.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from wrjax import acquisition as acq
from wrjax.precision import float64_scope

with_and_without_jit = pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])


@with_and_without_jit
def test_expected_improvement_matches_scipy_closed_form(rng, use_jit):
    mean = rng.normal(0, 2, size=200)
    var = rng.uniform(0.01, 4, size=200)
    tau = rng.normal(0, 2, size=200)
    ei_fn = jax.jit(acq.expected_improvement) if use_jit else acq.expected_improvement
    ei = float64_scope(lambda: np.asarray(ei_fn(mean, var, tau)))()
    s = np.sqrt(var)
    u = (mean - tau) / s
    ref = (mean - tau) * scipy.stats.norm.cdf(u) + s * scipy.stats.norm.pdf(u)
    np.testing.assert_allclose(ei, ref, rtol=1e-12, atol=1e-300)
    # float32 inputs outside the float64 scope stay float32 and agree to float32 precision
    ei32 = np.asarray(acq.expected_improvement(mean.astype(np.float32), var.astype(np.float32), tau.astype(np.float32)))
    assert ei32.dtype == np.float32
    np.testing.assert_allclose(ei32, ref, rtol=2e-4, atol=1e-6)


def _log_h_quad(u: float) -> float:
    """log h(u) = log E[max(Z + u, 0)], Z ~ N(0, 1), by quadrature (no underflow)."""
    if u >= 0:  # no underflow here: the closed form
        return math.log(u * scipy.stats.norm.cdf(u) + scipy.stats.norm.pdf(u))
    # h(u) = exp(-u^2/2)/sqrt(2 pi) int_0^inf t exp(u t - t^2/2) dt, scaled out of underflow
    val, _ = scipy.integrate.quad(lambda t: t * math.exp(u * t - 0.5 * t * t), 0, np.inf, epsabs=0, epsrel=1e-13, limit=200)
    return -0.5 * u * u - 0.5 * math.log(2 * math.pi) + math.log(val)


@with_and_without_jit
def test_log_ei_finite_everywhere_and_accurate_in_the_far_tail(use_jit):
    f = jax.jit(acq.log_expected_improvement) if use_jit else acq.log_expected_improvement
    u = np.array([-1e12, -1e9, -7e7, -1e6, -1e4, -300, -60, -40, -38, -20, -5, -1.0001, -1, -0.5, 0, 3, 40, 1e3])

    @float64_scope
    def run():
        val = np.asarray(f(u, np.ones_like(u), np.zeros_like(u)))
        grad = np.asarray(jax.vmap(jax.grad(lambda m: f(m, 1.0, 0.0)))(jnp.asarray(u)))
        ei = np.asarray(acq.expected_improvement(u, np.ones_like(u), np.zeros_like(u)))
        return val, grad, ei

    val, grad, ei = run()
    assert np.all(np.isfinite(val)) and np.all(np.isfinite(grad))
    assert np.all(np.diff(val) > 0)  # strictly increasing in the mean
    assert np.all(grad > 0)
    # where EI is representable, log-EI is its log
    ok = ei > 1e-290
    np.testing.assert_allclose(val[ok], np.log(ei[ok]), rtol=1e-12)
    assert (ei == 0).any()  # the comparison above is not all there is: EI underflows here
    # in the tail, against quadrature of the EI integral
    for ui, vi in zip(u, val):
        if -1e4 <= ui <= 40:
            np.testing.assert_allclose(vi, _log_h_quad(float(ui)), rtol=1e-11)
    # beyond quadrature's reach: the asymptote -u^2/2 - log sqrt(2 pi) - 2 log|u|
    for ui, vi in zip(u[:4], val[:4]):
        asym = -0.5 * ui * ui - 0.5 * math.log(2 * math.pi) - 2 * math.log(-ui)
        np.testing.assert_allclose(vi, asym, rtol=1e-14)


def test_log_ei_scales_with_the_standard_deviation(rng):
    mean, tau = rng.normal(size=20), rng.normal(size=20)
    var = rng.uniform(0.1, 5, size=20)

    @float64_scope
    def run():
        a = acq.log_expected_improvement(mean, var, tau)
        # EI(mu, s^2, tau) = s * EI((mu - tau)/s, 1, 0)
        b = 0.5 * jnp.log(var) + acq.log_expected_improvement((mean - tau) / np.sqrt(var), np.ones(20), np.zeros(20))
        return np.asarray(a), np.asarray(b)

    a, b = run()
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_incumbent_best_and_quantile_match_numpy(rng):
    y = rng.normal(size=50)
    mask = rng.uniform(size=50) < 0.7
    best = float(acq.incumbent(y, mask, method="best"))
    q = float(acq.incumbent(y, mask, quantile=0.9))
    np.testing.assert_allclose(best, y[mask].max(), rtol=1e-6)
    np.testing.assert_allclose(q, np.quantile(y[mask], 0.9), rtol=1e-5)
    with pytest.raises(ValueError):
        acq.incumbent(y, mask, method="median")
    with pytest.raises(ValueError):
        acq.incumbent(y, mask, quantile=1.5)


def test_data_bounds_is_the_authors_box(rng):
    x = rng.standard_normal((300, 4))
    x[0, 0] = 100.0  # an outlier the 99.9th percentile ignores
    mask = np.ones(300, bool)
    mask[1] = False
    b = np.asarray(acq.data_bounds(x, mask))
    r = 1.1 * np.percentile(np.abs(x[mask]), 99.9)
    np.testing.assert_allclose(b, np.stack([-r * np.ones(4), r * np.ones(4)]), rtol=1e-5)


def test_rank_distinct_against_brute_force(rng):
    pts = rng.uniform(size=(12, 2)).round(1)  # rounding makes exact and near duplicates
    vals = rng.normal(size=12)
    vals[3] = np.nan
    order, distinct = (np.asarray(a) for a in acq.rank_distinct(jnp.asarray(pts), jnp.asarray(vals), 0.05))
    # brute force
    v = np.where(np.isfinite(vals), vals, -np.inf)
    rank = np.argsort(-v, kind="stable")
    flags = []
    for i, k in enumerate(rank):
        dup = any(np.all(np.abs(pts[k] - pts[j]) <= 0.05) for j in rank[:i])
        flags.append(not dup and np.isfinite(v[k]))
    ref = [k for k, f in zip(rank, flags) if f] + [k for k, f in zip(rank, flags) if not f]
    assert order.tolist() == [int(k) for k in ref]
    assert distinct.tolist() == sorted(flags, reverse=True)


def _bumps(x, centres, heights, width):
    d2 = jnp.sum((x[None, :] - centres) ** 2, axis=-1)
    return jnp.sum(heights * jnp.exp(-0.5 * d2 / width**2))


def test_maximizer_finds_the_known_optimum_of_a_multimodal_surface(key):
    # three bumps in 3-D; the highest is at c0; the box clips nothing important
    centres = jnp.array([[0.5, -1.0, 1.5], [-2.0, 2.0, 0.0], [2.0, 2.0, -2.0]], jnp.float32)
    heights = jnp.array([2.0, 1.5, 1.0], jnp.float32)
    f = jax.tree_util.Partial(_bumps, centres=centres, heights=heights, width=0.7)
    bounds = np.array([[-3.0] * 3, [3.0] * 3])
    res = acq.maximize_acquisition(key, f, bounds, num_restarts=16, num_steps=300)
    pts, vals, distinct = (np.asarray(a) for a in (res.points, res.values, res.distinct))
    np.testing.assert_allclose(pts[0], np.asarray(centres[0]), atol=2e-3)
    assert vals[0] == pytest.approx(float(_bumps(centres[0], centres, heights, 0.7)), rel=1e-6)
    d = distinct.sum()
    assert np.all(np.diff(vals[:d]) <= 0)  # ranked
    assert np.all(pts >= bounds[0]) and np.all(pts <= bounds[1])
    assert d >= 2  # several local optima found


def test_maximizer_respects_the_box_at_a_boundary_optimum(key):
    f = jax.tree_util.Partial(lambda x: -jnp.sum((x - jnp.array([5.0, 0.2])) ** 2))
    res = acq.maximize_acquisition(key, f, np.array([[-1.0, -1.0], [1.0, 1.0]]), num_restarts=4, num_steps=200)
    np.testing.assert_allclose(np.asarray(res.points[0]), [1.0, 0.2], atol=1e-4)


def test_maximizer_uses_init_points_and_reports_start_values(key):
    f = jax.tree_util.Partial(lambda x: -jnp.sum(x**2))
    init = np.array([[0.9, 0.9], [0.5, -0.5]])
    res = acq.maximize_acquisition(key, f, np.array([[-1.0, -1.0], [1.0, 1.0]]), num_restarts=3, num_steps=0, init_points=init)
    # no ascent steps: the points are the starts, ranked
    starts = np.asarray(res.points)
    assert any(np.allclose(s, [0.5, -0.5]) for s in starts)
    assert any(np.allclose(s, [0.9, 0.9]) for s in starts)
    np.testing.assert_allclose(np.asarray(res.values), np.asarray(res.start_values), rtol=1e-12)


def test_maximizer_does_not_retrace_for_a_new_surrogate(key, trace_counter):
    counted = trace_counter(lambda x, c: -jnp.sum((x - c) ** 2))
    bounds = np.array([[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]])
    out, counts = [], []
    for c in ([0.1, 0.2, 0.3], [-0.5, 0.5, 1.0]):
        f = jax.tree_util.Partial(counted, c=jnp.asarray(c))
        out.append(np.asarray(acq.maximize_acquisition(key, f, bounds, num_restarts=5, num_steps=150).points[0]))
        counts.append(counted.count)
    assert counts[0] > 0 and counts[1] == counts[0]  # the second surrogate reused the program
    np.testing.assert_allclose(out[0], [0.1, 0.2, 0.3], atol=1e-3)
    np.testing.assert_allclose(out[1], [-0.5, 0.5, 1.0], atol=1e-3)


def test_maximizer_rejects_bad_input(key):
    f = jax.tree_util.Partial(lambda x: -jnp.sum(x**2))
    with pytest.raises(ValueError, match="bounds"):
        acq.maximize_acquisition(key, f, np.array([[1.0, 1.0], [-1.0, -1.0]]), num_restarts=2, num_steps=1)
    with pytest.raises(ValueError, match="num_restarts"):
        acq.maximize_acquisition(key, f, np.array([[-1.0], [1.0]]), num_restarts=0, num_steps=1)
    with pytest.raises(ValueError, match="init_points"):
        acq.maximize_acquisition(key, f, np.array([[-1.0], [1.0]]), num_restarts=2, num_steps=1, init_points=np.zeros((2, 3)))


def test_maximizer_finds_the_dense_multistart_ei_optimum_on_a_fixed_posterior(key, rng):
    # a fixed SGPR posterior in 2-D; reference: EI from NumPy formulas (Titsias' predictive
    # with Sigma = (Kzz + Kzf Kfz / s2)^-1) on a dense grid, polished by SciPy L-BFGS-B from
    # the 10 best grid points
    import scipy.optimize

    from wrjax import gp

    x = rng.uniform(-2, 2, size=(60, 2))
    y = np.sin(2 * x[:, 0]) * np.cos(x[:, 1]) + 0.05 * rng.standard_normal(60)
    z = rng.uniform(-2, 2, size=(10, 2))
    ls, var, noise = np.array([0.7, 0.9]), 1.2, 0.02
    inv = lambda v: np.log(np.expm1(v))  # noqa: E731

    def k(a, b):
        d = (a[:, None, :] - b[None, :, :]) / ls
        return var * np.exp(-0.5 * np.sum(d * d, axis=-1))

    @float64_scope
    def run():
        params = gp.SGPRParams(
            jnp.asarray(z), jnp.asarray(inv(ls)), jnp.asarray(inv(var)), jnp.asarray(inv(noise - gp.NOISE_FLOOR))
        )
        data = gp.make_data(x, y, np.ones(60, bool))
        pred = gp.build_predictor(params, data, form="solve")
        tau = float(np.quantile(np.asarray(data.y), 0.9))

        def log_ei(p, t, v):
            mean, s2 = gp.predict_standardized(p, v[None, :])
            return acq.log_expected_improvement(mean[0], s2[0], t)

        f = jax.tree_util.Partial(log_ei, pred, jnp.asarray(tau))
        bounds = np.array([[-2.5, -2.5], [2.5, 2.5]])
        res = acq.maximize_acquisition(key, f, bounds, num_restarts=16, num_steps=300)
        return np.asarray(res.points[0]), float(res.values[0]), np.asarray(data.y), tau

    point, log_val, ys, tau = run()
    kzz = k(z, z) + 1e-6 * var * np.eye(10)
    kzf = k(z, x)
    sigma = np.linalg.inv(kzz + kzf @ kzf.T / noise)

    def ei_np(v):
        v = np.atleast_2d(v)
        kzx = k(z, v)
        mean = kzx.T @ sigma @ kzf @ ys / noise
        s2 = var - np.sum(kzx * np.linalg.solve(kzz, kzx), 0) + np.sum(kzx * (sigma @ kzx), 0)
        s = np.sqrt(s2)
        u = (mean - tau) / s
        return s * (u * scipy.stats.norm.cdf(u) + scipy.stats.norm.pdf(u))

    g = np.linspace(-2.5, 2.5, 201)
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    vals = ei_np(grid)
    best = -np.inf
    for i in np.argsort(-vals)[:10]:
        r = scipy.optimize.minimize(lambda v: -ei_np(v)[0], grid[i], method="L-BFGS-B",
                                    bounds=[(-2.5, 2.5)] * 2, options=dict(ftol=1e-15, gtol=1e-12))
        if -r.fun > best:
            best, best_x = -r.fun, r.x
    np.testing.assert_allclose(np.exp(log_val), best, rtol=1e-6)
    np.testing.assert_allclose(ei_np(point)[0], best, rtol=1e-6)
    np.testing.assert_allclose(point, best_x, atol=2e-3)
