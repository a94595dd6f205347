"""The SELFIES sequence VAE of the chemical-design task (a JAX stand-in for the JT-VAE).

The paper optimises in the latent space of a pretrained JT-VAE. Ours is a sequence VAE over
SELFIES tokens (:mod:`wrjax.tasks.chem.selfies` builds them), so every decoded token
sequence is a valid molecule. It follows the ``wrjax.vae`` model interface:

* ``encode(x) -> (mean, logvar)``, each ``(B, D)`` float32. ``x`` is ``(B, L)`` int token
  ids (``STOP_ID = 0`` pads after the molecule) or ``(B, L, V)`` one-hot/probabilities;
* ``decode(z) -> logits (B, L, V)`` float32, one categorical per position;
* :func:`log_likelihood` ``(logits, tokens) -> (B,)``: the categorical log-likelihood of the
  symbols *up to and including the first stop*, so that lengths are learned while the
  padding after the stop costs nothing.

Architecture (defaults in :func:`cpu_config`, 1.09M parameters): embedding -> 3 Conv1D
(two of stride 2) -> Dense -> mean and log-variance (latent 56, the authors' JT-VAE size);
decoder: Dense(z) plus a learned position embedding fed to a GRU at every step (initial
state also from z) -> Dense over the vocabulary. There is no teacher forcing: ``decode(z)``
is a deterministic function of ``z``, greedy decoding is the arg-max of the logits
(:func:`decode_smiles`), and the whole model fits the model-agnostic ``wrjax.vae.fit``.
This is the grammar VAE's decoder (Kusner et al., 2017) without the grammar mask.
:func:`accelerator_config` is a larger model (3 GRU layers of 512) for GPUs.

Two CPU-speed choices, both exact re-implementations checked against flax in the tests:
:class:`Conv1D` is a convolution written as patches times a matrix, because XLA:CPU runs
``nn.Conv`` inside ``fit``'s ``lax.scan`` about 80x slower than outside a loop (measured on
this encoder: 3.2 s against 0.04 s a step), and :class:`GRU` computes its input projection
once instead of at every step (a ``fit`` step of the CPU model: 0.39 s -> 0.22 s).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wrjax import checkpoint, paths
from wrjax.tasks.chem.molecules import canonical_smiles
from wrjax.tasks.chem.novelty import NoveltyChecker, novelty_key
from wrjax.tasks.chem.selfies import (
    DEFAULT_MAX_LEN,
    STOP_ID,
    SelfiesVocab,
    decode_tokens,
    selfies_to_tokens,
    to_selfies_batch,
)
from wrjax.typing import PyTree
from wrjax.vae import categorical_log_likelihood, encode_mean, make_train_step

__all__ = [
    "LATENT_DIM",
    "DEFAULT_CHECKPOINT",
    "SelfiesVAEConfig",
    "cpu_config",
    "gru_config",
    "accelerator_config",
    "ARDecoder",
    "Conv1D",
    "GRU",
    "SelfiesVAE",
    "init_params",
    "num_params",
    "step_mask",
    "log_likelihood",
    "make_optimizer",
    "kl_warmup",
    "make_chem_train_step",
    "greedy_tokens",
    "decode_smiles",
    "sample_prior_smiles",
    "ReconstructionMetrics",
    "reconstruction_metrics",
    "SampleMetrics",
    "sample_metrics",
    "Pretrained",
    "save_checkpoint",
    "load_checkpoint",
    "ChemModel",
    "load_model",
    "SHIPPED",
    "resolve_checkpoint",
]

_F32 = jnp.float32
LATENT_DIM = 56  # the authors' JT-VAE latent size
#: The shipped models by short name (usable wherever a checkpoint is taken), found by
#: :func:`wrjax.paths.shipped_checkpoint`: ``"cpu"`` the first CPU model (parallel decoder),
#: kept for the results recorded with it; ``"gru"`` the reconstructing model
#: (:func:`gru_config`), trained by ``experiments/pretrain.py chem --preset gru`` (its JSON
#: records the commands, epochs and wall time).
SHIPPED = {"cpu": "selfies_vae_cpu", "gru": "selfies_gru_vae"}
#: The task's default checkpoint (the model the recorded chemistry ablation used).
DEFAULT_CHECKPOINT = "cpu"


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SelfiesVAEConfig:
    """Static hyperparameters of :class:`SelfiesVAE` (hashable; saved with checkpoints)."""

    vocab_size: int
    max_len: int = DEFAULT_MAX_LEN
    latent_dim: int = LATENT_DIM
    embed_dim: int = 32
    conv_features: tuple[int, ...] = (64, 64, 128)
    conv_kernels: tuple[int, ...] = (5, 5, 5)
    conv_strides: tuple[int, ...] = (1, 2, 2)
    encoder_hidden: int = 256
    decoder_hidden: int = 256  # Dense(z), the GRU's input at every step
    gru_features: int = 128
    gru_layers: int = 1
    position_embedding: bool = True  # a learned (L, decoder_hidden) term added to the input
    #: "parallel": every position decoded from z alone (the first CPU model); "autoregressive":
    #: a GRU that also sees the previous symbol (teacher-forced in training, greedy rollout in
    #: ``decode``), the architecture that reconstructs (see :class:`ARDecoder`).
    decoder: str = "parallel"
    embed_decoder: int = 64  # the autoregressive decoder's symbol embedding

    def __post_init__(self):
        n = len(self.conv_features)
        if len(self.conv_kernels) != n or len(self.conv_strides) != n:
            raise ValueError("conv_features, conv_kernels and conv_strides need equal lengths")
        for name in ("vocab_size", "max_len", "latent_dim", "gru_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < 2:
            raise ValueError("vocab_size must count the stop symbol and at least one symbol")
        if self.decoder not in ("parallel", "autoregressive"):
            raise ValueError(f"decoder must be 'parallel' or 'autoregressive', got {self.decoder!r}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "SelfiesVAEConfig":
        d = dict(d)
        for name in ("conv_features", "conv_kernels", "conv_strides"):
            d[name] = tuple(d[name])
        return cls(**d)


def cpu_config(vocab_size: int, *, max_len: int = DEFAULT_MAX_LEN) -> SelfiesVAEConfig:
    """The fast default: about 1.1M parameters (4.4 MB); a ``fit`` step of batch 128 takes
    about 0.2 s on the 2 shared CPU cores of our machine."""
    return SelfiesVAEConfig(vocab_size=vocab_size, max_len=max_len)


def gru_config(vocab_size: int, *, max_len: int = 72, gru_features: int = 384) -> SelfiesVAEConfig:
    """The reconstructing model: conv encoder, autoregressive GRU decoder (:class:`ARDecoder`).

    ``max_len = 72`` covers every ZINC250k molecule (the longest canonical SELFIES has 72
    symbols); pass a larger ``max_len`` to let optimised molecules grow beyond ZINC's sizes
    (the uncapped penalized logP rewards that), at a proportional cost per step.
    """
    return SelfiesVAEConfig(
        vocab_size=vocab_size,
        max_len=max_len,
        embed_dim=48,
        conv_features=(64, 128, 128),
        conv_kernels=(7, 7, 7),
        conv_strides=(1, 2, 2),
        encoder_hidden=512,
        gru_features=gru_features,
        gru_layers=1,
        position_embedding=False,
        decoder="autoregressive",
    )


def accelerator_config(vocab_size: int, *, max_len: int = 128) -> SelfiesVAEConfig:
    """A larger model for GPUs: wider convolutions, 3 GRU layers of 512 (9.7M parameters,
    39 MB: too large to ship in the repository; untrained here, no accelerator was lent)."""
    return SelfiesVAEConfig(
        vocab_size=vocab_size,
        max_len=max_len,
        embed_dim=64,
        conv_features=(128, 128, 256),
        conv_kernels=(9, 9, 11),
        conv_strides=(1, 2, 2),
        encoder_hidden=512,
        decoder_hidden=512,
        gru_features=512,
        gru_layers=3,
    )


class Conv1D(nn.Module):
    """1-D convolution with ``"SAME"`` padding, written as patches times a Dense kernel.

    Numerically ``nn.Conv(features, (kernel,), strides=(stride,), padding="SAME")`` (its
    kernel reshaped to ``(kernel * C, features)``). Why not ``nn.Conv``: on XLA:CPU
    (jax 0.10) a convolution inside a loop body, such as ``wrjax.vae.fit``'s ``lax.scan`` over
    training steps, runs tens of times slower than at the top level of a jitted function
    (80x for this encoder), while a matrix product does not slow down.
    """

    features: int
    kernel: int
    stride: int = 1

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        """``h (B, L, C) -> (B, ceil(L / stride), features)``."""
        length = h.shape[1]
        out_len = -(-length // self.stride)
        total = max((out_len - 1) * self.stride + self.kernel - length, 0)
        h = jnp.pad(h, ((0, 0), (total // 2, total - total // 2), (0, 0)))
        span = self.stride * (out_len - 1) + 1
        patches = jnp.concatenate(
            [h[:, i : i + span : self.stride] for i in range(self.kernel)], axis=-1
        )
        return nn.Dense(self.features)(patches)


def _gru_update(gi: jax.Array, gh: jax.Array, b_hn: jax.Array, h: jax.Array) -> jax.Array:
    """One GRU update from the input and hidden gate pre-activations, each ``(B, 3H)``."""
    H = h.shape[-1]
    r = jax.nn.sigmoid(gi[:, :H] + gh[:, :H])
    u = jax.nn.sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
    n = jnp.tanh(gi[:, 2 * H :] + r * (gh[:, 2 * H :] + b_hn[None, :]))
    return (1.0 - u) * n + u * h


class GRU(nn.Module):
    """A GRU layer (flax ``GRUCell`` equations) with the input projection hoisted out of the
    time loop.

    ``x`` is ``(B, L, C)``, or ``(B, C)`` for an input that is the same at every step (the
    decoder's projection of ``z``). The input-to-gate products are computed once, as one
    large matrix product, before the scan; each step then costs only ``h @ W_h``. With the
    CPU default's constant input of 256 and 128 hidden units, the loop does 3x fewer FLOPs
    than ``nn.RNN(nn.GRUCell)``.

    Equations (r, u, n: reset, update, candidate)::

        r = sigmoid(W_ir x + W_hr h + b_r),   u = sigmoid(W_iu x + W_hu h + b_u)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),   h' = (1 - u) * n + u * h
    """

    features: int
    length: int
    unroll: int = 1

    @nn.compact
    def __call__(
        self, x: jax.Array, h0: jax.Array, time_input: jax.Array | None = None
    ) -> jax.Array:
        """``x (B, L, C)`` or ``(B, C)``, ``h0 (B, H)`` -> hidden states ``(B, L, H)``.

        ``time_input (L, C)``, with a constant ``x``, is added to the input at each step
        (e.g. a position embedding): by linearity its projection is also computed once.
        """
        H = self.features
        dense = nn.Dense(3 * H, name="input")
        gi = dense(x)  # (B, [L,] 3H), biases b_r, b_u, b_in
        w_h = self.param("hidden_kernel", nn.initializers.orthogonal(), (H, 3 * H), _F32)
        b_hn = self.param("hidden_bias_n", nn.initializers.zeros_init(), (H,), _F32)
        constant = gi.ndim == 2
        if time_input is not None:
            if not constant:
                raise ValueError("time_input needs a constant (B, C) input")
            xs = time_input @ dense.variables["params"]["kernel"]  # (L, 3H), no bias
        else:
            xs = None if constant else jnp.swapaxes(gi, 0, 1)  # time-major for scan

        def step(h, xs_t):
            if constant:
                gi_t = gi if xs_t is None else gi + xs_t[None, :]
            else:
                gi_t = xs_t
            h = _gru_update(gi_t, h @ w_h, b_hn, h)
            return h, h

        _, hs = jax.lax.scan(step, h0, xs, length=self.length, unroll=self.unroll)
        return jnp.swapaxes(hs, 0, 1)


class ARDecoder(nn.Module):
    """GRU decoder that sees ``z`` and the previous symbol at every step.

    Step ``t`` reads ``[embed(x_{t-1}), z]`` (``x_{-1}`` is a start symbol, id ``vocab_size``)
    and the hidden state, whose initial value is ``tanh(Dense(z))``; the logits of ``x_t`` are
    ``Dense(h_t)``. Training is teacher-forced (:meth:`teacher_forced`: the true previous
    symbols, so all input projections are one matrix product before the time loop); decoding
    is the greedy rollout (:meth:`greedy`: the arg-max symbol fed back), whose arg-max logits
    are therefore the greedy sequence. The input-to-gate products of ``z`` are computed once
    per sequence, and those of the symbols once per vocabulary entry (a ``(V+1, 3H)`` table).
    """

    config: SelfiesVAEConfig

    def setup(self):
        c = self.config
        H = c.gru_features
        self.embed = nn.Embed(c.vocab_size + 1, c.embed_decoder)
        self.symbol_gates = nn.Dense(3 * H, name="symbol_gates")  # biases b_r, b_u, b_in
        self.z_gates = nn.Dense(3 * H, use_bias=False, name="z_gates")
        self.h0 = nn.Dense(H, name="h0")
        self.w_h = self.param("hidden_kernel", nn.initializers.orthogonal(), (H, 3 * H), _F32)
        self.b_hn = self.param("hidden_bias_n", nn.initializers.zeros_init(), (H,), _F32)
        self.out = nn.Dense(c.vocab_size, name="out")

    def teacher_forced(self, z: jax.Array, tokens: jax.Array) -> jax.Array:
        """``z (B, D)``, true ``tokens (B, L)`` int -> logits ``(B, L, V)`` float32."""
        B, L = tokens.shape
        start = jnp.full((B, 1), self.config.vocab_size, tokens.dtype)
        prev = jnp.concatenate([start, tokens[:, :-1]], axis=1)
        gi = self.symbol_gates(self.embed(prev)) + self.z_gates(z)[:, None, :]  # (B, L, 3H)

        def step(h, gi_t):
            h = _gru_update(gi_t, h @ self.w_h, self.b_hn, h)
            return h, h

        _, hs = jax.lax.scan(step, jnp.tanh(self.h0(z)), jnp.swapaxes(gi, 0, 1))
        return self.out(jnp.swapaxes(hs, 0, 1)).astype(_F32)

    def greedy(self, z: jax.Array) -> jax.Array:
        """``z (B, D)`` -> logits ``(B, L, V)`` of the greedy rollout (arg-max fed back)."""
        c = self.config
        table = self.symbol_gates(self.embed.embedding)  # (V + 1, 3H)
        zg = self.z_gates(z)
        B = z.shape[0]

        def step(carry, _):
            h, prev = carry
            h = _gru_update(table[prev] + zg, h @ self.w_h, self.b_hn, h)
            logits = self.out(h)
            return (h, jnp.argmax(logits, axis=-1)), logits

        init = (jnp.tanh(self.h0(z)), jnp.full((B,), c.vocab_size, jnp.int32))
        _, logits = jax.lax.scan(step, init, None, length=c.max_len)
        return jnp.swapaxes(logits, 0, 1).astype(_F32)


class SelfiesVAE(nn.Module):
    """Conv encoder + GRU decoder VAE over SELFIES tokens (see the module docstring)."""

    config: SelfiesVAEConfig

    def setup(self):
        c = self.config
        self.embed = nn.Embed(c.vocab_size, c.embed_dim)
        self.convs = [
            Conv1D(f, k, s)
            for f, k, s in zip(c.conv_features, c.conv_kernels, c.conv_strides)
        ]
        self.enc_hidden = nn.Dense(c.encoder_hidden)
        self.enc_out = nn.Dense(2 * c.latent_dim)
        if c.decoder == "autoregressive":
            self.ar = ARDecoder(c)
            return
        self.dec_in = nn.Dense(c.decoder_hidden)
        self.dec_h0 = nn.Dense(c.gru_features)
        self.grus = [GRU(c.gru_features, c.max_len) for _ in range(c.gru_layers)]
        if c.position_embedding:
            self.positions = self.param(
                "positions", nn.initializers.normal(0.1), (c.max_len, c.decoder_hidden), _F32
            )
        self.dec_out = nn.Dense(c.vocab_size)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x (B, L)`` int tokens or ``(B, L, V)`` one-hot -> ``(mean, logvar)``, each (B, D)."""
        c = self.config
        if x.ndim == 2:
            h = self.embed(x)
        elif x.ndim == 3 and x.shape[-1] == c.vocab_size:
            # Soft/one-hot input: the same embedding as a matrix product (differentiable in x).
            h = jnp.einsum("blv,vd->bld", x.astype(_F32), self.embed.embedding)
        else:
            raise ValueError(
                f"x must be (B, {c.max_len}) ints or (B, {c.max_len}, V), got {x.shape}"
            )
        if x.shape[1] != c.max_len:
            raise ValueError(f"sequence length {x.shape[1]} != max_len {c.max_len}")
        for conv in self.convs:
            h = nn.relu(conv(h))
        h = nn.relu(self.enc_hidden(h.reshape(h.shape[0], -1)))
        mean, logvar = jnp.split(self.enc_out(h), 2, axis=-1)
        return mean, logvar

    def decode(self, z: jax.Array) -> jax.Array:
        """``z (B, D)`` -> logits ``(B, L, V)`` float32; arg-max is the greedy decoding.

        The parallel decoder has no teacher forcing; the autoregressive one returns the
        logits of its greedy rollout.
        """
        c = self.config
        if c.decoder == "autoregressive":
            return self.ar.greedy(z)
        seq = nn.relu(self.dec_in(z))  # (B, decoder_hidden): the same input at every step
        h0 = jnp.tanh(self.dec_h0(z))
        positions = self.positions if c.position_embedding else None
        for i, gru in enumerate(self.grus):
            # Layer 0 sees z (and the position) at every step; later layers the layer below.
            seq = gru(seq, h0, positions if i == 0 else None)  # (B, L, gru_features)
        return self.dec_out(seq).astype(_F32)

    def decode_train(self, z: jax.Array, x: jax.Array) -> jax.Array:
        """Training-time logits of ``x`` given ``z`` (teacher-forced for the autoregressive
        decoder; ``decode(z)`` for the parallel one). ``wrjax.vae.elbo_terms`` uses this."""
        if self.config.decoder == "autoregressive":
            tokens = jnp.argmax(x, axis=-1) if x.ndim == 3 else x
            return self.ar.teacher_forced(z, tokens.astype(jnp.int32))
        return self.decode(z)

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, _ = self.encode(x)
        return self.decode_train(mean, x)


