"""Convolutional VAEs for the 2D shapes task, their initialisation and loading.

Two models implement the ``wrjax.vae`` interface (``encode(x) -> (mean, logvar)``,
``decode(z) -> logits``):

* :class:`SquaresVAE`: the authors' released shapes model (their ``ShapesVAE``): 11
  convolutions (4-16 channels, kernels 3/5, four of stride 2), FC 256 -> 32 -> 2d; decoder FC
  d -> 32 -> 256, reshape 4x4x16, 11 transposed convolutions to 64x64. Latent dimension 2.
* :class:`DSpritesVAE`: the paper's appendix C.4 model: 3 convolutions (32/64/128 channels,
  kernel 5, stride 2), FC layers of 4096 and 1024 units, and the mirrored decoder. Latent 5.

Layout: images are ``(B, 64, 64)`` (any dtype, values in {0, 1}); a trailing channel axis of 1,
``(B, 64, 64, 1)``, is accepted too. ``decode`` returns ``(B, 64, 64)`` float32 Bernoulli
logits. Internally everything is NHWC.
logits. Internally everything is NHWC, with the layers of :mod:`wrjax.tasks.shapes.layers`
(convolutions that train fast on XLA:CPU).

:func:`make_model` builds a preset's model, :func:`init_params` its fresh parameters, and
:func:`build_model` rebuilds it from a checkpoint record: ``wrjax.checkpoint.load_model(path,
build_model)`` loads a checkpoint of ``experiments/pretrain.py shapes`` (a shipped one:
``wrjax.paths.checkpoint_for_k("shapes", preset, k)``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wrjax.tasks.shapes.layers import UPSAMPLE_MODES, Conv, Upsample
from wrjax.tasks.shapes.presets import get_preset
from wrjax.tasks.shapes.render import IMAGE_SIZE
from wrjax.typing import PyTree

__all__ = [
    "SquaresVAE",
    "DSpritesVAE",
    "make_model",
    "param_shapes",
    "init_params",
    "build_model",
]

_F32 = jnp.float32



def _as_nhwc(x) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (64, 64, 1):
        raise ValueError(f"expected images (B, 64, 64) or (B, 64, 64, 1), got shape {x.shape}")
    return x.astype(_F32)


class _ConvEncoder(nn.Module):
    """Convs ``(features, kernel, stride)`` with ReLU, flatten, ReLU dense layers, and a last
    dense layer to ``2 * latent_dim`` (mean, log-variance)."""

    convs: Sequence[tuple[int, int, int]]
    hidden: Sequence[int]
    latent_dim: int
    fast: bool

    @nn.compact
    def __call__(self, x):
        h = _as_nhwc(x)
        for i, (features, k, s) in enumerate(self.convs):
            h = nn.relu(Conv(features, k, s, self.fast, name=f"conv{i}")(h))
        h = h.reshape(h.shape[0], -1)
        for i, units in enumerate(self.hidden):
            h = nn.relu(nn.Dense(units, name=f"fc{i}")(h))
        out = nn.Dense(2 * self.latent_dim, name="out")(h)
        return out[:, : self.latent_dim], out[:, self.latent_dim :]


class _ConvDecoder(nn.Module):
    """ReLU dense layers, reshape to ``start_shape``, upsampling layers with ReLU between; the
    last layer has 1 channel and no activation (the logits)."""

    hidden: Sequence[int]
    start_shape: tuple[int, int, int]
    layers: Sequence[tuple[int, int, int]]  # (features, kernel, stride)
    mode: str
    fast: bool

    @nn.compact
    def __call__(self, z):
        h = jnp.asarray(z, _F32)
        for i, units in enumerate(self.hidden):
            h = nn.relu(nn.Dense(units, name=f"fc{i}")(h))
        h = h.reshape(h.shape[0], *self.start_shape)
        n = len(self.layers)
        for i, (features, k, s) in enumerate(self.layers):
            h = Upsample(features, k, s, self.mode, self.fast, name=f"up{i}")(h)
            if i < n - 1:
                h = nn.relu(h)
        return h[..., 0]


class _VAE(nn.Module):
    """Shared encode/decode plumbing; subclasses build ``encoder``/``decoder`` in ``setup``."""

    def encode(self, x) -> tuple[jax.Array, jax.Array]:
        """``x (B, 64, 64)`` or ``(B, 64, 64, 1)`` -> ``(mean, logvar)``, each ``(B, D)`` float32."""
        return self.encoder(x)

    def decode(self, z) -> jax.Array:
        """``z (B, D)`` -> Bernoulli logits ``(B, 64, 64)`` float32."""
        return self.decoder(z)

    def __call__(self, x) -> jax.Array:
        """Decode the posterior mean (``init`` uses it to create every parameter)."""
        mean, _ = self.encode(x)
        return self.decode(mean)


class SquaresVAE(_VAE):
    """The authors' shapes VAE (their ``ShapesVAE``), for the ``squares2d`` preset.

    Encoder: convs (4,3,1) (8,5,2) (8,3,1) (16,5,2) (16,3,1) (16,3,1) (16,5,2) (16,3,1)
    (16,3,1) (16,5,2) (16,3,1) as (channels, kernel, stride), ReLU; 4x4x16 = 256 -> 32 -> 2d.
    Decoder: d -> 32 -> 256, reshape 4x4x16, transposed convs (32,3,1) (32,5,2) (32,3,1)
    (16,5,2) (16,3,1) (16,3,1) (16,5,2) (8,3,1) (8,3,1) (8,5,2) (1,3,1), ReLU between.
    Their encoder outputs (mean, log std); this one (mean, log variance), the same family.
    About 113k parameters (450 kB in float32).
    """

    latent_dim: int = 2
    upsample: str = "subpixel"
    fast: bool = True

    def setup(self):
        self.encoder = _ConvEncoder(
            convs=(
                (4, 3, 1), (8, 5, 2), (8, 3, 1), (16, 5, 2), (16, 3, 1), (16, 3, 1),
                (16, 5, 2), (16, 3, 1), (16, 3, 1), (16, 5, 2), (16, 3, 1),
            ),
            hidden=(32,),
            latent_dim=self.latent_dim,
            fast=self.fast,
        )
        self.decoder = _ConvDecoder(
            hidden=(32, 256),
            start_shape=(4, 4, 16),
            layers=(
                (32, 3, 1), (32, 5, 2), (32, 3, 1), (16, 5, 2), (16, 3, 1), (16, 3, 1),
                (16, 5, 2), (8, 3, 1), (8, 3, 1), (8, 5, 2), (1, 3, 1),
            ),
            mode=self.upsample,
            fast=self.fast,
        )


class DSpritesVAE(_VAE):
    """The paper's appendix C.4 VAE, for the ``dsprites`` preset.

    Encoder: convs 32/64/128 channels, kernel 5, stride 2 (64 -> 32 -> 16 -> 8), ReLU;
    flatten 8x8x128 = 8192 -> 4096 -> 1024 -> 2d. Decoder mirrored: d -> 1024 -> 4096 -> 8192,
    reshape 8x8x128, transposed convs to 64, 32, 1 channels (kernel 5, stride 2) -> 64x64.
    The paper gives layer sizes, not paddings; PyTorch padding 2 (output padding 1)
    halves/doubles the resolution exactly. About 76M parameters (304 MB), almost all in the
    8192x4096 dense layers (``fc_units`` makes them configurable).
    """

    latent_dim: int = 5
    upsample: str = "subpixel"
    fast: bool = True
    fc_units: tuple[int, ...] = (4096, 1024)

    def setup(self):
        self.encoder = _ConvEncoder(
            convs=((32, 5, 2), (64, 5, 2), (128, 5, 2)),
            hidden=tuple(self.fc_units),
            latent_dim=self.latent_dim,
            fast=self.fast,
        )
        self.decoder = _ConvDecoder(
            hidden=tuple(reversed(self.fc_units)) + (8 * 8 * 128,),
            start_shape=(8, 8, 128),
            layers=((64, 5, 2), (32, 5, 2), (1, 5, 2)),
            mode=self.upsample,
            fast=self.fast,
        )


def make_model(
    preset: str, *, upsample: str = "subpixel", fast: bool = True
) -> SquaresVAE | DSpritesVAE:
    """The preset's VAE: :class:`SquaresVAE` (``squares2d``) or :class:`DSpritesVAE`
    (``dsprites``).

    Args:
      preset: ``"squares2d"`` or ``"dsprites"``.
      upsample: the decoder's upsampling layer (``wrjax.tasks.shapes.layers.UPSAMPLE_MODES``); the default
        "subpixel" is the transposed convolution of the paper/authors computed fast.
      fast: compute every convolution with the custom-VJP stride-1 convolution
        (``wrjax.tasks.shapes.layers.conv2d``), whose gradients stay fast inside ``lax.scan``; ``False``
        uses plain ``lax`` convolutions (same function and parameters).
    """
    cfg = get_preset(preset)
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"unknown upsample {upsample!r}; choose from {UPSAMPLE_MODES}")
    cls = SquaresVAE if preset == "squares2d" else DSpritesVAE
    return cls(latent_dim=cfg.latent_dim, upsample=upsample, fast=fast)


def param_shapes(model: Any) -> PyTree:
    """The ``params`` tree of ``model`` as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
    dummy = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE), _F32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy))["params"]


