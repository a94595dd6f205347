"""Tests for wrjax.gp: the masked collapsed SGPR bound, its predictor, jitter, k-means, subsets.

References are independent: exact GP algebra in NumPy float64, GPJax's own
``collapsed_elbo``, SciPy's multivariate normal, and set properties computed with NumPy.
"""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from wrjax import gp
from wrjax.precision import float64_scope


def _params(rng, x_inducing, d, *, ls=0.8, var=1.3, noise=0.05):
    """Raw SGPRParams with given constrained values (float64)."""
    inv = lambda v: np.log(np.expm1(v))  # noqa: E731
    return gp.SGPRParams(
        inducing=jnp.asarray(x_inducing, jnp.float64),
        raw_lengthscale=jnp.asarray(inv(ls * np.exp(0.2 * rng.standard_normal(d))), jnp.float64),
        raw_variance=jnp.asarray(inv(var), jnp.float64),
        raw_noise=jnp.asarray(inv(noise - gp.NOISE_FLOOR), jnp.float64),
    )


def _np_kernel(a, b, ls, var):
    d = (a[:, None, :] - b[None, :, :]) / ls
    return var * np.exp(-0.5 * np.sum(d * d, axis=-1))


def _problem(rng, n=25, d=2):
    x = rng.uniform(-2, 2, size=(n, d))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 + 0.1 * rng.standard_normal(n)
    return x, y


@float64_scope
def _exact_posterior(params, data, xs):
    """Exact GP posterior (latent f) in standardised units, NumPy float64."""
    ls, var, noise = (np.asarray(v) for v in gp.constrain(params))
    keep = np.asarray(data.mask)
    x, y = np.asarray(data.x)[keep], np.asarray(data.y)[keep]
    k = _np_kernel(x, x, ls, var) + noise * np.eye(len(x))
    ks = _np_kernel(xs, x, ls, var)
    mean = ks @ np.linalg.solve(k, y)
    cov = var - np.sum(ks * np.linalg.solve(k, ks.T).T, axis=1)
    return mean, cov


def test_rbf_kernel_matches_numpy_and_gpjax(rng):
    import gpjax as gpx

    a, b = rng.standard_normal((7, 3)), rng.standard_normal((5, 3))
    ls, var = np.array([0.5, 1.0, 2.0]), 1.7

    @float64_scope
    def run():
        k = gp.rbf_kernel(jnp.asarray(a), jnp.asarray(b), jnp.asarray(ls), jnp.asarray(var))
        kern = gpx.kernels.RBF(lengthscale=jnp.asarray(ls), variance=jnp.asarray(var))
        return np.asarray(k), np.asarray(kern.cross_covariance(jnp.asarray(a), jnp.asarray(b)))

    k, k_gpjax = run()
    np.testing.assert_allclose(k, _np_kernel(a, b, ls, var), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k, k_gpjax, rtol=1e-12, atol=1e-14)