def init_params(key: jax.Array, config: SelfiesVAEConfig) -> PyTree:
    """Fresh parameters of ``SelfiesVAE(config)``."""
    dummy = jnp.zeros((1, config.max_len), jnp.int32)
    # Jitted: flax initialises the GRU scan op by op otherwise (about 10x slower).
    return jax.jit(lambda k: SelfiesVAE(config).init(k, dummy)["params"])(key)


def num_params(params: PyTree) -> int:
    return int(sum(np.size(a) for a in jax.tree.leaves(params)))


# ---------------------------------------------------------------------------------------------
# Likelihood and training
# ---------------------------------------------------------------------------------------------


def step_mask(tokens: jax.Array) -> jax.Array:
    """``(B, L)`` float32: 1 on every position up to and including the first stop, else 0.

    ``mask[:, 0] = 1`` and ``mask[:, t] = 1`` iff no stop occurs before ``t``; a sequence of
    full length ``L`` has no stop and every position counts.
    """
    no_stop_yet = jnp.cumprod((tokens != STOP_ID).astype(jnp.int32), axis=1)
    first = jnp.ones((tokens.shape[0], 1), jnp.int32)
    return jnp.concatenate([first, no_stop_yet[:, :-1]], axis=1).astype(_F32)


def log_likelihood(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """``log p(tokens | logits)`` over the symbols and the first stop: ``(B,)`` float32 nats.

    ``tokens`` are ``(B, L)`` ints or ``(B, L, V)`` one-hot (the model's input format).
    """
    if tokens.ndim == 3:
        tokens = jnp.argmax(tokens, axis=-1)
    return categorical_log_likelihood(logits, tokens, step_mask(tokens))


def make_optimizer(
    learning_rate: float | optax.Schedule = 1e-3, *, clip_norm: float | None = 20.0
) -> optax.GradientTransformation:
    """Adam with global-norm gradient clipping (the authors clipped their JT-VAE at 20).

    ``learning_rate`` is a constant (fine-tuning) or an optax schedule (pretraining).
    """
    adam = optax.adam(learning_rate)
    return adam if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adam)


