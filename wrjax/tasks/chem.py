"""The chemical-design task (paper §6.3): ZINC250k, penalized logP, SELFIES, novelty.

This module is the host side of the task: RDKit, networkx and ``selfies`` in plain Python and
NumPy, nothing jitted. The SELFIES VAE (flax) lives in :mod:`wrjax.tasks.chem_model`.

Objective (maximised), :func:`penalized_logp`: the penalized water-octanol partition
coefficient of Kusner et al. (2017), as scored by JT-VAE, GCPN and the authors::

    score = (logP - mu_logP) / sd_logP + (-SA - mu_-SA) / sd_-SA + (-cycle - mu_-cycle) / sd_-cycle

with ``logP`` Crippen's ``MolLogP``, ``SA`` the synthetic-accessibility score of Ertl &
Schuffenhauer (RDKit Contrib ``sascorer``, shipped in the rdkit wheel) and ``cycle`` the size
of the largest ring in a cycle basis of the molecular graph minus 6, floored at 0. The cycle
basis is not unique; it is built exactly as the benchmark code does, ``nx.cycle_basis`` of
``nx.Graph(Chem.GetAdjacencyMatrix(mol))``. The paper floors the score at -6 (the authors'
code at -4); the floor is the keyword ``floor``. An invalid SMILES scores NaN, never raises.
Each molecule is scored in its stereo-free canonical form, so the score depends on the
molecule only, not on how its SMILES is written.

Data, :func:`load_zinc`: the 249,456 ZINC250k SMILES and the JT-VAE train/valid/test split
(220,011 / 24,445 / 5,000), from ``DATA_DIR`` (``$WRJAX_ZINC_DIR``, else found by
:func:`wrjax.data.shared_data_dir`). :func:`zinc_scores` gives the scores of a split, computed
once for all 249,456 molecules and cached as the three raw terms (so that any constants and
floor reuse the cache) in ``CACHE_DIR`` (``checkpoints/chem/`` of the repository).

Novelty: a molecule is novel when its canonical SMILES (:func:`novelty_key`) is neither in
the training set nor already queried (:class:`NoveltyChecker`). As in the authors' code the
key is RDKit's canonical SMILES *without* stereochemistry, so a stereoisomer of a known
molecule is not novel (penalized logP does not depend on stereochemistry).

SELFIES (Krenn et al., 2020): every token sequence decodes to a valid molecule. Each molecule
is canonicalised with RDKit, encoded with ``selfies.encoder``, split into tokens and mapped to
integers with a :class:`SelfiesVocab` built from the training data; id 0 is the stop/padding
symbol ``<stop>``. Stereochemistry is dropped by default (``SelfiesVocab.isomeric``): it
does not change the score and halves the vocabulary (52 symbols besides the stop on the
training split, against 107 with stereochemistry).
ZINC250k's longest SELFIES has 72 symbols (mean 37.4); the default ``max_len`` is 96.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gzip
import hashlib
import json
import math
import multiprocessing
import os
from pathlib import Path
from typing import Callable, Iterable, Literal, NamedTuple, Sequence

import networkx as nx
import numpy as np
import selfies as sf
from rdkit import Chem, rdBase
from rdkit import DataStructs
from rdkit.Chem import QED, Crippen, rdFingerprintGenerator
from rdkit.Contrib.SA_Score import sascorer
from tqdm.auto import tqdm

from wrjax.data import shared_data_dir

__all__ = [
    "DATA_DIR",
    "CACHE_DIR",
    "DATA_CACHE_DIR",
    "NUM_ZINC",
    "ZINC_MAX_SELFIES_LEN",
    "DEFAULT_MAX_LEN",
    "STOP",
    "STOP_ID",
    "PlogpConstants",
    "CONSTANTS",
    "PlogpTerms",
    "plogp_terms",
    "plogp_from_terms",
    "penalized_logp",
    "penalized_logp_batch",
    "ZINC_MAX_HEAVY_ATOMS",
    "heavy_atom_count",
    "penalized_logp_capped",
    "OBJECTIVES",
    "make_objective",
    "qed",
    "sa_score",
    "tanimoto",
    "load_model",
    "load_zinc",
    "zinc_terms",
    "zinc_scores",
    "file_sha256",
    "canonical_smiles",
    "canonical_smiles_batch",
    "novelty_key",
    "NoveltyChecker",
    "SelfiesVocab",
    "to_selfies",
    "to_selfies_batch",
    "zinc_selfies",
    "zinc_novelty_keys",
    "build_vocab",
    "selfies_to_tokens",
    "encode_selfies",
    "try_encode_selfies",
    "token_lengths",
    "tokens_to_selfies",
    "decode_tokens",
    "parallel_map",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = shared_data_dir("zinc250k", "WRJAX_ZINC_DIR", must_exist=False)
CACHE_DIR = _REPO_ROOT / "checkpoints" / "chem"  # small artefacts shipped with the repo
# SELFIES and canonical SMILES of all ZINC250k molecules (about 2 minutes each to compute on
# 2 cores): shipped beside the scores (6.7 MB) so that a fresh clone starts the task at once.
DATA_CACHE_DIR = CACHE_DIR
NUM_ZINC = 249_456
ZINC_MAX_SELFIES_LEN = 72  # longest canonical stereo-free SELFIES of the 249,456 (measured)
DEFAULT_MAX_LEN = 96  # 33% headroom above ZINC's longest, for molecules that grow
STOP = "<stop>"  # not a SELFIES symbol (those are bracketed), so it can never clash
STOP_ID = 0

_SPLIT_FILES = {
    "all": "250k_rndm_zinc_drugs_clean.smi.gz",
    "train": "train.csv.gz",
    "valid": "valid.csv.gz",
    "test": "test.csv.gz",
}
Split = Literal["train", "valid", "test", "all"]


# ---------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------


class PlogpConstants(NamedTuple):
    """Means and standard deviations that standardise the three terms of penalized logP.

    The SA and cycle statistics are those of ``-SA`` and ``-cycle`` (the signs the score
    uses), so their means are negative.
    """

    logp_mean: float
    logp_std: float
    neg_sa_mean: float
    neg_sa_std: float
    neg_cycle_mean: float
    neg_cycle_std: float


CONSTANTS: dict[str, PlogpConstants] = {
    # The standard ZINC250k statistics of JT-VAE / GCPN and most later work.
    "zinc250k": PlogpConstants(
        2.4570953396190123,
        1.434324401111988,
        -3.0525811293166134,
        0.8335207024513095,
        -0.0485696876403053,
        0.2860212110245455,
    ),
    # The authors' own (cambridge-mlg/weighted-retraining,
    # weighted_retraining/chem/chem_utils/__init__.py, ``penalized_logP``).
    "authors": PlogpConstants(
        2.45777691, 1.43341767, -3.05352042, 0.83460587, -0.04861121, 0.28746695
    ),
}


class PlogpTerms(NamedTuple):
    """The raw (unstandardised) terms of penalized logP; NaN for an invalid molecule."""

    logp: float  # Crippen MolLogP
    sa: float  # synthetic accessibility, 1 (easy) .. 10 (hard)
    cycle: float  # max(0, largest ring of the cycle basis - 6)


_NAN_TERMS = PlogpTerms(math.nan, math.nan, math.nan)


def _mol_from_smiles(smiles) -> Chem.Mol | None:
    """RDKit molecule, or None for a non-string, empty, unparsable or atomless SMILES."""
    if not isinstance(smiles, str) or not smiles.strip():
        return None
    with rdBase.BlockLogs():  # RDKit prints parse errors to stderr; invalid input is expected
        mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return mol


def _cycle_penalty(mol: Chem.Mol) -> int:
    # The benchmark's construction: the basis depends on networkx's traversal of this graph.
    cycles = nx.cycle_basis(nx.Graph(Chem.GetAdjacencyMatrix(mol)))
    largest = max((len(c) for c in cycles), default=0)
    return max(largest - 6, 0)


def plogp_terms(smiles: str) -> PlogpTerms:
    """The raw terms ``(logP, SA, cycle)`` of one molecule; all NaN when it is invalid.

    The molecule is first rewritten as its stereo-free canonical SMILES and parsed again (as
    the authors' ``standardize_smiles`` did): the cycle basis depends on the atom order, so
    without this two spellings of one molecule could score differently (about 1 in 6,000
    ZINC molecules, all bridged ring systems).
    """
    can = canonical_smiles(smiles, isomeric=False)
    mol = None if can is None else _mol_from_smiles(can)
    if mol is None:
        return _NAN_TERMS
    try:
        return PlogpTerms(
            float(Crippen.MolLogP(mol)),
            float(sascorer.calculateScore(mol)),
            float(_cycle_penalty(mol)),
        )
    except Exception:  # noqa: BLE001 - any RDKit failure on odd input means "invalid"
        return _NAN_TERMS


def _resolve_constants(constants: str | PlogpConstants) -> PlogpConstants:
    if isinstance(constants, PlogpConstants):
        return constants
    if constants not in CONSTANTS:
        raise ValueError(f"unknown constants {constants!r}; use one of {sorted(CONSTANTS)}")
    return CONSTANTS[constants]


def _check_floor(floor: float | None) -> float:
    if floor is None:
        return -math.inf
    floor = float(floor)
    if math.isnan(floor):
        raise ValueError("floor must be a number, -inf or None, not NaN")
    return floor


def plogp_from_terms(
    logp,
    sa,
    cycle,
    *,
    floor: float | None = -6.0,
    constants: str | PlogpConstants = "zinc250k",
) -> np.ndarray:
    """Penalized logP from raw terms (arrays of any matching shape); NaN stays NaN.

    ``floor=None`` (or ``-inf``) disables the floor. Returns float64.
    """
    c = _resolve_constants(constants)
    floor = _check_floor(floor)
    logp, sa, cycle = (np.asarray(a, np.float64) for a in (logp, sa, cycle))
    score = (
        (logp - c.logp_mean) / c.logp_std
        + (-sa - c.neg_sa_mean) / c.neg_sa_std
        + (-cycle - c.neg_cycle_mean) / c.neg_cycle_std
    )
    # np.fmax would turn NaN into the floor; invalid molecules must stay NaN.
    return np.where(np.isnan(score), np.nan, np.maximum(score, floor))


def penalized_logp(
    smiles: str,
    *,
    floor: float | None = -6.0,
    constants: str | PlogpConstants = "zinc250k",
) -> float:
    """Penalized logP of one SMILES (higher is better); NaN when it is not a valid molecule.

    Args:
      smiles: a SMILES string. Unparsable, empty or non-string input gives NaN (no exception).
      floor: the score is ``max(score, floor)``; the paper's -6 by default, the authors'
        code used -4; ``None`` or ``-inf`` for no floor.
      constants: ``"zinc250k"`` (the standard statistics), ``"authors"`` (those of the
        weighted-retraining code) or a :class:`PlogpConstants`.

    Returns:
      The score as a Python float.

    Example:
      >>> round(penalized_logp("c1ccccc1"), 4)   # benzene
      2.0952
      >>> penalized_logp("not a molecule")
      nan
    """
    t = plogp_terms(smiles)
    return float(plogp_from_terms(t.logp, t.sa, t.cycle, floor=floor, constants=constants))


#: ZINC250k's largest molecule has 38 heavy atoms (measured over all 249,456): the size limit
#: of the size-constrained objective, so that optimised molecules stay within the data's range.
ZINC_MAX_HEAVY_ATOMS = 38


def heavy_atom_count(smiles: str) -> int | None:
    """Number of heavy (non-hydrogen) atoms, or None for an invalid molecule."""
    mol = _mol_from_smiles(smiles)
    return None if mol is None else int(mol.GetNumHeavyAtoms())


def penalized_logp_capped(
    smiles: str,
    *,
    max_heavy_atoms: int = ZINC_MAX_HEAVY_ATOMS,
    floor: float = -6.0,
    constants: str | PlogpConstants = "zinc250k",
) -> float:
    """The size-constrained objective: penalized logP for molecules of at most
    ``max_heavy_atoms`` heavy atoms, ``floor`` for larger ones (a valid evaluation at the
    worst score, not a free retry), NaN for an invalid molecule.

    Penalized logP grows by about 0.3 per added carbon without limit (a 96-sulfur chain scores
    37.6); capping the size at ZINC's largest molecule measures optimisation within the
    chemistry the model was trained on.

    Example:
      >>> round(penalized_logp_capped("c1ccccc1"), 4)
      2.0952
      >>> penalized_logp_capped("C" * 39)   # 39 heavy atoms: the floor
      -6.0
    """
    if max_heavy_atoms < 1:
        raise ValueError(f"max_heavy_atoms must be >= 1, got {max_heavy_atoms}")
    if not math.isfinite(floor):
        raise ValueError(f"the capped objective needs a finite floor, got {floor}")
    atoms = heavy_atom_count(smiles)
    if atoms is None:
        return math.nan
    if atoms > max_heavy_atoms:
        return float(floor)
    return penalized_logp(smiles, floor=floor, constants=constants)


#: The objectives selectable by name (presets, the CLI): ``name -> callable(smiles) -> float``
#: given the floor and constants.
OBJECTIVES = ("plogp", "plogp_capped")


def make_objective(
    name: str = "plogp",
    *,
    floor: float = -6.0,
    constants: str | PlogpConstants = "zinc250k",
    max_heavy_atoms: int = ZINC_MAX_HEAVY_ATOMS,
) -> Callable[[str], float]:
    """The objective ``smiles -> score`` called ``name`` (one of :data:`OBJECTIVES`)."""
    if name == "plogp":
        return functools.partial(penalized_logp, floor=floor, constants=constants)
    if name == "plogp_capped":
        return functools.partial(
            penalized_logp_capped,
            max_heavy_atoms=max_heavy_atoms,
            floor=floor,
            constants=constants,
        )
    raise ValueError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")


def _descriptor(fn: Callable, smiles: str) -> float:
    """``fn(mol)`` as a float, NaN for an invalid molecule or an RDKit failure."""
    mol = _mol_from_smiles(smiles)
    if mol is None:
        return math.nan
    try:
        return float(fn(mol))
    except Exception:  # noqa: BLE001 - odd input means "no value", never a crash
        return math.nan


def qed(smiles: str) -> float:
    """RDKit's quantitative estimate of drug-likeness (0..1), NaN when invalid."""
    return _descriptor(QED.qed, smiles)


def sa_score(smiles: str) -> float:
    """Synthetic accessibility (1 easy .. 10 hard, Ertl & Schuffenhauer), NaN when invalid."""
    return _descriptor(sascorer.calculateScore, smiles)


def tanimoto(a: str, b: str, *, radius: int = 2, bits: int = 2048) -> float:
    """Tanimoto similarity of the Morgan fingerprints (radius 2, 2048 bits) of two molecules;
    NaN when either is invalid."""
    ma, mb = _mol_from_smiles(a), _mol_from_smiles(b)
    if ma is None or mb is None:
        return math.nan
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    return float(DataStructs.TanimotoSimilarity(gen.GetFingerprint(ma), gen.GetFingerprint(mb)))


def load_model(path: str | os.PathLike | None = "gru"):
    """The pretrained SELFIES VAE as a :class:`wrjax.tasks.chem_model.ChemModel`.

    Three lines from research code::

        model = wrjax.tasks.chem.load_model()     # the shipped GRU checkpoint
        z = model.encode(["CCO", "c1ccccc1"])     # (2, 56) encoder means
        smiles = model.decode(z)                  # greedy decodes, a list of SMILES
    """
    from wrjax.tasks import chem_model  # the flax model imports this module

    return chem_model.load_model(path)


def parallel_map(
    fn: Callable,
    items: Sequence,
    *,
    processes: int = 1,
    progress: bool = True,
    desc: str | None = None,
    chunksize: int = 512,
) -> list:
    """``[fn(x) for x in items]`` with a tqdm bar, optionally over ``processes`` workers.

    Workers are *spawned* (not forked): forking a process whose JAX runtime holds threads can
    deadlock. ``fn`` must be picklable (a module-level function or a ``functools.partial``).
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    items = list(items)
    bar = dict(total=len(items), desc=desc, disable=not progress, mininterval=1.0)
    if processes == 1 or len(items) < 2 * chunksize:
        return [fn(x) for x in tqdm(items, **bar)]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        return list(tqdm(pool.map(fn, items, chunksize=chunksize), **bar))


def penalized_logp_batch(
    smiles: Iterable[str],
    *,
    floor: float | None = -6.0,
    constants: str | PlogpConstants = "zinc250k",
    processes: int = 1,
    progress: bool = True,
) -> np.ndarray:
    """:func:`penalized_logp` over a list: ``(N,)`` float64, NaN where invalid.

    ``processes > 1`` scores in that many spawned worker processes (about 1 ms a molecule
    on one core).
    """
    smiles = list(smiles)
    if not smiles:
        return np.zeros((0,), np.float64)
    terms = parallel_map(
        plogp_terms, smiles, processes=processes, progress=progress, desc="penalized logP"
    )
    t = np.asarray(terms, np.float64).reshape(len(smiles), 3)
    return plogp_from_terms(t[:, 0], t[:, 1], t[:, 2], floor=floor, constants=constants)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _zinc_path(split: str, data_dir) -> Path:
    if split not in _SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(_SPLIT_FILES)}")
    path = Path(data_dir or DATA_DIR) / _SPLIT_FILES[split]
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

    Read from ``cache_dir/zinc250k_plogp_terms.npy`` when its JSON record names the same
    input file (SHA-256) and row count; otherwise computed (a few minutes on 2 cores, with a
    progress bar) and written there, with the input SHA and the RDKit version beside it.
    float32 keeps the file at 3 MB; the terms are then exact to about 1e-6.
    """
    src = _zinc_path("all", data_dir)
    cache = Path(cache_dir or CACHE_DIR)
    npy, meta = cache / f"{_TERMS_NAME}.npy", cache / f"{_TERMS_NAME}.json"
    sha = file_sha256(src)
    if not recompute and npy.exists() and meta.exists():
        record = json.loads(meta.read_text())
        if record.get("input_sha256") == sha:
            terms = np.load(npy, allow_pickle=False)
            if terms.shape == (record["rows"], 3):
                return terms
    smiles = load_zinc("all", data_dir=data_dir)
    terms = parallel_map(
        plogp_terms, smiles, processes=processes, progress=progress, desc="ZINC terms"
    )
    terms = np.asarray(terms, np.float32).reshape(len(smiles), 3)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(npy.name + ".tmp.npy")
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


# ---------------------------------------------------------------------------------------------
# Canonical SMILES and novelty
# ---------------------------------------------------------------------------------------------


def canonical_smiles(smiles: str, *, isomeric: bool = False) -> str | None:
    """RDKit canonical SMILES, or None when ``smiles`` is not a valid molecule.

    ``isomeric=False`` (default, as the authors' ``standardize_smiles``) drops
    stereochemistry, so stereoisomers share one key.
    """
    mol = _mol_from_smiles(smiles)
    if mol is None:
        return None
    return Chem.MolToSmiles(mol, isomericSmiles=isomeric)


def canonical_smiles_batch(
    smiles: Iterable[str], *, isomeric: bool = False, processes: int = 1, progress: bool = True
) -> list[str | None]:
    """:func:`canonical_smiles` over a list (about 0.2 ms a molecule on one core)."""
    fn = functools.partial(canonical_smiles, isomeric=isomeric)
    return parallel_map(fn, list(smiles), processes=processes, progress=progress, desc="canon")


def novelty_key(smiles: str) -> str | None:
    """The key that decides novelty: stereo-free canonical SMILES (None when invalid)."""
    return canonical_smiles(smiles, isomeric=False)


class NoveltyChecker:
    """Host-side set of known molecules: the training set plus everything queried.

    A molecule is novel when it is valid and its :func:`novelty_key` is not in the set.

    Example:
      >>> nc = NoveltyChecker(["CCO"])
      >>> nc.is_novel("OCC"), nc.is_novel("CCN"), nc.is_novel("not a molecule")
      (False, True, False)
      >>> nc.add("CCN"), nc.add("NCC")   # True: it was new; False: now known
      (True, False)
    """

    def __init__(
        self,
        known: Iterable[str] = (),
        *,
        canonical: bool = False,
        processes: int = 1,
        progress: bool = False,
    ):
        """Args:
        known: SMILES already known (e.g. ``load_zinc("train")``).
        canonical: True when ``known`` are already novelty keys (skips RDKit).
        processes, progress: for canonicalising a large ``known`` set.
        """
        known = list(known)
        if not canonical:
            known = canonical_smiles_batch(known, processes=processes, progress=progress)
        self._keys: set[str] = {k for k in known if k is not None}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, smiles: str) -> bool:
        key = novelty_key(smiles)
        return key is not None and key in self._keys

    def is_novel(self, smiles: str) -> bool:
        """True when ``smiles`` is a valid molecule that is not known yet."""
        key = novelty_key(smiles)
        return key is not None and key not in self._keys

    def add(self, smiles: str) -> bool:
        """Record ``smiles`` as queried; returns whether it was novel (invalid: False)."""
        key = novelty_key(smiles)
        if key is None or key in self._keys:
            return False
        self._keys.add(key)
        return True

    def keys(self) -> frozenset[str]:
        """A snapshot of the known keys."""
        return frozenset(self._keys)


