"""Data-parallel training with jax.sharding equals one-device training (forced host devices)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp, numpy as np, optax
    from wrjax import parallel, vae
    from wrjax.tasks.toy import BitVAE

    model = BitVAE(length=16, latent_dim=4, hidden=32)  # the toy task's MLP VAE
    data = (jax.random.uniform(jax.random.key(1), (96, 16)) > 0.5).astype(jnp.float32)
    params = model.init(jax.random.key(0), data[:1])["params"]
    opt = optax.adam(1e-2)
    step = vae.make_train_step(model, opt, beta=1.0)
    w = jnp.ones((96,))
    kw = dict(num_steps=20, batch_size=32)
    single, info1 = vae.fit(jax.random.key(2), vae.init_train_state(params, opt), step, data, w, **kw)
    mesh = parallel.data_mesh()
    state = parallel.replicate(vae.init_train_state(params, opt), mesh)
    multi, info2 = vae.fit(jax.random.key(2), state, step, parallel.replicate(data, mesh), w,
                           batch_sharding=parallel.batch_sharding(mesh), **kw)
    leaf = jax.tree.leaves(multi.params)[0]
    big = parallel.shard_large({"w": jnp.ones((8, 6)), "b": jnp.ones((3,))}, mesh, min_size=16)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(single.params), jax.tree.leaves(multi.params)))
    print(json.dumps({
        "devices": len(jax.devices()),
        "param_devices": len(leaf.sharding.device_set),
        "max_param_diff": diff,
        "loss_diff": float(jnp.max(jnp.abs(info1.loss - info2.loss))),
        "loss_drop": float(info1.loss[0] - info1.loss[-1]),
        "w_spec": [str(a) for a in big["w"].sharding.spec],
        "w_shard_shape": list(big["w"].sharding.shard_shape(big["w"].shape)),
        "b_shard_shape": list(big["b"].sharding.shard_shape(big["b"].shape)),
    }))
    """
)


@pytest.fixture(scope="module")
def two_device_result():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_devices_train_like_one(two_device_result):
    r = two_device_result
    assert r["devices"] == 2 and r["param_devices"] == 2  # really on both devices
    assert r["loss_drop"] > 0.5  # the run learns, so equality is not vacuous
    # same losses and parameters as one device, within float32 reduction-order tolerance
    assert r["loss_diff"] < 1e-3 and r["max_param_diff"] < 1e-4


def test_large_arrays_are_sharded_small_ones_replicated(two_device_result):
    assert two_device_result["w_spec"][0] == "data"
    assert two_device_result["w_shard_shape"] == [4, 6]  # (8, 6) split in two along axis 0
    assert two_device_result["b_shard_shape"] == [3]  # too small: a full copy