def kl_warmup(beta: float, warmup_steps: int) -> Callable[[jax.Array], jax.Array]:
    """``step -> beta * min(1, step / warmup_steps)``: linear KL annealing from 0."""
    if warmup_steps <= 0:
        return lambda step: jnp.asarray(beta, _F32)

    def fn(step):
        return beta * jnp.minimum(step.astype(_F32) / warmup_steps, 1.0)

    return fn


def make_chem_train_step(
    model: SelfiesVAE,
    optimizer: optax.GradientTransformation,
    *,
    beta: float | Callable[[jax.Array], jax.Array],
    free_bits: float = 0.0,
):
    """``wrjax.vae.make_train_step`` with the SELFIES likelihood (no reduced latent noise)."""
    return make_train_step(
        model, optimizer, beta=beta, likelihood=log_likelihood, free_bits=free_bits
    )


# ---------------------------------------------------------------------------------------------
# Decoding and metrics
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model",))
def greedy_tokens(model: SelfiesVAE, params: PyTree, z: jax.Array) -> jax.Array:
    """Arg-max tokens of ``decode(z)``: ``(B, D) -> (B, L)`` int32 (pure JAX, jitted)."""
    logits = model.apply({"params": params}, z, method=model.decode)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


_encode_mean = jax.jit(encode_mean, static_argnums=0)


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _batched_tokens(model, params, z, batch_size):
    z = jnp.asarray(z, _F32)
    if z.ndim != 2 or z.shape[1] != model.config.latent_dim:
        raise ValueError(f"z must be (B, {model.config.latent_dim}), got {z.shape}")
    # Pad the last chunk to batch_size so every chunk reuses one compiled program.
    out = []
    for sl in _chunks(z.shape[0], batch_size):
        zb = z[sl]
        n = zb.shape[0]
        if n < batch_size and z.shape[0] > batch_size:
            zb = jnp.concatenate([zb, jnp.zeros((batch_size - n, zb.shape[1]), _F32)])
        out.append(np.asarray(greedy_tokens(model, params, zb))[:n])
    return np.concatenate(out) if out else np.zeros((0, model.config.max_len), np.int32)


