"""Tests of the arithmetic-expression task: data, objective, grammar VAE, decoding."""

import io
import json
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wrjax import checkpoint, paths
from wrjax.vae import init_train_state
from wrjax.tasks import expressions as E
from wrjax.tasks.expressions import grammar as G
from wrjax.tasks.expressions import pretrain as P

try:
    DATA = E.find_data_dir()
except FileNotFoundError:
    DATA = Path("/nonexistent/expressions")
TEXT = DATA / "equation2_15_dataset.txt"

needs_data = pytest.mark.skipif(not TEXT.exists(), reason="expression data not available")


@pytest.fixture(scope="module")
def lines():
    return TEXT.read_text().splitlines()


@pytest.fixture(scope="module")
def authors_log_mse():
    return np.load(DATA / "scores_all.npz")["arr_0"]


# -- text and rules ---------------------------------------------------------------------------


def test_tokenize_and_novelty_key():
    assert E.tokenize("1/3+sin(x*x)") == E.tokenize("1 / 3 + sin( x * x )") == [
        "1", "/", "3", "+", "sin(", "x", "*", "x", ")"]
    with pytest.raises(ValueError, match="unexpected character"):
        E.tokenize("x - 1")
    assert E.novelty_key("1 / 3 + sin( x * x )") == E.novelty_key("1/3+sin(x*x)") == "1/3+sin(x*x)"


@needs_data
def test_round_trip_sample(lines, rng):
    # parse -> one-hot -> masked argmax decode of the one-hot -> the same text.
    rows = rng.choice(len(lines), size=500, replace=False)
    texts = [lines[i] for i in rows]
    oh = E.expressions_to_one_hot(texts)
    assert oh.shape == (500, 15, 12)
    out = G.masked_argmax_decode(jnp.asarray(8.0 * oh), E.TABLES)
    assert np.asarray(out.complete).all()
    rules = np.asarray(out.rules)
    np.testing.assert_array_equal(rules, oh.argmax(-1))
    assert [E.rules_to_expression(r) for r in rules] == texts
    # SOURCE.md: expressions of 7/9/11/13 tokens take 8/10/12/14 rules.
    n_rules = (oh.argmax(-1) != 11).sum(-1)
    np.testing.assert_array_equal(n_rules, [len(t.split()) + 1 for t in texts])


@needs_data
def test_one_hot_matches_authors_h5(lines, rng):
    h5py = pytest.importorskip("h5py")
    with zipfile.ZipFile(DATA / "eq2_grammar_dataset.zip") as z:
        blob = z.read("eq2_grammar_dataset.h5")
    rows = np.sort(rng.choice(len(lines), size=300, replace=False))
    with h5py.File(io.BytesIO(blob), "r") as f:
        ref = f["data"][rows]
    np.testing.assert_array_equal(E.expressions_to_one_hot([lines[i] for i in rows]), ref)


# -- objective --------------------------------------------------------------------------------


@needs_data
def test_score_matches_authors(lines, authors_log_mse, rng):
    rows = rng.choice(len(lines), size=4000, replace=False)
    # every capped (7) expression among them too, plus the target (line 99,909)
    rows = np.unique(np.concatenate([rows, np.flatnonzero(authors_log_mse == 7.0)[:500], [99908]]))
    ours = E.score_batch([lines[i] for i in rows])
    np.testing.assert_allclose(ours, -authors_log_mse[rows], rtol=0, atol=1e-12)
    assert E.score(lines[99908]) == 0.0


def test_score_precedence_and_targets():
    x = np.linspace(-10, 10, 1000)
    target = 1 / 3 + x + np.sin(x * x)
    # '*' binds tighter than '+' (unlike the grammar's own tree), as in Python's eval
    for text, f in [
        ("x + x * x", x + x * x),
        ("x / 2 / 3", (x / 2) / 3),
        ("2 * exp( x / 3 ) + sin( 1 )", 2 * np.exp(x / 3) + np.sin(1)),
        ("3", 3.0 + 0 * x),
    ]:
        expected = -min(7.0, np.log1p(np.mean((f - target) ** 2)))
        assert E.score(text) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    paper = 1 / 3 * x * np.sin(x * x)
    assert E.score("1/3*x*sin(x*x)", target=E.PAPER_TEXT_TARGET) == 0.0
    assert E.score("x", target=E.PAPER_TEXT_TARGET) == pytest.approx(
        -np.log1p(np.mean((x - paper) ** 2)), rel=1e-12)


def test_score_failures():
    # exp(exp(exp(10))) overflows to inf: inf/inf is NaN, so the score is the worst, -7
    nan_expr = "exp( exp( exp( x ) ) ) / exp( exp( exp( x ) ) )"
    assert np.isnan(E.evaluate(nan_expr)).any()
    assert E.score(nan_expr) == -7.0
    assert E.score("exp( exp( exp( x ) ) )") == -7.0  # inf MSE
    with pytest.raises(ValueError):
        E.score("x +")
    with pytest.raises(ValueError):
        E.score("")


