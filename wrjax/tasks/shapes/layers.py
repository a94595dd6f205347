"""Convolution layers for the shapes VAEs that train fast on XLA:CPU.

:class:`Conv` and :class:`Upsample` are the layers of the models in
:mod:`wrjax.tasks.shapes.model`; everything is NHWC (kernels HWIO).

Two XLA:CPU slow paths are avoided (measured in ``benchmarks/decoder_grad.py``):

1. **Transposed convolutions.** XLA computes the kernel gradient of a strided transposed
   convolution (a convolution with ``lhs_dilation``) about 10x slower than that of an ordinary
   one. A stride-``s`` transposed convolution is exactly a stride-1 convolution at the *input*
   resolution producing ``s*s*C`` channels followed by depth-to-space (Shi et al. 2016,
   "sub-pixel convolution"): output ``s*i + a`` only sees the kernel taps ``t = s*d + L - a``.
   :func:`conv_transpose_subpixel` keeps the transposed convolution's own ``(k, k, Cin, Cout)``
   kernel as the parameter and gathers it into the stride-1 kernel, so it computes the same
   function as ``flax.linen.ConvTranspose`` with the same parameters. Strided convolutions of
   the encoder are likewise rewritten as space-to-depth + stride-1 convolution
   (:func:`conv_strided_s2d`).
2. **Convolution gradients inside loops.** Inside ``lax.scan``/``while`` bodies (i.e. in
   ``wrjax.vae.fit``), XLA:CPU runs the gradient convolutions that autodiff produces (kernel
   gradient: batch as the contracted dimension) 10-40x slower than outside a loop, while a
   forward NHWC/HWIO convolution runs at full speed in both places (jax issue #12868 is the
   same family). :func:`conv2d` is a stride-1 convolution with a custom VJP that writes both
   gradients as forward NHWC/HWIO convolutions of transposed operands, which run at full
   speed inside loops. It is the only convolution primitive the models use (``fast=True``).
"""

from __future__ import annotations

import functools
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "UPSAMPLE_MODES",
    "conv2d",
    "conv_transpose_subpixel",
    "conv_strided_s2d",
    "subpixel_kernel",
    "depth_to_space",
    "space_to_depth",
    "Conv",
    "Upsample",
]

_F32 = jnp.float32
_DN = ("NHWC", "HWIO", "NHWC")

#: Decoder upsampling layers. "subpixel" (default) and "convtranspose" compute the same
#: function with the same parameters (a transposed convolution as in PyTorch's
#: ``ConvTranspose2d(k, s, padding=(k-1)//2, output_padding=s-1)``): "subpixel" through stride-1
#: convolutions, "convtranspose" through ``lax.conv_transpose`` (``flax.linen.ConvTranspose``).
#: "resize" (nearest upsampling + conv) and "pixelshuffle" (conv to ``s*s*C`` channels +
#: depth-to-space) are different layers, measured as alternatives.
UPSAMPLE_MODES = ("subpixel", "convtranspose", "resize", "pixelshuffle")


# ---------------------------------------------------------------------------------------------
# A stride-1 convolution whose gradients stay on XLA:CPU's fast path inside loops
# ---------------------------------------------------------------------------------------------


def _conv_fwd_canonical(x, w, padding):
    lo, hi = padding
    return lax.conv_general_dilated(x, w, (1, 1), ((lo, hi), (lo, hi)), dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, w: jax.Array, padding: tuple[int, int]) -> jax.Array:
    """Stride-1 2-D convolution (cross-correlation), NHWC x HWIO -> NHWC.

    ``y[b, i, j, o] = sum_{p, q, c} xpad[b, i + p, j + q, c] * w[p, q, c, o]`` with ``x``
    zero-padded by ``padding = (lo, hi)`` on both spatial axes; the output is
    ``H + lo + hi - k + 1`` wide. Same values and gradients as ``lax.conv_general_dilated``;
    the custom VJP only changes how the gradients are computed (see the module docstring):

    * ``dx = conv(dy, flip(w) with in/out swapped, padding (k-1-lo, k-1-hi))``;
    * ``dw[p, q, c, o] = sum_{b,i,j} xpad[b, i+p, j+q, c] dy[b, i, j, o]``, a convolution of
      ``x`` laid out as ``(C, H, W, B)`` ("batch" C, "features" B) with ``dy`` as
      ``(H', W', B, O)``.
    """
    return _conv_fwd_canonical(x, w, padding)


def _conv2d_fwd(x, w, padding):
    return _conv_fwd_canonical(x, w, padding), (x, w)