def test_sgpr_with_inducing_equal_to_inputs_is_the_exact_gp(rng):
    # jitted here; the eager path of the same functions runs in the tests below
    x, y = _problem(rng, n=20)
    # padded buffer: 6 extra rows of garbage that the mask must hide
    xp = np.concatenate([x, 50 * rng.standard_normal((6, 2))])
    yp = np.concatenate([y, 1e3 * rng.standard_normal(6)])
    mask = np.arange(26) < 20
    xq = rng.uniform(-2.5, 2.5, size=(9, 2))

    @float64_scope
    def run():
        data = gp.make_data(xp, yp, mask)
        params = _params(rng, x, 2)
        build = jax.jit(gp.build_predictor, static_argnames="jitter")
        pred = build(params, data, jitter=1e-13)
        mean, var = gp.predict(pred, xq)
        return data, params, np.asarray(mean), np.asarray(var)

    data, params, mean, var = run()
    ref_mean, ref_var = _exact_posterior(params, data, xq)
    y_mean, y_std = float(data.y_mean), float(data.y_std)
    # standardisation by the valid rows only, then mapped back
    np.testing.assert_allclose([y_mean, y_std], [y.mean(), y.std()], rtol=1e-12)
    np.testing.assert_allclose(mean, ref_mean * y_std + y_mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(var, ref_var * y_std**2, rtol=0, atol=1e-6)


def test_masked_bound_matches_gpjax_collapsed_elbo(rng):
    # jitted here; test_masked_rows_contribute_nothing runs the bound eagerly
    import gpjax as gpx

    x, y = _problem(rng, n=30, d=3)
    z = rng.uniform(-2, 2, size=(8, 3))
    mask = np.ones(30, bool)

    @float64_scope
    def run():
        data = gp.make_data(x, y, mask)
        params = _params(rng, z, 3)
        ours = float(jax.jit(gp.collapsed_elbo)(params, data))
        q, dataset = gp.to_gpjax(params, data)
        theirs = float(jax.jit(gpx.objectives.collapsed_elbo)(q, dataset))
        return ours, theirs

    ours, theirs = run()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_masked_rows_contribute_nothing(rng):
    x, y = _problem(rng, n=30, d=3)
    z = rng.uniform(-2, 2, size=(8, 3))
    xp = np.concatenate([x[:10], 100 * rng.standard_normal((5, 3)), x[10:]])
    yp = np.concatenate([y[:10], 1e6 * rng.standard_normal(5), y[10:]])
    mask = np.ones(35, bool)
    mask[10:15] = False

    @float64_scope
    def run():
        params = _params(rng, z, 3)
        full = gp.collapsed_elbo(params, gp.make_data(x, y, np.ones(30, bool)))
        padded = gp.collapsed_elbo(params, gp.make_data(xp, yp, mask))
        return float(full), float(padded)

    full, padded = run()
    np.testing.assert_allclose(padded, full, rtol=1e-12)


def test_exact_log_marginal_likelihood_matches_scipy(rng):
    x, y = _problem(rng, n=15)
    mask = np.ones(15, bool)
    mask[3] = False

    @float64_scope
    def run():
        data = gp.make_data(x, y, mask)
        params = _params(rng, x[:4], 2)
        consts = [np.asarray(v) for v in gp.constrain(params)]
        return data, consts, float(gp.exact_log_marginal_likelihood(params, data))

    data, (ls, var, noise), lml = run()
    xv, yv = x[mask], np.asarray(data.y)[mask]
    cov = _np_kernel(xv, xv, ls, var) + noise * np.eye(len(xv))
    ref = scipy.stats.multivariate_normal(np.zeros(len(xv)), cov).logpdf(yv)
    np.testing.assert_allclose(lml, ref, rtol=1e-10)


def test_collapsed_bound_never_exceeds_exact_evidence_and_is_tight_at_z_equal_x(rng):
    x, y = _problem(rng, n=20)
    mask = np.ones(20, bool)
    mask[-3:] = False
    elbo = jax.jit(gp.collapsed_elbo, static_argnames="jitter")
    exact = jax.jit(gp.exact_log_marginal_likelihood)

    @float64_scope
    def run():
        data = gp.make_data(x, y, mask)
        gaps = []
        for trial in range(6):
            z = rng.uniform(-2, 2, size=(5, 2))
            params = _params(rng, z, 2, ls=0.3 + 0.4 * trial, noise=0.01 + 0.1 * trial)
            gaps.append(float(exact(params, data) - elbo(params, data)))
        tight = _params(rng, x[:17], 2)
        gap_tight = float(exact(tight, data) - elbo(tight, data, jitter=1e-13))
        return np.array(gaps), gap_tight

    gaps, gap_tight = run()
    assert np.all(gaps >= -1e-9), gaps
    assert gaps.max() > 1e-3  # the bound is not trivially tight with few inducing points
    np.testing.assert_allclose(gap_tight, 0.0, atol=1e-6)


def test_bound_gradient_matches_finite_differences(rng):
    # the bound uses a hand-written gradient for K K^T: check the whole gradient numerically
    x, y = _problem(rng, n=20)
    mask = np.ones(20, bool)
    mask[-2:] = False

    @float64_scope
    def run():
        data = gp.make_data(x, y, mask)
        params = _params(rng, rng.uniform(-2, 2, size=(5, 2)), 2)
        f = jax.jit(gp.collapsed_elbo)
        grad = jax.jit(jax.grad(gp.collapsed_elbo))(params, data)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        g = np.asarray(jax.flatten_util.ravel_pytree(grad)[0])
        fd = []
        for i in range(flat.shape[0]):
            e = np.zeros(flat.shape[0])
            e[i] = 1e-6
            up = float(f(unravel(flat + jnp.asarray(e)), data))
            down = float(f(unravel(flat - jnp.asarray(e)), data))
            fd.append((up - down) / 2e-6)
        return g, np.array(fd)

    g, fd = run()
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)


def test_safe_cholesky_adds_jitter_progressively_and_reports_it(rng):
    a = rng.standard_normal((6, 3))

    @float64_scope
    def run():
        good = jnp.asarray(a @ a.T + 6 * np.eye(6))
        l_good, j_good = gp.safe_cholesky(good, 1e-6)
        # rank 3 and slightly indefinite: plain Cholesky fails
        bad = jnp.asarray(a @ a.T - 1e-4 * np.eye(6))
        plain = jnp.linalg.cholesky(bad)
        l_bad, j_bad = jax.jit(gp.safe_cholesky)(bad, 1e-6)
        return good, l_good, float(j_good), bad, np.asarray(plain), np.asarray(l_bad), float(j_bad)

    good, l_good, j_good, bad, plain, l_bad, j_bad = run()
    mean_diag = float(np.mean(np.diag(np.asarray(good))))
    np.testing.assert_allclose(j_good, 1e-6 * mean_diag, rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(l_good) @ np.asarray(l_good).T, np.asarray(good) + j_good * np.eye(6), rtol=1e-12
    )
    assert not np.all(np.isfinite(plain))
    assert np.all(np.isfinite(l_bad))
    assert j_bad > 1e-4  # had to grow past the negative eigenvalue
    np.testing.assert_allclose(l_bad @ l_bad.T, np.asarray(bad) + j_bad * np.eye(6), rtol=1e-10, atol=1e-12)


def test_bound_and_gradient_finite_with_duplicate_inducing_points(rng):
    x, y = _problem(rng, n=20)
    z = np.concatenate([x[:5], x[:5]])  # duplicates: Kzz singular

    @float64_scope
    def run():
        data = gp.make_data(x, y, np.ones(20, bool))
        params = _params(rng, z, 2)
        vg = jax.jit(jax.value_and_grad(gp.collapsed_elbo), static_argnames="jitter")
        val, grad = vg(params, data, jitter=0.0)
        return float(val), jax.tree.leaves(grad)

    val, grad = run()
    assert np.isfinite(val)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grad)


