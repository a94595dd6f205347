"""Data parallelism over the available devices with ``jax.sharding`` (no pmap, no new API).

The training step of ``wrjax.vae`` is already a pure function of (state, batch). To run it
data-parallel, place the state *replicated* on a 1-D device mesh and shard each minibatch's
leading axis over it: XLA's SPMD partitioner then gives every device its share of the batch
and inserts the all-reduce of the gradient. The same code runs unchanged on one device (a mesh
of one). Parameters of a large model can instead be *sharded* over the same axis
(:func:`shard_large`), a fully-sharded data-parallel layout that divides the memory of the
parameters and the Adam moments by the device count.

Example (two forced CPU devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=2``)::

    mesh = data_mesh()
    state = replicate(state, mesh)
    state, info = wrjax.vae.fit(key, state, step, replicate(data, mesh), weights,
                                num_steps=100, batch_size=64,
                                batch_sharding=batch_sharding(mesh))

Multi-host: call :func:`initialize_distributed` first on every host (it wraps
``jax.distributed.initialize``); ``jax.devices()`` then lists every host's devices and the
same mesh spans them.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wrjax.typing import PyTree

__all__ = [
    "DATA_AXIS",
    "data_mesh",
    "batch_sharding",
    "replicated",
    "replicate",
    "shard_large",
    "shard_rows",
    "initialize_distributed",
]

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None, *, axis: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all of ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("no devices for the mesh")
    return Mesh(np.array(devices), (axis,))


def batch_sharding(mesh: Mesh, *, axis: str = DATA_AXIS) -> NamedSharding:
    """Leading (batch) axis split over ``axis``; the batch size must divide by its size."""
    return NamedSharding(mesh, PartitionSpec(axis))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """``tree`` copied to every device of ``mesh`` (params, optimiser state, the data buffer)."""
    return jax.device_put(tree, replicated(mesh))


def shard_large(tree: PyTree, mesh: Mesh, *, min_size: int = 2**18, axis: str = DATA_AXIS):
    """Shard each array of at least ``min_size`` elements along its first axis divisible by
    the mesh size; smaller ones are replicated. For models too large to copy to every device
    (the paper's 76M-parameter dSprites VAE with its Adam moments)."""
    n = mesh.shape[axis]

    def place(a):
        a = jax.numpy.asarray(a)
        if a.size >= min_size:
            for i, d in enumerate(a.shape):
                if d % n == 0:
                    spec = [None] * a.ndim
                    spec[i] = axis
                    return jax.device_put(a, NamedSharding(mesh, PartitionSpec(*spec)))
        return jax.device_put(a, replicated(mesh))

    return jax.tree.map(place, tree)


def shard_rows(tree: PyTree, mesh: Mesh, *, axis: str = DATA_AXIS) -> PyTree:
    """A pytree of per-row arrays (e.g. the GP's :class:`wrjax.gp.SGPRData`) with every
    leaf's leading axis split over ``axis``; scalars are replicated. Sums over rows (the
    sparse GP's bound, its predictor's statistics) then run on each device's rows, XLA adding
    the partial sums. ``ValueError`` if a leading axis does not divide by the mesh size (pad
    with masked rows)."""
    n = mesh.shape[axis]

    def place(a):
        a = jax.numpy.asarray(a)
        if a.ndim == 0:
            return jax.device_put(a, replicated(mesh))
        if a.shape[0] % n:
            raise ValueError(f"a leading axis of {a.shape[0]} rows does not divide over {n} devices")
        return jax.device_put(a, NamedSharding(mesh, PartitionSpec(axis)))

    return jax.tree.map(place, tree)


def initialize_distributed(**kwargs) -> None:
    """``jax.distributed.initialize(**kwargs)`` once per process, for multi-host runs (a second
    call does nothing). Call it before anything starts JAX's backend (a computation, even
    ``jnp.asarray`` at import time, or ``jax.devices()``).

    Without arguments the cluster comes from the environment: ``JAX_COORDINATOR_ADDRESS``
    (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read here: JAX
    itself reads only the address), else JAX's detection (SLURM, Open MPI, Cloud TPU). On CPU
    the processes' collectives go through gloo (JAX's default
    ``jax_cpu_collectives_implementation``).
    """
    if jax.distributed.is_initialized():
        return
    for name, var in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        if kwargs.get(name) is None and os.environ.get(var):
            kwargs[name] = int(os.environ[var])
    jax.distributed.initialize(**kwargs)
