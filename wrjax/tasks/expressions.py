"""The arithmetic-expression task (paper §6.2, appendix C.5): data, objective, grammar VAE.

Data: the 100,000 univariate expressions of Kusner et al. (2017) generated from

    S -> S '+' T | S '*' T | S '/' T | T
    T -> '(' S ')' | 'sin(' S ')' | 'exp(' S ')' | 'x' | '1' | '2' | '3'

with at most 15 production rules; as in the paper, only the worst 50% by score are kept
(50,111 because of ties). Each expression is a sequence of 15 rule indices (its leftmost
derivation, padded with rule 11 ``Nothing -> None``).

Objective (maximised): ``-min(7, log(1 + MSE))`` against the target ``1/3 + x + sin(x*x)`` on
1,000 evenly spaced points in [-10, 10]; 0 is the optimum (the target itself), -7 the worst.
The expression is evaluated from an arithmetic parse tree with the usual precedence
(``*`` and ``/`` before ``+``, left to right), exactly as the authors' Python ``eval`` did;
note that this is *not* the grammar's tree, whose operators all share one precedence.

Model: the grammar VAE of Kusner et al. (conv encoder, 3-layer GRU decoder, latent 25,
grammar-masked softmax), trained with the weighted ELBO of ``wrjax.vae``; see
:class:`GrammarVAE` for the deviations from their Keras model.

Optimiser support: :func:`decode_expressions` (5 stochastic masked decodes and a majority
vote; ``None`` when no decode completes), :func:`novelty_key`, :func:`expressions_to_one_hot`.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import os
import platform
import re
import time
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax.data import shared_data_dir
from wrjax import grammar as G
from wrjax.resampling import duplicate_copies
from wrjax.typing import PyTree
from wrjax.vae import fit, init_train_state, make_train_step
from wrjax.weighting import rank_weights

__all__ = [
    "DATA_DIR",
    "GRAMMAR",
    "TABLES",
    "MAX_LEN",
    "NUM_RULES",
    "LATENT_DIM",
    "LATENT_NOISE_STD",
    "DEFAULT_TARGET",
    "PAPER_TEXT_TARGET",
    "WORST_LOG_MSE",
    "tokenize",
    "parse_rules",
    "expressions_to_one_hot",
    "rules_to_expression",
    "ExpressionData",
    "load_expressions",
    "evaluate",
    "score",
    "score_batch",
    "novelty_key",
    "GrammarVAE",
    "log_likelihood",
    "make_expressions_train_step",
    "init_params",
    "majority_vote",
    "decode_rules",
    "decode_expressions",
    "parsed_rules",
    "reconstruction_accuracy",
    "PretrainInfo",
    "pretrain",
    "save_model",
    "load_model",
    "machine_description",
]

_F32 = jnp.float32

#: where ``equation2_15_dataset.txt`` and ``scores_all.npz`` live (``WRJAX_EXPRESSIONS_DIR``
#: overrides it).
DATA_DIR = shared_data_dir("expressions", "WRJAX_EXPRESSIONS_DIR", must_exist=False)

# Rule order = the columns of Kusner et al.'s one-hot data (eq2_grammar_dataset.h5).
GRAMMAR = G.Grammar.from_string(
    """
    S -> S '+' T
    S -> S '*' T
    S -> S '/' T
    S -> T
    T -> '(' S ')'
    T -> 'sin(' S ')'
    T -> 'exp(' S ')'
    T -> 'x'
    T -> '1'
    T -> '2'
    T -> '3'
    Nothing -> None
    """
)
TABLES = GRAMMAR.tables()
MAX_LEN = 15
NUM_RULES = GRAMMAR.num_rules  # 12
LATENT_DIM = 25
#: reparameterisation noise scale of the authors' Keras model (``epsilon_std = 0.01``).
LATENT_NOISE_STD = 0.01

#: The benchmark target of Kusner et al., used by the authors' code and in the data file.
DEFAULT_TARGET = "1 / 3 + x + sin( x * x )"
#: The target as printed in the paper's text (a transcription slip; see DESIGN.md).
PAPER_TEXT_TARGET = "1 / 3 * x * sin( x * x )"
#: ``log(1 + MSE)`` is capped here; the score of a failed evaluation.
WORST_LOG_MSE = 7.0


# ---------------------------------------------------------------------------------------------
# Text <-> rules
# ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(sin\(|exp\(|[x123+*/()])")


def tokenize(expression: str) -> list[str]:
    """Split an expression into grammar terminals; spaces are optional.

    >>> tokenize("1/3+sin(x*x)")
    ['1', '/', '3', '+', 'sin(', 'x', '*', 'x', ')']
    """
    tokens, pos, text = [], 0, expression.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"unexpected character {text[pos:].lstrip()[:1]!r} in {expression!r}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def parse_rules(expression: str) -> list[int]:
    """The leftmost-derivation rule indices of an expression (unpadded)."""
    return G.parse(GRAMMAR, tokenize(expression))


def expressions_to_one_hot(expressions: Sequence[str]) -> np.ndarray:
    """``(N, 15, 12)`` float32 one-hot rule sequences, padded with rule 11.

    Raises ``ValueError`` for text outside the grammar or needing more than 15 rules.
    """
    return G.one_hot(GRAMMAR, [parse_rules(e) for e in expressions], MAX_LEN)


def rules_to_expression(rules: Sequence[int]) -> str | None:
    """The expression (tokens joined by single spaces, as in the data file) of a complete
    rule sequence, or ``None`` if the derivation is incomplete or ungrammatical."""
    tokens = G.rules_to_tokens(GRAMMAR, rules)
    return None if tokens is None else " ".join(tokens)


def novelty_key(expression: str) -> str:
    """Canonical text for novelty checks: the expression with all whitespace removed."""
    return "".join(expression.split())


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class ExpressionData(NamedTuple):
    """The kept expressions in file order."""

    expressions: list[str]  # N texts as in the data file (tokens joined by spaces)
    one_hot: np.ndarray  # (N, 15, 12) float32 rule sequences
    scores: np.ndarray  # (N,) float64, higher is better (= -min(7, log(1 + MSE)))


def load_expressions(
    *, keep_worst_fraction: float = 0.5, data_dir: str | os.PathLike | None = None
) -> ExpressionData:
    """Load the expression data set, keeping the worst fraction by score (the paper's 50%).

    The authors keep ``log_mse >= percentile(log_mse, 100 (1 - fraction))``, which keeps
    50,111 of 100,000 at 0.5 because of ties; this does the same. Scores come from
    ``scores_all.npz`` (the authors' values; :func:`score` reproduces them) and rule
    sequences from parsing the text (identical to the authors' one-hot data).

    Args:
      keep_worst_fraction: in ``(0, 1]``; 1 keeps everything.
      data_dir: folder with ``equation2_15_dataset.txt`` and ``scores_all.npz`` (default
        :data:`DATA_DIR`).

    Returns:
      :class:`ExpressionData` ``(expressions, one_hot (N, 15, 12), scores (N,))``.
    """
    if not 0.0 < keep_worst_fraction <= 1.0:
        raise ValueError(f"keep_worst_fraction must be in (0, 1], got {keep_worst_fraction}")
    data = _load_cached(str(Path(data_dir or DATA_DIR)), float(keep_worst_fraction))
    return ExpressionData(list(data.expressions), data.one_hot.copy(), data.scores.copy())


@functools.lru_cache(maxsize=4)
def _load_cached(data_dir: str, fraction: float) -> ExpressionData:
    root = Path(data_dir)
    text_path, score_path = root / "equation2_15_dataset.txt", root / "scores_all.npz"
    for p in (text_path, score_path):
        if not p.exists():
            raise FileNotFoundError(f"missing {p}; see the data folder's SOURCE.md")
    lines = text_path.read_text().splitlines()
    log_mse = np.load(score_path)["arr_0"]
    if len(lines) != log_mse.shape[0]:
        raise ValueError(f"{len(lines)} expressions but {log_mse.shape[0]} scores")
    keep = log_mse >= np.percentile(log_mse, 100.0 * (1.0 - fraction))
    kept = [line for line, k in zip(lines, keep) if k]
    rules = parsed_rules(text_path)[keep]
    return ExpressionData(kept, _rules_one_hot(rules), -log_mse[keep].astype(np.float64))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rules_one_hot(rules: np.ndarray) -> np.ndarray:
    """``(N, 15)`` padded rule indices to the ``(N, 15, 12)`` float32 one-hot of :func:`grammar.one_hot`."""
    return np.eye(GRAMMAR.num_rules, dtype=np.float32)[rules.astype(np.int64)]


def parsed_rules(
    text_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """The padded rule sequences of every line of an expression file, ``(N, 15)`` int8.

    Parsing the 100,000 expressions with the Python Earley parser takes about 25 s (12 s
    for the kept 50,111), paid at every start before this cache: the result is stored
    once in ``cache_dir`` (default: the shipped checkpoint folder ``checkpoints/expressions``,
    as the chemistry task caches its ZINC strings) as
    ``expressions_rules_<sha256[:12]>.npz``, keyed by the SHA-256 of the file's bytes, so a
    changed file is parsed again. If the folder is not writable the rules are still
    returned (and parsed again next time).
    """
    text_path = Path(text_path)
    sha = _file_sha256(text_path)
    path = Path(cache_dir or CHECKPOINT_DIR) / f"expressions_rules_{sha[:12]}.npz"
    lines = text_path.read_text().splitlines()
    if path.exists():
        with np.load(path) as f:
            if str(f["sha256"]) == sha and f["rules"].shape == (len(lines), MAX_LEN):
                return f["rules"]
    rules = np.full((len(lines), MAX_LEN), GRAMMAR.padding_rule, np.int8)
    for i, line in enumerate(lines):
        seq = parse_rules(line)
        if len(seq) > MAX_LEN:
            raise ValueError(f"line {i} has {len(seq)} rules, more than {MAX_LEN}")
        rules[i, : len(seq)] = seq
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, rules=rules, sha256=np.asarray(sha))
        os.replace(tmp, path)
    except OSError:
        pass
    return rules


# ---------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------


def _arith_tree(tokens: list[str]):
    """Parse tokens with the usual precedence into nested tuples.

    expr := term (('+') term)*;  term := factor (('*' | '/') factor)*;
    factor := 'x' | digit | '(' expr ')' | 'sin(' expr ')' | 'exp(' expr ')'.
    Left-associative, like Python.
    """
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take(expected=None):
        nonlocal pos
        tok = peek()
        if tok is None or (expected is not None and tok != expected):
            raise ValueError(f"syntax error at token {pos} of {' '.join(tokens)!r}")
        pos += 1
        return tok

    def expr():
        node = term()
        while peek() == "+":
            take()
            node = ("+", node, term())
        return node

    def term():
        node = factor()
        while peek() in ("*", "/"):
            node = (take(), node, factor())
        return node

    def factor():
        tok = take()
        if tok == "x":
            return ("x",)
        if tok in ("1", "2", "3"):
            return ("num", float(tok))
        if tok in ("(", "sin(", "exp("):
            inner = expr()
            take(")")
            return inner if tok == "(" else (tok[:-1], inner)
        raise ValueError(f"syntax error at token {pos - 1} of {' '.join(tokens)!r}")

    tree = expr()
    if pos != len(tokens):
        raise ValueError(f"trailing tokens in {' '.join(tokens)!r}")
    return tree


def _eval_tree(node, x: np.ndarray):
    op = node[0]
    if op == "x":
        return x
    if op == "num":
        return node[1]  # a scalar stays a scalar, as in Python's eval
    if op == "sin":
        return np.sin(_eval_tree(node[1], x))
    if op == "exp":
        return np.exp(_eval_tree(node[1], x))
    a, b = _eval_tree(node[1], x), _eval_tree(node[2], x)
    return a + b if op == "+" else a * b if op == "*" else a / b


@functools.lru_cache(maxsize=1)
def _x_grid() -> np.ndarray:
    x = np.linspace(-10.0, 10.0, 1000)
    x.flags.writeable = False
    return x


def evaluate(expression: str, x: np.ndarray | None = None) -> np.ndarray | float:
    """Evaluate an expression of ``x`` from its arithmetic parse tree (float64 NumPy).

    Args:
      expression: text in the grammar's language (spaces optional).
      x: points (default: 1,000 evenly spaced in [-10, 10]).

    Returns:
      An array like ``x``, or a float for a constant expression. Overflow gives inf or NaN
      (NumPy semantics, no warning).
    """
    x = _x_grid() if x is None else np.asarray(x, np.float64)
    tree = _arith_tree(tokenize(expression))
    with np.errstate(all="ignore"):
        return _eval_tree(tree, x)


@functools.lru_cache(maxsize=8)
def _target_values(target: str) -> np.ndarray:
    y = np.broadcast_to(np.asarray(evaluate(target), np.float64), _x_grid().shape).copy()
    if not np.all(np.isfinite(y)):
        raise ValueError(f"target {target!r} is not finite on the grid")
    y.flags.writeable = False
    return y


def score(expression: str, *, target: str = DEFAULT_TARGET) -> float:
    """The objective, higher is better: ``-min(7, log(1 + MSE(expression, target)))``.

    The MSE is over 1,000 evenly spaced points in [-10, 10]. An evaluation that overflows
    (inf) or is undefined (NaN) scores -7, the authors' value for a failed evaluation.

    Args:
      expression: text in the grammar's language, e.g. ``"x + sin( x * x )"``.
      target: the target expression (default: the benchmark's ``1/3 + x + sin(x*x)``).

    Raises:
      ValueError: the text is not an expression of the grammar.

    Example:
      >>> score("1 / 3 + x + sin( x * x )")
      0.0
      >>> round(score("x"), 4)   # -log(1 + mean((1/3 + sin(x^2))^2))
      -0.4876
    """
    y = evaluate(expression)
    with np.errstate(all="ignore"):
        mse = np.mean((y - _target_values(target)) ** 2)
        log_mse = float(np.log(1.0 + mse))
    if math.isnan(log_mse):
        return -WORST_LOG_MSE
    return 0.0 - min(WORST_LOG_MSE, log_mse)  # 0.0 - 0.0 is +0.0, not -0.0


def score_batch(expressions: Iterable[str], *, target: str = DEFAULT_TARGET) -> np.ndarray:
    """:func:`score` of each expression, ``(N,)`` float64."""
    return np.array([score(e, target=target) for e in expressions], np.float64)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class GrammarVAE(nn.Module):
    """The grammar VAE of Kusner et al. (2017) for expressions, in flax linen.

    Encoder: three valid 1-D convolutions over the 15 steps (2, 3, 4 filters of widths 2,
    3, 4, ReLU), flatten, Dense(100, ReLU), linear heads for the mean and log-variance.
    Decoder: Dense(latent_dim, ReLU), repeated 15 times, three GRU layers of 100 units,
    a time-distributed Dense(12) of rule logits (masked at use: see :func:`log_likelihood`
    and :func:`decode_expressions`).

    Deviations from the Keras model (``models/model_eq.py``), all because ``wrjax.vae``
    models carry no mutable batch statistics:

    * BatchNorm after each convolution is replaced by LayerNorm over each example's whole
      (step, channel) feature map with per-channel scale and offset (``norm="layer"``, the
      default), or dropped (``norm="none"``). A LayerNorm over the channels alone would
      squash the 2-channel map to +-1. At inference a BatchNorm is a fixed per-channel
      affine map that the next linear layer can absorb, so dropping it keeps the function
      class; but in a 4-epoch test the LayerNorm model trained faster (held-out loss 0.57
      vs 0.85). The BatchNorm on the decoder input is dropped: it is absorbable in the
      same way, and a LayerNorm on ``z`` would discard its length.
    * flax's ``GRUCell`` applies the reset gate after the recurrent matrix (``reset_after``
      style) with a sigmoid gate; the weighted-retraining Keras GRU used ``reset_after=False``.

    Attributes: sizes as named; defaults are the authors' (``h100_c234_L25``).
    """

    num_rules: int = NUM_RULES
    max_len: int = MAX_LEN
    latent_dim: int = LATENT_DIM
    conv_features: tuple[int, ...] = (2, 3, 4)
    conv_widths: tuple[int, ...] = (2, 3, 4)
    dense_units: int = 100
    hidden_units: int = 100
    num_gru_layers: int = 3
    norm: str = "layer"

    def setup(self):
        if self.norm not in ("none", "layer"):
            raise ValueError(f"norm must be 'none' or 'layer', got {self.norm!r}")
        if len(self.conv_features) != len(self.conv_widths):
            raise ValueError("conv_features and conv_widths must have the same length")
        self.convs = [
            nn.Conv(f, (w,), padding="VALID", name=f"conv_{i}")
            for i, (f, w) in enumerate(zip(self.conv_features, self.conv_widths))
        ]
        self.norms = (
            [
                nn.LayerNorm(reduction_axes=(-2, -1), feature_axes=-1, name=f"norm_{i}")
                for i in range(len(self.convs))
            ]
            if self.norm == "layer"
            else None
        )
        self.enc_dense = nn.Dense(self.dense_units, name="enc_dense")
        self.mean_head = nn.Dense(self.latent_dim, name="z_mean")
        self.logvar_head = nn.Dense(self.latent_dim, name="z_logvar")
        self.latent_input = nn.Dense(self.latent_dim, name="latent_input")
        self.grus = [
            nn.RNN(nn.GRUCell(self.hidden_units), name=f"gru_{i}")
            for i in range(self.num_gru_layers)
        ]
        self.out = nn.Dense(self.num_rules, name="decoded")

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x (B, 15, 12)`` one-hot -> ``(mean, logvar)``, each ``(B, latent_dim)`` float32."""
        if x.shape[-2:] != (self.max_len, self.num_rules):
            raise ValueError(f"x must be (B, {self.max_len}, {self.num_rules}), got {x.shape}")
        h = x.astype(_F32)
        for i, conv in enumerate(self.convs):
            h = nn.relu(conv(h))
            if self.norms is not None:
                h = self.norms[i](h)
        h = nn.relu(self.enc_dense(h.reshape(h.shape[0], -1)))
        return self.mean_head(h), self.logvar_head(h)

    def decode(self, z: jax.Array) -> jax.Array:
        """``z (B, latent_dim)`` -> unmasked rule logits ``(B, 15, 12)`` float32."""
        h = nn.relu(self.latent_input(z.astype(_F32)))
        h = jnp.broadcast_to(h[:, None, :], (h.shape[0], self.max_len, h.shape[-1]))
        for gru in self.grus:
            h = gru(h)
        return self.out(h)

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, _ = self.encode(x)
        return self.decode(mean)


#: ``(logits, x) -> (B,)``: the authors' masked BCE (``sum BCE / 12``, i.e. Keras's
#: ``15 x mean BCE``) with the grammar mask of the true sequence. Use with
#: ``beta = 1 / latent_dim`` (the KL averaged over latent dimensions).
log_likelihood = G.make_grammar_log_likelihood(TABLES, kind="bce")


def make_expressions_train_step(model: GrammarVAE, optimizer: optax.GradientTransformation):
    """``wrjax.vae.make_train_step`` with the authors' loss for this model.

    Per example, ``-ELBO = sum(masked BCE) / 12 + KL / latent_dim`` with reparameterisation
    noise of std 0.01, i.e. Kusner et al.'s ``15 x mean BCE + mean_d KL_d``.
    """
    return make_train_step(
        model,
        optimizer,
        beta=1.0 / model.latent_dim,
        likelihood=log_likelihood,
        latent_noise_std=LATENT_NOISE_STD,
    )


def init_params(key: jax.Array, model: GrammarVAE | None = None) -> PyTree:
    """Fresh parameters of ``model`` (default :class:`GrammarVAE`)."""
    model = model or GrammarVAE()
    dummy = jnp.zeros((1, model.max_len, model.num_rules), _F32)
    return model.init(key, dummy)["params"]


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "greedy"))
def decode_rules(
    key: jax.Array,
    params: PyTree,
    z: jax.Array,
    *,
    model: GrammarVAE,
    num_samples: int,
    greedy: bool = False,
) -> G.DecodeResult:
    """Masked decodes of ``z (B, D)``: ``rules (S, B, 15)`` int32, ``complete (S, B)`` bool.

    ``greedy=True`` takes the most probable allowed rule at each step (all ``S`` decodes are
    then equal); otherwise each decode samples independently (Gumbel-max). One compiled
    program per (model, num_samples, greedy, batch shape).
    """
    logits = model.apply({"params": params}, z, method=model.decode)
    if greedy:
        out = G.masked_argmax_decode(logits, TABLES)
        tile = lambda a: jnp.broadcast_to(a[None], (num_samples, *a.shape))  # noqa: E731
        return G.DecodeResult(tile(out.rules), tile(out.complete))
    keys = jax.random.split(key, num_samples)
    return jax.vmap(G.masked_decode, in_axes=(0, None, None))(keys, logits, TABLES)


def majority_vote(candidates: Sequence[str | None]) -> str | None:
    """The most frequent valid (non-``None``, non-empty) candidate; ties go to the earliest.

    As in the authors' ``decode_from_latent_space``: invalid decodes are dropped before the
    vote, so the result is ``None`` only when every decode is invalid.
    """
    valid = [c for c in candidates if c]
    if not valid:
        return None
    counts = collections.Counter(valid)
    best = max(counts.values())
    return next(c for c in valid if counts[c] == best)


def decode_expressions(
    key: jax.Array,
    params: PyTree,
    z: jax.Array,
    *,
    num_samples: int = 5,
    model: GrammarVAE | None = None,
    greedy: bool = False,
    pad_to: int = 32,
) -> list[str | None]:
    """Decode latent points to expressions: masked sampling and a majority vote.

    Each point is decoded ``num_samples`` times with the stack-based grammar mask (a pure
    ``lax.scan``, jitted at this boundary); a decode is valid when its derivation completes
    within 15 rules. The vote is :func:`majority_vote`.

    The batch is padded with zero rows to a multiple of ``pad_to`` (the padded decodes are
    dropped), so the BO loop's varying candidate counts (1 to 20) share one compiled program
    instead of compiling once per count (8 compiles, 8.4 s in 20 queries before). Padding
    changes which random numbers each row draws, not their distribution; greedy decodes are
    unaffected.

    Args:
      key: PRNG key.
      params: model parameters.
      z: ``(B, D)`` latent points.
      num_samples: decodes per point (the authors' 5).
      model: the module (default :class:`GrammarVAE`).
      greedy: argmax decoding instead of sampling.
      pad_to: pad the batch to a multiple of this (>= 1; 1 disables padding).

    Returns:
      ``B`` expressions (tokens joined by spaces), ``None`` where no decode is valid.
    """
    model = model or GrammarVAE()
    if int(pad_to) != pad_to or pad_to < 1:
        raise ValueError(f"pad_to must be a positive integer, got {pad_to}")
    z = jnp.asarray(z, _F32)
    if z.ndim != 2 or z.shape[1] != model.latent_dim:
        raise ValueError(f"z must be (B, {model.latent_dim}), got {z.shape}")
    b_real = z.shape[0]
    b_pad = -(-max(b_real, 1) // int(pad_to)) * int(pad_to)
    if b_pad != b_real:
        z = jnp.concatenate([z, jnp.zeros((b_pad - b_real, z.shape[1]), _F32)])
    out = decode_rules(key, params, z, model=model, num_samples=num_samples, greedy=greedy)
    rules, complete = np.asarray(out.rules), np.asarray(out.complete)
    texts = [
        [rules_to_expression(rules[s, b]) if complete[s, b] else None for s in range(num_samples)]
        for b in range(b_real)
    ]
    return [majority_vote(t) for t in texts]


def reconstruction_accuracy(
    params: PyTree, x: np.ndarray, *, model: GrammarVAE | None = None, batch_size: int = 5000
) -> float:
    """Fraction of ``x (N, 15, 12)`` whose greedy masked decode of the encoder mean equals
    the input rule sequence exactly (all 15 steps)."""
    model = model or GrammarVAE()
    hits = 0
    for i in range(0, x.shape[0], batch_size):
        xb = jnp.asarray(x[i : i + batch_size], _F32)
        hits += int(_exact_matches(params, xb, model=model))
    return hits / x.shape[0]


@functools.partial(jax.jit, static_argnames=("model",))
def _exact_matches(params, x, *, model):
    mean, _ = model.apply({"params": params}, x, method=model.encode)
    logits = model.apply({"params": params}, mean, method=model.decode)
    rules = G.masked_argmax_decode(logits, TABLES).rules
    return jnp.sum(jnp.all(rules == jnp.argmax(x, axis=-1), axis=-1))


# ---------------------------------------------------------------------------------------------
# Pretraining
# ---------------------------------------------------------------------------------------------


class PretrainInfo(NamedTuple):
    """Per-epoch history of :func:`pretrain` (lists of Python floats) and final metrics."""

    train_loss: list[float]  # mean weighted -ELBO over the epoch's steps
    val_loss: list[float]  # weighted -ELBO on the held-out split (encoder-mean noise-free)
    learning_rate: list[float]
    epoch_seconds: list[float]
    num_train: int  # training points (before duplication)
    num_copies: int  # rows after duplicate_copies (steps per epoch = ceil(copies / batch))
    num_val: int
    val_indices: np.ndarray  # rows of the data held out


def _plateau(val: float, best: float, wait: int, lr: float, *, factor, patience, min_lr, min_delta):
    """Keras ``ReduceLROnPlateau`` (mode min, absolute ``min_delta``, cooldown 0)."""
    if val < best - min_delta:
        return val, 0, lr
    wait += 1
    if wait >= patience:
        return best, 0, max(lr * factor, min_lr)
    return best, wait, lr


def pretrain(
    key: jax.Array,
    *,
    k: float,
    num_epochs: int,
    batch_size: int = 512,
    learning_rate: float = 1e-3,
    data: ExpressionData | None = None,
    model: GrammarVAE | None = None,
    params: PyTree | None = None,
    holdout_fraction: float = 0.1,
    w_max: float = 1.0,
    plateau_factor: float = 0.2,
    plateau_patience: int = 1,
    min_learning_rate: float = 1e-4,
    log: Callable[[str], None] | None = print,
) -> tuple[PyTree, PretrainInfo]:
    """Train the grammar VAE with the rank-weighted ELBO (the authors' pretraining).

    Rank weights (eq. 3) with strength ``k`` are computed over the training split; points
    heavier than ``w_max`` times the mean weight are duplicated (appendix A.2; the authors'
    ``reduce_weight_variance`` splits weights into copies of at most 1, i.e. ``w_max = 1``)
    and each epoch walks once through the copies with the copy weights in the loss. Adam
    (``eps = 1e-7``, Keras's) with Keras's ``ReduceLROnPlateau`` on the held-out loss.

    Args:
      key: PRNG key (split, parameter init, per-epoch batch plans).
      k: rank-weight strength (``inf`` = unweighted).
      num_epochs: passes over the (duplicated) training data.
      batch_size: minibatch size (authors: 512 pretraining, 600 fine-tuning).
      learning_rate: initial Adam step size.
      data: default :func:`load_expressions` ``()``.
      model: default :class:`GrammarVAE` ``()``.
      params: start from these (fine-tuning) instead of a fresh init; Adam starts fresh.
      holdout_fraction: random share held out for the plateau schedule and metrics
        (Keras's ``validation_split = 0.1``).
      w_max: duplication threshold (``>= 1``).
      plateau_factor, plateau_patience, min_learning_rate: the LR schedule; patience 0
        disables it.
      log: called with one line per epoch (``None`` for silence).

    Returns:
      ``(params, PretrainInfo)``.
    """
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    data = data if data is not None else load_expressions()
    model = model or GrammarVAE()
    split_key, init_key, train_key, val_key = jax.random.split(key, 4)

    n = len(data.expressions)
    perm = np.asarray(jax.random.permutation(split_key, n))
    n_val = int(round(holdout_fraction * n))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if train_idx.size == 0:
        raise ValueError("no training data left after the hold-out split")

    weights = rank_weights(data.scores[train_idx], k)
    copy_idx, copy_w = duplicate_copies(weights, w_max)
    keep = np.asarray(copy_w) > 0
    rows = train_idx[np.asarray(copy_idx)[keep]]
    x_train = jnp.asarray(data.one_hot[rows])
    w_train = jnp.asarray(np.asarray(copy_w)[keep])
    num_steps = math.ceil(rows.size / batch_size)

    if n_val:
        x_val = jnp.asarray(data.one_hot[val_idx])
        w_val = rank_weights(data.scores[val_idx], k)  # sums to 1

    if params is None:
        params = init_params(init_key, model)
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate, eps=1e-7)
    state = init_train_state(params, optimizer)
    step_fn = make_expressions_train_step(model, optimizer)

    @jax.jit
    def val_loss_fn(params, key, x_val, w_val):
        mean, logvar = model.apply({"params": params}, x_val, method=model.encode)
        eps = LATENT_NOISE_STD * jax.random.normal(key, mean.shape, _F32)
        z = mean + jnp.exp(0.5 * logvar) * eps
        logits = model.apply({"params": params}, z, method=model.decode)
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)
        neg_elbo = -log_likelihood(logits, x_val) + kl / model.latent_dim
        return jnp.sum(w_val * neg_elbo)

    info = PretrainInfo([], [], [], [], int(train_idx.size), int(rows.size), n_val, val_idx)
    best, wait, lr = math.inf, 0, learning_rate
    for epoch, epoch_key in enumerate(jax.random.split(train_key, num_epochs)):
        t0 = time.perf_counter()
        state, tinfo = fit(
            epoch_key, state, step_fn, x_train, w_train, num_steps=num_steps,
            batch_size=batch_size, mode="epoch",
        )
        train_loss = float(jnp.mean(tinfo.loss))
        val = float(val_loss_fn(state.params, val_key, x_val, w_val)) if n_val else math.nan
        seconds = time.perf_counter() - t0
        info.train_loss.append(train_loss)
        info.val_loss.append(val)
        info.learning_rate.append(lr)
        info.epoch_seconds.append(seconds)
        if log is not None:
            log(f"epoch {epoch + 1}/{num_epochs}: train {train_loss:.4f} val {val:.4f} "
                f"lr {lr:.1e} ({seconds:.1f} s)")
        if n_val and plateau_patience > 0:
            best, wait, new_lr = _plateau(
                val, best, wait, lr, factor=plateau_factor, patience=plateau_patience,
                min_lr=min_learning_rate, min_delta=1e-4,
            )
            if new_lr != lr:
                lr = new_lr
                hp = dict(state.opt_state.hyperparams, learning_rate=jnp.asarray(lr, _F32))
                state = state._replace(opt_state=state.opt_state._replace(hyperparams=hp))
    return state.params, info


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

