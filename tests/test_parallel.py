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


def run_on_two_devices(script: str) -> dict:
    """Run ``script`` in a fresh Python with two forced CPU devices; its last line as JSON."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_device_result():
    return run_on_two_devices(SCRIPT)


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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_pretrain_like_two_devices(tmp_path):
    """`experiments/pretrain.py chem --data-parallel --distributed` as 2 processes on localhost
    (one CPU device each): the same losses and parameters as one process with 2 forced
    devices, and only process 0 writes."""
    import jax
    import numpy as np
    from flax import serialization

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "experiments/pretrain.py", "chem", "--preset", "cpu", "--num-steps",
           "4", "--batch-size", "16", "--num-train", "256", "--chunk-steps", "2",
           "--warmup-steps", "0", "--num-eval", "16", "--prior-samples", "16", "--processes",
           "1", "--data-parallel"]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    one = subprocess.run(cmd + ["--out", str(tmp_path / "dev2" / "m")], cwd=root, timeout=600,
                         env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                         capture_output=True, text=True)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    assert "data-parallel over 2 devices, 1 process(es)" in one.stdout
    port = _free_port()
    procs = [subprocess.Popen(cmd + ["--distributed", "--out", str(tmp_path / "mp" / "m")],
                              cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                       JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
             for i in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert all("data-parallel over 2 devices, 2 process(es)" in o for o in outs)
    assert "wrote" in outs[0] and "wrote" not in outs[1]  # only process 0 writes
    a, b = tmp_path / "dev2" / "m", tmp_path / "mp" / "m"
    ha, hb = (json.loads(p.with_suffix(".json").read_text())["history"] for p in (a, b))
    assert ha["step"] == hb["step"] == [2, 4]
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-5)
    pa, pb = (serialization.msgpack_restore(p.with_suffix(".msgpack").read_bytes()) for p in (a, b))
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


GP_SCRIPT = textwrap.dedent(
    """
    import json, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from wrjax import gp, parallel

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)); y = np.sin(x[:, 0]) + 0.1 * rng.normal(size=64)
    mask = np.arange(64) < 60  # padding rows too
    data = gp.make_data(x, y, mask)
    params = gp.init_params(jax.random.key(0), data, num_inducing=8)
    f = jax.jit(jax.value_and_grad(gp.collapsed_elbo))
    (v1, g1), (v2, g2) = f(params, data), f(params, parallel.shard_rows(data, parallel.data_mesh()))
    sharded = parallel.shard_rows(data, parallel.data_mesh())
    try:
        parallel.shard_rows(gp.make_data(x[:63], y[:63], mask[:63]), parallel.data_mesh())
        error = None
    except ValueError as e:
        error = str(e)
    print(json.dumps({
        "x_shard_rows": sharded.x.sharding.shard_shape(sharded.x.shape)[0],
        "value_diff": abs(float(v1 - v2)), "value": float(v1),
        "grad_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2))),
        "error": error,
    }))
    """
)


def test_gp_bound_on_rows_sharded_over_two_devices_equals_one_device():
    r = run_on_two_devices(GP_SCRIPT)
    assert r["x_shard_rows"] == 32  # really split: 64 rows over 2 devices
    assert r["value_diff"] <= 1e-9 * max(1.0, abs(r["value"]))
    assert r["grad_diff"] <= 1e-8
    assert "63 rows does not divide over 2 devices" in r["error"]
