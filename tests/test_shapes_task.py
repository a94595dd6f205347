"""The shapes task in the loop, with the host driver and the compiled driver (paper §6.1)."""

import jax
import numpy as np
import pytest

import wrjax
from wrjax.loop import make_compiled_run, make_seeds_run
from wrjax.tasks import shapes
from wrjax.tasks.shapes import image_text, make_shapes_task, text_image


@pytest.fixture(scope="module")
def task():
    """squares2d with the shipped k = 1e-3 model, on the first 512 training images."""
    full = make_shapes_task(None, "squares2d", k=1e-3)
    return full.replace(x=full.x[:512], y=full.y[:512], initial_keys=full.initial_keys[:512])


def test_image_text_round_trip(rng):
    data = shapes.load_shapes("squares2d")
    for i in rng.integers(0, len(data.images), 5):
        np.testing.assert_array_equal(text_image(image_text(data.images[i])), data.images[i])
    assert image_text(data.images[0]) != image_text(1 - data.images[0])


def test_host_and_compiled_drivers_give_the_same_topk_curve(task, tmp_path):
    """One Algorithm 1: with fine-tuning (1 initial epoch-fraction, 2 retrains) the compiled
    program queries exactly the images the host driver queries, in the same order."""
    cfg = wrjax.LSOConfig(budget=6, retrain_every=2, k=1e-3, batch_size=16,
                          initial_finetune_epochs=0.0625, finetune_steps=2)  # fmt: skip
    key = jax.random.key(3)
    grid = wrjax.grid_optimizer(task)
    host = wrjax.run(key, task, cfg, optimizer=grid, workdir=tmp_path, progress=False)
    compiled = jax.jit(make_compiled_run(task, cfg, optimizer=grid))(key, task.params)
    assert np.asarray(compiled.valid).all()
    np.testing.assert_array_equal(np.asarray(compiled.scores), host.scores)
    for name, curve in wrjax.topk_curves(np.asarray(compiled.scores), ks=(1, 3)).items():
        np.testing.assert_array_equal(curve, wrjax.topk_curves(host.scores, ks=(1, 3))[name])
    np.testing.assert_array_equal(np.asarray(compiled.z), np.array([r["z"] for r in host.records], np.float32))
    # Every queried image is new: not in the data, no repeats.
    keys = [r["key"] for r in host.records]
    assert len(set(keys)) == 6 and not set(keys) & set(task.initial_keys)
    # The final models agree too.
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 compiled.state.train.params, host.params)


_NO_TRAINING = (dict(budget=4, retrain_every=None, initial_finetune_epochs=0.0), 0.0)
_FINETUNE = (dict(budget=4, retrain_every=2, initial_finetune_epochs=0.125, finetune_epochs=0.125, batch_size=16), 0.02)


# vmap is the accelerator default and about 65 s here on the CPU (where "auto" picks map): slow;
# so is the fine-tuning case under map (about half of the 92 s the two map cases took, which
# the default suite's 15-minute budget no longer holds; `python -m pytest -m slow` runs them)
@pytest.mark.parametrize("mode, case", [
    pytest.param("vmap", _NO_TRAINING, marks=pytest.mark.slow, id="vmap-no-training"),
    pytest.param("vmap", _FINETUNE, marks=pytest.mark.slow, id="vmap-finetune"),
    pytest.param("map", _NO_TRAINING, id="map-no-training"),
    pytest.param("map", _FINETUNE, marks=pytest.mark.slow, id="map-finetune"),
])  # fmt: skip
def test_seeds_in_one_program_equal_one_by_one(task, mode, case):
    """vmap (or lax.map) over seeds computes what the seeds compute one after another.

    Without training both paths are the same arithmetic, so equal exactly. With fine-tuning,
    batching the seeds changes XLA's summation order, so params drift by float rounding and an
    area may move by a pixel or so: equal to 2%.
    """
    keys = jax.random.split(jax.random.key(1), 2)
    grid = wrjax.grid_optimizer(task)
    settings, rtol = case
    run = make_compiled_run(task, wrjax.LSOConfig(**settings), optimizer=grid)
    both = make_seeds_run(run, mode=mode)(keys, task.params)
    single = jax.jit(run)
    for i in range(2):
        one = single(keys[i], task.params)
        np.testing.assert_array_equal(np.asarray(both.valid[i]), np.asarray(one.valid))
        np.testing.assert_allclose(np.asarray(both.scores[i]), np.asarray(one.scores), rtol=rtol)


def test_seeds_mode_is_checked_and_auto_picks_map_on_cpu(task):
    run = make_compiled_run(task, wrjax.LSOConfig(budget=2, retrain_every=None,
                                                  initial_finetune_epochs=0.0),
                            optimizer=wrjax.grid_optimizer(task))  # fmt: skip
    with pytest.raises(ValueError, match="mode"):
        make_seeds_run(run, mode="pmap")
    keys = jax.random.split(jax.random.key(2), 2)
    auto = make_seeds_run(run)(keys, task.params)
    mapped = make_seeds_run(run, mode="map")(keys, task.params)
    assert jax.default_backend() == "cpu"
    np.testing.assert_array_equal(np.asarray(auto.scores), np.asarray(mapped.scores))


def test_compiled_run_rejects_uneven_cycles_and_host_optimizers(task):
    with pytest.raises(ValueError, match="multiple"):
        make_compiled_run(task, wrjax.LSOConfig(budget=10, retrain_every=3),
                          optimizer=wrjax.grid_optimizer(task))  # fmt: skip
    with pytest.raises(ValueError, match="traceable"):
        make_compiled_run(task, wrjax.LSOConfig(budget=4, retrain_every=2), optimizer=wrjax.make_gp_ei())
