"""The expression data set: the 100,000 univariate expressions of Kusner et al. (2017).

Each expression is at most 15 production rules of :data:`~.grammar.GRAMMAR`; as in the paper,
only the worst 50% by score are kept (50,111 because of ties). Each one is a sequence of 15
rule indices (its leftmost derivation, padded with rule 11 ``Nothing -> None``).

The files (``equation2_15_dataset.txt``, ``scores_all.npz``) are found with
``wrjax.paths.data_dir("expressions", "WRJAX_EXPRESSIONS_DIR")``; the parsed rules are cached
in ``wrjax.paths.cache_dir("expressions")``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from wrjax import paths
from wrjax.tasks.expressions import grammar as G

__all__ = ["DATA_ENV_VAR", "find_data_dir", "ExpressionData", "load_expressions", "parsed_rules",
           "novelty_key"]

#: environment variable naming the folder of the data files (else ``wrjax.paths.data_dir``'s
#: usual places).
DATA_ENV_VAR = "WRJAX_EXPRESSIONS_DIR"


def find_data_dir() -> Path:
    """The folder with ``equation2_15_dataset.txt`` and ``scores_all.npz``
    (``FileNotFoundError`` naming where it looked)."""
    return paths.data_dir("expressions", DATA_ENV_VAR)


def novelty_key(expression: str) -> str:
    """Canonical text for novelty checks: the expression with all whitespace removed."""
    return "".join(expression.split())


class ExpressionData(NamedTuple):
    """The kept expressions in file order."""

    expressions: list[str]  # N texts as in the data file (tokens joined by spaces)
    one_hot: np.ndarray  # (N, 15, 12) float32 rule sequences
    scores: np.ndarray  # (N,) float64, higher is better (= -min(7, log(1 + MSE)))


def load_expressions(
    *, keep_worst_fraction: float = 0.5, data_dir: str | os.PathLike | None = None
) -> ExpressionData:
    """Load the expression data set, keeping the worst fraction by score (the paper's 50%).

    The authors keep ``log_mse >= percentile(log_mse, 100 (1 - fraction))``, which keeps
    50,111 of 100,000 at 0.5 because of ties; this does the same. Scores come from
    ``scores_all.npz`` (the authors' values; :func:`~.objective.score` reproduces them) and
    rule sequences from parsing the text (identical to the authors' one-hot data).

    Args:
      keep_worst_fraction: in ``(0, 1]``; 1 keeps everything.
      data_dir: folder with ``equation2_15_dataset.txt`` and ``scores_all.npz`` (default
        :func:`find_data_dir` ``()``).

    Returns:
      :class:`ExpressionData` ``(expressions, one_hot (N, 15, 12), scores (N,))``.
    """
    if not 0.0 < keep_worst_fraction <= 1.0:
        raise ValueError(f"keep_worst_fraction must be in (0, 1], got {keep_worst_fraction}")
    root = Path(data_dir) if data_dir is not None else find_data_dir()
    data = _load_cached(str(root), float(keep_worst_fraction))
    return ExpressionData(list(data.expressions), data.one_hot.copy(), data.scores.copy())


@functools.lru_cache(maxsize=4)
def _load_cached(data_dir: str, fraction: float) -> ExpressionData:
    root = Path(data_dir)
    text_path, score_path = root / "equation2_15_dataset.txt", root / "scores_all.npz"
    for p in (text_path, score_path):
        if not p.exists():
            raise FileNotFoundError(f"missing {p}; see the data folder's SOURCE.md")
    lines = text_path.read_text().splitlines()
    log_mse = np.load(score_path)["arr_0"]
    if len(lines) != log_mse.shape[0]:
        raise ValueError(f"{len(lines)} expressions but {log_mse.shape[0]} scores")
    keep = log_mse >= np.percentile(log_mse, 100.0 * (1.0 - fraction))
    kept = [line for line, k in zip(lines, keep) if k]
    rules = parsed_rules(text_path)[keep]
    return ExpressionData(kept, _rules_one_hot(rules), -log_mse[keep].astype(np.float64))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rules_one_hot(rules: np.ndarray) -> np.ndarray:
    """``(N, 15)`` padded rule indices to the ``(N, 15, 12)`` float32 one-hot of :func:`grammar.one_hot`."""
    return np.eye(G.GRAMMAR.num_rules, dtype=np.float32)[rules.astype(np.int64)]


def parsed_rules(
    text_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """The padded rule sequences of every line of an expression file, ``(N, 15)`` int8.

    Parsing the 100,000 expressions with the Python Earley parser takes about 25 s (12 s
    for the kept 50,111), paid at every start before this cache: the result is stored
    once in ``cache_dir`` (default ``wrjax.paths.cache_dir("expressions")``: in a checkout
    the shipped checkpoint folder ``checkpoints/expressions``, which ships the cache of the
    data file) as ``expressions_rules_<sha256[:12]>.npz``, keyed by the SHA-256 of the
    file's bytes, so a changed file is parsed again. Without ``cache_dir``, the copy shipped
    beside the models (an installed wheel's package data) is read too. If the folder is not
    writable the rules are still returned (and parsed again next time).
    """
    text_path = Path(text_path)
    sha = _file_sha256(text_path)
    name = f"expressions_rules_{sha[:12]}.npz"
    path = Path(cache_dir or paths.cache_dir("expressions")) / name
    lines = text_path.read_text().splitlines()
    for candidate in [path] + ([] if cache_dir else _shipped_cache(name)):
        if candidate.exists():
            with np.load(candidate) as f:
                if str(f["sha256"]) == sha and f["rules"].shape == (len(lines), G.MAX_LEN):
                    return f["rules"]
    rules = np.full((len(lines), G.MAX_LEN), G.GRAMMAR.padding_rule, np.int8)
    for i, line in enumerate(lines):
        seq = G.parse_rules(line)
        if len(seq) > G.MAX_LEN:
            raise ValueError(f"line {i} has {len(seq)} rules, more than {G.MAX_LEN}")
        rules[i, : len(seq)] = seq
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")  # per process (parallel test workers)
        np.savez_compressed(tmp, rules=rules, sha256=np.asarray(sha))
        os.replace(tmp, path)
    except OSError:
        pass
    return rules


def _shipped_cache(name: str) -> list[Path]:
    """The parsed-rule cache shipped with the models (``checkpoints/expressions`` or a wheel's
    ``wrjax/_shipped/expressions``), if the models are found."""
    try:
        return [paths.shipped_checkpoint("expressions", "expr-k_inf").parent / name]
    except FileNotFoundError:
        return []