def _conv2d_bwd(padding, res, dy):
    x, w = res
    lo, hi = padding
    k_h, k_w = w.shape[0], w.shape[1]
    w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    dx = lax.conv_general_dilated(
        dy, w_t, (1, 1), ((k_h - 1 - lo, k_h - 1 - hi), (k_w - 1 - lo, k_w - 1 - hi)),
        dimension_numbers=_DN,
    )
    dw = lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1), ((lo, hi), (lo, hi)),
        dimension_numbers=_DN,
    ).transpose(1, 2, 0, 3)
    return dx.astype(x.dtype), dw.astype(w.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _conv_s1(x, w, padding, fast: bool):
    return conv2d(x, w, padding) if fast else _conv_fwd_canonical(x, w, padding)


# ---------------------------------------------------------------------------------------------
# Strided convolutions and transposed convolutions as stride-1 convolutions
# ---------------------------------------------------------------------------------------------


def depth_to_space(x: jax.Array, s: int) -> jax.Array:
    """``(B, H, W, s*s*C) -> (B, s*H, s*W, C)``: channel ``(a_h*s + a_w)*C + c`` goes to pixel
    ``(s*i + a_h, s*j + a_w)`` (pixel shuffle)."""
    b, h, w, c = x.shape
    c_out = c // (s * s)
    x = x.reshape(b, h, w, s, s, c_out).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, s * h, s * w, c_out)


def space_to_depth(x: jax.Array, s: int) -> jax.Array:
    """Inverse of :func:`depth_to_space`: ``(B, s*H, s*W, C) -> (B, H, W, s*s*C)``."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // s, w // s, s * s * c)


def _tap_table(k: int, s: int, offset: int, sign: int) -> tuple[np.ndarray, int, int]:
    """Taps ``t = s*d + offset + sign*a`` of phase ``a`` at offset ``d`` (``k`` = missing).

    Returns ``(taps (n_d, s), d_min, d_max)`` over every ``d`` at which some phase has a tap.
    """
    a = np.arange(s)
    d_all = np.arange(-k - s, k + s + 1)
    t = s * d_all[:, None] + offset + sign * a[None, :]
    has = ((t >= 0) & (t < k)).any(axis=1)
    d = d_all[has]
    taps = s * d[:, None] + offset + sign * a[None, :]
    taps = np.where((taps >= 0) & (taps < k), taps, k)
    return taps, int(d[0]), int(d[-1])


def _gather_kernel(kernel: jax.Array, taps: np.ndarray) -> jax.Array:
    """``kernel (k, k, I, O)`` -> ``(n_d, n_d, s, s, I, O)`` with missing taps exactly 0."""
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    return padded[taps[:, None, :, None], taps[None, :, None, :]]


def subpixel_kernel(kernel: jax.Array, stride: int, padding_lo: int) -> jax.Array:
    """A transposed-conv kernel gathered into the equivalent stride-1 sub-pixel kernel.

    Args:
      kernel: ``(k, k, Cin, Cout)`` kernel of ``lax.conv_transpose`` (not flipped).
      stride: ``s``.
      padding_lo: low padding ``L`` of the equivalent ``lhs_dilation`` convolution.

    Returns:
      ``(n_d, n_d, Cin, s*s*Cout)``; output channel ``(a_h*s + a_w)*Cout + c`` is phase
      ``(a_h, a_w)`` of channel ``c``: ``w[d, e, :, (a_h, a_w, c)] = kernel[s d + L - a_h,
      s e + L - a_w, :, c]``, 0 where that tap does not exist.
    """
    taps, _, _ = _tap_table(kernel.shape[0], stride, padding_lo, -1)
    g = _gather_kernel(kernel, taps)  # (n, n, s, s, I, O)
    n, cin, cout = taps.shape[0], kernel.shape[2], kernel.shape[3]
    return g.transpose(0, 1, 4, 2, 3, 5).reshape(n, n, cin, stride * stride * cout)


def conv_transpose_subpixel(
    x: jax.Array,
    kernel: jax.Array,
    stride: int,
    padding: tuple[int, int],
    *,
    fast: bool = True,
) -> jax.Array:
    """``lax.conv_transpose(x, kernel, (s, s), (padding, padding))`` as a stride-1 conv.

    Args:
      x: ``(B, H, W, Cin)``.
      kernel: ``(k, k, Cin, Cout)`` (HWIO, not flipped: ``transpose_kernel=False``, as
        ``flax.linen.ConvTranspose``).
      stride: ``s``.
      padding: ``(lo, hi)`` padding of the equivalent ``lhs_dilation`` convolution, with
        ``lo + hi == k + s - 2`` so that the output is ``(B, s*H, s*W, Cout)``. PyTorch's
        ``ConvTranspose2d(k, s, p, output_padding=op)`` is ``(k-1-p, k-1-p+op)``.
      fast: use :func:`conv2d` (custom VJP) rather than plain autodiff.
    """
    k = kernel.shape[0]
    lo, hi = padding
    if lo + hi != k + stride - 2:
        raise ValueError(
            f"sub-pixel transposed conv needs lo + hi == k + s - 2 (output s*H); got "
            f"k={k}, s={stride}, padding=({lo}, {hi})"
        )
    _, d_min, d_max = _tap_table(k, stride, lo, -1)
    y = _conv_s1(x, subpixel_kernel(kernel, stride, lo), (-d_min, d_max), fast)
    return depth_to_space(y, stride)


def conv_strided_s2d(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, *, fast: bool = True
) -> jax.Array:
    """A strided convolution ``conv(x, kernel, stride s, padding (p, p))`` via space-to-depth.

    ``y[i] = sum_t xpad[s i + t] kernel[t]``; writing ``s i + t - p = s m + a`` turns it into
    a stride-1 convolution over the ``s*s`` phases of ``x``, kernel
    ``K[d, (a, c)] = kernel[s d + p + a, c]`` (0 where missing). Needs ``H``, ``W`` divisible
    by ``s`` and output ``H / s`` (true for PyTorch padding ``p = (k-1)//2`` and even ``k+1``).

    Args:
      x: ``(B, H, W, Cin)``; kernel: ``(k, k, Cin, Cout)``.

    Returns:
      ``(B, H/s, W/s, Cout)``.
    """
    k = kernel.shape[0]
    h, w = x.shape[1], x.shape[2]
    if h % stride or w % stride or (h + 2 * padding - k) // stride + 1 != h // stride:
        raise ValueError(f"space-to-depth conv needs output H/s: H={h}, k={k}, s={stride}, p={padding}")
    taps, d_min, d_max = _tap_table(k, stride, padding, 1)
    g = _gather_kernel(kernel, taps)  # (n, n, s, s, I, O), [d, e, a_h, a_w]
    n, cin, cout = taps.shape[0], kernel.shape[2], kernel.shape[3]
    w_s2d = g.reshape(n, n, stride * stride * cin, cout)  # channel (a_h, a_w, c): s2d order
    return _conv_s1(space_to_depth(x, stride), w_s2d, (-d_min, d_max), fast)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


class Conv(nn.Module):
    """A conv layer like ``nn.Conv(features, (k, k), strides=(s, s), padding=(k-1)//2)``
    (PyTorch padding), parameters ``kernel (k, k, Cin, features)`` and ``bias``.

    ``fast=True`` computes it with :func:`conv2d` (stride 1) or :func:`conv_strided_s2d`
    (stride > 1): the same function, gradients that stay fast inside ``lax.scan``.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    fast: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), _F32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), _F32)
        p = (k - 1) // 2
        if s == 1:
            y = _conv_s1(x, kernel, (p, k - 1 - p), self.fast)
        elif self.fast:
            y = conv_strided_s2d(x, kernel, s, p)
        else:
            y = lax.conv_general_dilated(x, kernel, (s, s), ((p, p), (p, p)), dimension_numbers=_DN)
        return y + bias.reshape(1, 1, 1, -1)


