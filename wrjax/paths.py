"""Where data sets, shipped checkpoints and caches are found: the one resolver.

Nothing else in ``wrjax`` locates files from ``__file__``. Every lookup tries, in order, an
environment variable, then the source checkout the package runs from (if any), then, for the
small shipped checkpoints, the package data of an installed wheel:

=========================  ================================================================
``data_dir(name, env)``    ``$env`` (e.g. ``WRJAX_ZINC_DIR``), ``$WRJAX_DATA_DIR/name``,
                           ``<repo>/../shared/data/name``, ``<repo>/shared/data/name``
``shipped_checkpoint``     ``$WRJAX_CHECKPOINT_DIR/task/name``, ``<repo>/checkpoints/task/name``,
                           the wheel's ``wrjax/_shipped/task/name``
``cache_dir(task)``        ``$WRJAX_CACHE_DIR/task``, ``<repo>/checkpoints/task``,
                           ``~/.cache/wrjax/task`` (created)
=========================  ================================================================

``<repo>`` is :func:`repo_root`: the checkout that holds this package (an editable install or
``PYTHONPATH=.``), ``None`` for an installed wheel. Each miss raises ``FileNotFoundError``
listing every place looked in.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = [
    "repo_root",
    "data_dir",
    "shipped_checkpoint",
    "cache_dir",
    "checkpoint_for_k",
    "shipped_ks",
]

_PACKAGE = Path(__file__).resolve().parent  # .../wrjax


def repo_root() -> Path | None:
    """The source checkout this package runs from (it has ``pyproject.toml`` and
    ``checkpoints/`` beside ``wrjax/``), else ``None`` (an installed wheel)."""
    root = _PACKAGE.parent
    if (root / "pyproject.toml").is_file() and (root / "checkpoints").is_dir():
        return root
    return None


def _env_path(var: str | None) -> Path | None:
    value = os.environ.get(var) if var else None
    return Path(value).expanduser() if value else None


def _not_found(what: str, looked: list[Path], hint: str) -> FileNotFoundError:
    places = ", ".join(str(p) for p in looked) or "(nowhere: no candidate)"
    return FileNotFoundError(f"{what} not found; looked in: {places}. {hint}")


def data_dir(name: str, env_var: str | None = None) -> Path:
    """The folder of the read-only data set ``name`` (see each ``SOURCE.md``).

    Looks in ``$env_var``, ``$WRJAX_DATA_DIR/name``, ``<repo>/../shared/data/name`` and
    ``<repo>/shared/data/name``; ``FileNotFoundError`` listing them all if none is a folder.
    """
    looked = []
    if (p := _env_path(env_var)) is not None:
        looked.append(p)
    if (p := _env_path("WRJAX_DATA_DIR")) is not None:
        looked.append(p / name)
    if (root := repo_root()) is not None:
        looked += [root.parent / "shared" / "data" / name, root / "shared" / "data" / name]
    for c in looked:
        if c.is_dir():
            return c
    hint = f"Set {env_var} or WRJAX_DATA_DIR." if env_var else "Set WRJAX_DATA_DIR."
    raise _not_found(f"data set {name!r}", looked, hint)


def _checkpoint_dirs(task: str) -> list[Path]:
    dirs = []
    if (p := _env_path("WRJAX_CHECKPOINT_DIR")) is not None:
        dirs.append(p / task)
    if (root := repo_root()) is not None:
        dirs.append(root / "checkpoints" / task)
    dirs.append(_PACKAGE / "_shipped" / task)
    return dirs


def shipped_checkpoint(task: str, name: str) -> Path:
    """The stem path (no suffix) of the shipped model ``name`` of ``task``, for reading.

    The first of ``$WRJAX_CHECKPOINT_DIR/task``, ``<repo>/checkpoints/task`` and the wheel's
    ``wrjax/_shipped/task`` that holds ``name.json``; ``FileNotFoundError`` listing them.
    """
    looked = [d / name for d in _checkpoint_dirs(task)]
    for stem in looked:
        if Path(f"{stem}.json").is_file():
            return stem
    raise _not_found(f"shipped checkpoint {task}/{name}.json", looked,
                     "Set WRJAX_CHECKPOINT_DIR (a folder with <task>/<name>.json and .msgpack).")


def cache_dir(task: str) -> Path:
    """A writable folder for ``task``'s caches (parsed data and the like), created if needed:
    ``$WRJAX_CACHE_DIR/task``, else ``<repo>/checkpoints/task``, else ``~/.cache/wrjax/task``."""
    if (p := _env_path("WRJAX_CACHE_DIR")) is not None:
        d = p / task
    elif (root := repo_root()) is not None:
        d = root / "checkpoints" / task
    else:
        d = Path.home() / ".cache" / "wrjax" / task
    d.mkdir(parents=True, exist_ok=True)
    return d


def shipped_ks(task: str, prefix: str) -> list[str]:
    """The ``k`` tags (``"inf"``, ``"1e-3"``, ...) of the shipped ``{prefix}-k_*`` models."""
    tags = set()
    for d in _checkpoint_dirs(task):
        for p in d.glob(f"{prefix}-k_*.json"):
            tags.add(p.name[len(prefix) + 3 : -len(".json")])
    return sorted(tags)


def checkpoint_for_k(task: str, prefix: str, k: float | None, *,
                     fallback: float | None = math.inf) -> Path:
    """THE one mapping of a rank-weighting ``k`` to a shipped checkpoint.

    ``shipped_checkpoint(task, f"{prefix}-k_{format_k(k)}")`` (``k=None`` means ``inf``). When
    no model was pretrained with that ``k``, the ``fallback`` k's model (default the
    unweighted ``k = inf`` one; the loop's initial fine-tune then applies ``k``); with
    ``fallback=None``, or when that is missing too, ``FileNotFoundError`` naming the ks that
    exist.

    >>> checkpoint_for_k("shapes", "squares2d", 1e-3).name
    'squares2d-k_1e-3'
    """
    from wrjax.weighting import format_k

    tried = [math.inf if k is None else k]
    if fallback is not None:
        tried.append(fallback)
    for kk in tried:
        try:
            return shipped_checkpoint(task, f"{prefix}-k_{format_k(kk)}")
        except FileNotFoundError:
            continue
    have = shipped_ks(task, prefix)
    raise FileNotFoundError(
        f"no shipped {task} checkpoint {prefix}-k_{format_k(tried[0])}"
        + (f" (nor the fallback k_{format_k(fallback)})" if fallback is not None else "")
        + f"; shipped ks: {', '.join(have) if have else 'none'} (in "
        + ", ".join(str(d) for d in _checkpoint_dirs(task)) + ")"
    )
