"""The objectives of the chemical-design task (paper §6.3): penalized logP and its relatives.

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

Host Python (RDKit, networkx), nothing jitted.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterable, NamedTuple

import networkx as nx
import numpy as np
from rdkit import Chem, DataStructs
from rdkit.Chem import QED, Crippen, rdFingerprintGenerator
from rdkit.Contrib.SA_Score import sascorer

from wrjax.tasks.chem.molecules import canonical_smiles, mol_from_smiles, parallel_map

__all__ = [
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
]


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
    mol = None if can is None else mol_from_smiles(can)
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
    mol = mol_from_smiles(smiles)
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
    mol = mol_from_smiles(smiles)
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
    ma, mb = mol_from_smiles(a), mol_from_smiles(b)
    if ma is None or mb is None:
        return math.nan
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    return float(DataStructs.TanimotoSimilarity(gen.GetFingerprint(ma), gen.GetFingerprint(mb)))


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