def decode_smiles(
    model: SelfiesVAE,
    params: PyTree,
    z: jax.Array,
    vocab: SelfiesVocab,
    *,
    batch_size: int = 1024,
) -> list[str]:
    """Greedy decode of latent points ``z (B, D)`` to SMILES (network in JAX, SELFIES on host).

    Every entry is a valid molecule except ``""``, when the first symbol is the stop.
    """
    if vocab.size != model.config.vocab_size:
        raise ValueError(f"vocab has {vocab.size} symbols, the model {model.config.vocab_size}")
    return decode_tokens(_batched_tokens(model, params, z, batch_size), vocab)


def sample_prior_smiles(
    key: jax.Array,
    model: SelfiesVAE,
    params: PyTree,
    vocab: SelfiesVocab,
    num_samples: int,
) -> list[str]:
    """Greedy decodes of ``num_samples`` draws from the prior ``N(0, I)``."""
    z = jax.random.normal(key, (num_samples, model.config.latent_dim), _F32)
    return decode_smiles(model, params, z, vocab)


class ReconstructionMetrics(NamedTuple):
    """Greedy reconstruction from the encoder mean, on a set of molecules."""

    token_accuracy: float  # symbols (and first stop) right, over positions of step_mask
    sequence_accuracy: float  # whole token sequence right, stop included
    molecule_accuracy: float  # decoded molecule's canonical SMILES equal to the input's
    num: int


