"""Weighted ELBO training: likelihoods, KL, the weighted loss, the step and ``fit``."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
import scipy.stats

import wrjax
from wrjax import vae
from wrjax.tasks.toy import BitVAE


def ToyVAE():
    """An MLP VAE on binary vectors of length 16 with a 2-D latent space (the toy task's)."""
    return BitVAE(length=16, latent_dim=2, hidden=32)


@pytest.fixture
def toy():
    model = ToyVAE()
    params = model.init(jax.random.key(1), jnp.zeros((1, 16), jnp.float32))["params"]
    return model, params


def toy_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    protos = rng.random((4, 16)) < 0.5
    labels = np.arange(n) % 4
    return jnp.asarray(protos[labels], jnp.float32), labels


def test_bernoulli_log_likelihood_against_scipy(rng):
    logits = rng.normal(size=(3, 4, 5)) * 5
    x = rng.random((3, 4, 5)) < 0.5
    p = scipy.special.expit(logits)
    ref = np.where(x, np.log(p), np.log1p(-p)).reshape(3, -1).sum(1)
    got = wrjax.bernoulli_log_likelihood(jnp.asarray(logits, jnp.float32), jnp.asarray(x))
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    assert got.dtype == jnp.float32
    # Stable far in the tails, where log(sigmoid) naively gives -inf.
    far = wrjax.bernoulli_log_likelihood(jnp.full((1, 1), -200.0), jnp.ones((1, 1)))
    np.testing.assert_allclose(far, [-200.0], rtol=1e-5)


def test_categorical_log_likelihood_against_scipy(rng):
    logits = rng.normal(size=(2, 5, 7))
    targets = rng.integers(0, 7, size=(2, 5))
    step_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    logp = scipy.special.log_softmax(logits, axis=-1)
    ref = (np.take_along_axis(logp, targets[..., None], -1)[..., 0] * step_mask).sum(1)
    got = wrjax.categorical_log_likelihood(
        jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(step_mask)
    )
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    one_hot = jax.nn.one_hot(targets, 7)
    np.testing.assert_allclose(
        wrjax.categorical_log_likelihood(jnp.asarray(logits, jnp.float32), one_hot, step_mask),
        ref,
        rtol=1e-5,
    )


def test_gaussian_kl_against_monte_carlo(rng):
    mean = rng.normal(size=(2, 3))
    logvar = rng.normal(size=(2, 3)) * 0.5
    z = mean + np.exp(0.5 * logvar) * rng.normal(size=(200_000, 2, 3))
    log_q = scipy.stats.norm.logpdf(z, mean, np.exp(0.5 * logvar)).sum(-1)
    log_p = scipy.stats.norm.logpdf(z).sum(-1)
    mc = (log_q - log_p).mean(0)
    np.testing.assert_allclose(wrjax.gaussian_kl(mean, logvar), mc, rtol=0.02, atol=0.01)


def test_weighted_loss_shape_check():
    with pytest.raises(ValueError, match="shape mismatch"):
        wrjax.weighted_elbo_loss(jnp.ones(3), jnp.ones(4))


def test_uniform_weights_equal_the_unweighted_elbo(toy, key):
    model, params = toy
    x, _ = toy_data(32)
    n = x.shape[0]
    w = wrjax.rank_weights(jnp.zeros(n), np.inf)  # uniform, sums to 1

    def weighted(p):
        terms = wrjax.elbo_terms(key, p, model, x, beta=0.5)
        return wrjax.weighted_elbo_loss(-terms.elbo, n * w)

    def unweighted(p):
        return -jnp.mean(wrjax.elbo_terms(key, p, model, x, beta=0.5).elbo)

    lw, gw = jax.value_and_grad(weighted)(params)
    lu, gu = jax.value_and_grad(unweighted)(params)
    np.testing.assert_allclose(lw, lu, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), gw, gu)