# ---------------------------------------------------------------------------------------------
# SELFIES
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SelfiesVocab:
    """SELFIES symbols and their integer ids; id 0 is the stop/padding symbol ``<stop>``.

    ``isomeric`` records whether molecules keep stereochemistry when encoded (it changes
    which symbols exist, so it belongs to the vocabulary and is saved with it).
    """

    tokens: tuple[str, ...]
    isomeric: bool = False

    def __post_init__(self):
        if not self.tokens or self.tokens[0] != STOP:
            raise ValueError(f"tokens[0] must be {STOP!r}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")

    @property
    def size(self) -> int:
        return len(self.tokens)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def to_json(self) -> dict:
        return {"tokens": list(self.tokens), "isomeric": self.isomeric}

    @classmethod
    def from_json(cls, d: dict) -> "SelfiesVocab":
        return cls(tuple(d["tokens"]), bool(d["isomeric"]))


def to_selfies(smiles: str, *, isomeric: bool = False) -> str | None:
    """SELFIES of the RDKit-canonical form of ``smiles``; None when invalid or unencodable.

    Canonicalising first gives every molecule one SELFIES string, so the VAE need not learn
    that different strings mean the same molecule.
    """
    can = canonical_smiles(smiles, isomeric=isomeric)
    if can is None:
        return None
    try:
        return sf.encoder(can)
    except Exception:  # noqa: BLE001 - selfies raises EncoderError on unsupported valences
        return None