@needs_data
def test_load_expressions(authors_log_mse):
    data = E.load_expressions()
    assert len(data.expressions) == data.one_hot.shape[0] == data.scores.shape[0] == 50_111
    assert data.one_hot.shape[1:] == (15, 12) and data.one_hot.dtype == np.float32
    # The worst half: every kept score is at most every dropped one (maximisation).
    dropped = np.sort(-authors_log_mse)[-(100_000 - 50_111):]
    assert data.scores.max() <= dropped.min()
    assert data.scores.max() == pytest.approx(-np.median(authors_log_mse), abs=1e-12)
    np.testing.assert_allclose(E.score_batch(data.expressions[:200]), data.scores[:200], atol=1e-12)
    np.testing.assert_array_equal(
        data.one_hot[:200], E.expressions_to_one_hot(data.expressions[:200]))
    with pytest.raises(ValueError):
        E.load_expressions(keep_worst_fraction=0.0)


# -- model ------------------------------------------------------------------------------------


def _init(model, key):
    return jax.jit(model.init)(key, jnp.zeros((1, 15, 12), jnp.float32))["params"]


@pytest.fixture(scope="module")
def model_and_params():
    """A small GrammarVAE (fast to compile); the loss and decoding do not depend on sizes."""
    model = E.GrammarVAE(hidden_units=16, dense_units=16, num_gru_layers=1)
    return model, _init(model, jax.random.key(1))


def test_default_model_shapes():
    # Shapes only: trace with eval_shape instead of compiling the full model.
    model = E.GrammarVAE()
    x = jnp.asarray(E.expressions_to_one_hot(["x + 1", "sin( x ) * 2"]))
    params = jax.eval_shape(model.init, jax.random.key(1), x)["params"]
    mean, logvar = jax.eval_shape(
        lambda p, x: model.apply({"params": p}, x, method=model.encode), params, x)
    assert mean.shape == logvar.shape == (2, 25) and mean.dtype == jnp.float32
    logits = jax.eval_shape(
        lambda p, z: model.apply({"params": p}, z, method=model.decode), params, mean)
    assert logits.shape == (2, 15, 12) and logits.dtype == jnp.float32
    with pytest.raises(ValueError, match="must be"):
        jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method=model.encode),
                       params, jnp.zeros((2, 14, 12)))
    n_params = sum(p.size for p in jax.tree.leaves(params))
    # By hand: convs (w*c_in*c_out + c_out), LayerNorm scale+offset per channel, dense
    # layers, flax GRUCell (3 input kernels with bias, 3 hidden kernels, bias on 'hn').
    convs = (2 * 12 * 2 + 2) + (3 * 2 * 3 + 3) + (4 * 3 * 4 + 4) + 2 * (2 + 3 + 4)
    dense = (9 * 4 * 100 + 100) + 2 * (100 * 25 + 25) + (25 * 25 + 25) + (100 * 12 + 12)
    gru = lambda i, h: 3 * (i * h + h) + 3 * h * h + h  # noqa: E731
    assert n_params == convs + dense + gru(25, 100) + 2 * gru(100, 100)  # 169,453 (0.7 MB)


def test_train_step_loss_is_authors_and_decreases(model_and_params, key):
    model, params = model_and_params
    x = jnp.asarray(E.expressions_to_one_hot(
        ["x + 1", "sin( x ) * 2", "x / ( 3 + x ) + 2", "exp( x )", "1 + 2 + 3 + x"]))
    opt = optax.adam(1e-2)
    step = jax.jit(E.make_expressions_train_step(model, opt))
    state = init_train_state(params, opt)
    # Reference for the first loss: the Keras formula in NumPy with the same noise.
    k0 = jax.random.fold_in(key, 0)
    mean, logvar = model.apply({"params": params}, x, method=model.encode)
    eps = 0.01 * jax.random.normal(k0, mean.shape, jnp.float32)
    z = mean + jnp.exp(0.5 * logvar) * eps
    logits = model.apply({"params": params}, z, method=model.decode)
    m = E.GRAMMAR.masks[E.GRAMMAR.rule_lhs[np.asarray(x).argmax(-1)]]
    p = np.exp(np.asarray(logits, np.float64)) * m
    p = np.clip(p / p.sum(-1, keepdims=True), 1e-7, 1 - 1e-7)
    xn = np.asarray(x, np.float64)
    xent = 15 * (-(xn * np.log(p) + (1 - xn) * np.log(1 - p))).reshape(5, -1).mean(-1)
    mu, lv = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    kl = -0.5 * np.mean(1 + lv - mu**2 - np.exp(lv), axis=-1)
    weights = jnp.asarray([1.0, 2.0, 0.5, 1.0, 0.5])
    state1, info = step(k0, state, x, weights)
    np.testing.assert_allclose(float(info.loss), np.mean(np.asarray(weights) * (xent + kl)),
                               rtol=1e-4)
    state = state1
    for i in range(1, 60):
        state, last = step(jax.random.fold_in(key, i), state, x, jnp.ones(5))
    assert float(last.loss) < 0.5 * float(info.loss)