# Standard deviation of a standard normal truncated to [-2, 2], as in
# flax/jax.nn.initializers.variance_scaling(..., "truncated_normal").
_TRUNC_STD = 0.87962566103423978


def init_params(key: jax.Array, model: Any, *, gain: float = 2.0) -> PyTree:
    """Fresh parameters of a shapes VAE: He-normal kernels (``gain = 2``), zero biases.

    Kernels are drawn from a normal truncated to 2 standard deviations with variance
    ``gain / fan_in``, ``fan_in = prod(kernel.shape[:-1])`` (``gain = 1`` is flax's default
    ``lecun_normal``; ``gain = 2`` is He et al. 2015's choice for ReLU networks). With LeCun
    (or PyTorch's default, smaller) scaling the signal of the 11-layer squares encoder shrinks
    about 2x per layer, the latent code starts at ~1e-3 and, in our runs, the KL stayed at 0
    for the first 400+ steps (a posterior stuck at the prior once beta reaches 10); with
    ``gain = 2`` the code is used within 200 steps. All values come from one random call:
    ``model.init`` makes one threefry call per layer, and XLA:CPU takes about 0.3 s to compile
    each (20-30 s for these models).

    Returns:
      the ``params`` pytree (float32), same structure as ``model.init(...)["params"]``.
    """
    shapes_tree = param_shapes(model)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes_tree)
    kernel_sizes = [
        math.prod(leaf.shape) for path, leaf in flat if getattr(path[-1], "key", None) != "bias"
    ]
    noise = jax.random.truncated_normal(key, -2.0, 2.0, (sum(kernel_sizes),), _F32) / _TRUNC_STD
    leaves, offset = [], 0
    for path, leaf in flat:
        if getattr(path[-1], "key", None) == "bias":
            leaves.append(jnp.zeros(leaf.shape, _F32))
            continue
        size = math.prod(leaf.shape)
        fan_in = size // leaf.shape[-1]
        leaves.append(noise[offset : offset + size].reshape(leaf.shape) * math.sqrt(gain / fan_in))
        offset += size
    return jax.tree_util.tree_unflatten(treedef, leaves)



def build_model(metadata: dict) -> tuple[Any, PyTree]:
    """The ``build_fn`` of :func:`wrjax.checkpoint.load_model` for shapes checkpoints:
    ``(model, params_template)`` from a checkpoint's JSON record.

    Reads ``preset`` and ``upsample`` from ``metadata["config"]`` (a ``save_model`` record) or
    from the top level (the shipped checkpoints' older layout).
    """
    cfg = metadata.get("config", metadata)
    model = make_model(cfg["preset"], upsample=cfg.get("upsample", "subpixel"))
    return model, param_shapes(model)