def to_selfies_batch(
    smiles: Iterable[str], *, isomeric: bool = False, processes: int = 1, progress: bool = True
) -> list[str | None]:
    """:func:`to_selfies` over a list (about 0.5 ms a molecule on one core)."""
    fn = functools.partial(to_selfies, isomeric=isomeric)
    return parallel_map(fn, list(smiles), processes=processes, progress=progress, desc="selfies")


def _cached_zinc_strings(
    tag: str, fn: Callable, split: str, data_dir, cache_dir, processes: int, progress: bool
) -> list[str | None]:
    """``fn`` over all ZINC molecules, cached as gzipped lines ("" for None), keyed by the
    input file's SHA-256; returned for ``split``, aligned with :func:`load_zinc`."""
    src = _zinc_path("all", data_dir)
    sha = file_sha256(src)
    path = Path(cache_dir or DATA_CACHE_DIR) / f"zinc250k_{tag}_{sha[:12]}.txt.gz"
    smiles = load_zinc("all", data_dir=data_dir)
    lines = None
    if path.exists():
        with gzip.open(path, "rt") as f:
            lines = f.read().split("\n")
        if len(lines) != len(smiles):
            lines = None
    if lines is None:
        out = parallel_map(fn, smiles, processes=processes, progress=progress, desc=tag)
        lines = ["" if s is None else s for s in out]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
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
    ``cache_dir`` (default ``DATA_CACHE_DIR``, shipped in ``checkpoints/chem/``), keyed by the
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