def test_majority_vote():
    assert E.majority_vote(["a", "b", "b", None, "a"]) == "a"  # tie: earliest wins
    assert E.majority_vote([None, "b", "c", "c", None]) == "c"
    assert E.majority_vote([None, None, "", None, None]) is None
    assert E.majority_vote([None, None, None, None, "x"]) == "x"  # invalid ones don't vote


def test_decode_expressions_outputs_are_valid(model_and_params, key):
    model, params = model_and_params
    k1, k2 = jax.random.split(key)
    z = jax.random.normal(k1, (64, 25))
    out = E.decode_expressions(k2, model, params, z, num_samples=5)
    assert len(out) == 64
    for text in out:
        if text is not None:
            rules = E.parse_rules(text)  # parses, so it is in the language
            assert len(rules) <= 15
            assert np.isfinite(E.score(text))
    greedy = E.decode_expressions(k2, model, params, z, greedy=True)
    again = E.decode_expressions(k1, model, params, z, greedy=True)
    assert greedy == again  # argmax decoding ignores the key
    with pytest.raises(ValueError, match="z must be"):
        E.decode_expressions(k2, model, params, z[:, :3])


# -- pretraining and checkpoints --------------------------------------------------------------


def _tiny_data(n=400):
    rng = np.random.default_rng(3)
    exprs = ["x + 1", "sin( x ) * 2", "x / ( 3 + x ) + 2", "exp( x )", "1 + 2 + 3 + x", "x * x"]
    texts = [exprs[i] for i in rng.integers(0, len(exprs), n)]
    return E.ExpressionData(texts, E.expressions_to_one_hot(texts), E.score_batch(texts))


