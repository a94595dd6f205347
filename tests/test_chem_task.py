"""The chemistry task in the retraining loop (paper §6.3): data, decoding, novelty, records."""

import json
import math

import jax
import networkx as nx
import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import Crippen
from rdkit.Contrib.SA_Score import sascorer

from wrjax import lso
from wrjax.bo import BOConfig
from wrjax.tasks import chem
from wrjax.tasks.chem import model as cm
from wrjax.tasks.chem import decode_latents, make_chem_task, smiles_to_row

N0 = 300
NUM_TRAIN = 220_011  # the JT-VAE training split


@pytest.fixture(scope="module")
def task():
    return make_chem_task(jax.random.key(0), num_initial=N0)


@pytest.fixture(scope="module")
def pretrained():
    return cm.load_checkpoint()


def _plogp_reference(smiles: str) -> float:
    """Penalized logP written out from RDKit, networkx and the ZINC250k constants (floor -6)."""
    mol = Chem.MolFromSmiles(Chem.MolToSmiles(Chem.MolFromSmiles(smiles), isomericSmiles=False))
    rings = nx.cycle_basis(nx.Graph(Chem.GetAdjacencyMatrix(mol)))
    cycle = max(max((len(r) for r in rings), default=0) - 6, 0)
    score = (
        (Crippen.MolLogP(mol) - 2.4570953396190123) / 1.434324401111988
        + (-sascorer.calculateScore(mol) + 3.0525811293166134) / 0.8335207024513095
        + (-cycle + 0.0485696876403053) / 0.2860212110245455
    )
    return max(score, -6.0)


def test_task_data_is_a_scored_tokenised_subset_of_the_training_split(task, pretrained):
    assert task.name == "chem"
    assert task.x.shape == (N0, pretrained.config.max_len) and task.x.dtype == np.int32
    assert task.y.shape == (N0,) and task.y.dtype == np.float32 and np.isfinite(task.y).all()
    # Rows decode to the molecules their keys and scores belong to (checked on a few).
    smiles = chem.decode_tokens(task.x[:8], pretrained.vocab)
    assert [chem.novelty_key(s) for s in smiles] == list(task.initial_keys[:8])
    want = [_plogp_reference(s) for s in smiles]
    np.testing.assert_allclose(task.y[:8], want, rtol=1e-5, atol=1e-5)
    # Distinct training molecules; novelty is checked against the whole split.
    train_keys = set(task.seen_keys)
    assert len(set(task.initial_keys)) == N0 and set(task.initial_keys) <= train_keys
    assert len(task.seen_keys) == NUM_TRAIN
    assert task.beta == pretrained.metadata["beta"] == 0.2
    # The subset is drawn with the key.
    other = make_chem_task(jax.random.key(1), num_initial=N0)
    assert set(other.initial_keys) != set(task.initial_keys)
    with pytest.raises(ValueError, match="num_initial"):
        make_chem_task(jax.random.key(0), num_initial=0)
    with pytest.raises(ValueError, match="max_len"):
        make_chem_task(jax.random.key(0), num_initial=10, max_len=1000)


def test_max_len_drops_long_molecules_and_keeps_the_count(pretrained):
    t = make_chem_task(jax.random.key(2), num_initial=200, max_len=30)
    lengths = chem.token_lengths(t.x)
    assert t.x.shape == (200, pretrained.config.max_len) and lengths.max() <= 30
    assert (t.x[:, 30:] == chem.STOP_ID).all()


def test_decode_of_encoded_training_molecules(task, pretrained):
    z = np.asarray(lso.encode_all(task.model, task.params, task.x[:40]))
    got = task.decode(jax.random.key(0), task.params, z)
    assert len(got) == 40 and all(task.valid(s) for s in got)
    assert all(math.isfinite(task.objective(s)) for s in got)
    # Padding the batch (5 -> 8 rows) does not change the greedy decodes.
    ref = cm.decode_smiles(pretrained.model, task.params, z, pretrained.vocab)
    assert got == [s or None for s in ref]
    assert decode_latents(pretrained.model, task.params, z[:5], pretrained.vocab) == got[:5]
    assert decode_latents(pretrained.model, task.params, z[:0], pretrained.vocab) == []


