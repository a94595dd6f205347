"""The grammar VAE of Kusner et al. (2017) for the expressions (conv encoder, 3-layer GRU
decoder, latent 25, grammar-masked softmax), trained with the weighted ELBO of ``wrjax.vae``;
see :class:`GrammarVAE` for the deviations from their Keras model.

Decoding for the optimiser: :func:`decode_expressions` (5 stochastic masked decodes and a
majority vote; ``None`` when no decode completes). Checkpoints: :func:`model_config` is the
``config`` of ``wrjax.checkpoint.save_model`` and :func:`build_model` the ``build_fn`` of
``wrjax.checkpoint.load_model`` (it also reads the older shipped layout).
"""

from __future__ import annotations

import collections
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax.tasks.expressions import grammar as G
from wrjax.tasks.expressions.grammar import MAX_LEN, NUM_RULES, TABLES
from wrjax.typing import PyTree
from wrjax.vae import make_train_step

__all__ = [
    "LATENT_DIM",
    "LATENT_NOISE_STD",
    "GrammarVAE",
    "log_likelihood",
    "make_expressions_train_step",
    "init_params",
    "model_config",
    "build_model",
    "majority_vote",
    "decode_rules",
    "decode_expressions",
    "reconstruction_accuracy",
]

_F32 = jnp.float32

LATENT_DIM = 25
#: reparameterisation noise scale of the authors' Keras model (``epsilon_std = 0.01``).
LATENT_NOISE_STD = 0.01


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


_MODEL_FIELDS = (
    "num_rules", "max_len", "latent_dim", "conv_features", "conv_widths", "dense_units",
    "hidden_units", "num_gru_layers", "norm",
)


def model_config(model: GrammarVAE) -> dict:
    """The sizes of ``model`` as JSON (the ``config`` of ``wrjax.checkpoint.save_model``)."""
    return {f: getattr(model, f) for f in _MODEL_FIELDS}


def build_model(metadata: dict) -> tuple[GrammarVAE, PyTree]:
    """``wrjax.checkpoint.load_model``'s ``build_fn``: the model of a checkpoint's JSON and
    its params' shapes (traced, not run). Reads ``config`` (``save_model``'s layout) or
    ``model`` (the shipped checkpoints of ``experiments/pretrain_expressions.py``)."""
    config = dict(metadata["config"] if "format" in metadata else metadata["model"])
    for f in ("conv_features", "conv_widths"):
        config[f] = tuple(config[f])
    model = GrammarVAE(**config)
    dummy = jnp.zeros((1, model.max_len, model.num_rules), _F32)
    return model, jax.eval_shape(model.init, jax.random.key(0), dummy)["params"]


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "greedy"))
def decode_rules(
    key: jax.Array,
    model: GrammarVAE,
    params: PyTree,
    z: jax.Array,
    *,
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
    model: GrammarVAE,
    params: PyTree,
    z: jax.Array,
    *,
    num_samples: int = 5,
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
      model: the :class:`GrammarVAE`.
      params: its parameters.
      z: ``(B, D)`` latent points.
      num_samples: decodes per point (the authors' 5).
      greedy: argmax decoding instead of sampling.
      pad_to: pad the batch to a multiple of this (>= 1; 1 disables padding).

    Returns:
      ``B`` expressions (tokens joined by spaces), ``None`` where no decode is valid.
    """
    if int(pad_to) != pad_to or pad_to < 1:
        raise ValueError(f"pad_to must be a positive integer, got {pad_to}")
    z = jnp.asarray(z, _F32)
    if z.ndim != 2 or z.shape[1] != model.latent_dim:
        raise ValueError(f"z must be (B, {model.latent_dim}), got {z.shape}")
    b_real = z.shape[0]
    b_pad = -(-max(b_real, 1) // int(pad_to)) * int(pad_to)
    if b_pad != b_real:
        z = jnp.concatenate([z, jnp.zeros((b_pad - b_real, z.shape[1]), _F32)])
    out = decode_rules(key, model, params, z, num_samples=num_samples, greedy=greedy)
    rules, complete = np.asarray(out.rules), np.asarray(out.complete)
    texts = [
        [G.rules_to_expression(rules[s, b]) if complete[s, b] else None for s in range(num_samples)]
        for b in range(b_real)
    ]
    return [majority_vote(t) for t in texts]


def reconstruction_accuracy(
    model: GrammarVAE, params: PyTree, x: np.ndarray, *, batch_size: int = 5000
) -> float:
    """Fraction of ``x (N, 15, 12)`` whose greedy masked decode of the encoder mean equals
    the input rule sequence exactly (all 15 steps)."""
    hits = 0
    for i in range(0, x.shape[0], batch_size):
        xb = jnp.asarray(x[i : i + batch_size], _F32)
        hits += int(_exact_matches(model, params, xb))
    return hits / x.shape[0]


@functools.partial(jax.jit, static_argnums=0)
def _exact_matches(model, params, x):
    mean, _ = model.apply({"params": params}, x, method=model.encode)
    logits = model.apply({"params": params}, mean, method=model.decode)
    rules = G.masked_argmax_decode(logits, TABLES).rules
    return jnp.sum(jnp.all(rules == jnp.argmax(x, axis=-1), axis=-1))
