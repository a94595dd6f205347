"""The fixed-capacity data buffer: construction checks, append, padding, no retrace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wrjax
from wrjax import buffer as buf


def _data(n, rng):
    return {"a": rng.normal(size=(n, 3)).astype(np.float32), "b": rng.integers(0, 9, (n,)).astype(np.int32)}


def test_buffer_from_data_pads_with_zeros_and_masks(rng):
    x, y = _data(4, rng), rng.normal(size=4).astype(np.float32)
    b = wrjax.buffer_from_data(x, y, 7)
    assert int(b.count) == 4 and b.y.shape == (7,) and b.x["a"].shape == (7, 3)
    np.testing.assert_array_equal(np.asarray(b.mask), [True] * 4 + [False] * 3)
    np.testing.assert_array_equal(np.asarray(b.x["a"][:4]), x["a"])
    np.testing.assert_array_equal(np.asarray(b.x["a"][4:]), 0.0)
    np.testing.assert_array_equal(np.asarray(b.y[4:]), 0.0)
    vx, vy = buf.valid_rows(b)
    np.testing.assert_array_equal(vy, y)
    np.testing.assert_array_equal(vx["b"], x["b"])


def test_append_writes_at_count_and_a_full_buffer_is_unchanged(rng):
    x, y = _data(2, rng), np.array([1.0, 2.0], np.float32)
    b = wrjax.buffer_from_data(x, y, 3)
    row = {"a": np.ones(3, np.float32), "b": np.int32(5)}
    b = buf.append(b, row, 7.0)
    assert int(b.count) == 3 and bool(b.mask[2])
    np.testing.assert_array_equal(np.asarray(b.x["a"][2]), 1.0)
    assert int(b.x["b"][2]) == 5 and float(b.y[2]) == 7.0
    full = buf.append(b, {"a": np.full(3, 9.0, np.float32), "b": np.int32(1)}, 9.0)
    assert int(full.count) == 3
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), full, b)


def test_append_keeps_dtypes_and_never_retraces(rng, trace_counter):
    """Appending into a fixed capacity keeps the shapes, so a jitted consumer compiles once."""
    x, y = _data(3, rng), rng.normal(size=3).astype(np.float32)
    b = wrjax.buffer_from_data(x, y, 10)
    total = trace_counter(lambda b: jnp.sum(jnp.where(b.mask, b.y, 0.0)))
    f = jax.jit(total)
    for i in range(5):
        b = buf.append(b, {"a": np.full(3, i, np.float32), "b": np.int32(i)}, float(i))
        np.testing.assert_allclose(float(f(b)), y.sum() + sum(range(i + 1)), rtol=1e-6)
    assert total.count == 1
    assert b.x["a"].dtype == jnp.float32 and b.x["b"].dtype == jnp.int32 and b.y.dtype == jnp.float32


@pytest.mark.parametrize(
    "y,capacity,match",
    [
        (np.zeros((0,), np.float32), 3, "empty"),
        (np.array([1.0, np.nan], np.float32), 3, "finite"),
        (np.ones((2, 1), np.float32), 3, "1-D"),
        (np.ones(2, np.float32), 1, "capacity"),
    ],
)
def test_bad_data_raises(y, capacity, match):
    x = np.zeros((len(y), 2), np.float32)
    with pytest.raises(ValueError, match=match):
        wrjax.buffer_from_data(x, y, capacity)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="leading sizes"):
        wrjax.buffer_from_data(np.zeros((3, 2)), np.ones(2, np.float32), 4)
