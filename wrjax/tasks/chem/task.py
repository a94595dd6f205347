"""The chemical-design task (paper §6.3) wired into the retraining loop.

:func:`make_chem_task` returns a :class:`wrjax.Task` built from the pieces of
:mod:`wrjax.tasks.chem` (data, objective, selfies, novelty) and :mod:`wrjax.tasks.chem.model`
(the pretrained SELFIES VAE):

* data: ZINC250k's JT-VAE training split (220,011 molecules; the authors' optimisation data)
  or a random ``num_initial`` of it, as ``(N, L)`` int32 SELFIES token rows (the model's
  input); scores from the cached penalized-logP terms (:func:`wrjax.tasks.chem.zinc_scores`);
* decode: the greedy (arg-max) decoding of the VAE, turned into SMILES by ``selfies``;
* objective: :func:`wrjax.tasks.chem.penalized_logp` on the decoded SMILES;
* novelty: the stereo-free canonical SMILES (:func:`wrjax.tasks.chem.novelty_key`); a
  molecule is novel only when it is neither in the *whole* training split (``seen_keys``)
  nor already queried, as in the authors' code.

Validity. SELFIES decodes every non-empty token sequence to a molecule, so the only invalid
decodings are the empty one (the first symbol is the stop) and, rarely, a string RDKit cannot
parse. A queried molecule must also become a row of the training data, which needs its
canonical SELFIES to fit in ``max_len`` symbols of the model's vocabulary. ``wrjax.run``
does not catch an exception from ``Task.to_data``, so a molecule that cannot be tokenised is
rejected by ``is_valid`` and recorded as ``invalid`` (it is neither scored nor counted toward
the budget). This is the authors' rule too: their JT-VAE optimiser discarded molecules whose
junction-tree vocabulary the model did not know.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import selfies as sf

from wrjax.task import Task
from wrjax.tasks.chem import data
from wrjax.tasks.chem import model as cm
from wrjax.tasks.chem.novelty import novelty_key
from wrjax.tasks.chem.objective import (
    OBJECTIVES,
    ZINC_MAX_HEAVY_ATOMS,
    PlogpConstants,
    make_objective,
)
from wrjax.tasks.chem.selfies import (
    STOP_ID,
    SelfiesVocab,
    decode_tokens,
    selfies_to_tokens,
    to_selfies,
)

__all__ = ["DEFAULT_BETA", "make_chem_task", "smiles_to_row", "decode_latents"]

#: KL weight of the shipped checkpoint's pretraining (its ``beta``); used when the
#: checkpoint does not record one. The authors' JT-VAE used 0.005 (a different model).
DEFAULT_BETA = 0.2


def smiles_to_row(
    smiles: str | None,
    vocab: SelfiesVocab,
    *,
    max_len: int,
    row_len: int,
    truncate: bool = False,
) -> np.ndarray | None:
    """One SMILES -> its ``(row_len,)`` int32 token row (STOP-padded), or None.

    None when the molecule is invalid, has more than ``max_len`` SELFIES symbols
    (``max_len <= row_len``, the model's sequence length) or uses a symbol outside ``vocab``;
    with ``truncate=True`` a valid molecule always gets a row: its known symbols, cut after
    ``max_len`` (a stand-in for a molecule the model cannot represent, used by the
    size-capped objective, which scores such molecules at the floor anyway).
    """
    if smiles is None:
        return None
    sel = to_selfies(smiles, isomeric=vocab.isomeric)
    tokens, ok = selfies_to_tokens([sel], vocab, max_len=max_len)
    row = np.full((row_len,), STOP_ID, np.int32)
    if ok[0]:
        row[:max_len] = tokens[0]
        return row
    if not truncate or sel is None:
        return None
    index = vocab.index
    ids = [index[t] for t in sf.split_selfies(sel) if t in index][:max_len]
    if not ids:
        return None
    row[: len(ids)] = ids
    return row


def decode_latents(model: cm.SelfiesVAE, params, z, vocab: SelfiesVocab) -> list[str | None]:
    """Greedy decodes of ``z (B, D)`` as SMILES; None where the decoding is empty.

    The batch is padded to a power of two (at least 8) so that the varying number of
    candidates per query reuses a few compiled programs.
    """
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or z.shape[1] != model.config.latent_dim:
        raise ValueError(f"z must be (B, {model.config.latent_dim}), got {z.shape}")
    n = z.shape[0]
    if n == 0:
        return []
    size = max(8, 1 << (n - 1).bit_length())
    zp = np.zeros((size, z.shape[1]), np.float32)
    zp[:n] = z
    tokens = np.asarray(cm.greedy_tokens(model, params, jnp.asarray(zp)))[:n]
    return [s or None for s in decode_tokens(tokens, vocab)]


def _select_rows(key, selfies, scores, keys, vocab, *, num, max_len, row_len):
    """Draw ``num`` usable training rows in a random order given by ``key``.

    A row is usable when it tokenises within ``max_len`` symbols and has a finite score
    and a novelty key; unusable rows are skipped and replaced by the next in the random
    order, so the result has exactly ``min(num, #usable)`` rows. Returns sorted indices and
    their ``(num, row_len)`` tokens.
    """
    order = np.asarray(jax.random.permutation(key, len(selfies)))
    chosen, rows = [], []
    start = 0
    while len(chosen) < num and start < len(order):
        need = num - len(chosen)
        # A little extra per chunk, so a few failures do not cost a second pass.
        idx = order[start : start + need + need // 50 + 16]
        start += len(idx)
        tokens, ok = selfies_to_tokens([selfies[i] for i in idx], vocab, max_len=max_len)
        ok &= np.isfinite(scores[idx]) & np.array([keys[i] is not None for i in idx])
        good = np.flatnonzero(ok)[:need]
        chosen.extend(idx[good].tolist())
        rows.append(tokens[good])
    chosen = np.asarray(chosen, np.int64)
    tokens = np.concatenate(rows) if rows else np.zeros((0, max_len), np.int32)
    perm = np.argsort(chosen, kind="stable")
    x = np.full((len(chosen), row_len), STOP_ID, np.int32)
    x[:, :max_len] = tokens[perm]
    return chosen[perm], x


def make_chem_task(
    key: jax.Array,
    *,
    k: float | None = None,
    num_initial: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    constants: str | PlogpConstants = "zinc250k",
    floor: float | None = -6.0,
    objective: str = "plogp",
    max_heavy_atoms: int = ZINC_MAX_HEAVY_ATOMS,
    max_len: int | None = None,
    beta: float | None = None,
    latent_noise_std: float = 1.0,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    processes: int = 2,
    progress: bool = False,
) -> Task:
    """The chemistry task (§6.3) as a :class:`wrjax.Task`.

    Args:
      key: PRNG key; draws the ``num_initial`` subset (unused when it is the whole split).
      k: accepted for the common builder signature and ignored: only one checkpoint is
        shipped, pretrained without weighting (``k = inf``, as the authors' JT-VAE); the
        loop's initial weighted fine-tune (``LSOConfig.initial_finetune_epochs``) applies k.
      num_initial: size of the optimisation data, a random subset of the training split
        (default: all of it, 220,011, as the authors). Molecules that cannot be tokenised
        (see ``max_len``) or have no finite score are skipped and replaced.
      checkpoint: path stem of a :func:`wrjax.tasks.chem.model.save_checkpoint` checkpoint
        or a shipped name (``"gru"``: the reconstructing model; ``"cpu"``: the first one;
        default :data:`wrjax.tasks.chem.model.DEFAULT_CHECKPOINT`).
      constants, floor: of :func:`wrjax.tasks.chem.penalized_logp` (the standard ZINC250k
        statistics and the paper's floor -6; the authors' code used -4), for both the data's
        scores and the objective.
      objective: ``"plogp"`` (the paper's penalized logP, uncapped) or ``"plogp_capped"``
        (:func:`wrjax.tasks.chem.penalized_logp_capped`: molecules of more than
        ``max_heavy_atoms`` heavy atoms, default 38 = ZINC's largest, score the floor and
        count as an evaluation). With the cap, every valid molecule is an evaluation, also
        one the model cannot tokenise (it joins the data as its truncated token row).
      max_len: most SELFIES symbols a molecule may have to join the data, at most the
        model's sequence length (default: that length, 96; ZINC's longest is 72).
      beta: KL weight of the fine-tunes (default: the checkpoint's pretraining beta, 0.2).
      latent_noise_std: reparameterisation noise scale (1: the pretraining's ELBO).
      data_dir, cache_dir, processes, progress: passed to the cached ZINC helpers of
        :mod:`wrjax.tasks.chem` (SELFIES and novelty keys of all 249,456 molecules: about 2
        minutes each on 2 cores if missing; shipped in ``checkpoints/chem``).

    Returns:
      A :class:`wrjax.Task` named ``"chem"``: ``x (N, L)`` int32 tokens, ``y (N,)``
      float32 penalized logP, objects are SMILES strings (``None``: empty decoding).
    """
    del k
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    capped = objective == "plogp_capped"
    score_fn = make_objective(
        objective,
        floor=-math.inf if floor is None else floor,
        constants=constants,
        max_heavy_atoms=max_heavy_atoms,
    )
    pre = cm.load_checkpoint(checkpoint)
    model, vocab = pre.model, pre.vocab
    row_len = pre.config.max_len
    max_len = row_len if max_len is None else int(max_len)
    if not 1 <= max_len <= row_len:
        raise ValueError(f"max_len must be in [1, {row_len}] (the model's length), got {max_len}")
    if beta is None:
        beta = float(pre.metadata.get("beta", DEFAULT_BETA))
    if not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    cached = dict(data_dir=data_dir, cache_dir=cache_dir, processes=processes, progress=progress)
    selfies = data.zinc_selfies("train", isomeric=vocab.isomeric, **cached)
    n = len(selfies)
    if num_initial is None:
        num_initial = n
    if not 0 < num_initial <= n:
        raise ValueError(f"num_initial must be in (0, {n}], got {num_initial}")
    keys = data.zinc_novelty_keys("train", **cached)
    scores = data.zinc_scores(
        "train", floor=floor, constants=constants, data_dir=data_dir, progress=progress
    )
    idx, x = _select_rows(
        key, selfies, scores, keys, vocab, num=num_initial, max_len=max_len, row_len=row_len
    )
    if len(idx) == 0:
        raise ValueError(f"no training molecule tokenises within max_len={max_len}")

    # The loop asks is_valid and then to_data for the same molecule: tokenise once.
    @functools.lru_cache(maxsize=4096)
    def to_row(smiles: str) -> np.ndarray | None:
        return smiles_to_row(smiles, vocab, max_len=max_len, row_len=row_len, truncate=capped)

    def to_data(smiles: str) -> np.ndarray:
        row = to_row(smiles)
        if row is None:  # is_valid rejects these first, so the loop never gets here
            raise ValueError(f"cannot tokenise {smiles!r} within {max_len} SELFIES symbols")
        return row.copy()

    def is_valid(smiles) -> bool:
        return isinstance(smiles, str) and bool(smiles) and to_row(smiles) is not None

    def decode(key, params, z):
        del key  # greedy decoding is deterministic
        return decode_latents(model, params, z, vocab)

    return Task(
        name="chem",
        model=model,
        params=pre.params,
        x=x,
        y=np.asarray(scores[idx], np.float32),
        initial_keys=[keys[i] for i in idx],
        seen_keys=[s for s in keys if s is not None],  # the whole training split
        decode=decode,
        objective=score_fn,
        to_data=to_data,
        novelty_key=novelty_key,
        to_text=lambda smiles: smiles,
        is_valid=is_valid,
        likelihood=cm.log_likelihood,
        beta=beta,
        latent_noise_std=latent_noise_std,
    )
