"""Tests of wrjax.tasks.expressions.grammar: CFG tables, Earley parsing, masked decoding, masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wrjax.tasks.expressions import grammar as G

EXPR_TEXT = """
S -> S '+' T | S '*' T | S '/' T | T
T -> '(' S ')' | 'sin(' S ')' | 'exp(' S ')' | 'x' | '1' | '2' | '3'
Nothing -> None
"""

# A second, unrelated grammar: three non-terminals on one right-hand side, a quoted '|'
# terminal, another padding name; checks that nothing is specific to expressions.
TOY_TEXT = """
A -> B C B | 'a'
B -> 'b' | '|' A
C -> C 'c' | 'c'
Pad -> None
"""


@pytest.fixture(scope="module")
def expr():
    return G.Grammar.from_string(EXPR_TEXT)


@pytest.fixture(scope="module")
def toy():
    return G.Grammar.from_string(TOY_TEXT)


def test_tables_match_hand_written(expr):
    # Kusner et al.'s rule order, masks and right-hand-side non-terminals, written by hand.
    assert [str(p) for p in expr.productions][:4] == [
        "S -> S + T", "S -> S * T", "S -> S / T", "S -> T"]
    assert expr.nonterminals == ("S", "T", "Nothing")
    assert expr.padding_rule == 11 and expr.start == "S"
    masks = np.zeros((3, 12), bool)
    masks[0, :4] = masks[1, 4:11] = masks[2, 11] = True
    np.testing.assert_array_equal(expr.masks, masks)
    rhs = np.full((12, 2), -1)
    rhs[:3] = [0, 1]
    rhs[3, 0] = 1
    rhs[4:7, 0] = 0
    np.testing.assert_array_equal(expr.rhs_nonterminals, rhs)
    np.testing.assert_array_equal(expr.rhs_count, [2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0])


def test_toy_tables(toy):
    assert toy.nonterminals == ("A", "B", "C", "Pad")
    assert toy.productions[3] == G.Production("B", ("|", "A"))
    np.testing.assert_array_equal(toy.rhs_nonterminals[0], [1, 2, 1])
    assert toy.padding_rule == 6


@pytest.mark.parametrize(
    "text, rules",
    [
        # derived by hand: pre-order of the (left-recursive) parse tree
        ("x + 1", [0, 3, 7, 8]),
        ("sin( x ) * 2", [1, 3, 5, 3, 7, 9]),
        ("x / ( 3 + x ) + 2", [0, 2, 3, 7, 4, 0, 3, 10, 7, 9]),
        ("exp( x )", [3, 6, 3, 7]),
    ],
)
def test_parse_known(expr, text, rules):
    assert G.parse(expr, text.split()) == rules
    assert G.rules_to_tokens(expr, rules + [11] * 3) == text.split()


def test_parse_toy_round_trip(toy):
    # A -> B C B with B -> '|' A nested; hand-derived pre-order.
    tokens = ["|", "a", "c", "c", "b"]
    rules = G.parse(toy, tokens)
    assert rules == [0, 3, 1, 4, 5, 2]
    assert G.rules_to_tokens(toy, rules) == tokens


@pytest.mark.parametrize("text", ["x +", "( x", "x x", "", "sin( )"])
def test_parse_rejects(expr, text):
    with pytest.raises(ValueError, match="not in the language"):
        G.parse(expr, text.split())


def test_grammar_validation():
    with pytest.raises(ValueError, match="padding"):
        G.Grammar.from_productions([("S", ["a"])])
    with pytest.raises(ValueError, match="empty right-hand side"):
        G.Grammar.from_productions([("S", ["a"]), ("S", []), ("P", [])], padding_rule=2)


def test_one_hot_and_rules_to_tokens(expr):
    oh = G.one_hot(expr, [[0, 3, 7, 8], [3, 7]], 6)
    assert oh.shape == (2, 6, 12) and oh.dtype == np.float32
    np.testing.assert_array_equal(oh.sum(-1), 1.0)
    np.testing.assert_array_equal(oh.argmax(-1), [[0, 3, 7, 8, 11, 11], [3, 7, 11, 11, 11, 11]])
    with pytest.raises(ValueError, match="max_len"):
        G.one_hot(expr, [[0] * 7], 6)
    assert G.rules_to_tokens(expr, [0, 3, 7, 11]) is None  # T left unexpanded
    assert G.check_derivation(expr, [0, 3, 7, 11]) == (False, False)  # padding too early
    assert G.check_derivation(expr, [0, 3, 7]) == (True, False)  # a prefix
    assert G.check_derivation(expr, [0, 7]) == (False, False)  # T where S is due


def _random_logits(rng, shape):
    logits = rng.normal(scale=3.0, size=shape).astype(np.float32)
    # Non-finite values must not break the mask.
    flat = logits.reshape(-1)
    picks = rng.choice(flat.size, size=flat.size // 20, replace=False)
    flat[picks] = rng.choice([np.nan, np.inf, -np.inf], size=picks.size)
    return jnp.asarray(logits)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("name", ["expr", "toy"])
def test_masked_decode_is_always_grammatical(request, key, rng, name, use_jit):
    grammar = request.getfixturevalue(name)
    tables = grammar.tables()
    logits = _random_logits(rng, (400, 15, grammar.num_rules))
    decode = jax.jit(G.masked_decode) if use_jit else G.masked_decode
    greedy = jax.jit(G.masked_argmax_decode) if use_jit else G.masked_argmax_decode
    for out in (decode(key, logits, tables), greedy(logits, tables)):
        rules, complete = np.asarray(out.rules), np.asarray(out.complete)
        assert rules.shape == (400, 15) and complete.shape == (400,)
        ref = [G.check_derivation(grammar, r) for r in rules]
        assert all(ok for ok, _ in ref)
        np.testing.assert_array_equal(complete, [c for _, c in ref])
    # Random logits give both outcomes, so the completeness check is exercised.
    assert 0 < complete.sum() < complete.size


def test_masked_decode_samples_the_masked_softmax(expr, key):
    # Step 0 pops S: rules 0..3 only. With logits log([.1, .2, .3, .4]) on them (and huge
    # logits on forbidden rules) the first rule is distributed as those probabilities.
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    logits = np.full((20000, 15, 12), 0.0, np.float32)
    logits[:, 0, :4] = np.log(probs)
    logits[:, 0, 4:] = 50.0
    rules = np.asarray(G.masked_decode(key, jnp.asarray(logits), expr.tables()).rules)
    freq = np.bincount(rules[:, 0], minlength=12) / rules.shape[0]
    np.testing.assert_allclose(freq[:4], probs, atol=0.015)
    assert freq[4:].sum() == 0


def test_argmax_decode_inverts_one_hot(expr):
    seqs = [[0, 3, 7, 8], [1, 3, 5, 3, 7, 9], [0, 2, 3, 7, 4, 0, 3, 10, 7, 9]]
    oh = G.one_hot(expr, seqs, 15)
    out = G.masked_argmax_decode(jnp.asarray(10.0 * oh), expr.tables())
    np.testing.assert_array_equal(np.asarray(out.rules), oh.argmax(-1))
    assert np.asarray(out.complete).all()


def test_stack_overflow_is_incomplete(expr):
    # Always prefer S -> S '+' T: the stack only grows, and never completes.
    logits = np.zeros((1, 15, 12), np.float32)
    logits[..., 0] = 10.0
    out = G.masked_argmax_decode(jnp.asarray(logits), expr.tables())
    np.testing.assert_array_equal(np.asarray(out.rules)[0], 0)
    assert not bool(out.complete[0])


def test_masked_decode_does_not_retrace(expr, key, trace_counter):
    counted = trace_counter(G.masked_decode)
    fn = jax.jit(counted)
    tables = expr.tables()
    k1, k2 = jax.random.split(key)
    fn(k1, jnp.zeros((4, 15, 12)), tables)
    fn(k2, jnp.ones((4, 15, 12)), tables)
    assert counted.count == 1


def test_sequence_masks(expr, rng):
    rules = rng.integers(0, 12, size=(5, 15))
    ref = expr.masks[expr.rule_lhs[rules]]
    tables = expr.tables()
    np.testing.assert_array_equal(np.asarray(G.sequence_masks(jnp.asarray(rules), tables)), ref)
    oh = np.eye(12, dtype=np.float32)[rules]
    np.testing.assert_array_equal(np.asarray(G.sequence_masks(jnp.asarray(oh), tables)), ref)


def _numpy_keras_loss(logits, x, grammar, eps=1e-7):
    """The Keras ``conditional`` + ``max_length * binary_crossentropy`` per example."""
    mask = grammar.masks[grammar.rule_lhs[x.argmax(-1)]].astype(np.float64)
    p = np.exp(logits.astype(np.float64)) * mask
    p = p / p.sum(-1, keepdims=True)
    p = np.clip(p, eps, 1 - eps)
    bce = -(x * np.log(p) + (1 - x) * np.log(1 - p))
    return x.shape[1] * bce.reshape(len(x), -1).mean(-1)


@pytest.mark.parametrize("use_jit", [False, True])
def test_grammar_log_likelihood_matches_numpy(expr, rng, use_jit):
    tables = expr.tables()
    logits = rng.normal(scale=2.0, size=(6, 15, 12)).astype(np.float32)
    seqs = [[0, 3, 7, 8], [1, 3, 5, 3, 7, 9], [3, 7], [3, 10], [0, 0, 3, 7, 7, 8], [3, 6, 3, 7]]
    x = G.one_hot(expr, seqs, 15)
    bce = G.make_grammar_log_likelihood(tables, kind="bce")
    cat = G.make_grammar_log_likelihood(tables, kind="categorical")
    if use_jit:
        bce, cat = jax.jit(bce), jax.jit(cat)
    np.testing.assert_allclose(
        -np.asarray(bce(jnp.asarray(logits), jnp.asarray(x))),
        _numpy_keras_loss(logits, x, expr), rtol=2e-5, atol=1e-5)
    # categorical: log of the masked softmax at the true rule, summed over steps.
    mask = expr.masks[expr.rule_lhs[x.argmax(-1)]]
    z = np.where(mask, logits.astype(np.float64), -np.inf)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ref = np.where(x > 0, logp, 0.0).sum((1, 2))
    np.testing.assert_allclose(np.asarray(cat(jnp.asarray(logits), jnp.asarray(x))), ref,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["bce", "categorical"])
def test_grammar_log_likelihood_gradients_are_finite(expr, rng, kind):
    ll = G.make_grammar_log_likelihood(expr.tables(), kind=kind)
    logits = jnp.asarray(rng.normal(size=(3, 15, 12)).astype(np.float32))
    x = jnp.asarray(G.one_hot(expr, [[0, 3, 7, 8], [3, 7], [1, 3, 5, 3, 7, 9]], 15))
    g = jax.grad(lambda l: ll(l, x).sum())(logits)
    assert np.isfinite(np.asarray(g)).all()
    # Forbidden rules get no gradient: the mask removes them from the softmax.
    mask = np.asarray(G.sequence_masks(x, expr.tables()))
    np.testing.assert_array_equal(np.asarray(g)[~mask], 0.0)
