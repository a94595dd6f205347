"""The data of the chemical-design task: ZINC250k, its scores, SELFIES and novelty keys.

:func:`load_zinc`: the 249,456 ZINC250k SMILES and the JT-VAE train/valid/test split
(220,011 / 24,445 / 5,000), from the data set folder ``zinc250k`` found by
:func:`wrjax.paths.data_dir` (``$WRJAX_ZINC_DIR`` first). :func:`zinc_scores` gives the scores
of a split, computed once for all 249,456 molecules and cached as the three raw terms (so that
any constants and floor reuse the cache); :func:`zinc_selfies` and :func:`zinc_novelty_keys`
cache the SELFIES and novelty keys of all molecules the same way, each keyed by the input
file's SHA-256. They are written to :func:`wrjax.paths.cache_dir` ``("chem")``
(``checkpoints/chem/`` of a checkout, where they are shipped, so that a fresh clone starts the
task at once) and also read from the folder of the shipped models (e.g.
``$WRJAX_CHECKPOINT_DIR/chem`` for an installed package).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Literal

import networkx as nx
import numpy as np
from rdkit import rdBase

from wrjax import paths
from wrjax.tasks.chem.molecules import parallel_map
from wrjax.tasks.chem.novelty import novelty_key
from wrjax.tasks.chem.objective import PlogpConstants, plogp_from_terms, plogp_terms
from wrjax.tasks.chem.selfies import to_selfies

__all__ = [
    "NUM_ZINC",
    "zinc_dir",
    "load_zinc",
    "zinc_terms",
    "zinc_scores",
    "zinc_selfies",
    "zinc_novelty_keys",
    "file_sha256",
]

NUM_ZINC = 249_456
_SPLIT_FILES = {
    "all": "250k_rndm_zinc_drugs_clean.smi.gz",
    "train": "train.csv.gz",
    "valid": "valid.csv.gz",
    "test": "test.csv.gz",
}
Split = Literal["train", "valid", "test", "all"]


def zinc_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else the ``zinc250k`` data set folder (:func:`wrjax.paths.data_dir`,
    ``$WRJAX_ZINC_DIR`` first)."""
    return Path(data_dir) if data_dir else paths.data_dir("zinc250k", "WRJAX_ZINC_DIR")


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir else paths.cache_dir("chem")


def _cache_dirs(cache_dir: str | os.PathLike | None) -> list[Path]:
    """Where a cache is read from: ``cache_dir`` if given; else the writable cache folder and
    then the folder of the shipped models (``$WRJAX_CHECKPOINT_DIR/chem`` for an installed
    package: the caches are shipped beside the models), the first found winning."""
    dirs = [_cache_dir(cache_dir)]
    if not cache_dir:
        try:
            shipped = paths.shipped_checkpoint("chem", "selfies_gru_vae").parent
        except FileNotFoundError:
            shipped = None
        if shipped is not None and shipped not in dirs:
            dirs.append(shipped)
    return dirs


def _zinc_path(split: str, data_dir) -> Path:
    if split not in _SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(_SPLIT_FILES)}")
    path = zinc_dir(data_dir) / _SPLIT_FILES[split]
    if not path.exists():
        raise FileNotFoundError(f"missing {path}; see SOURCE.md in the ZINC250k data folder")
    return path


@functools.lru_cache(maxsize=8)
def _read_split(path: str) -> tuple[str, ...]:
    with gzip.open(path, "rt") as f:
        return tuple(line.strip() for line in f if line.strip())


def load_zinc(split: Split = "train", *, data_dir: str | os.PathLike | None = None) -> list[str]:
    """The SMILES of a ZINC250k split, in file order.

    ``"all"`` is the 249,456 of ``250k_rndm_zinc_drugs_clean.smi``; ``"train"`` (220,011),
    ``"valid"`` (24,445) and ``"test"`` (5,000) are the JT-VAE split of the same molecules.
    """
    return list(_read_split(str(_zinc_path(split, data_dir))))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_TERMS_NAME = "zinc250k_plogp_terms"