def reconstruction_metrics(
    model: SelfiesVAE,
    params: PyTree,
    tokens: np.ndarray,
    vocab: SelfiesVocab,
    *,
    batch_size: int = 1024,
) -> ReconstructionMetrics:
    """Encode ``tokens (N, L)`` (encoder mean), decode greedily, compare."""
    tokens = np.asarray(tokens, np.int32)
    means = [
        np.asarray(_encode_mean(model, params, jnp.asarray(tokens[sl])))
        for sl in _chunks(tokens.shape[0], batch_size)
    ]
    pred = _batched_tokens(model, params, np.concatenate(means), batch_size)
    mask = np.asarray(step_mask(jnp.asarray(tokens))) > 0
    right = (pred == tokens) & mask
    token_acc = right.sum() / mask.sum()
    seq_acc = (right == mask).all(axis=1).mean()
    iso = vocab.isomeric
    truth = [canonical_smiles(s, isomeric=iso) for s in decode_tokens(tokens, vocab)]
    got = [canonical_smiles(s, isomeric=iso) for s in decode_tokens(pred, vocab)]
    mol_acc = np.mean([t is not None and t == g for t, g in zip(truth, got)])
    return ReconstructionMetrics(float(token_acc), float(seq_acc), float(mol_acc), len(tokens))