def build_vocab(selfies: Iterable[str | None], *, isomeric: bool = False) -> SelfiesVocab:
    """Vocabulary of every symbol in ``selfies`` (None entries skipped), sorted, after STOP."""
    alphabet = set()
    for s in selfies:
        if s is not None:
            alphabet.update(sf.split_selfies(s))
    return SelfiesVocab((STOP, *sorted(alphabet)), isomeric)


def selfies_to_tokens(
    selfies: Sequence[str | None], vocab: SelfiesVocab, *, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integer tokens of SELFIES strings, right-padded with ``STOP_ID``.

    Returns:
      ``(tokens (B, max_len) int32, ok (B,) bool)``; a row is not ok (and all STOP) when its
      string is None, longer than ``max_len`` symbols or has a symbol outside ``vocab``.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    tokens = np.full((len(selfies), max_len), STOP_ID, np.int32)
    ok = np.zeros((len(selfies),), bool)
    index = vocab.index
    for i, s in enumerate(selfies):
        if s is None:
            continue
        symbols = list(sf.split_selfies(s))
        if len(symbols) > max_len or any(t not in index for t in symbols):
            continue
        tokens[i, : len(symbols)] = [index[t] for t in symbols]
        ok[i] = True
    return tokens, ok


def try_encode_selfies(
    smiles: Sequence[str],
    vocab: SelfiesVocab,
    *,
    max_len: int,
    processes: int = 1,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """SMILES -> ``(tokens (B, max_len) int32, ok (B,) bool)``; see :func:`selfies_to_tokens`.

    Molecules that are invalid, too long or use an unknown symbol are flagged, not raised:
    the optimiser uses ``ok`` to decide whether a queried molecule can join the training data
    (the authors applied the same vocabulary check to their JT-VAE).
    """
    selfies = to_selfies_batch(
        smiles, isomeric=vocab.isomeric, processes=processes, progress=progress
    )
    return selfies_to_tokens(selfies, vocab, max_len=max_len)


def encode_selfies(
    smiles: Sequence[str],
    vocab: SelfiesVocab,
    *,
    max_len: int,
    processes: int = 1,
    progress: bool = False,
) -> np.ndarray:
    """SMILES -> ``(B, max_len)`` int32 tokens, padded with ``STOP_ID``.

    Raises:
      ValueError: when a molecule is invalid, longer than ``max_len`` symbols or uses a symbol
        outside ``vocab`` (use :func:`try_encode_selfies` to get a mask instead).
    """
    tokens, ok = try_encode_selfies(
        smiles, vocab, max_len=max_len, processes=processes, progress=progress
    )
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise ValueError(
            f"{bad.size} molecule(s) cannot be encoded (invalid, > {max_len} symbols or "
            f"unknown symbols), first at index {bad[0]}: {smiles[bad[0]]!r}"
        )
    return tokens


def token_lengths(tokens: np.ndarray) -> np.ndarray:
    """Number of symbols before the first ``STOP_ID`` in each row: ``(B, L) -> (B,)`` int."""
    tokens = np.asarray(tokens)
    is_stop = tokens == STOP_ID
    return np.where(is_stop.any(axis=1), is_stop.argmax(axis=1), tokens.shape[1])


def tokens_to_selfies(tokens: np.ndarray, vocab: SelfiesVocab) -> list[str]:
    """SELFIES strings of token rows, each cut at its first ``STOP_ID``."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (B, L), got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab.size):
        raise ValueError(f"token ids must be in [0, {vocab.size})")
    lengths = token_lengths(tokens)
    return ["".join(vocab.tokens[t] for t in row[:n]) for row, n in zip(tokens, lengths)]


def _decode_one(selfies: str) -> str:
    try:
        return sf.decoder(selfies) or ""
    except Exception:  # noqa: BLE001 - never raise on decoder output; "" scores NaN
        return ""


def decode_tokens(tokens: np.ndarray, vocab: SelfiesVocab) -> list[str]:
    """SMILES of token rows (``(B, L)`` ints, cut at the first stop).

    Every non-empty row decodes to a valid molecule (SELFIES' guarantee); a row that starts
    with ``STOP_ID`` gives ``""``, which :func:`penalized_logp` scores NaN.
    """
    return [_decode_one(s) for s in tokens_to_selfies(tokens, vocab)]
