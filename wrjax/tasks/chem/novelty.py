"""Novelty of molecules: the key that decides it and the set of known molecules.

A molecule is novel when its canonical SMILES (:func:`novelty_key`) is neither in the
training set nor already queried (:class:`NoveltyChecker`). As in the authors' code the key
is RDKit's canonical SMILES *without* stereochemistry, so a stereoisomer of a known molecule
is not novel (penalized logP does not depend on stereochemistry).
"""

from __future__ import annotations

from typing import Iterable

from wrjax.tasks.chem.molecules import canonical_smiles, canonical_smiles_batch

__all__ = ["novelty_key", "NoveltyChecker"]


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