class SampleMetrics(NamedTuple):
    """The usual generative-model rates of a list of decoded SMILES."""

    validity: float  # valid / all
    uniqueness: float  # distinct valid (novelty key) / valid
    novelty: float  # distinct valid not in the training set / distinct valid
    num: int


def sample_metrics(smiles: Sequence[str], known: NoveltyChecker) -> SampleMetrics:
    """Validity, uniqueness and novelty (against ``known``) of decoded molecules."""
    keys = [novelty_key(s) for s in smiles]
    valid = [k for k in keys if k is not None]
    distinct = set(valid)
    novel = [k for k in distinct if known.is_novel(k)]
    n = len(smiles)
    return SampleMetrics(
        len(valid) / n if n else math.nan,
        len(distinct) / len(valid) if valid else math.nan,
        len(novel) / len(distinct) if distinct else math.nan,
        n,
    )


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


class Pretrained(NamedTuple):
    """A loaded checkpoint: everything needed to encode, decode and fine-tune."""

    model: SelfiesVAE
    params: PyTree
    vocab: SelfiesVocab
    config: SelfiesVAEConfig
    metadata: dict


def save_checkpoint(
    path: str | os.PathLike,
    params: PyTree,
    config: SelfiesVAEConfig,
    vocab: SelfiesVocab,
    record: dict | None = None,
) -> None:
    """Save ``params`` (``PATH.msgpack``) and the record (``PATH.json``) with
    :func:`wrjax.checkpoint.save_model`: ``config`` is the model's, the vocabulary is saved
    beside it (``"vocab"``) and ``record`` holds the rest (command, data, seconds, metrics)."""
    if vocab.size != config.vocab_size:
        raise ValueError("vocab and config disagree on the vocabulary size")
    record = {**(record or {}), "vocab": vocab.to_json()}
    checkpoint.save_model(path, params, config=config.to_json(), record=record)


