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