def _np_mlp(p, h, layers):
    """The toy VAE's dense layers in float64 NumPy (ReLU between), from its params."""
    for i, name in enumerate(layers):
        h = h @ np.asarray(p[name]["kernel"], np.float64) + np.asarray(p[name]["bias"], np.float64)
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def test_elbo_against_log_likelihood_by_quadrature(toy, key):
    """The ELBO against an independent log p(x): with a 2-D latent space, p(x) = ∫ p(x|z) p(z) dz
    and the exact ELBO ∫ q(z|x) log(p(x|z) p(z) / q(z|x)) dz by quadrature on a fine grid, in
    float64 NumPy from the parameters alone. The Monte-Carlo mean of wrjax's ELBO matches the
    exact ELBO, and both sit below log p(x) by KL(q(z|x) || p(z|x)) > 0."""
    model, params = toy
    x, _ = toy_data(4)
    xn = np.asarray(x, np.float64)
    g = np.linspace(-8.0, 8.0, 641)
    z = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    log_dz = 2 * np.log(g[1] - g[0])
    logits = _np_mlp(params, z, ["dec1", "dec2"])  # (G, 16)
    log_lik = (xn[:, None, :] * -np.logaddexp(0, -logits) + (1 - xn[:, None, :]) * -np.logaddexp(0, logits)).sum(-1)
    log_prior = -0.5 * (z**2).sum(-1) - np.log(2 * np.pi)
    log_px = scipy.special.logsumexp(log_lik + log_prior, axis=1) + log_dz  # (4,)
    h = np.maximum(_np_mlp(params, xn, ["enc"]), 0.0)
    mean, logvar = _np_mlp(params, h, ["mean"]), _np_mlp(params, h, ["logvar"])
    log_q = scipy.stats.norm.logpdf(z[None], mean[:, None], np.exp(0.5 * logvar)[:, None]).sum(-1)
    q = np.exp(log_q + log_dz)
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-6)  # the grid covers q
    exact_elbo = (q * (log_lik + log_prior - log_q)).sum(1)
    elbos = jax.vmap(lambda k: wrjax.elbo_terms(k, params, model, x).elbo)(jax.random.split(key, 4000))
    elbos = np.asarray(elbos, np.float64)
    stderr = elbos.std(0) / np.sqrt(len(elbos))
    np.testing.assert_allclose(elbos.mean(0), exact_elbo, rtol=0, atol=4 * stderr.max() + 1e-3)
    gap = log_px - exact_elbo  # = KL(q(z|x) || p(z|x))
    assert np.all(gap > 1e-3), gap


def test_training_lowers_the_loss_and_favours_heavy_points(toy, key):
    model, params = toy
    x, labels = toy_data(256)
    # Prototype 0 carries almost all the weight: eq. 3 with scores = [label == 0].
    scores = (labels == 0).astype(np.float32)
    w = wrjax.rank_weights(scores, 1e-3)
    opt = optax.adam(3e-3)
    state = wrjax.init_train_state(params, opt)
    step = wrjax.make_train_step(model, opt, beta=0.1)
    k_fit, k_eval = jax.random.split(key)
    state, info = wrjax.fit(k_fit, state, step, x, w, num_steps=300, batch_size=32)
    assert info.loss.shape == (300,)
    assert float(info.loss[-20:].mean()) < 0.5 * float(info.loss[:20].mean())
    ll = wrjax.elbo_terms(k_eval, state.params, model, x).log_lik
    heavy = float(jnp.mean(ll[labels == 0]))
    light = float(jnp.mean(ll[labels != 0]))
    assert heavy > light + 1.0, (heavy, light)