def resolve_checkpoint(path: str | os.PathLike | None) -> Path:
    """A checkpoint's stem path from a path, a shipped name (:data:`SHIPPED`: ``"gru"``,
    ``"cpu"``, found by :func:`wrjax.paths.shipped_checkpoint`) or None (the default,
    :data:`DEFAULT_CHECKPOINT`)."""
    if path is None:
        path = DEFAULT_CHECKPOINT
    if isinstance(path, str) and path in SHIPPED:
        return paths.shipped_checkpoint("chem", SHIPPED[path])
    return Path(path)


def _build(meta: dict) -> tuple[SelfiesVAE, PyTree]:
    """``wrjax.checkpoint.load_model``'s ``build_fn``: the model and its params' shapes from
    a record's ``"config"`` (both the current layout and the older shipped JSONs have it)."""
    config = SelfiesVAEConfig.from_json(meta["config"])
    return SelfiesVAE(config), jax.eval_shape(lambda: init_params(jax.random.key(0), config))


def load_checkpoint(path: str | os.PathLike | None = None) -> Pretrained:
    """Load a checkpoint written by :func:`save_checkpoint`: a path, a shipped name
    (:data:`SHIPPED`) or None for :data:`DEFAULT_CHECKPOINT`."""
    model, params, meta = checkpoint.load_model(resolve_checkpoint(path), _build)
    vocab = SelfiesVocab.from_json(meta["vocab"])
    return Pretrained(model, params, vocab, model.config, meta)