def test_kmeans_recovers_separated_clusters_and_ignores_masked_rows(key, rng):
    centres = np.array([[-5.0, 0.0], [5.0, 0.0], [0.0, 6.0]])
    labels = rng.integers(0, 3, size=150)
    x = centres[labels] + 0.3 * rng.standard_normal((150, 2))
    x = np.concatenate([x, np.full((20, 2), 1e4)])  # masked outliers far away
    mask = np.arange(170) < 150

    found = np.asarray(gp.kmeans(key, x, mask, num_clusters=3, num_iters=10))
    # match each true centre with its nearest found centre; compare with the cluster means
    means = np.stack([x[:150][labels == k].mean(0) for k in range(3)])
    order = np.argmin(np.linalg.norm(means[:, None] - found[None], axis=-1), axis=1)
    assert sorted(order.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(found[order], means, atol=1e-8)


def test_select_subset_best_random_and_forced_points(key, rng):
    c = 200
    y = rng.standard_normal(c)
    mask = rng.uniform(size=c) < 0.8
    include = np.zeros(c, bool)
    include[[5, 6, 7]] = True
    mask[[5, 6, 7]] = True
    sub = gp.select_subset(key, y, mask, n_best=20, n_random=50, include=include, n_include=4)
    idx, m = np.asarray(sub.index), np.asarray(sub.mask)
    assert idx.shape == (74,) and m.shape == (74,)
    chosen = idx[m]
    assert len(set(chosen.tolist())) == len(chosen)  # disjoint groups, no repeats
    assert mask[chosen].all()
    valid = np.flatnonzero(mask)
    best = valid[np.argsort(-y[valid])[:20]]
    assert set(best.tolist()) <= set(chosen.tolist())
    assert {5, 6, 7} <= set(chosen.tolist())
    # 20 best + 3 forced (the 4th forced slot is padding unless a forced point was a best one)
    assert m.sum() == 20 + len({5, 6, 7} - set(best.tolist())) + 50


def test_select_subset_pads_when_the_buffer_is_small(key, rng):
    y = rng.standard_normal(30)
    mask = np.zeros(30, bool)
    mask[:12] = True
    sub = gp.select_subset(key, y, mask, n_best=5, n_random=20)
    idx, m = np.asarray(sub.index), np.asarray(sub.mask)
    assert idx.shape == (25,)
    assert m.sum() == 12
    assert sorted(idx[m].tolist()) == list(range(12))


def test_select_subset_rejects_bad_input(key):
    with pytest.raises(ValueError, match="no valid point"):
        gp.select_subset(key, np.zeros(5), np.zeros(5, bool), n_best=2, n_random=2)
    with pytest.raises(ValueError, match="finite"):
        gp.select_subset(key, np.array([0.0, np.nan]), np.ones(2, bool), n_best=1, n_random=1)
    with pytest.raises(ValueError, match="non-negative"):
        gp.select_subset(key, np.zeros(5), np.ones(5, bool), n_best=-1, n_random=2)


def test_fit_increases_the_bound_and_skips_non_finite_steps(key, rng):
    # (the L-BFGS path is exercised end to end in test_bo.py)
    method = "adam"
    x, y = _problem(rng, n=40)

    @float64_scope
    def run():
        data = gp.make_data(x, y, np.ones(40, bool))
        params = gp.init_params(key, data, num_inducing=6)
        opt = gp.make_optimizer(0.05, method=method)
        fit = jax.jit(gp.fit, static_argnames=("optimizer", "num_steps", "jitter"))
        new, _, info = fit(params, opt.init(params), data, optimizer=opt, num_steps=8)
        start = float(gp.collapsed_elbo(params, data))
        # a NaN parameter: every step must be skipped and the parameters kept as they were
        broken = params._replace(raw_noise=jnp.asarray(np.nan, jnp.float64))
        same, _, info_nan = fit(broken, opt.init(broken), data, optimizer=opt, num_steps=8)
        return start, info, broken, same, info_nan

    start, info, broken, same, info_nan = run()
    assert float(info.elbo) > start + 1.0
    np.testing.assert_allclose(float(info.loss[0]), -start, rtol=1e-12)
    assert int(info.skipped) == 0
    assert int(info_nan.skipped) == 8
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(broken)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_add_observation_equals_refitting_with_the_point(rng):
    x, y = _problem(rng, n=25)
    z = rng.uniform(-2, 2, size=(7, 2))
    x_new, y_new = np.array([0.3, -0.7]), 1.234
    mask = np.ones(26, bool)
    mask[-1] = False
    xp = np.concatenate([x, x_new[None]])
    yp = np.concatenate([y, [y_new]])
    xq = rng.uniform(-2, 2, size=(5, 2))

    @float64_scope
    def run():
        params = _params(rng, z, 2)
        data = gp.make_data(xp, yp, mask)
        pred = gp.add_observation(gp.build_predictor(params, data), x_new, y_new)
        # the reference: same scaling, the point included as data
        full = gp.make_data(xp, yp, np.ones(26, bool))._replace(y_mean=data.y_mean, y_std=data.y_std)
        full = full._replace(y=(jnp.asarray(yp) - data.y_mean) / data.y_std)
        ref = gp.build_predictor(params, full)
        return [np.asarray(v) for v in (*gp.predict(pred, xq), *gp.predict(ref, xq))]

    m1, v1, m2, v2 = run()
    np.testing.assert_allclose(m1, m2, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(v1, v2, rtol=1e-9, atol=1e-10)


def test_make_data_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        gp.make_data(np.zeros(3), np.zeros(3), np.ones(3, bool))
    with pytest.raises(ValueError, match="finite"):
        gp.make_data(np.array([[np.nan], [0.0]]), np.zeros(2), np.ones(2, bool))
    with pytest.raises(ValueError, match="no valid point"):
        gp.make_data(np.zeros((2, 1)), np.zeros(2), np.zeros(2, bool))


def test_float64_does_not_leak_out_of_the_scope(rng):
    x, y = _problem(rng, n=10)
    data = gp.make_data(x, y, np.ones(10, bool))
    assert data.x.dtype == jnp.float64
    assert not jax.config.jax_enable_x64
    assert jnp.zeros(2).dtype == jnp.float32


# --------------------------------------------------------------------------------------------
# Incremental conditioning (wrjax.gp_update)
# --------------------------------------------------------------------------------------------

from wrjax import gp_update  # noqa: E402


def _fixed_scale_data(x, y, mask, y_mean, y_std):
    """SGPRData with targets standardised by a given scaling (the reference for updates)."""
    y = (np.asarray(y, np.float64) - float(y_mean)) / float(y_std)
    return gp.SGPRData(
        jnp.asarray(np.where(mask[:, None], x, 0.0), jnp.float64),
        jnp.asarray(np.where(mask, y, 0.0), jnp.float64),
        jnp.asarray(mask),
        jnp.asarray(y_mean, jnp.float64),
        jnp.asarray(y_std, jnp.float64),
    )


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_safe_cholesky_factor_and_gradient_match_plain_cholesky(rng, use_jit):
    # the normal path factorises once and attaches the Cholesky derivative by hand
    g = rng.standard_normal((9, 9))
    mat = g @ g.T + 0.5 * np.eye(9)
    weights = rng.standard_normal((9, 9))

    @float64_scope
    def run():
        def loss_safe(a):
            return jnp.sum(jnp.tril(weights) * gp.safe_cholesky(a, 1e-6)[0])

        def loss_ref(a):
            scale = jnp.mean(jnp.diagonal(a))
            return jnp.sum(jnp.tril(weights) * jnp.linalg.cholesky(a + 1e-6 * jax.lax.stop_gradient(scale) * jnp.eye(9)))

        f = (lambda h: jax.jit(jax.value_and_grad(h))) if use_jit else jax.value_and_grad
        return [np.asarray(v) for v in (*f(loss_safe)(jnp.asarray(mat)), *f(loss_ref)(jnp.asarray(mat)))]

    v1, g1, v2, g2 = run()
    np.testing.assert_allclose(v1, v2, rtol=1e-13)
    np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-12)


def test_cholesky_update_matches_numpy(rng):
    m = 40
    g = rng.standard_normal((m, m))
    mat = g @ g.T + 0.1 * np.eye(m)
    v = 3.0 * rng.standard_normal(m)

    @float64_scope
    def run():
        chol = jnp.linalg.cholesky(jnp.asarray(mat))
        eager = gp_update.cholesky_update(chol, jnp.asarray(v))
        jitted = jax.jit(gp_update.cholesky_update)(chol, jnp.asarray(v))
        return np.asarray(eager), np.asarray(jitted)

    eager, jitted = run()
    ref = np.linalg.cholesky(mat + np.outer(v, v))
    np.testing.assert_allclose(eager, ref, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(jitted, ref, rtol=1e-11, atol=1e-11)
    assert np.all(np.triu(eager, 1) == 0)


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("form", ["product", "solve"])
def test_incremental_posterior_equals_the_posterior_from_scratch(rng, use_jit, form):
    # 30 points fitted, then 70 more added one by one and in padded batches; the reference is
    # build_predictor on all 100 points with the same hyperparameters and target scaling
    d, n0, n_new = 3, 30, 70
    x, y = _problem(rng, n=n0 + n_new, d=d)
    z = rng.uniform(-2, 2, size=(12, d))
    xq = rng.uniform(-2.5, 2.5, size=(15, d))
    mask0 = np.arange(n0 + n_new) < n0

    @float64_scope
    def run():
        params = _params(rng, z, d)
        data0 = gp.make_data(x, y, mask0)
        pred0 = gp.build_predictor(params, data0, form=form)
        state = gp_update.init_incremental(pred0, data0)
        one = jax.jit(gp_update.condition_on) if use_jit else gp_update.condition_on
        batch = jax.jit(gp_update.condition_on_batch) if use_jit else gp_update.condition_on_batch
        for i in range(n0, n0 + 10):  # one at a time
            state = one(state, x[i], y[i])
        state = one(state, x[0] + 100.0, 1e3, False)  # an invalid point changes nothing
        # the rest in padded batches of 8 (5 real + 3 padding rows of garbage)
        rest = np.arange(n0 + 10, n0 + n_new)
        for chunk in np.array_split(rest, len(rest) // 5):
            k = len(chunk)
            xb = np.concatenate([x[chunk], 50 * rng.standard_normal((8 - k, d))])
            yb = np.concatenate([y[chunk], 1e3 * rng.standard_normal(8 - k)])
            state = batch(state, xb, yb, np.arange(8) < k)
        full = _fixed_scale_data(x, y, np.ones(n0 + n_new, bool), data0.y_mean, data0.y_std)
        ref = gp.build_predictor(params, full, form="solve")
        got = [np.asarray(v) for v in gp.predict(state.pred, xq)]
        want = [np.asarray(v) for v in gp.predict(ref, xq)]
        bound = float(gp_update.incremental_elbo(state))
        ref_bound = float(gp.collapsed_elbo(params, full))
        return got, want, bound, ref_bound, int(state.num_added), float(state.num_data)

    (m1, v1), (m2, v2), bound, ref_bound, added, n = run()
    assert added == n_new and n == n0 + n_new
    np.testing.assert_allclose(m1, m2, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(v1, v2, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(bound, ref_bound, rtol=1e-10)


def test_incremental_update_many_points_at_bo_scale(rng):
    # 400 updates of a 60-inducing-point model on 1,000 points: no drift beyond 1e-8
    d, n0, n_new = 4, 1000, 400
    x = rng.uniform(-2, 2, size=(n0 + n_new, d))
    y = np.sin(x @ rng.standard_normal(d)) + 0.05 * rng.standard_normal(n0 + n_new)
    z = x[rng.choice(n0, 60, replace=False)]
    xq = rng.uniform(-2, 2, size=(20, d))

    @float64_scope
    def run():
        params = _params(rng, z, d, ls=1.0, noise=0.01)
        data0 = gp.make_data(x[:n0], y[:n0], np.ones(n0, bool))
        state = gp_update.init_incremental(gp.build_predictor(params, data0), data0)
        state = jax.jit(gp_update.condition_on_batch)(state, x[n0:], y[n0:])
        full = _fixed_scale_data(x, y, np.ones(n0 + n_new, bool), data0.y_mean, data0.y_std)
        ref = gp.build_predictor(params, full, form="solve")
        return [np.asarray(v) for v in (*gp.predict(state.pred, xq), *gp.predict(ref, xq))]

    m1, v1, m2, v2 = run()
    np.testing.assert_allclose(m1, m2, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(v1, v2, rtol=1e-8, atol=1e-8)


def test_staleness_zscores_and_bound_change(rng):
    d = 2
    x, y = _problem(rng, n=40, d=d)
    z = rng.uniform(-2, 2, size=(8, d))
    x_new = np.array([[0.3, -0.4], [1.0, 1.0]])
    y_new = np.array([0.2, 40.0])  # the second one is far off: a large z-score

    @float64_scope
    def run():
        params = _params(rng, z, d)
        data = gp.make_data(x, y, np.ones(40, bool))
        pred = gp.build_predictor(params, data)
        s0 = gp_update.init_incremental(pred, data)
        info0 = gp_update.staleness(s0)
        # reference z-scores: the predictive of y before each point is added
        noise = float(gp.constrain(params)[2])
        zs, cur = [], s0
        for xi, yi in zip(x_new, y_new):
            mean, v = (float(a[0]) for a in gp.predict(cur.pred, xi[None]))
            zs.append((yi - mean) ** 2 / (v + noise * float(data.y_std) ** 2))
            cur = gp_update.condition_on(cur, xi, yi)
        info = gp_update.staleness(cur)
        far = gp_update.staleness(gp_update.condition_on(cur, np.array([40.0, -40.0]), 0.0))
        # reference coverage: 1 - k_xz Kzz^-1 k_zx / k_xx, NumPy (the jitter as the predictor's)
        ls, var = (np.asarray(v) for v in gp.constrain(params)[:2])
        kzz = _np_kernel(z, z, ls, var) + float(pred.jitter) * np.eye(8)
        kzx = _np_kernel(z, x_new, ls, var)
        unc = 1.0 - np.sum(kzx * np.linalg.solve(kzz, kzx), 0) / var
        return info0, info, zs, float(gp.collapsed_elbo(params, data)), unc, far

    info0, info, zs, elbo, unc, far = run()
    np.testing.assert_allclose(float(info.max_uncovered), unc.max(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(float(far.max_uncovered), 1.0, atol=1e-12)  # far from every Z
    np.testing.assert_allclose(float(info0.elbo), elbo, rtol=1e-10)
    assert float(info0.elbo_per_point_change) == 0.0 and int(info0.num_added) == 0
    np.testing.assert_allclose(float(info.mean_sq_zscore), np.mean(zs), rtol=1e-9)
    np.testing.assert_allclose(float(info.max_sq_zscore), max(zs), rtol=1e-9)
    assert max(zs) > 100 and float(info.elbo_per_point_change) < 0


def test_fit_converged_stops_on_the_test_and_reaches_the_long_fit(key, rng):
    x, y = _problem(rng, n=60)

    @float64_scope
    def run():
        data = gp.make_data(x, y, np.ones(60, bool))
        params = gp.init_params(key, data, num_inducing=6)
        opt = gp.make_optimizer(method="lbfgs")
        statics = ("optimizer", "max_steps", "tol", "window", "gtol", "min_steps", "jitter")
        conv = jax.jit(gp.fit_converged, static_argnames=statics)
        p1, _, info = conv(params, opt.init(params), data, optimizer=opt, max_steps=300, tol=1e-7, window=10)
        # the reference: a long fixed budget of the same optimiser
        _, _, long = jax.jit(gp.fit, static_argnames=("optimizer", "num_steps"))(
            params, opt.init(params), data, optimizer=opt, num_steps=300
        )
        _, _, capped = conv(params, opt.init(params), data, optimizer=opt, max_steps=3, tol=1e-9)
        start = float(gp.collapsed_elbo(params, data))
        return info, long, capped, start, float(gp.collapsed_elbo(p1, data))

    info, long, capped, start, elbo = run()
    k = int(info.num_steps)
    assert bool(info.converged) and 1 <= k < 300
    trace = np.asarray(info.loss)
    assert np.all(np.isfinite(trace[:k])) and np.all(np.isnan(trace[k:]))
    np.testing.assert_allclose(trace[0], -start, rtol=1e-12)
    np.testing.assert_allclose(float(info.elbo), elbo, rtol=1e-8)  # jitted vs eager rounding
    # converged: within 1e-5 nats per point of 300 fixed L-BFGS iterations
    assert float(info.elbo) >= float(long.elbo) - 60 * 1e-5, (float(info.elbo), float(long.elbo))
    assert int(capped.num_steps) == 3 and not bool(capped.converged)
    assert int(info.skipped) == 0


def test_should_refit_criteria():
    def info(**kw):
        base = dict(elbo=0.0, elbo_per_point_change=0.0, mean_sq_zscore=0.0, max_sq_zscore=0.0,
                    num_added=0, max_uncovered=0.0)
        base.update(kw)
        return gp_update.StalenessInfo(**{k: jnp.asarray(v) for k, v in base.items()})

    assert not bool(gp_update.should_refit(info(num_added=4), every=5))
    assert bool(gp_update.should_refit(info(num_added=5), every=5))
    assert bool(gp_update.should_refit(info(elbo_per_point_change=-0.2), max_bound_drop=0.1))
    assert not bool(gp_update.should_refit(info(elbo_per_point_change=0.2), max_bound_drop=0.1))
    assert bool(gp_update.should_refit(info(max_uncovered=0.6), max_uncovered=0.5, every=100))
    assert not bool(gp_update.should_refit(info(mean_sq_zscore=9.0), max_mean_sq_zscore=4.0))  # none added
    assert bool(gp_update.should_refit(info(num_added=1, mean_sq_zscore=9.0), max_mean_sq_zscore=4.0))
    jitted = jax.jit(lambda i: gp_update.should_refit(i, every=3, max_uncovered=0.5))
    assert bool(jitted(info(num_added=3))) and not bool(jitted(info(num_added=1)))
    with pytest.raises(ValueError, match="at least one"):
        gp_update.should_refit(info())


def _np_greedy(x, mask, m, ls, var):
    """Greedy conditional variance in NumPy: at each step the valid row with the largest
    diagonal of Kff - Kfs Kss^{-1} Ksf (computed afresh with a solve, not by the
    pivoted-Cholesky recursion), ties to the lowest index."""
    k = _np_kernel(x, x, ls, var)
    chosen = []
    for _ in range(m):
        if chosen:
            kss, kfs = k[np.ix_(chosen, chosen)], k[:, chosen]
            resid = var - np.sum(kfs * np.linalg.solve(kss, kfs.T).T, axis=1)
        else:
            resid = np.full(len(x), var)
        resid[~mask] = -1.0
        resid[chosen] = -1.0
        chosen.append(int(np.argmax(resid)))
    return chosen


def test_greedy_inducing_points_match_the_conditional_variance_rule(rng):
    x = rng.uniform(-2, 2, size=(80, 3))
    mask = rng.random(80) < 0.8
    ls, var = np.array([0.7, 1.1, 0.9]), 1.7
    got = np.asarray(gp.greedy_inducing_points(x, mask, num_inducing=12, lengthscale=ls, variance=var))
    want = x[_np_greedy(x, mask, 12, ls, var)]
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    assert len({tuple(r) for r in got}) == 12  # distinct rows, all valid
    assert all(mask[np.flatnonzero((x == r).all(axis=1))[0]] for r in got)


def test_greedy_inducing_points_with_fewer_valid_rows_than_slots(rng):
    x = rng.uniform(-2, 2, size=(30, 2))
    mask = np.zeros(30, bool)
    mask[[3, 8, 21]] = True
    z = np.asarray(gp.greedy_inducing_points(x, mask, num_inducing=7, lengthscale=np.ones(2),
                                             variance=1.0))  # fmt: skip
    assert np.isfinite(z).all()
    # every valid row is taken first, then the last one repeats; no masked row ever
    assert {tuple(r) for r in z[:3]} == {tuple(r) for r in x[mask]}
    np.testing.assert_array_equal(z[3:], np.repeat(z[2:3], 4, axis=0))


def test_greedy_points_leave_less_unexplained_variance_than_random_points(rng):
    x = rng.uniform(-3, 3, size=(400, 2))
    ls, var = np.array([0.6, 0.6]), 1.0

    def trace_gap(z):  # tr(Kff - Qff): the collapsed bound's trace penalty (times 2 s^2)
        kzz = _np_kernel(z, z, ls, var) + 1e-8 * np.eye(len(z))
        kzf = _np_kernel(z, x, ls, var)
        return len(x) * var - np.sum(kzf * np.linalg.solve(kzz, kzf))

    z = np.asarray(gp.greedy_inducing_points(x, np.ones(400, bool), num_inducing=30, lengthscale=ls,
                                             variance=var))  # fmt: skip
    random_gaps = [trace_gap(x[rng.choice(400, 30, replace=False)]) for _ in range(20)]
    assert trace_gap(z) < min(random_gaps)


def test_random_rows_take_valid_rows_first_and_pad(key):
    mask = np.zeros(50, bool)
    mask[::7] = True  # 8 valid rows
    sub = gp.random_rows(key, jnp.asarray(mask), 12)
    idx, m = np.asarray(sub.index), np.asarray(sub.mask)
    assert m[:8].all() and not m[8:].any()
    assert set(idx[:8]) == set(np.flatnonzero(mask))
    sub2 = gp.random_rows(key, jnp.asarray(mask), 5)
    assert np.asarray(sub2.mask).all() and set(np.asarray(sub2.index)) <= set(np.flatnonzero(mask))


def test_cold_fit_reports_its_trace_and_a_bound_below_the_evidence(key, rng):
    subset_size = 60  # < N: the kernel phase runs on a random subset
    x, y = _problem(rng, n=150)
    mask = np.ones(150, bool)
    mask[140:] = False  # padding rows carry nothing

    @float64_scope
    def run():
        data = gp.make_data(x, y, mask)
        fn = jax.jit(gp.cold_fit, static_argnames=("num_inducing", "subset_size", "warmup_steps",
                                                   "kernel_max_steps", "max_steps"))  # fmt: skip
        params, info = fn(key, data, num_inducing=10, subset_size=subset_size, warmup_steps=10,
                          kernel_max_steps=30, max_steps=20)  # fmt: skip
        start = gp.init_params(key, data, num_inducing=10)
        return (params, info, float(gp.collapsed_elbo(params, data)),
                float(gp.exact_log_marginal_likelihood(params, data)), float(gp.collapsed_elbo(start, data)))

    params, info, elbo, exact, start = run()
    trace = np.asarray(info.loss)
    assert trace.shape == (10 + 30 + 20,)
    # the steps taken are the finite entries: all 10 Adam steps, then each L-BFGS phase's
    assert int(info.num_steps) == int(np.isfinite(trace).sum()) and int(info.num_steps) > 10
    np.testing.assert_allclose(float(info.elbo), elbo, rtol=1e-8, atol=1e-6)  # jit vs eager
    assert elbo <= exact + 1e-6  # a lower bound on the evidence of the same kernel and noise
    assert elbo > start  # better than the authors' starting point it began from
    # the inducing points are optimised from valid rows: none sits on the padding's zeros
    assert int(info.skipped) == 0 and np.isfinite(np.asarray(params.inducing)).all()


_LBFGS = gp.make_optimizer(method="lbfgs")  # one object: the carry tests share compilations
_FIT = jax.jit(gp.fit, static_argnames=("optimizer", "num_steps"))
_CARRY = jax.jit(gp.carry_lbfgs_state)


def _flat(tree):
    return np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])


def _lbfgs_fits(data, params, *, steps):
    return _LBFGS, lambda p, s, d=data, k=steps: _FIT(p, s, d, optimizer=_LBFGS, num_steps=k)


def test_carry_lbfgs_state_continues_a_fit_exactly_on_unchanged_data(key, rng):
    """fit(k) -> carry -> fit(k) is fit(2k): the carried memory is the longer fit's; a fresh
    restart (what a refit did before) is not. A state that never stepped (a refit right after
    a cold fit) has no memory: carrying it gives exactly a fresh L-BFGS, although the carry
    shifted its (unused) stored gradient."""
    x, y = _problem(rng, n=60)

    @float64_scope
    def run():
        data = gp.make_data(x, y, np.ones(60, bool))
        params = gp.init_params(key, data, num_inducing=6)
        opt, fit5 = _lbfgs_fits(data, params, steps=5)
        _, fit10 = _lbfgs_fits(data, params, steps=10)
        p_ref, _, ref = fit10(params, opt.init(params))
        p1, s1, info1 = fit5(params, opt.init(params))
        carried = _CARRY(s1, p1, data)
        p2, _, info = fit5(p1, carried)
        p_fresh, _, _ = fit5(p1, opt.init(p1))
        p_never, _, info_never = fit5(params, _CARRY(opt.init(params), params, data))
        return p_ref, ref, p2, info, p_fresh, (p1, info1, p_never, info_never)

    p_ref, ref, p2, info, p_fresh, (p1, info1, p_never, info_never) = run()
    np.testing.assert_allclose(np.asarray(info.loss), np.asarray(ref.loss)[5:], rtol=1e-10)
    np.testing.assert_allclose(_flat(p2), _flat(p_ref), rtol=1e-7, atol=1e-9)
    assert np.max(np.abs(_flat(p_fresh) - _flat(p_ref))) > 1e-4  # the restart does differ
    np.testing.assert_allclose(np.asarray(info_never.loss), np.asarray(info1.loss), rtol=1e-12)
    np.testing.assert_allclose(_flat(p_never), _flat(p1), rtol=1e-10, atol=1e-12)


def test_carry_lbfgs_state_keeps_the_old_objectives_pairs_on_new_data(key, rng):
    """On new data (five more valid rows) the carried state caches the new objective's value
    and gradient, and the pair its first step stores is the old objective's exact pair
    ``(p - p_prev, g_old(p) - g_old(p_prev))``, from jax.grad on the old data."""
    x, y = _problem(rng, n=60)
    old_mask = np.arange(60) < 55

    @float64_scope
    def run():
        old = gp.make_data(x, y, old_mask)
        new = gp.make_data(x, y, np.ones(60, bool))
        params = gp.init_params(key, old, num_inducing=6)
        opt, fit5 = _lbfgs_fits(old, params, steps=5)
        p, s, _ = fit5(params, opt.init(params))
        carried = _CARRY(s, p, new)
        neg = lambda d: lambda q: -gp.collapsed_elbo(q, d)  # noqa: E731
        value_new, g_new = jax.value_and_grad(neg(new))(p)
        p_prev = s[0].params
        want_y = jax.tree.map(lambda a, b: a - b, jax.grad(neg(old))(p), jax.grad(neg(old))(p_prev))
        want_s = jax.tree.map(lambda a, b: a - b, p, p_prev)
        _, s_next = opt.update(g_new, carried, p, value=value_new, grad=g_new, value_fn=neg(new))
        slot = (int(s[0].count) - 1) % 10  # optax's prev_memory_idx at the next step
        got_y = jax.tree.map(lambda m: m[slot], s_next[0].diff_updates_memory)
        got_s = jax.tree.map(lambda m: m[slot], s_next[0].diff_params_memory)
        cached = optax_get(carried)
        return value_new, g_new, cached, want_y, got_y, want_s, got_s, s, s_next, slot

    value_new, g_new, (v, g), want_y, got_y, want_s, got_s, s, s_next, slot = run()
    np.testing.assert_allclose(float(v), float(value_new), rtol=1e-12)
    np.testing.assert_allclose(_flat(g), _flat(g_new), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_flat(got_s), _flat(want_s), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(_flat(got_y), _flat(want_y), rtol=1e-6, atol=1e-9)
    # the old memory is still there
    kept = np.asarray(s[0].weights_memory)[:slot]
    assert np.all(kept > 0)
    np.testing.assert_array_equal(np.asarray(s_next[0].weights_memory)[:slot], kept)
    # and the carry moved it: a pair mixing the objectives (no shift) is not the old pair
    mixed = jax.tree.map(lambda a, b: a - b, g_new, s[0].updates)
    assert np.max(np.abs(_flat(mixed) - _flat(want_y))) > 1e-3


def optax_get(state):
    import optax

    return optax.tree_utils.tree_get(state, "value"), optax.tree_utils.tree_get(state, "grad")


def test_carry_lbfgs_state_refuses_other_optimisers(rng):
    x, y = _problem(rng, n=20)

    @float64_scope
    def carry_adam():
        params = _params(rng, x[:4], 2)
        data = gp.make_data(x, y, np.ones(20, bool))
        return gp.carry_lbfgs_state(gp.make_optimizer(0.01).init(params), params, data)

    with pytest.raises(TypeError, match="lbfgs"):
        carry_adam()


@float64_scope
def _np_sgpr_posterior(params, data, jitter, xs):
    """Titsias' SGPR posterior of the latent f (standardised units), NumPy float64, from its
    textbook form: ``Sigma = (Kzz + Kzf Kfz / s2)^{-1}``, ``mean = k_xz Sigma Kzf y / s2``,
    ``var = k_xx - k_xz Kzz^{-1} k_zx + k_xz Sigma k_zx`` (``Kzz`` with the predictor's jitter)."""
    ls, var, noise = (np.asarray(v) for v in gp.constrain(params))
    z = np.asarray(params.inducing)
    keep = np.asarray(data.mask)
    x, y = np.asarray(data.x)[keep], np.asarray(data.y)[keep]
    kzz = _np_kernel(z, z, ls, var) + jitter * np.eye(len(z))
    kzf = _np_kernel(z, x, ls, var)
    sigma_inv = kzz + kzf @ kzf.T / noise
    kzx = _np_kernel(z, xs, ls, var)
    mean = kzx.T @ np.linalg.solve(sigma_inv, kzf @ y) / noise
    v = var - np.sum(kzx * np.linalg.solve(kzz, kzx), 0) + np.sum(kzx * np.linalg.solve(sigma_inv, kzx), 0)
    return mean, v


def test_dense_predictor_matches_the_numpy_sgpr_posterior(rng):
    x, y = _problem(rng, n=40)
    mask = np.ones(40, bool)
    mask[-5:] = False  # masked rows must not count in either form
    z = rng.uniform(-2, 2, size=(9, 2))
    # at data, between, and far from everything (where the variance returns to the prior's)
    xs = np.concatenate([x[:5], rng.uniform(-2, 2, size=(6, 2)), [[9.0, -9.0]]])

    def both(params, data, xs):  # one compiled program: eager dispatch of each op is slow
        pred = gp.build_predictor(params, data)
        dense = gp.dense_predictor(pred)
        return pred, dense, gp.predict_standardized(dense, xs), gp.predict_standardized(pred, xs)

    @float64_scope
    def run():
        params = _params(rng, z, 2)
        data = gp.make_data(x, y, mask)
        pred, dense, out_d, out_t = jax.jit(both)(params, data, jnp.asarray(xs))
        ref = _np_sgpr_posterior(params, data, float(pred.jitter), xs)
        as_np = lambda t: [np.asarray(v) for v in t]  # noqa: E731
        return as_np(out_d), as_np(out_t), ref, float(gp.constrain(params)[1]), jax.tree.map(np.asarray, dense)

    (m_d, v_d), (m_t, v_t), (m_r, v_r), var, dense = run()
    chex.assert_shape(dense.var_matrix, (9, 9))
    np.testing.assert_allclose(dense.var_matrix, dense.var_matrix.T, rtol=0, atol=0)
    np.testing.assert_allclose(m_d, m_r, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(v_d, v_r, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(v_d, v_t, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(v_d[-1], var, rtol=1e-12)  # k_xz = 0 there


@pytest.mark.parametrize("gap", [1e-2, 1e-5])
def test_dense_and_triangular_forms_agree_when_kzz_is_ill_conditioned(rng, gap):
    # near-duplicate inducing points and a long lengthscale: cond(Kzz) near 1 / jitter, where
    # an explicit inverse loses the most; the variances must still agree far below what EI
    # resolves, and never go negative
    x, y = _problem(rng, n=60)
    base = rng.uniform(-2, 2, size=(6, 2))
    z = np.concatenate([base, base + gap])

    def both(params, data, xs):
        pred = gp.build_predictor(params, data)
        return pred.chol_kzz, *gp.predict_standardized(pred, xs), *gp.predict_standardized(gp.dense_predictor(pred), xs)

    @float64_scope
    def run():
        params = _params(rng, z, 2, ls=3.0, noise=1e-3)
        data = gp.make_data(x, y, np.ones(60, bool))
        xs = jnp.asarray(np.concatenate([x[:10], z + 1e-3, rng.uniform(-3, 3, size=(20, 2))]))
        lz, m_t, v_t, m_d, v_d = (np.asarray(v) for v in jax.jit(both)(params, data, xs))
        return [m_t, v_t, m_d, v_d, float(gp.constrain(params)[1]), np.linalg.cond(lz @ lz.T)]

    m_t, v_t, m_d, v_d, var, cond = run()
    assert cond > (1e3 if gap == 1e-2 else 1e5)  # the case is the ill-conditioned one
    np.testing.assert_allclose(m_d, m_t, rtol=0, atol=1e-6 * var)
    np.testing.assert_allclose(v_d, v_t, rtol=0, atol=1e-6 * var)
    assert np.all(v_d > 0)