def test_fit_continues_from_state_and_sample_mode_runs(toy, key):
    model, params = toy
    x, _ = toy_data(64)
    opt = optax.adam(1e-3)
    step = wrjax.make_train_step(model, opt, beta=wrjax.beta_schedule(1e-6, 1.0, warmup_steps=5))
    state = wrjax.init_train_state(params, opt)
    state, info = wrjax.fit(key, state, step, x, jnp.ones(64), num_steps=10, batch_size=8)
    state, info2 = wrjax.fit(
        key, state, step, x, jnp.ones(64), num_steps=10, batch_size=8, mode="sample"
    )
    assert int(state.step) == 20
    # The beta schedule reads the continued step count: 1e-6 until step 5, then x1.1 per 10.
    np.testing.assert_allclose(info.beta[:6], 1e-6, rtol=1e-6)
    np.testing.assert_allclose(info2.beta, 1e-6 * 1.1 ** ((np.arange(10, 20) - 5) // 10), rtol=1e-5)


def test_fit_does_not_retrace_as_the_buffer_fills(toy, key, trace_counter):
    model, params = toy
    capacity = 64
    x, _ = toy_data(capacity)
    opt = optax.adam(1e-3)
    step = trace_counter(wrjax.make_train_step(model, opt))
    state = wrjax.init_train_state(params, opt)
    for n_valid in (16, 17, 40, 64):
        mask = jnp.arange(capacity) < n_valid
        w = wrjax.rank_weights(jnp.arange(capacity, dtype=jnp.float32), 1e-3, mask)
        state, _ = wrjax.fit(
            key, state, step, x, w, num_steps=4, batch_size=8, mask=mask
        )
    assert step.count == 1


def test_epoch_mode_never_trains_on_padding(toy, key):
    model, params = toy
    x, _ = toy_data(32)
    x = x.at[16:].set(jnp.nan)  # padding holds garbage; a single read would poison params
    mask = jnp.arange(32) < 16
    opt = optax.adam(1e-3)
    step = wrjax.make_train_step(model, opt)
    state, info = wrjax.fit(
        key, wrjax.init_train_state(params, opt), step, x, mask.astype(jnp.float32),
        num_steps=20, batch_size=8, mask=mask,
    )
    assert np.isfinite(np.asarray(info.loss)).all()
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))


def test_float32_even_with_float64_inputs(toy, key):
    model, params = toy
    with jax.enable_x64(True):
        x = jnp.asarray(toy_data(8)[0], jnp.float64)
        terms = wrjax.elbo_terms(key, params, model, x)
        assert terms.elbo.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# train: the one training loop
# ---------------------------------------------------------------------------------------------


def _setup(toy, lr=1e-2, inject=False):
    model, params = toy
    x, labels = toy_data(64)
    opt = (optax.inject_hyperparams(optax.adam)(learning_rate=lr) if inject else optax.adam(lr))
    step = wrjax.make_train_step(model, opt, beta=0.5)
    w = wrjax.rank_weights(jnp.asarray(labels, jnp.float32), 0.1)
    return wrjax.init_train_state(params, opt), step, x, w