# ---------------------------------------------------------------------------------------------
# The model for research code
# ---------------------------------------------------------------------------------------------


class ChemModel:
    """A loaded SELFIES VAE with SMILES in and out (what :func:`wrjax.tasks.chem.load_model`
    returns): ``encode(list_of_smiles) -> (N, D)`` encoder means, ``decode(z) -> list`` of
    greedy SMILES. The pieces (flax module, params, vocabulary, config, the checkpoint's JSON
    record) are attributes, for the jitted functions of this module and ``wrjax.vae``.
    """

    def __init__(self, pretrained: Pretrained):
        self.module = pretrained.model
        self.params = pretrained.params
        self.vocab = pretrained.vocab
        self.config = pretrained.config
        self.metadata = pretrained.metadata

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def tokens(self, smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(N, max_len)`` int32 token rows and an ``(N,)`` bool mask of the molecules that
        could be tokenised (valid, known symbols, at most ``max_len`` SELFIES symbols)."""
        sel = to_selfies_batch(list(smiles), isomeric=self.vocab.isomeric, progress=False)
        return selfies_to_tokens(sel, self.vocab, max_len=self.config.max_len)

    def encode(
        self, smiles: Sequence[str], *, errors: str = "raise", batch_size: int = 1024
    ) -> np.ndarray:
        """Encoder means of ``smiles``: ``(N, latent_dim)`` float32.

        A molecule that cannot be tokenised raises ``ValueError`` naming it
        (``errors="raise"``) or gets a row of NaN (``errors="nan"``).
        """
        if isinstance(smiles, str):
            raise TypeError("encode takes a list of SMILES, not one string")
        if errors not in ("raise", "nan"):
            raise ValueError(f"errors must be 'raise' or 'nan', got {errors!r}")
        smiles = list(smiles)
        tokens, ok = self.tokens(smiles)
        if errors == "raise" and not ok.all():
            bad = [smiles[i] for i in np.flatnonzero(~ok)[:5]]
            raise ValueError(
                f"{int((~ok).sum())} of {len(smiles)} molecules cannot be encoded (invalid, "
                f"unknown SELFIES symbols or over {self.config.max_len} symbols), e.g. {bad}"
            )
        z = np.full((len(smiles), self.latent_dim), np.nan, np.float32)
        rows = np.flatnonzero(ok)
        for sl in _chunks(rows.size, batch_size):
            z[rows[sl]] = np.asarray(
                _encode_mean(self.module, self.params, jnp.asarray(tokens[rows[sl]]))
            )
        return z

    def decode(self, z: jax.Array, *, batch_size: int = 1024) -> list[str]:
        """Greedy decodes of ``z (N, latent_dim)`` as SMILES (``""`` for an empty decoding)."""
        return decode_smiles(self.module, self.params, z, self.vocab, batch_size=batch_size)

    def sample(self, key: jax.Array, num_samples: int) -> list[str]:
        """Greedy decodes of ``num_samples`` prior draws ``z ~ N(0, I)``."""
        return sample_prior_smiles(key, self.module, self.params, self.vocab, num_samples)


def load_model(path: str | os.PathLike | None = "gru") -> ChemModel:
    """Load a checkpoint as a :class:`ChemModel`: a path or a shipped name; default the
    reconstructing GRU model (``"gru"``), ``None`` for :data:`DEFAULT_CHECKPOINT` (the
    model the recorded chemistry ablation used)."""
    return ChemModel(load_checkpoint(path))