def zinc_terms(
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    processes: int = 2,
    progress: bool = True,
    recompute: bool = False,
) -> np.ndarray:
    """Raw terms ``(logP, SA, cycle)`` of all 249,456 ZINC molecules, ``(N, 3)`` float32.

    Read from ``cache_dir/zinc250k_plogp_terms.npy`` (default: the cache folder, then the
    shipped models' folder) when its JSON record names the same input file (SHA-256) and row
    count; otherwise computed (a few minutes on 2 cores, with a progress bar) and written to
    the cache folder, with the input SHA and the RDKit version beside it. float32 keeps the
    file at 3 MB; the terms are then exact to about 1e-6.
    """
    src = _zinc_path("all", data_dir)
    sha = file_sha256(src)
    for folder in [] if recompute else _cache_dirs(cache_dir):
        npy, meta = folder / f"{_TERMS_NAME}.npy", folder / f"{_TERMS_NAME}.json"
        if npy.exists() and meta.exists():
            record = json.loads(meta.read_text())
            if record.get("input_sha256") == sha:
                terms = np.load(npy, allow_pickle=False)
                if terms.shape == (record["rows"], 3):
                    return terms
    cache = _cache_dir(cache_dir)
    npy, meta = cache / f"{_TERMS_NAME}.npy", cache / f"{_TERMS_NAME}.json"
    smiles = load_zinc("all", data_dir=data_dir)
    terms = parallel_map(
        plogp_terms, smiles, processes=processes, progress=progress, desc="ZINC terms"
    )
    terms = np.asarray(terms, np.float32).reshape(len(smiles), 3)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(f"{npy.name}.{os.getpid()}.tmp.npy")  # per process (parallel test workers)
    np.save(tmp, terms, allow_pickle=False)
    os.replace(tmp, npy)
    record = {
        "input_file": src.name,
        "input_sha256": sha,
        "rows": len(smiles),
        "columns": ["logp (Crippen MolLogP)", "sa (sascorer)", "cycle (max(0, largest-6))"],
        "dtype": "float32",
        "rdkit": rdBase.rdkitVersion,
        "networkx": nx.__version__,
        "invalid_rows": int(np.isnan(terms).any(axis=1).sum()),
        "note": "row i is line i of the input file; the score is plogp_from_terms(*terms.T)",
    }
    meta.write_text(json.dumps(record, indent=2))
    return terms


def zinc_scores(
    split: Split = "all",
    *,
    floor: float | None = -6.0,
    constants: str | PlogpConstants = "zinc250k",
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    processes: int = 2,
    progress: bool = True,
    recompute: bool = False,
) -> np.ndarray:
    """Penalized logP of every molecule of a split, aligned with :func:`load_zinc`.

    Returns ``(N,)`` float64. The raw terms are cached (see :func:`zinc_terms`), so changing
    ``floor`` or ``constants`` costs nothing.
    """
    terms = zinc_terms(
        data_dir=data_dir,
        cache_dir=cache_dir,
        processes=processes,
        progress=progress,
        recompute=recompute,
    )
    if split != "all":
        row = {s: i for i, s in enumerate(load_zinc("all", data_dir=data_dir))}
        terms = terms[np.asarray([row[s] for s in load_zinc(split, data_dir=data_dir)])]
    return plogp_from_terms(
        terms[:, 0], terms[:, 1], terms[:, 2], floor=floor, constants=constants
    )


def _cached_zinc_strings(
    tag: str, fn: Callable, split: str, data_dir, cache_dir, processes: int, progress: bool
) -> list[str | None]:
    """``fn`` over all ZINC molecules, cached as gzipped lines ("" for None), keyed by the
    input file's SHA-256; returned for ``split``, aligned with :func:`load_zinc`."""
    src = _zinc_path("all", data_dir)
    sha = file_sha256(src)
    name = f"zinc250k_{tag}_{sha[:12]}.txt.gz"
    smiles = load_zinc("all", data_dir=data_dir)
    lines = None
    for folder in _cache_dirs(cache_dir):
        if (folder / name).exists():
            with gzip.open(folder / name, "rt") as f:
                lines = f.read().split("\n")
            if len(lines) == len(smiles):
                break
            lines = None
    if lines is None:
        path = _cache_dir(cache_dir) / name
        out = parallel_map(fn, smiles, processes=processes, progress=progress, desc=tag)
        lines = ["" if s is None else s for s in out]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with gzip.open(tmp, "wt") as f:
            f.write("\n".join(lines))
        os.replace(tmp, path)
    values = [s or None for s in lines]
    if split == "all":
        return values
    row = {s: i for i, s in enumerate(smiles)}
    return [values[row[s]] for s in load_zinc(split, data_dir=data_dir)]


def zinc_selfies(
    split: Split = "all",
    *,
    isomeric: bool = False,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    processes: int = 2,
    progress: bool = True,
) -> list[str | None]:
    """:func:`to_selfies` of every molecule of a split, aligned with :func:`load_zinc`.

    Computed once for all 249,456 molecules (about 2 minutes on 2 idle cores) and cached in
    ``cache_dir`` (default :func:`wrjax.paths.cache_dir` ``("chem")``), keyed by the
    input file's SHA-256.
    """
    fn = functools.partial(to_selfies, isomeric=isomeric)
    tag = f"selfies_{'iso' if isomeric else 'noiso'}"
    return _cached_zinc_strings(tag, fn, split, data_dir, cache_dir, processes, progress)


def zinc_novelty_keys(
    split: Split = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    processes: int = 2,
    progress: bool = True,
) -> list[str | None]:
    """:func:`novelty_key` of every molecule of a split (cached like :func:`zinc_selfies`).

    ``NoveltyChecker(zinc_novelty_keys("train"), canonical=True)`` is the optimiser's
    novelty set without canonicalising 220k molecules at each start.
    """
    return _cached_zinc_strings(
        "novelty_keys", novelty_key, split, data_dir, cache_dir, processes, progress
    )