class Upsample(nn.Module):
    """A decoder layer upsampling by ``stride``, in one of :data:`UPSAMPLE_MODES`.

    With ``stride == 1`` every mode is a 'SAME' :class:`Conv` (a stride-1 transposed
    convolution with padding ``(k-1)/2`` is a convolution with a flipped kernel). Otherwise
    "subpixel" and "convtranspose" hold ``kernel (k, k, Cin, features)`` and compute the same
    transposed convolution (PyTorch ``ConvTranspose2d(k, s, (k-1)//2, output_padding=s-1)``,
    output ``s*H``); "resize" is nearest upsampling then a ``k x k`` conv; "pixelshuffle" a
    ``ceil(k/s)`` (odd) conv to ``s*s*features`` channels then depth-to-space.
    """

    features: int
    kernel_size: int = 5
    stride: int = 2
    mode: str = "subpixel"
    fast: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        if self.mode not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample mode {self.mode!r}; choose from {UPSAMPLE_MODES}")
        if s == 1 or self.mode == "resize":
            if s > 1:
                x = jnp.repeat(jnp.repeat(x, s, axis=1), s, axis=2)
            return Conv(self.features, k, 1, self.fast, name="conv")(x)
        if self.mode == "pixelshuffle":
            kl = -(-k // s) | 1
            return depth_to_space(Conv(s * s * self.features, kl, 1, self.fast, name="conv")(x), s)
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), _F32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), _F32)
        p = (k - 1) // 2
        lo, hi = k - 1 - p, k - 1 - p + s - 1
        if self.mode == "subpixel":
            y = conv_transpose_subpixel(x, kernel, s, (lo, hi), fast=self.fast)
        else:
            y = lax.conv_transpose(x, kernel, (s, s), ((lo, hi), (lo, hi)), dimension_numbers=_DN)
        return y + bias.reshape(1, 1, 1, -1)

