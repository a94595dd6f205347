"""Saving and loading pytrees without pickle.

A checkpoint is two files side by side: ``NAME.msgpack`` holds the arrays, written with
``flax.serialization`` (msgpack: a data format, it cannot run code on load), and
``NAME.json`` holds human-readable metadata (the command that made it, the config, the
time taken). Loading needs a *target* pytree of the same structure (e.g. freshly initialised
params), as with flax's own ``from_bytes``; the arrays come back on the default device.

Writes are atomic (write to a temporary file, then rename), so an interrupted run never
leaves a half-written file behind. The pair is one unit: the blob is written first and the
JSON last, and with ``checksum=True`` the JSON records the blob's size and SHA-256, so a
checkpoint is complete exactly when its JSON parses and the blob matches it
(:func:`verify_checkpoint`); a kill between the two writes leaves a blob without JSON, an
incomplete checkpoint, never a wrong one.

Shipped models (the pretrained VAEs) use one format on top of this: :func:`save_model` writes
the params and a JSON record ``{"format": "wrjax-model/1", "config": ..., "command": ...,
"data": ..., "seconds": ..., "metrics": ..., "machine": machine_description()}``, and
:func:`load_model` rebuilds the model from that record with a task's ``build_fn``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import serialization

from wrjax.typing import PyTree

__all__ = ["save_pytree", "load_pytree", "load_metadata", "atomic_write_bytes", "verify_checkpoint",
           "CheckpointError", "machine_description", "save_model", "load_model", "MODEL_FORMAT"]

#: The ``format`` field of a model record written by :func:`save_model`.
MODEL_FORMAT = "wrjax-model/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or incomplete (the message names the file)."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two writers never share one
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".msgpack", ".json") else p
    # Append, never replace: "model-k_0.001" must not become "model-k_0.msgpack".
    return Path(f"{stem}.msgpack"), Path(f"{stem}.json")


def save_pytree(path: str | os.PathLike, tree: PyTree, metadata: dict[str, Any] | None = None,
                *, checksum: bool = False):
    """Save ``tree`` (arrays, NamedTuples, dicts, PRNG keys) to ``path`` (+ ``.json`` metadata).

    Typed PRNG keys are stored as their raw ``uint32`` key data. ``checksum``: record the
    blob's size and SHA-256 in the metadata (``blob_bytes``, ``blob_sha256``), checked by
    :func:`verify_checkpoint`.
    """
    tree = jax.tree.map(_to_numpy, tree)
    blob_path, meta_path = _paths(path)
    blob = serialization.to_bytes(tree)
    atomic_write_bytes(blob_path, blob)
    metadata = dict(metadata or {})
    if checksum:
        metadata.update(blob_bytes=len(blob), blob_sha256=hashlib.sha256(blob).hexdigest())
    text = json.dumps(_strict_json(metadata), indent=2, default=str, allow_nan=False)
    atomic_write_bytes(meta_path, text.encode())


def load_pytree(path: str | os.PathLike, target: PyTree) -> PyTree:
    """Load a pytree saved by :func:`save_pytree` into the structure of ``target``.

    Leaves of ``target`` that are typed PRNG keys are restored as keys.
    """
    blob_path, _ = _paths(path)
    if not blob_path.exists():
        raise FileNotFoundError(f"no checkpoint at {blob_path}")
    raw_target = jax.tree.map(_to_numpy, target)
    try:
        restored = serialization.from_bytes(raw_target, blob_path.read_bytes())
    except Exception as e:  # msgpack's errors name no file
        raise CheckpointError(f"damaged checkpoint {blob_path}: {type(e).__name__}: {e}") from e
    return jax.tree.map(_restore_like, restored, target)


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata saved beside a checkpoint (``CheckpointError`` naming the file if
    it is missing or not a JSON object)."""
    _, meta_path = _paths(path)
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"incomplete checkpoint: {meta_path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"damaged checkpoint metadata {meta_path}: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"damaged checkpoint metadata {meta_path}: not a JSON object")
    return meta


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a complete checkpoint saved with ``checksum=True``.

    Raises :class:`CheckpointError` naming the file when the JSON is missing or damaged, or
    the blob is missing or differs from the size and SHA-256 the JSON records.
    """
    blob_path, meta_path = _paths(path)
    meta = load_metadata(path)
    if "blob_sha256" not in meta:
        raise CheckpointError(f"{meta_path} records no blob checksum (not saved with checksum=True)")
    if not blob_path.exists():
        raise CheckpointError(f"incomplete checkpoint: {blob_path} is missing")
    blob = blob_path.read_bytes()
    if len(blob) != meta.get("blob_bytes") or hashlib.sha256(blob).hexdigest() != meta["blob_sha256"]:
        raise CheckpointError(f"damaged checkpoint {blob_path}: {len(blob)} bytes, not the "
                              f"{meta.get('blob_bytes')} bytes its metadata records (or a different checksum)")
    return meta


def machine_description() -> dict[str, Any]:
    """The one description of the machine a run happened on (for records and checkpoints):
    platform, CPU model, core count, the CPU's vector flags, ``XLA_FLAGS``, the 1-minute
    load average (a shared CPU is slower), jax/jaxlib versions, backend and devices."""
    cpu_model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu_model in ("", platform.machine(), "x86_64"):
                    cpu_model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    wanted = ("avx", "avx2", "avx512f", "fma", "sse4_2", "neon", "asimd", "sve")
                    flags = sorted(set(value.split()) & set(wanted))
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    import jaxlib

    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_flags": flags,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average_1m": load,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def save_model(path: str | os.PathLike, params: PyTree, *, config: dict[str, Any],
               record: dict[str, Any] | None = None) -> None:
    """Save a model's ``params`` as ``path.msgpack`` and its record as ``path.json``.

    The JSON is ``{"format": MODEL_FORMAT, "config": config, **record, "machine": ...}``:
    ``config`` is what the task's ``build_fn`` needs to rebuild the model, ``record`` holds
    ``"command"``, ``"data"``, ``"seconds"``, ``"metrics"`` (and anything else), and
    :func:`machine_description` is added (merged under any ``record["machine"]`` entries).
    The blob's checksum is recorded and checked by :func:`load_model`.
    """
    record = dict(record or {})
    for reserved in ("format", "config"):
        if reserved in record:
            raise ValueError(f"record must not set {reserved!r} (save_model writes it)")
    machine = {**machine_description(), **dict(record.pop("machine", None) or {})}
    meta = {"format": MODEL_FORMAT, "config": dict(config), **record, "machine": machine}
    save_pytree(path, params, meta, checksum=True)


def load_model(path: str | os.PathLike, build_fn: Callable[[dict], tuple[Any, PyTree]]
               ) -> tuple[Any, PyTree, dict[str, Any]]:
    """Load a model saved by :func:`save_model` (or an older shipped checkpoint).

    ``build_fn(metadata) -> (model, params_template)`` rebuilds the model from the JSON
    record (``metadata["config"]``, or the fields of an older layout) and returns a pytree of
    the params' structure (arrays or ``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape``).
    Returns ``(model, params, metadata)`` with the params as device arrays. A recorded
    checksum is verified (:class:`CheckpointError` naming the file).
    """
    meta = verify_checkpoint(path) if "blob_sha256" in load_metadata(path) else load_metadata(path)
    model, template = build_fn(meta)
    template = jax.tree.map(
        lambda s: np.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s, template)
    params = jax.tree.map(jax.numpy.asarray, load_pytree(path, template))
    return model, params, meta


def _strict_json(value):
    """Standard JSON has no NaN/Infinity: write non-finite floats as strings ("inf")."""
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return str(float(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _to_numpy(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x) if isinstance(x, (jax.Array, np.ndarray, np.generic)) else x


def _restore_like(value, like):
    if isinstance(like, jax.Array) and jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jax.numpy.asarray(value))
    if isinstance(like, np.ndarray):
        return np.asarray(value, dtype=like.dtype)
    if isinstance(like, jax.Array):
        return jax.numpy.asarray(value, dtype=like.dtype)
    return value
