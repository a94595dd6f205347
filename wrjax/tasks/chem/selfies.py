"""SELFIES (Krenn et al., 2020): the vocabulary and the token rows of the SELFIES VAE.

Every token sequence decodes to a valid molecule. Each molecule is canonicalised with RDKit,
encoded with ``selfies.encoder``, split into tokens and mapped to integers with a
:class:`SelfiesVocab` built from the training data; id 0 is the stop/padding symbol
``<stop>``. Stereochemistry is dropped by default (``SelfiesVocab.isomeric``): it does not
change the score and halves the vocabulary (52 symbols besides the stop on the training
split, against 107 with stereochemistry). ZINC250k's longest SELFIES has 72 symbols (mean
37.4); the default ``max_len`` is 96.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Sequence

import numpy as np
import selfies as sf

from wrjax.tasks.chem.molecules import canonical_smiles, parallel_map

__all__ = [
    "ZINC_MAX_SELFIES_LEN",
    "DEFAULT_MAX_LEN",
    "STOP",
    "STOP_ID",
    "SelfiesVocab",
    "to_selfies",
    "to_selfies_batch",
    "build_vocab",
    "selfies_to_tokens",
    "encode_selfies",
    "try_encode_selfies",
    "token_lengths",
    "tokens_to_selfies",
    "decode_tokens",
]

ZINC_MAX_SELFIES_LEN = 72  # longest canonical stereo-free SELFIES of the 249,456 (measured)
DEFAULT_MAX_LEN = 96  # 33% headroom above ZINC's longest, for molecules that grow
STOP = "<stop>"  # not a SELFIES symbol (those are bracketed), so it can never clash
STOP_ID = 0


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