def test_validity_and_to_data(task, pretrained):
    ok = "CC(=O)Nc1ccc(O)cc1"  # paracetamol
    row = task.to_data(ok)
    assert row.shape == (pretrained.config.max_len,) and row.dtype == np.int32
    back = chem.decode_tokens(row[None], pretrained.vocab)[0]
    assert chem.novelty_key(back) == chem.novelty_key(ok)
    # None, empty, > 96 symbols, a symbol outside the vocabulary, unparsable
    for bad in [None, "", "C" * 120, "C[Se]C", "C1CC"]:
        assert not task.valid(bad)
    with pytest.raises(ValueError, match="tokenise"):
        task.to_data("C" * 120)
    assert smiles_to_row("C" * 120, pretrained.vocab, max_len=96, row_len=96) is None


def _scripted_optimizer(proposals):
    """Proposes the given SMILES (already decoded), one list per call."""

    def propose(key, state, ctx):
        objects = proposals[state]
        z = np.full((len(objects), ctx.z.shape[1]), 0.1 * (state + 1), np.float32)
        return lso.Proposal(z, list(objects)), state + 1

    return lso.Optimizer(lambda ctx: 0, propose, "scripted")


def test_novelty_invalid_and_untokenisable_in_the_loop(task, tmp_path):
    zinc = chem.load_zinc("train")
    keys = chem.zinc_novelty_keys("train", progress=False)
    subset = set(task.initial_keys)
    i = next(j for j in range(len(zinc)) if keys[j] not in subset)
    novel, novel_other_spelling = "CCCCCCCCCCOc1ccccc1", "c1ccccc1OCCCCCCCCCC"
    assert chem.novelty_key(novel) not in set(task.seen_keys)
    proposals = [
        [None, "C" * 120, "C[Se]C", zinc[i], novel],  # invalid x3, training molecule, novel
        [novel_other_spelling, "CCCCCCCCCCCCOc1ccccc1"],  # already queried, novel
    ]
    config = lso.LSOConfig(budget=2, retrain_every=None, initial_finetune_epochs=0.0)
    res = lso.run(jax.random.key(0), task, config, optimizer=_scripted_optimizer(proposals),
                  workdir=tmp_path, progress=False)  # fmt: skip
    assert res.status == "complete"
    statuses = [r["status"] for r in res.records]
    assert statuses == ["invalid", "invalid", "invalid", "duplicate", "ok", "duplicate", "ok"]
    assert res.records[1]["text"] == "C" * 120 and res.records[0]["text"] is None
    assert res.records[3]["key"] == keys[i]
    assert res.records[5]["key"] == res.records[4]["key"] == chem.novelty_key(novel)
    want = [_plogp_reference(novel), _plogp_reference(proposals[1][1])]
    np.testing.assert_allclose(res.scores, want, rtol=1e-6, atol=1e-6)


def test_short_gp_run_records_true_scores(task, tmp_path):
    bo = BOConfig(num_inducing=16, n_best=64, n_random=64, num_restarts=4, num_random_starts=2,
                  ascent_steps=20, cold_kernel_steps=10, cold_steps=10, warm_steps=5)  # fmt: skip
    # One fine-tune program (1 step each time) keeps the compile cost down.
    config = lso.LSOConfig(budget=4, retrain_every=2, k=1e-3, batch_size=32,
                           initial_finetune_epochs=0.1, finetune_epochs=0.1)  # fmt: skip
    res = lso.run(jax.random.key(0), task, config, optimizer=lso.gp_ei_optimizer(*bo.split()),
                  workdir=tmp_path, progress=False)  # fmt: skip
    assert res.status == "complete"
    lines = [json.loads(s) for s in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert lines == json.loads(json.dumps(res.records))
    evaluated = [r for r in lines if r["eval"] is not None]
    assert [r["eval"] for r in evaluated] == [0, 1, 2, 3]
    assert {r["cycle"] for r in evaluated} == {0, 1}
    seen = set(task.seen_keys)
    for r in lines:
        if r["status"] == "ok":
            assert r["score"] == pytest.approx(_plogp_reference(r["text"]), rel=1e-6, abs=1e-6)
            assert r["key"] == chem.novelty_key(r["text"]) and r["key"] not in seen
        elif r["status"] == "duplicate":
            assert r["key"] in seen or r["key"] in {q["key"] for q in lines if q["seq"] < r["seq"]}
    ok_keys = [r["key"] for r in lines if r["status"] == "ok"]
    assert len(set(ok_keys)) == len(ok_keys)
    want = [r["score"] for r in lines if r["status"] == "ok"]
    np.testing.assert_allclose(res.scores, want, rtol=1e-6, atol=0)
