"""Tests of the 2D shapes task: data, renderer, objective, grid, layers, models, pretraining."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from wrjax.paths import data_dir
from wrjax.tasks import shapes
from wrjax.tasks.shapes import layers as sm

try:
    GIF = data_dir("dsprites") / "dsprites.gif"
except FileNotFoundError:
    GIF = None
DN = ("NHWC", "HWIO", "NHWC")


# ---------------------------------------------------------------------------------------------
# dSprites renderer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gif_frames():
    pil = pytest.importorskip("PIL.Image")
    if GIF is None or not GIF.exists():
        pytest.skip("dsprites.gif not available")
    from PIL import ImageSequence

    frames = [np.asarray(f.convert("L")) > 127 for f in ImageSequence.Iterator(pil.open(GIF))]
    frames = np.stack(frames).astype(np.uint8)
    assert frames.shape == (320, 64, 64)
    return frames


def test_axis_aligned_scales_match_gif(gif_frames):
    # Frames 256-261: orientation 0, scales 0.5..1, centre (16, 16) = position 0.
    img = shapes.render_squares(shapes.DSPRITES_SCALES, 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(img, gif_frames[256:262])
    np.testing.assert_array_equal(img.reshape(6, -1).sum(1), [100, 144, 196, 256, 324, 400])


def test_rotations_match_gif(gif_frames):
    # Frames 274-313: scale 1 at the 40 orientations linspace(0, 2 pi, 40).
    img = shapes.render_squares(1.0, shapes.DSPRITES_ORIENTATIONS, 0.0, 0.0)
    ref = gif_frames[274:314]
    mismatch = (img != ref).reshape(40, -1).sum(1)
    # Measured: 38 of 40 frames identical, 8 pixels differ in all (4 in frames 10 and 29).
    assert (mismatch == 0).sum() >= 38
    assert mismatch.sum() <= 8
    areas = img.reshape(40, -1).sum(1)
    assert areas[0] == 400 and areas[-1] == 400
    assert 364 <= areas[1:-1].min() and areas[1:-1].max() <= 372  # the GIF's range


def _supersampled(scale, theta, px, py, n=24, threshold=shapes.DSPRITES_THRESHOLD):
    """Independent reference: coverage by n x n point samples per pixel."""
    off = (np.arange(n) + 0.5) / n
    coords = (np.arange(64)[:, None] + off[None, :]).reshape(-1)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    dy, dx = yy - (16 + 32 * py), xx - (16 + 32 * px)
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx - s * dy, s * dx + c * dy
    inside = (np.abs(u) <= 10 * scale) & (np.abs(v) <= 10 * scale)
    cover = inside.reshape(64, n, 64, n).mean(axis=(1, 3))
    return cover, (cover >= threshold).astype(np.uint8)


def test_renderer_against_supersampling(rng):
    idx = rng.choice(245760, size=12, replace=False)
    lat = shapes.dsprites_latents()[idx]
    img = shapes.render_dsprites_squares(idx)
    for row, im in zip(lat, img):
        sc, th = shapes.DSPRITES_SCALES[row[0]], shapes.DSPRITES_ORIENTATIONS[row[1]]
        px, py = shapes.DSPRITES_POSITIONS[row[2]], shapes.DSPRITES_POSITIONS[row[3]]
        cover, ref = _supersampled(sc, th, px, py)
        # Supersampling quantises coverage to 1/576 (and the renderer approximates the 4
        # corner pixels): only pixels with coverage near the threshold may differ.
        differ = im != ref
        assert np.all(np.abs(cover[differ] - shapes.DSPRITES_THRESHOLD) < 0.03)
        assert differ.sum() <= 4
        assert abs(int(im.sum()) - (20 * sc) ** 2) < 4 * 20 * sc + 8  # area ~ side^2


def test_dsprites_order_and_translation():
    lat = shapes.dsprites_latents()
    assert lat.shape == (245760, 4) and lat.dtype == np.int32
    # posY fastest, then posX, orientation, scale.
    np.testing.assert_array_equal(lat[[0, 1, 32, 1024, 40960]], [
        [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(lat[-1], [5, 39, 31, 31])
    b = 5 * 40960  # scale 1, orientation 0, posX 0, posY 0
    i = np.array([b, b + 1, b + 32, b + 31, b + 31 * 32, 2 * 40960 + 10 * 1024 + 7 * 32 + 3])
    img = shapes.render_dsprites_squares(i)
    assert img.shape == (6, 64, 64) and img.dtype == np.uint8

    def bbox(a):
        r, c = np.nonzero(a)
        return r.min(), r.max(), c.min(), c.max()

    # index 1 moves posY (rows) by 32/31 px, index 32 moves posX (columns); position 1 is
    # 32 px from position 0 (pixel-aligned again), so the image is an exact translate.
    assert bbox(img[0]) == (6, 25, 6, 25)
    r0, r1, c0, c1 = bbox(img[1])
    assert (c0, c1) == (6, 25) and r0 >= 6 and r1 >= 26
    r0, r1, c0, c1 = bbox(img[2])
    assert (r0, r1) == (6, 25) and c0 >= 6 and c1 >= 26
    np.testing.assert_array_equal(img[3], np.roll(img[0], 32, axis=0))
    np.testing.assert_array_equal(img[4], np.roll(img[0], 32, axis=1))


def test_render_rejects_bad_latents():
    with pytest.raises(ValueError, match="scale"):
        shapes.render_squares(2.0, 0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="positions"):
        shapes.render_squares(1.0, 0.0, 1.5, 0.5)


@pytest.mark.slow
def test_full_dsprites_dataset():
    x = shapes.render_dsprites_squares()
    assert x.shape == (245760, 64, 64) and x.dtype == np.uint8
    idx = np.array([0, 12345, 245759])
    np.testing.assert_array_equal(x[idx], shapes.render_dsprites_squares(idx))
    areas = x.reshape(6, 40, 32, 32, -1).sum(-1)
    # Orientation 0 at position (0, 0): exactly side^2.
    np.testing.assert_array_equal(areas[:, 0, 0, 0], [100, 144, 196, 256, 324, 400])


# ---------------------------------------------------------------------------------------------
# squares2d
# ---------------------------------------------------------------------------------------------


def test_squares2d_dataset():
    x = shapes.make_squares2d()
    assert x.shape == (10900, 64, 64) and x.dtype == np.uint8
    packed = np.packbits(x.reshape(10900, -1), axis=1)  # 512 bytes per image
    _, first, counts = np.unique(packed.view("V512").ravel(), return_index=True, return_counts=True)
    assert first.shape[0] == 1090
    np.testing.assert_array_equal(counts, 10)
    sides = []
    for im in x[first]:
        r, c = np.nonzero(im)
        s = r.max() - r.min() + 1
        assert c.min() == 32 and c.max() - c.min() + 1 == s  # column 32, square
        assert im.sum() == s * s  # filled
        sides.append(s)
    sides = np.asarray(sides)
    for s in range(1, 21):
        assert (sides == s).sum() == 65 - s  # every row 0..64-s
    np.testing.assert_array_equal(x, shapes.make_squares2d())  # fixed order


def test_load_shapes_split():
    d = shapes.load_shapes("squares2d")
    np.testing.assert_allclose(d.areas, d.images.reshape(len(d.images), -1).sum(1), rtol=0, atol=0)
    assert len(d.heldout_idx) == 545  # int(0.05 * 10900), the authors' first 5%
    np.testing.assert_array_equal(d.heldout_idx, np.arange(545))
    np.testing.assert_array_equal(np.sort(np.concatenate([d.train_idx, d.heldout_idx])), np.arange(10900))
    assert set(np.unique(d.areas)) == {float(s * s) for s in range(1, 21)}
    with pytest.raises(ValueError, match="unknown shapes preset"):
        shapes.load_shapes("mnist")


# ---------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jit", [False, True])
def test_area_matches_numpy(rng, jit):
    logits = rng.normal(scale=3.0, size=(5, 64, 64)).astype(np.float32)
    logits[0, :3, :3] = 0.0  # sigmoid = 0.5 exactly: numpy.around gives 0
    ref = np.around(1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).reshape(5, -1).sum(1)
    fn = jax.jit(shapes.area) if jit else shapes.area
    out = fn(jnp.asarray(logits))
    chex.assert_shape(out, (5,))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=0)
    probs = 1.0 / (1.0 + np.exp(-logits))
    np.testing.assert_allclose(np.asarray(shapes.area(probs, logits=False)), ref, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# The latent grid
# ---------------------------------------------------------------------------------------------


def test_grid_points():
    g = shapes.grid_points("squares2d")
    assert g.shape == (2500, 2) and g.dtype == np.float32
    axis = np.linspace(-3, 3, 50)
    np.testing.assert_allclose(g, np.array(list(itertools.product(axis, axis))), rtol=0, atol=1e-6)
    d = shapes.grid_points("dsprites")
    # Independent count: integer points of [-10, 10]^5 with squared norm <= 100 (step 0.5).
    r = np.arange(-10, 11) ** 2
    sq = r[:, None, None, None, None] + r[None, :, None, None, None] + r[None, None, :, None, None]
    sq = sq + r[None, None, None, :, None] + r[None, None, None, None, :]
    assert d.shape == (int((sq <= 100).sum()), 5) == (532509, 5)
    assert np.all(np.linalg.norm(d, axis=1) <= 5 + 1e-6)
    np.testing.assert_allclose(np.unique(d), np.arange(-5, 5.01, 0.5), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Convolution building blocks and models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,s,lo,hi", [(5, 2, 2, 3), (3, 2, 1, 2), (4, 2, 2, 2), (3, 3, 2, 2), (5, 2, 3, 2)])
def test_subpixel_matches_conv_transpose(key, k, s, lo, hi):
    kx, kw, kg = jax.random.split(key, 3)
    x = jax.random.normal(kx, (2, 5, 6, 3))
    w = jax.random.normal(kw, (k, k, 3, 4))

    def plain(x, w):
        return lax.conv_transpose(x, w, (s, s), ((lo, hi), (lo, hi)), dimension_numbers=DN)

    g = jax.random.normal(kg, (2, 5 * s, 6 * s, 4))

    @jax.jit
    def both(x, w, g):
        y_ref, vjp_ref = jax.vjp(plain, x, w)
        out = [(y_ref, vjp_ref(g))]
        for fast in (True, False):
            y, vjp = jax.vjp(
                lambda x, w, fast=fast: sm.conv_transpose_subpixel(x, w, s, (lo, hi), fast=fast), x, w
            )
            out.append((y, vjp(g)))
        return out

    (y_ref, g_ref), *rest = both(x, w, g)
    for y, grads in rest:
        chex.assert_shape(y, (2, 5 * s, 6 * s, 4))
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads, g_ref):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_subpixel_rejects_bad_padding(key):
    with pytest.raises(ValueError, match="lo \\+ hi"):
        sm.conv_transpose_subpixel(jnp.zeros((1, 4, 4, 1)), jnp.zeros((5, 5, 1, 1)), 2, (2, 2))


@pytest.mark.parametrize("k,lo,hi", [(3, 1, 1), (5, 2, 2), (3, 0, 2), (3, 2, 1)])
def test_conv2d_custom_vjp_matches_autodiff(key, k, lo, hi):
    kx, kw, kg = jax.random.split(key, 3)
    x = jax.random.normal(kx, (3, 7, 6, 2))
    w = jax.random.normal(kw, (k, k, 2, 5))

    def plain(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), ((lo, hi), (lo, hi)), dimension_numbers=DN)

    g = jax.random.normal(kg, (3, 7 + lo + hi - k + 1, 6 + lo + hi - k + 1, 5))

    @jax.jit
    def both(x, w, g):
        y_ref, vjp_ref = jax.vjp(plain, x, w)
        y, vjp = jax.vjp(lambda x, w: sm.conv2d(x, w, (lo, hi)), x, w)

        # Inside a scan, where the custom VJP matters, the same numbers.
        def body(c, _):
            return c, jax.grad(lambda w: jnp.sum(sm.conv2d(x, w, (lo, hi)) * g))(w)

        _, gw = lax.scan(body, 0.0, None, length=2)
        return y_ref, vjp_ref(g), y, vjp(g), gw[1]

    y_ref, g_ref, y, grads, gw_scan = both(x, w, g)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, g_ref):
        chex.assert_equal_shape([a, b])
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw_scan, g_ref[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,s", [(5, 2), (3, 2), (4, 2)])
def test_strided_conv_s2d_matches_lax(key, k, s):
    kx, kw, kg = jax.random.split(key, 3)
    x = jax.random.normal(kx, (2, 8, 12, 3))
    w = jax.random.normal(kw, (k, k, 3, 4))
    p = (k - 1) // 2

    def plain(x, w):
        return lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)), dimension_numbers=DN)

    g = jax.random.normal(kg, (2, 8 // s, 12 // s, 4))

    @jax.jit
    def both(x, w, g):
        y_ref, vjp_ref = jax.vjp(plain, x, w)
        y, vjp = jax.vjp(lambda x, w: sm.conv_strided_s2d(x, w, s, p), x, w)
        return y_ref, vjp_ref(g), y, vjp(g)

    y_ref, g_ref, y, grads = both(x, w, g)
    chex.assert_shape(y, (2, 8 // s, 12 // s, 4))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_depth_space_roundtrip(rng):
    x = rng.normal(size=(2, 4, 6, 12)).astype(np.float32)
    y, back = jax.jit(lambda x: (sm.depth_to_space(x, 2), sm.space_to_depth(sm.depth_to_space(x, 2), 2)))(x)
    np.testing.assert_array_equal(back, x)
    # channel (a_h * 2 + a_w) * 3 + c goes to pixel (2i + a_h, 2j + a_w)
    np.testing.assert_array_equal(y[:, 1::2, 0::2, :], x[:, :, :, 6:9])


def test_squares_model_shapes_and_equivalent_modes(key):
    model = shapes.make_model("squares2d")
    params = jax.jit(shapes.init_params, static_argnums=1)(key, model)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    assert 100_000 < n_params < 130_000
    x = (jax.random.uniform(key, (3, 64, 64)) < 0.2).astype(jnp.uint8)
    ref = shapes.make_model("squares2d", upsample="convtranspose", fast=False)

    @jax.jit
    def run(params, x):
        mean, logvar = model.apply({"params": params}, x, method=model.encode)
        mean4, _ = model.apply({"params": params}, x[..., None], method=model.encode)
        logits = model.apply({"params": params}, mean, method=model.decode)
        # The plain flax-style layers compute the same function with the same parameters.
        logits_ref = ref.apply({"params": params}, mean, method=ref.decode)
        return mean, logvar, mean4, logits, logits_ref

    mean, logvar, mean4, logits, logits_ref = run(params, x)
    chex.assert_shape([mean, logvar], (3, 2))
    np.testing.assert_allclose(mean4, mean, rtol=0, atol=0)
    chex.assert_shape(logits, (3, 64, 64))
    chex.assert_type(logits, jnp.float32)
    np.testing.assert_allclose(logits_ref, logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="expected images"):
        model.apply({"params": params}, jnp.zeros((2, 32, 32)), method=model.encode)


def test_init_params_distribution(key):
    model = shapes.make_model("dsprites")
    gain = 2.0
    params = jax.jit(shapes.init_params, static_argnums=1)(key, model)  # default gain 2 (He)
    ref = shapes.param_shapes(model)  # what model.init would create
    assert jax.tree.structure(params) == jax.tree.structure(ref)
    for (path, p), r in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(ref)):
        assert p.shape == r.shape and p.dtype == r.dtype
        if path[-1].key == "bias":
            assert not np.any(np.asarray(p))
            continue
        # truncated normal, std sqrt(gain/fan_in), |w| <= 2/0.8796 std.
        fan_in = math.prod(p.shape[:-1])
        w = np.asarray(p) * math.sqrt(fan_in / gain)
        assert np.abs(w).max() <= 2.0 / 0.87962566 + 1e-4
        if w.size >= 10_000:
            np.testing.assert_allclose(w.std(), 1.0, rtol=0.03, atol=0)
            np.testing.assert_allclose(w.mean(), 0.0, rtol=0, atol=0.03)
    # Different keys give different parameters.
    other = jax.jit(shapes.init_params, static_argnums=1)(jax.random.key(1), model)
    assert not np.array_equal(other["decoder"]["up2"]["kernel"], params["decoder"]["up2"]["kernel"])


@pytest.mark.parametrize("mode", ["resize", "pixelshuffle"])
def test_alternative_upsampling_shapes(key, mode):
    model = shapes.make_model("squares2d", upsample=mode)
    params = jax.eval_shape(lambda: shapes.init_params(key, model))
    out = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((2, 2)), method=model.decode), params)
    assert out.shape == (2, 64, 64)
    # resize keeps the (k, k, Cin, Cout) kernel; pixelshuffle has a 3x3 kernel to 4 Cout.
    want = (5, 5, 32, 32) if mode == "resize" else (3, 3, 32, 128)
    assert params["decoder"]["up1"]["conv"]["kernel"].shape == want


def test_dsprites_model_shapes(key):
    model = shapes.make_model("dsprites")
    # Shapes only (the model has 76M parameters): trace without allocating.
    params = jax.eval_shape(lambda: shapes.init_params(key, model))
    n_params = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    assert 75_000_000 < n_params < 77_000_000
    assert params["encoder"]["fc0"]["kernel"].shape == (8 * 8 * 128, 4096)
    assert params["decoder"]["up0"]["kernel"].shape == (5, 5, 128, 64)
    x = jax.ShapeDtypeStruct((4, 64, 64), jnp.uint8)
    mean, logvar = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method=model.encode), params, x)
    assert mean.shape == logvar.shape == (4, 5)
    logits = jax.eval_shape(lambda p, z: model.apply({"params": p}, z, method=model.decode), params, mean)
    assert logits.shape == (4, 64, 64) and logits.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# Settings and pretraining
# ---------------------------------------------------------------------------------------------


def test_beta_schedule_matches_authors():
    """wrjax.vae.beta_schedule with the preset's settings equals the authors' stateful
    BaseVAE._increment_beta (PyTorch Lightning, global_step = updates done so far)."""
    from wrjax.vae import beta_schedule

    cfg = shapes.PRESETS["squares2d"]
    fn = jax.jit(beta_schedule(cfg.beta_start, cfg.beta_final, warmup_steps=cfg.beta_warmup))
    beta, ref = cfg.beta_start, []
    for step in range(3000):
        if step > 1000 and step % 10 == 0:
            beta = min(cfg.beta_final, beta * 1.1)
        ref.append(beta)
    ours = np.asarray(jax.vmap(fn)(jnp.arange(3000)))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=0)
    assert ours[2699] < 10.0 and ours[2700] == 10.0  # cap reached after 170 increases


class RampDecoder(nn.Module):
    """Decodes z (B, 2) to an image whose first m(z) pixels (row-major) are on, with
    m = clip(floor(40 * (z0 + 3)), 0, 4096) + (z1 > 0): a known area."""

    latent_dim: int = 2

    @nn.compact
    def decode(self, z):
        scale = self.param("scale", nn.initializers.ones, (), jnp.float32)
        m = jnp.clip(jnp.floor(40.0 * (z[:, 0] + 3.0)), 0, 4095) + (z[:, 1] > 0)
        pos = jnp.arange(64 * 64, dtype=jnp.float32).reshape(1, 64, 64)
        return scale * (m[:, None, None] - pos - 0.5)  # logit > 0 iff pos < m

    def __call__(self, z):
        return self.decode(z)


def test_prior_sample_areas(key):
    model = RampDecoder()
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)))["params"]
    a = shapes.prior_sample_areas(key, model, params, num_samples=50)
    z = np.asarray(jax.random.normal(key, (50, 2), jnp.float32))
    ref = np.clip(np.floor(40.0 * (z[:, 0] + 3.0)), 0, 4095) + (z[:, 1] > 0)
    np.testing.assert_allclose(np.asarray(a), ref, rtol=0, atol=0)


def test_pretrain_cli_smoke(tmp_path):
    """``experiments/pretrain.py shapes`` writes one model per k in the one model format, and
    ``wrjax.checkpoint.load_model`` reads it back."""
    import shlex

    from experiments.pretrain import main
    from wrjax import checkpoint
    from wrjax.checkpoint import MODEL_FORMAT, load_metadata

    argv = ["shapes", "--preset", "squares2d", "--k", "1e-3", "--max-steps", "3",
            "--batch-size", "8", "--eval-max", "16", "--prior-samples", "20",
            "--out", str(tmp_path)]
    (path,) = main(argv)
    assert Path(path).name == "squares2d-k_1e-3"
    meta = load_metadata(path)
    assert meta["format"] == MODEL_FORMAT and meta["config"]["preset"] == "squares2d"
    assert meta["num_steps"] == 3 and meta["k"] == 1e-3
    assert meta["command"] == "python experiments/pretrain.py " + shlex.join(argv)
    for part in ("train_elbo_beta1", "heldout_elbo_beta1"):
        assert np.isfinite(meta["metrics"][part]["elbo"])
    json.dumps(meta)
    model, params, meta2 = checkpoint.load_model(path, shapes.build_model)
    assert meta2 == meta
    fresh = shapes.init_params(jax.random.key(0), model)
    chex.assert_trees_all_equal_shapes(params, fresh)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fresh)))


def test_shipped_checkpoints_load_through_the_one_loader():
    """The shipped (older-layout) checkpoints load with ``wrjax.checkpoint.load_model`` and the
    k -> checkpoint mapping of ``wrjax.paths`` (a k without its own model: the k = inf one)."""
    from wrjax import checkpoint, paths

    path = paths.checkpoint_for_k("shapes", "squares2d", 1e-3)
    assert path.name == "squares2d-k_1e-3"
    model, params, meta = checkpoint.load_model(path, shapes.build_model)
    assert meta["preset"] == "squares2d" and model.latent_dim == 2
    chex.assert_trees_all_equal_shapes(params, shapes.param_shapes(model))
    assert paths.checkpoint_for_k("shapes", "squares2d", 0.5).name == "squares2d-k_inf"


def test_pretrain_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be > 0"):
        shapes.pretrain(jax.random.key(0), "squares2d", k=0.0)