def test_pretrain_smoke_and_checkpoint(key, tmp_path):
    data = _tiny_data()
    model = E.GrammarVAE(hidden_units=16, dense_units=16, num_gru_layers=1)
    init = _init(model, jax.random.key(2))
    params, info = P.pretrain(key, model, init, k=1e-3, num_epochs=1, batch_size=64, data=data,
                              progress=None)
    assert len(info.train_loss) == len(info.val_loss) == 1
    assert np.isfinite(info.train_loss).all() and np.isfinite(info.val_loss).all()
    assert info.num_train + info.num_val == 400 and info.num_val == 40
    assert info.num_copies > info.num_train  # k = 1e-3 duplicates the best points
    assert info.history.step == [info.num_copies // 64 + (info.num_copies % 64 > 0)]
    assert info.learning_rate == [1e-3]
    checkpoint.save_model(tmp_path / "m", params, config=E.model_config(model),
                          record={"k": 1e-3})
    model2, params2, meta = checkpoint.load_model(tmp_path / "m", E.build_model)
    assert model2 == model and meta["k"] == 1e-3
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_plateau_schedule_matches_keras():
    # ReduceLROnPlateau(factor=0.2, patience=1, min_lr=1e-4): cut after each non-improvement
    best, wait, lr = np.inf, 0, 1e-3
    lrs = []
    for val in [3.0, 2.0, 2.5, 1.9, 1.9, 1.95, 1.0, 1.0, 1.0]:
        best, wait, lr = P._plateau(val, best, wait, lr, factor=0.2, patience=1,
                                    min_lr=1e-4, min_delta=1e-4)
        lrs.append(lr)
    np.testing.assert_allclose(lrs, [1e-3, 1e-3, 2e-4, 2e-4, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4])


@pytest.mark.parametrize("name", ["expr-k_inf", "expr-k_1e-3"])
def test_shipped_checkpoints(name):
    try:
        stem = paths.shipped_checkpoint("expressions", name)
    except FileNotFoundError:
        pytest.skip(f"{name} not shipped")
    assert Path(f"{stem}.msgpack").stat().st_size <= 10 * 2**20
    model, params, meta = checkpoint.load_model(stem, E.build_model)
    for field in ("command", "machine", "k", "reconstruction_accuracy", "prior_validity"):
        assert field in meta
    assert json.loads(json.dumps(meta)) == meta
    # Reconstruct a few held-out training rows: the stored accuracy is not a fluke.
    if TEXT.exists():
        data = E.load_expressions()
        val = np.asarray(meta["val_indices"][:1000])
        acc = E.reconstruction_accuracy(model, params, data.one_hot[val])
        assert acc >= 0.5 * meta["reconstruction_accuracy"] - 0.02


def test_decode_expressions_pads_to_one_program(model_and_params, key):
    model, params = model_and_params
    z = jax.random.normal(key, (20, 25))
    E.decode_expressions(key, model, params, z[:1], greedy=True)  # compile the padded size
    before = E.decode_rules._cache_size()
    outs = {b: E.decode_expressions(key, model, params, z[:b], greedy=True) for b in (1, 3, 7, 20)}
    assert E.decode_rules._cache_size() == before  # no new program for 3, 7 or 20 points
    # padding drops nothing and changes no greedy decode: the unpadded program agrees
    ref = E.decode_expressions(key, model, params, z, greedy=True, pad_to=1)
    for b, out in outs.items():
        assert out == ref[:b]
    with pytest.raises(ValueError, match="pad_to"):
        E.decode_expressions(key, model, params, z, pad_to=0)


def test_parsed_rules_cache_is_keyed_by_the_file(tmp_path, monkeypatch):
    text = tmp_path / "exprs.txt"
    exprs = ["x + 1", "sin( x ) * 2", "exp( x / 3 )"]
    text.write_text("\n".join(exprs) + "\n")
    cache = tmp_path / "cache"
    rules = E.parsed_rules(text, cache_dir=cache)
    ref = np.argmax(E.expressions_to_one_hot(exprs), axis=-1)  # the uncached parse
    np.testing.assert_array_equal(rules, ref)
    files = list(cache.glob("expressions_rules_*.npz"))
    assert len(files) == 1
    # a second start reads the cache: the parser is never called
    monkeypatch.setattr(G, "parse_rules", lambda e: (_ for _ in ()).throw(AssertionError("parsed")))
    np.testing.assert_array_equal(E.parsed_rules(text, cache_dir=cache), ref)
    monkeypatch.undo()
    # a changed file gets its own cache entry
    text.write_text("x\n")
    np.testing.assert_array_equal(E.parsed_rules(text, cache_dir=cache), np.argmax(E.expressions_to_one_hot(["x"]), -1))
    assert len(list(cache.glob("expressions_rules_*.npz"))) == 2


@needs_data
def test_pretrain_subcommand_and_fine_tune(tmp_path, monkeypatch, lines, authors_log_mse):
    # `experiments/pretrain.py expressions` on 120 expressions: from scratch, then --init.
    import experiments.pretrain as cli

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "equation2_15_dataset.txt").write_text("\n".join(lines[:120]) + "\n")
    np.savez(data_dir / "scores_all.npz", authors_log_mse[:120])
    monkeypatch.setenv("WRJAX_CACHE_DIR", str(tmp_path / "cache"))
    common = ["--epochs", "1", "--batch-size", "32", "--prior-samples", "8",
              "--data-dir", str(data_dir)]
    cli.main(["expressions", "--k", "1e-3", "--out", str(tmp_path / "a"), *common])
    model, params, meta = checkpoint.load_model(tmp_path / "a", E.build_model)
    assert model == E.GrammarVAE() and meta["format"] == "wrjax-model/1"
    assert meta["command"].startswith("python experiments/pretrain.py expressions --k 1e-3")
    n = len(E.load_expressions(data_dir=data_dir).expressions)  # the worse half: 61 (ties)
    assert meta["mode"] == "from scratch" and meta["data"]["num_data"] == n
    assert meta["data"]["num_train"] + meta["data"]["num_val"] == n
    assert meta["metrics"]["final_val_loss"] == meta["history"]["metrics"][-1]["val_loss"]
    assert 0.0 <= meta["metrics"]["prior_validity"] <= 1.0
    cli.main(["expressions", "--k", "inf", "--init", str(tmp_path / "a"),
              "--out", str(tmp_path / "b"), *common])
    meta_b = checkpoint.load_model(tmp_path / "b", E.build_model)[2]
    assert meta_b["mode"] == "fine-tune" and meta_b["init_command"] == meta["command"]


@needs_data
def test_parsed_rules_reads_the_shipped_cache(tmp_path, monkeypatch):
    # An empty writable cache (as an installed wheel's ~/.cache): the shipped copy beside the
    # models is read, the 100,000 expressions are not parsed again.
    shipped = paths.shipped_checkpoint("expressions", "expr-k_inf").parent
    if not list(shipped.glob("expressions_rules_*.npz")):
        pytest.skip("no shipped parsed-rule cache")
    monkeypatch.setenv("WRJAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(G, "parse_rules", lambda e: (_ for _ in ()).throw(AssertionError("parsed")))
    rules = E.parsed_rules(TEXT)
    assert rules.shape == (100_000, 15) and not list(tmp_path.rglob("*.npz"))
