"""Checkpoints round-trip exactly, hold no pickle, and are written atomically."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wrjax
from wrjax import checkpoint


def test_round_trip_of_train_state_key_and_metadata(tmp_path):
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.zeros(3)}}
    opt = optax.adam(1e-3)
    state = wrjax.init_train_state(params, opt)
    state, _ = jax.jit(lambda s: (s._replace(step=s.step + 5), None))(state)
    tree = {"state": state, "key": jax.random.key(42), "y": np.array([1.5, -2.0], np.float32)}
    checkpoint.save_pytree(tmp_path / "ck", tree, {"command": "python x.py", "k": float("inf")})
    target = {"state": wrjax.init_train_state(jax.tree.map(jnp.zeros_like, params), opt),
              "key": jax.random.key(0), "y": np.zeros(2, np.float32)}
    back = checkpoint.load_pytree(tmp_path / "ck", target)
    assert isinstance(back["state"], wrjax.TrainState)
    np.testing.assert_array_equal(back["state"].params["dense"]["kernel"], params["dense"]["kernel"])
    assert int(back["state"].step) == 5
    np.testing.assert_array_equal(jax.random.key_data(back["key"]), jax.random.key_data(tree["key"]))
    # The restored key draws the same numbers as the original.
    np.testing.assert_array_equal(jax.random.normal(back["key"], (3,)), jax.random.normal(tree["key"], (3,)))
    np.testing.assert_array_equal(back["y"], tree["y"])
    assert checkpoint.load_metadata(tmp_path / "ck") == {"command": "python x.py", "k": "inf"}


def test_files_are_msgpack_not_pickle(tmp_path):
    checkpoint.save_pytree(tmp_path / "ck", {"a": np.ones(3)})
    blob = (tmp_path / "ck.msgpack").read_bytes()
    assert not blob.startswith(b"\x80")  # pickle protocol marker
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write cleaned up


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.load_pytree(tmp_path / "nothing", {"a": np.ones(1)})


def test_names_with_dots_are_kept(tmp_path):
    checkpoint.save_pytree(tmp_path / "model-k_0.001", {"a": np.ones(2)}, {"k": 0.001})
    assert (tmp_path / "model-k_0.001.msgpack").exists() and (tmp_path / "model-k_0.001.json").exists()
    back = checkpoint.load_pytree(tmp_path / "model-k_0.001.msgpack", {"a": np.zeros(2)})
    np.testing.assert_array_equal(back["a"], [1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# Shipped models: save_model / load_model, machine_description
# ---------------------------------------------------------------------------------------------


def _mlp(config):
    import flax.linen as nn

    class MLP(nn.Module):
        hidden: int

        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.relu(nn.Dense(self.hidden)(x)))

    model = MLP(config["hidden"])
    template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3)))["params"]
    return model, template


def test_save_and_load_model_round_trip(tmp_path):
    import json

    model, _ = _mlp({"hidden": 4})
    params = model.init(jax.random.key(7), jnp.zeros((1, 3)))["params"]
    record = {"command": "python experiments/pretrain.py toy", "data": {"rows": 10},
              "seconds": 1.5, "metrics": {"elbo": -3.0}, "machine": {"load_average_start": 0.5}}
    checkpoint.save_model(tmp_path / "m-k_1e-3", params, config={"hidden": 4}, record=record)
    meta = json.loads((tmp_path / "m-k_1e-3.json").read_text())
    assert meta["format"] == checkpoint.MODEL_FORMAT == "wrjax-model/1"
    assert meta["config"] == {"hidden": 4} and meta["command"] == record["command"]
    assert meta["data"] == {"rows": 10} and meta["metrics"] == {"elbo": -3.0} and meta["seconds"] == 1.5
    assert meta["machine"]["load_average_start"] == 0.5  # the caller's entries are kept
    assert meta["machine"]["cpu_count"] == checkpoint.machine_description()["cpu_count"]
    built = []
    back_model, back, back_meta = checkpoint.load_model(
        tmp_path / "m-k_1e-3", lambda m: built.append(m) or _mlp(m["config"]))
    assert back_model.hidden == 4 and built == [back_meta] and back_meta == meta
    _same = jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params, back)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(back))
    x = jnp.ones((2, 3))
    np.testing.assert_array_equal(model.apply({"params": params}, x),
                                  back_model.apply({"params": back}, x))


def test_save_model_refuses_reserved_record_fields(tmp_path):
    with pytest.raises(ValueError, match="format"):
        checkpoint.save_model(tmp_path / "m", {"a": np.ones(1)}, config={}, record={"format": "x"})


def test_load_model_detects_a_damaged_blob(tmp_path):
    model, _ = _mlp({"hidden": 4})
    params = model.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    checkpoint.save_model(tmp_path / "m", params, config={"hidden": 4})
    blob = bytearray((tmp_path / "m.msgpack").read_bytes())
    blob[-1] ^= 1
    (tmp_path / "m.msgpack").write_bytes(bytes(blob))
    with pytest.raises(checkpoint.CheckpointError, match="m.msgpack"):
        checkpoint.load_model(tmp_path / "m", lambda m: _mlp(m["config"]))


def test_load_model_reads_an_older_layout(tmp_path):
    """Shipped checkpoints from before the format: no ``format``/``config``, no checksum;
    the task's build_fn reads its own old fields."""
    model, _ = _mlp({"hidden": 5})
    params = model.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    checkpoint.save_pytree(tmp_path / "old", params, {"model": {"width": 5}, "command": "old"})
    back_model, back, meta = checkpoint.load_model(
        tmp_path / "old", lambda m: _mlp({"hidden": m["model"]["width"]}))
    assert back_model.hidden == 5 and meta["command"] == "old"
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params, back)


def test_machine_description_is_json_and_complete():
    import json
    import os

    m = checkpoint.machine_description()
    assert json.loads(json.dumps(m)) == m
    assert m["cpu_count"] == os.cpu_count() and m["jax"] == jax.__version__
    assert m["devices"] == [str(d) for d in jax.devices()] and m["backend"] == jax.default_backend()
    assert {"platform", "cpu_model", "cpu_flags", "xla_flags", "jaxlib"} <= set(m)