def _same_tree(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_train_in_one_chunk_is_fit_bit_for_bit(toy, key):
    state, step, x, w = _setup(toy)
    ref, info = wrjax.fit(jax.random.fold_in(key, 0), state, step, x, w, num_steps=25, batch_size=8)
    got, hist = vae.train(key, state, step, x, w, num_steps=25, batch_size=8)
    _same_tree(ref, got)
    assert hist.step == [25] and hist.loss == [float(np.asarray(info.loss).mean())]
    assert hist.beta == [0.5] and hist.metrics == [{}] and len(hist.seconds) == 1
    # chunk_key(done) -> key reproduces a plain fit(key, ...) call, in sample mode too.
    ref, _ = wrjax.fit(key, state, step, x, w, num_steps=25, batch_size=8, mode="sample")
    got, _ = vae.train(key, state, step, x, w, num_steps=25, batch_size=8, mode="sample",
                       chunk_key=lambda done: key)
    _same_tree(ref, got)


def test_chunks_are_fits_with_folded_keys(toy, key):
    state, step, x, w = _setup(toy)
    ref, losses = state, []
    for done in (0, 10, 20):  # the independent reference: three fits, key fold_in(key, done)
        ref, info = wrjax.fit(jax.random.fold_in(key, done), ref, step, x, w,
                              num_steps=min(10, 25 - done), batch_size=8)
        losses.append(float(np.asarray(info.loss).mean()))
    got, hist = vae.train(key, state, step, x, w, num_steps=25, batch_size=8, chunk_steps=10)
    _same_tree(ref, got)
    assert hist.step == [10, 20, 25] and hist.loss == losses
    assert hist.seconds == sorted(hist.seconds)


def test_resumed_from_a_history_equals_uninterrupted(toy, key, tmp_path):
    import json

    state, step, x, w = _setup(toy)
    full, full_hist = vae.train(key, state, step, x, w, num_steps=30, batch_size=8, chunk_steps=10)
    part, hist = vae.train(key, state, step, x, w, num_steps=20, batch_size=8, chunk_steps=10)
    # Through the checkpoint files, as a resumed script would.
    wrjax.checkpoint.save_pytree(tmp_path / "ck", part, {"history": hist._asdict()})
    part = wrjax.checkpoint.load_pytree(tmp_path / "ck", state)
    hist = vae.History.from_dict(json.loads((tmp_path / "ck.json").read_text())["history"])
    resumed, hist = vae.train(key, part, step, x, w, num_steps=30, batch_size=8, chunk_steps=10,
                              history=hist)
    _same_tree(full, resumed)
    assert hist.step == full_hist.step and hist.loss == full_hist.loss and hist.kl == full_hist.kl
    assert hist.seconds[-1] >= hist.seconds[1]  # wall time continues from the saved history


def test_history_from_an_old_record_without_metrics():
    h = vae.History.from_dict({"step": [1, 2], "loss": [1.0, 0.5], "log_lik": [0, 0], "kl": [0, 0],
                               "beta": [1, 1], "seconds": [0.1, 0.2]})
    assert h.metrics == [{}, {}] and h.step == [1, 2]


def test_on_chunk_returning_a_state_takes_effect(toy, key):
    state, step, x, w = _setup(toy, inject=True)
    seen = []

    def freeze(state, history):  # a learning-rate change of the optimiser state
        seen.append((int(state.step), list(history.step)))
        hp = dict(state.opt_state.hyperparams, learning_rate=jnp.zeros((), jnp.float32))
        return state._replace(opt_state=state.opt_state._replace(hyperparams=hp))

    first, _ = vae.train(key, state, step, x, w, num_steps=10, batch_size=8)
    got, _ = vae.train(key, state, step, x, w, num_steps=30, batch_size=8, chunk_steps=10,
                       on_chunk=freeze)
    _same_tree(first.params, got.params)  # learning rate 0 after the first chunk
    assert int(got.step) == 30 and seen == [(10, [10]), (20, [10, 20]), (30, [10, 20, 30])]
    # on_chunk returning None leaves the state alone.
    ref, _ = vae.train(key, state, step, x, w, num_steps=30, batch_size=8, chunk_steps=10)
    got, _ = vae.train(key, state, step, x, w, num_steps=30, batch_size=8, chunk_steps=10,
                       on_chunk=lambda s, h: None)
    _same_tree(ref, got)


def test_validate_metrics_and_progress_lines(toy, key, capsys):
    state, step, x, w = _setup(toy)
    model, _ = toy
    elbo = jax.jit(lambda p: wrjax.elbo_terms(key, p, model, x).elbo.mean())
    _, hist = vae.train(key, state, step, x, w, num_steps=20, batch_size=8, chunk_steps=10,
                        validate=lambda s: {"elbo": float(elbo(s.params))}, progress="toy")
    assert [set(m) for m in hist.metrics] == [{"elbo"}, {"elbo"}]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("[toy] step 10/20") and "elbo" in lines[0]
    vae.train(key, state, step, x, w, num_steps=20, batch_size=8, chunk_steps=10, progress=False)
    assert capsys.readouterr().out == ""


def test_time_limit_stops_after_the_chunk_that_passes_it(toy, key):
    state, step, x, w = _setup(toy)
    got, hist = vae.train(key, state, step, x, w, num_steps=40, batch_size=8, chunk_steps=10,
                          time_limit_s=0.0)
    assert int(got.step) == 10 and hist.step == [10]
    # Already at num_steps: nothing to do.
    again, hist2 = vae.train(key, got, step, x, w, num_steps=10, batch_size=8)
    assert again is got and hist2.step == []


def test_non_finite_loss_names_the_step(toy, key):
    state, step, x, w = _setup(toy)

    def poisoned(k, s, batch, lw):  # the update from step 12 to 13 goes NaN
        s, info = step(k, s, batch, lw)
        return s, info._replace(loss=jnp.where(s.step >= 13, jnp.nan, info.loss))

    with pytest.raises(FloatingPointError, match=r"at step 13 \(chunk of steps 11-20\)"):
        vae.train(key, state, poisoned, x, w, num_steps=30, batch_size=8, chunk_steps=10)


def test_train_checks_its_inputs_once(toy, key):
    state, step, x, w = _setup(toy)
    with pytest.raises(ValueError):
        vae.train(key, state, step, x, w[:10], num_steps=5, batch_size=8)
    with pytest.raises(ValueError, match="chunk_steps"):
        vae.train(key, state, step, x, w, num_steps=5, batch_size=8, chunk_steps=0)
