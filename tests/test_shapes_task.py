"""The shapes task in the loop and as one compiled program (paper §6.1)."""

import jax
import numpy as np
import pytest

from wrjax import lso
from wrjax.tasks import shapes
from wrjax.tasks.shapes_task import (
    CompiledRunConfig, image_text, make_compiled_run, make_seeds_run, make_shapes_task, text_image,
)  # fmt: skip


@pytest.fixture(scope="module")
def setup():
    data = shapes.load_shapes("squares2d")
    model = shapes.make_model("squares2d")
    params = shapes.init_params(jax.random.key(0), model)
    return data, model, params


def test_image_text_round_trip(setup, rng):
    data, _, _ = setup
    for i in rng.integers(0, len(data.images), 5):
        np.testing.assert_array_equal(text_image(image_text(data.images[i])), data.images[i])
    assert image_text(data.images[0]) != image_text(1 - data.images[0])


def test_compiled_run_queries_what_the_host_loop_queries(setup, tmp_path):
    """Without training the two are deterministic: the same grid images, in the same order."""
    data, model, params = setup
    x, y = data.images[data.train_idx], data.areas[data.train_idx]
    cfg = CompiledRunConfig(budget=8, retrain_every=None, initial_epochs=0.0)
    res = jax.jit(make_compiled_run(model, shapes.grid_points("squares2d"), x, y, cfg))(
        jax.random.key(0), params
    )
    task = make_shapes_task(None, "squares2d", params=params)
    host = lso.run(
        jax.random.key(0), task,
        lso.LSOConfig(budget=8, retrain_every=None, initial_finetune_epochs=0, optimizer="grid"),
        workdir=tmp_path, progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(res.scores), host.scores)
    np.testing.assert_allclose(np.asarray(res.z), np.array([r["z"] for r in host.records]), rtol=1e-6)
    # Every queried image is new: not in the data, no repeats.
    keys = [r["key"] for r in host.records]
    assert len(set(keys)) == 8 and not set(keys) & set(task.initial_keys)


def test_vmapped_seeds_equal_one_by_one(setup):
    """vmap over seeds computes what the seeds compute one after another.

    Without training both paths are the same arithmetic, so equal exactly. With fine-tuning,
    batching the seeds changes XLA's summation order, so params drift by float rounding and an
    area may move by a pixel or so: equal to 2%.
    """
    data, model, params = setup
    x, y = data.images[data.train_idx][:512], data.areas[data.train_idx][:512]
    grid = shapes.grid_points("squares2d")
    keys = jax.random.split(jax.random.key(1), 2)
    for cfg, rtol in [
        (CompiledRunConfig(budget=4, retrain_every=None, initial_epochs=0.0, chunk_size=500), 0.0),
        (CompiledRunConfig(budget=4, retrain_every=2, initial_epochs=0.125, finetune_epochs=0.125,
                           batch_size=16, chunk_size=500), 0.02),
    ]:  # fmt: skip
        run = make_compiled_run(model, grid, x, y, cfg)
        both = make_seeds_run(run)(keys, params)
        single = jax.jit(run)
        for i in range(2):
            one = single(keys[i], params)
            np.testing.assert_array_equal(np.asarray(both.valid[i]), np.asarray(one.valid))
            np.testing.assert_allclose(np.asarray(both.scores[i]), np.asarray(one.scores), rtol=rtol)


def test_compiled_run_rejects_uneven_cycles(setup):
    data, model, _ = setup
    with pytest.raises(ValueError, match="multiple"):
        make_compiled_run(model, shapes.grid_points("squares2d"), data.images[:10], data.areas[:10],
                          CompiledRunConfig(budget=10, retrain_every=3))