_MODEL_FIELDS = (
    "num_rules", "max_len", "latent_dim", "conv_features", "conv_widths", "dense_units",
    "hidden_units", "num_gru_layers", "norm",
)


def save_model(path: str | os.PathLike, params: PyTree, model: GrammarVAE, metadata: dict) -> None:
    """Save params with ``wrjax.checkpoint.save_pytree``; the model config goes in the JSON."""
    from wrjax.checkpoint import save_pytree

    config = {f: getattr(model, f) for f in _MODEL_FIELDS}
    save_pytree(path, params, {**metadata, "model": config})


def load_model(path: str | os.PathLike) -> tuple[GrammarVAE, PyTree, dict]:
    """Load a checkpoint written by :func:`save_model`: ``(model, params, metadata)``."""
    from wrjax.checkpoint import load_metadata, load_pytree

    metadata = load_metadata(path)
    config = dict(metadata["model"])
    for f in ("conv_features", "conv_widths"):
        config[f] = tuple(config[f])
    model = GrammarVAE(**config)
    # Only the structure, shapes and dtypes matter: trace the init, don't run it.
    dummy = jnp.zeros((1, model.max_len, model.num_rules), _F32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), dummy)["params"]
    target = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return model, load_pytree(path, target), metadata


def machine_description() -> dict:
    """Where a run happened, for checkpoint metadata."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


# ---------------------------------------------------------------------------------------------
# The task for the retraining loop
# ---------------------------------------------------------------------------------------------

#: Shipped pretrained models, one per k (``experiments/pretrain_expressions.py``).
CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "expressions"


def checkpoint_for_k(k: float | None) -> Path:
    """The shipped checkpoint for rank-weighting ``k``: ``expr-k_1e-3`` for 1e-3, else ``expr-k_inf``.

    The k = 1e-3 model is the k = inf model fine-tuned one epoch on the rank-weighted data
    (the authors instead pretrained one model per k from scratch).
    """
    if k is not None and np.isfinite(k) and np.isclose(k, 1e-3):
        return CHECKPOINT_DIR / "expr-k_1e-3"
    return CHECKPOINT_DIR / "expr-k_inf"


def make_expressions_task(
    key: jax.Array,
    *,
    k: float | None = None,
    num_initial: int = 5000,
    checkpoint: str | os.PathLike | None = None,
    target: str = DEFAULT_TARGET,
    num_samples: int = 5,
):
    """The arithmetic-expression task (§6.2) as a :class:`wrjax.lso.Task`.

    The optimisation data is a random ``num_initial`` of the 50,111 kept expressions (the
    authors': 5,000), drawn with ``key``; novelty is checked against all 50,111 (the model's
    training set) and the queried points. A decoding is valid when a majority-voted grammar
    decode completes (``num_samples`` stochastic decodes, as the authors).
    """
    from wrjax.lso import Task

    data = load_expressions()
    n = len(data.expressions)
    if not 0 < num_initial <= n:
        raise ValueError(f"num_initial must be in (0, {n}], got {num_initial}")
    idx = np.sort(np.asarray(jax.random.choice(key, n, (num_initial,), replace=False)))
    model, params, _ = load_model(checkpoint or checkpoint_for_k(k))
    if target == DEFAULT_TARGET:
        y = np.asarray(data.scores[idx], np.float32)
    else:
        y = score_batch([data.expressions[i] for i in idx], target=target).astype(np.float32)
    train_keys = [novelty_key(e) for e in data.expressions]

    def decode(key, params, z):
        return decode_expressions(key, params, z, num_samples=num_samples, model=model)

    return Task(
        name="expressions",
        model=model,
        params=params,
        x=np.asarray(data.one_hot[idx], np.float32),
        y=y,
        initial_keys=[train_keys[i] for i in idx],
        seen_keys=train_keys,  # every training expression counts as seen, not only the subset
        decode=decode,
        objective=lambda expr: score(expr, target=target),
        to_data=lambda expr: expressions_to_one_hot([expr])[0].astype(np.float32),
        novelty_key=novelty_key,
        to_text=lambda expr: expr,
        is_valid=lambda expr: bool(expr),
        likelihood=log_likelihood,
        beta=1.0 / model.latent_dim,
        latent_noise_std=LATENT_NOISE_STD,
    )
