"""The reconstructing chemistry model: the autoregressive decoder, free bits, resumable
pretraining, the research-code API, the size-capped objective and the GA baseline."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import selfies as sf
from rdkit import Chem

from wrjax import vae
from wrjax.tasks import chem
from wrjax.tasks.chem import ga as chem_ga
from wrjax.tasks.chem import model as cm
from wrjax.tasks.chem import pretrain as cp


def _ar_config(vocab_size, max_len=10):
    return cm.SelfiesVAEConfig(
        vocab_size=vocab_size,
        max_len=max_len,
        latent_dim=6,
        embed_dim=8,
        conv_features=(8, 8),
        conv_kernels=(3, 3),
        conv_strides=(1, 2),
        encoder_hidden=16,
        gru_features=12,
        embed_decoder=5,
        position_embedding=False,
        decoder="autoregressive",
    )


@pytest.fixture(scope="module")
def ar_model():
    config = _ar_config(7)
    return cm.SelfiesVAE(config), cm.init_params(jax.random.key(3), config)


def _tf_logits(model, params, z, tokens):
    return model.apply({"params": params}, z, tokens, method=model.decode_train)


def test_greedy_rollout_equals_teacher_forcing_on_its_own_tokens(ar_model, key):
    model, params = ar_model
    z = 3.0 * jax.random.normal(key, (5, 6))
    greedy = model.apply({"params": params}, z, method=model.decode)
    tokens = jnp.argmax(greedy, axis=-1)
    # Fed its own arg-max symbols, the teacher-forced decoder must give the same logits.
    np.testing.assert_allclose(_tf_logits(model, params, z, tokens), greedy, rtol=1e-5, atol=1e-5)
    assert greedy.shape == (5, 10, 7) and greedy.dtype == jnp.float32


def test_teacher_forcing_is_causal(ar_model, key, rng):
    model, params = ar_model
    z = jax.random.normal(key, (3, 6))
    tokens = rng.integers(0, 7, size=(3, 10))
    base = np.asarray(_tf_logits(model, params, z, jnp.asarray(tokens)))
    for t in (0, 4, 9):
        other = tokens.copy()
        other[:, t] = (other[:, t] + 1) % 7
        got = np.asarray(_tf_logits(model, params, z, jnp.asarray(other)))
        # logits of positions <= t see only symbols < t: unchanged; position t+1 sees x_t
        np.testing.assert_array_equal(got[:, : t + 1], base[:, : t + 1])
        if t + 1 < 10:
            assert np.abs(got[:, t + 1] - base[:, t + 1]).max() > 1e-6


def test_gru_update_equals_flax_gru_cell(key):
    import flax.linen as nn

    B, C, H = 3, 4, 5
    kx, kh, kp = jax.random.split(key, 3)
    x, h = jax.random.normal(kx, (B, C)), jax.random.normal(kh, (B, H))
    cell = nn.GRUCell(H)
    p = cell.init(kp, h, x)["params"]
    want, _ = cell.apply({"params": p}, h, x)
    # flax: r, z(u), n gates; input kernels i*, hidden kernels h*, hidden bias only on n
    w_i = jnp.concatenate([p["ir"]["kernel"], p["iz"]["kernel"], p["in"]["kernel"]], axis=1)
    b_i = jnp.concatenate([p["ir"]["bias"], p["iz"]["bias"], p["in"]["bias"]])
    w_h = jnp.concatenate([p["hr"]["kernel"], p["hz"]["kernel"], p["hn"]["kernel"]], axis=1)
    got = cm._gru_update(x @ w_i + b_i[None, :], h @ w_h, p["hn"]["bias"], h)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_free_bits_kl_against_numpy(rng):
    mean = rng.normal(size=(4, 3)) * np.array([0.01, 1.0, 3.0])
    logvar = rng.normal(size=(4, 3)) * 0.1
    kl_d = 0.5 * (np.exp(logvar) + mean**2 - 1 - logvar)
    for fb in (0.0, 0.05, 0.5):
        want = np.maximum(kl_d, fb).sum(1)
        got = vae.free_bits_kl(jnp.asarray(mean), jnp.asarray(logvar), fb)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # below the floor the KL has no gradient: a collapsed dimension is left alone
    g = jax.grad(lambda m: vae.free_bits_kl(m, jnp.zeros((1, 3)), 0.5).sum())(
        jnp.asarray([[0.01, 0.02, 3.0]])
    )
    np.testing.assert_array_equal(np.asarray(g)[0, :2], 0.0)
    assert np.asarray(g)[0, 2] == pytest.approx(3.0)


def test_elbo_uses_teacher_forcing_and_floored_kl(ar_model, key, rng):
    model, params = ar_model
    tokens = jnp.asarray(rng.integers(1, 7, size=(4, 10)))
    terms = vae.elbo_terms(
        key, params, model, tokens, beta=0.5, likelihood=cm.log_likelihood, free_bits=0.3
    )
    # the same numbers written out: reparameterised z, teacher-forced logits, floored KL
    mean, logvar = model.apply({"params": params}, tokens, method=model.encode)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    ll = cm.log_likelihood(_tf_logits(model, params, z, tokens), tokens)
    fb = vae.free_bits_kl(mean, logvar, 0.3)
    np.testing.assert_allclose(terms.log_lik, ll, rtol=1e-5)
    np.testing.assert_allclose(terms.kl, vae.gaussian_kl(mean, logvar), rtol=1e-5)
    np.testing.assert_allclose(terms.elbo, ll - 0.5 * fb, rtol=1e-5)


def test_parallel_decoder_checkpoints_still_load():
    # configs saved before the decoder field existed mean the parallel decoder
    d = cm.cpu_config(20).to_json()
    del d["decoder"], d["embed_decoder"]
    assert cm.SelfiesVAEConfig.from_json(d).decoder == "parallel"
    with pytest.raises(ValueError, match="decoder"):
        dataclasses.replace(cm.cpu_config(20), decoder="transformer")
    assert cm.gru_config(53).max_len == chem.ZINC_MAX_SELFIES_LEN


@pytest.fixture(scope="module")
def small_data():
    smiles = chem.load_zinc("test")[:48]
    vocab = chem.build_vocab(chem.to_selfies_batch(smiles, progress=False))
    return smiles, vocab, chem.encode_selfies(smiles, vocab, max_len=72)


def test_pretrain_resumes_exactly(small_data, key):
    _, vocab, tokens = small_data
    config = _ar_config(vocab.size, max_len=72)
    common = dict(
        config=config, num_steps=6, batch_size=16, beta=0.1, warmup_steps=3,
        chunk_steps=2, free_bits=0.1, progress=False,
    )
    saved = []
    whole, info = cp.pretrain(key, tokens, **common, on_chunk=lambda s, i: saved.append(s))
    assert info.step == [2, 4, 6] and len(saved) == 3
    # stop after the first chunk, resume from its state: the same parameters at the end
    first = saved[0]
    partial = vae.History(*(list(f[:1]) for f in info))
    resumed, info2 = cp.pretrain(key, tokens, **common, state=first, history=partial)
    assert info2.step == [2, 4, 6]
    jax.tree.map(np.testing.assert_array_equal, resumed.params, whole.params)
    with pytest.raises(ValueError, match="history"):
        cp.pretrain(key, tokens, **common, state=first)


def test_pretrain_on_a_device_mesh_matches_one_device(small_data, key):
    """``mesh=`` (``--data-parallel``): the same losses and parameters on a one-device mesh."""
    from wrjax import parallel

    _, vocab, tokens = small_data
    common = dict(config=_ar_config(vocab.size, max_len=72), num_steps=2, batch_size=16,
                  chunk_steps=2, progress=False)
    plain, h1 = cp.pretrain(key, tokens, **common)
    meshed, h2 = cp.pretrain(key, tokens, **common, mesh=parallel.data_mesh(jax.devices()[:1]))
    assert h1.loss == h2.loss
    jax.tree.map(np.testing.assert_array_equal, plain.params, meshed.params)


#: The arguments the shipped GRU model's training state recorded (the old script's session).
_GRU_SESSION_ARGS = {
    "preset": "gru", "max_len": None, "num_steps": None, "epochs": 30.0, "batch_size": 128,
    "lr": 0.001, "lr_decay": False, "beta": 0.1, "warmup_steps": 4000, "clip_norm": 20.0,
    "num_train": None, "time_limit": 7200.0, "chunk_steps": 200, "free_bits": 0.1,
    "checkpoint_every": 600.0, "finalize": False, "fresh": False, "seed": 0, "num_eval": 2000,
    "prior_samples": 1000, "processes": 2, "data_dir": None, "out": None,
}
_GRU_ARGV = ("chem --preset gru --epochs 30 --batch-size 128 --lr 1e-3 --beta 0.1 "
             "--warmup-steps 4000 --free-bits 0.1 --chunk-steps 200 --checkpoint-every 600")


def test_pretrain_subcommand_resumes_the_old_scripts_session(tmp_path):
    """`experiments/pretrain.py chem` takes the old script's arguments: the recorded session
    resumes (only the training arguments must match), a changed one is named, and a command
    recorded under the old script's name counts as the same command."""
    from experiments.pretrain import build_parser

    parse = build_parser(["chem"]).parse_args
    args = parse([*_GRU_ARGV.split(), "--time-limit", "60"])
    assert cp.changed_training_args(_GRU_SESSION_ARGS, args) == []
    changed = parse([*_GRU_ARGV.split(), "--lr", "2e-3"])
    assert cp.changed_training_args(_GRU_SESSION_ARGS, changed) == ["lr"]
    old = "python experiments/pretrain_chem.py " + _GRU_ARGV.removeprefix("chem ")
    (tmp_path / "m.train.json").write_text(json.dumps({"commands": [old]}))
    same = "python experiments/pretrain.py " + _GRU_ARGV
    assert cp.info_commands(tmp_path / "m.train", same) == [old]
    other = "python experiments/pretrain.py " + _GRU_ARGV + " --time-limit 60"
    assert cp.info_commands(tmp_path / "m.train", other) == [old, other]


def test_chem_model_encodes_and_decodes(small_data, key, tmp_path):
    smiles, vocab, tokens = small_data
    config = _ar_config(vocab.size, max_len=72)
    params = cm.init_params(key, config)
    cm.save_checkpoint(tmp_path / "m", params, config, vocab, {"epochs": 0})
    model = chem.load_model(tmp_path / "m")
    z = model.encode(smiles[:5])
    assert z.shape == (5, 6) and z.dtype == np.float32
    want = cm.encode_mean(model.module, model.params, jnp.asarray(tokens[:5]))
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-6)
    out = model.decode(z)
    assert len(out) == 5 and all(s == "" or Chem.MolFromSmiles(s) is not None for s in out)
    with pytest.raises(ValueError, match="cannot be encoded"):
        model.encode(["CCO", "not a molecule"])
    z2 = model.encode(["CCO", "not a molecule"], errors="nan")
    assert np.isfinite(z2[0]).all() and np.isnan(z2[1]).all()
    with pytest.raises(TypeError):
        model.encode("CCO")


def test_report_round_trip_against_the_model_api(small_data, key, tmp_path):
    """experiments.chem_report's round-trip fraction equals encode -> decode -> score through
    the public ChemModel API, counting an untokenisable molecule as a failure."""
    from experiments.chem_report import roundtrip_fraction

    smiles, vocab, _ = small_data
    config = _ar_config(vocab.size, max_len=72)
    cm.save_checkpoint(tmp_path / "m", cm.init_params(key, config), config, vocab, {"epochs": 0})
    model = chem.load_model(tmp_path / "m")
    objective = chem.make_objective("plogp")
    mols = [{"text": s, "score": objective(s)} for s in smiles[:6]]
    decoded = model.decode(model.encode([m["text"] for m in mols]))
    # Pretend the decodes' own scores were found: those are within 0.5 by construction.
    found = [{"text": m["text"], "score": objective(d) if d else -99.0} for m, d in zip(mols, decoded)]
    want = sum(d != "" for d in decoded) / 6
    assert roundtrip_fraction(model, model.params, found, objective) == pytest.approx(want)
    shifted = [dict(m, score=m["score"] + 0.6) for m in found]
    assert roundtrip_fraction(model, model.params, shifted, objective) == 0.0
    too_long = {"text": "C" * 200, "score": 0.0}  # 200 symbols: cannot be tokenised in 72
    assert roundtrip_fraction(model, model.params, found + [too_long], objective) == pytest.approx(
        want * 6 / 7)


# ------------------------------------------------------------------ objectives


def test_capped_objective_floors_a_39_atom_molecule():
    big = "C" * 39
    assert chem.heavy_atom_count(big) == 39
    assert chem.penalized_logp(big) > 10  # uncapped: a long chain scores high
    assert chem.penalized_logp_capped(big) == -6.0
    assert chem.penalized_logp_capped("C" * 38) == pytest.approx(chem.penalized_logp("C" * 38))
    assert math.isnan(chem.penalized_logp_capped("not a molecule"))
    fn = chem.make_objective("plogp_capped", floor=-4.0)
    assert fn(big) == -4.0
    with pytest.raises(ValueError, match="unknown objective"):
        chem.make_objective("qed")
    with pytest.raises(ValueError, match="finite floor"):
        chem.penalized_logp_capped("CCO", floor=-math.inf)


def test_capped_task_counts_the_oversized_molecule(monkeypatch):
    """In the chemistry task the 39-atom molecule is valid, becomes a data row and scores the
    floor: an evaluation that counts toward the budget, not a free retry."""
    from wrjax.tasks.chem import make_chem_task

    task = make_chem_task(jax.random.key(0), num_initial=50, objective="plogp_capped")
    big = "C" * 39
    assert task.is_valid(big)
    assert task.objective(big) == -6.0
    row = task.to_data(big)
    assert row.shape == task.x.shape[1:]
    uncapped = make_chem_task(jax.random.key(0), num_initial=50)
    assert uncapped.objective(big) == pytest.approx(chem.penalized_logp(big))


def test_descriptors_against_rdkit():
    from rdkit.Chem import QED

    mol = Chem.MolFromSmiles("c1ccccc1O")
    assert chem.qed("c1ccccc1O") == pytest.approx(QED.qed(mol))
    assert chem.tanimoto("CCO", "OCC") == 1.0
    assert 0.0 <= chem.tanimoto("CCO", "c1ccccc1") < 0.2
    assert math.isnan(chem.tanimoto("CCO", "xx")) and math.isnan(chem.sa_score("xx"))


# ------------------------------------------------------------------ GA baseline


def test_mutation_and_crossover_keep_symbols(rng):
    alphabet = ["[C]", "[N]", "[O]"]
    s = ["[C]", "[C]", "[O]"]
    for _ in range(50):
        m = chem_ga.mutate(rng, s, alphabet)
        assert abs(len(m) - len(s)) <= 1 and set(m) <= set(s) | set(alphabet)
        c = chem_ga.crossover(rng, s, ["[N]", "[N]"])
        assert c[:1] == ["[C]"] and set(c) <= {"[C]", "[O]", "[N]"}


def _nitrogens(smiles):
    return float(sum(a.GetSymbol() == "N" for a in Chem.MolFromSmiles(smiles).GetAtoms()))


def test_ga_improves_respects_budget_and_novelty():
    start = ["CCO", "CCN", "CCCC", "c1ccccc1", "CC(=O)O", "CNC"]
    scores = [_nitrogens(s) for s in start]
    seen = {chem.novelty_key(s) for s in start}
    recs = chem_ga.run_ga(0, start, scores, _nitrogens, budget=60, seen_keys=seen)
    assert len(recs) == 60
    keys = [r.key for r in recs]
    assert len(set(keys)) == 60 and not set(keys) & seen  # never a known molecule twice
    assert all(chem.novelty_key(r.smiles) == r.key for r in recs)
    assert max(r.score for r in recs) > max(scores)  # beats the best start (1 nitrogen)
    again = chem_ga.run_ga(0, start, scores, _nitrogens, budget=60, seen_keys=seen)
    assert [r.smiles for r in again] == [r.smiles for r in recs]  # deterministic per seed


@pytest.mark.parametrize(
    "bad, status",
    [(lambda s: 1 / 0, "objective-error"), (lambda s: "5", "objective-error"),
     (lambda s: True, "objective-error"), (lambda s: 1e39, "objective-error"),
     (lambda s: float("nan"), "objective-error")],
)
def test_ga_records_objective_errors_and_counts_them(bad, status):
    start = ["CCO", "CCN", "CCCC"]
    recs = chem_ga.run_ga(1, start, [1.0, 2.0, 3.0], bad, budget=5)
    assert len(recs) == 5 and all(r.status == status and r.score is None for r in recs)
    assert all(r.error for r in recs)


def test_ga_rejects_bad_input():
    with pytest.raises(ValueError, match="budget"):
        chem_ga.run_ga(0, ["CCO", "CCN"], [1.0, 2.0], _nitrogens, budget=0)
    with pytest.raises(ValueError, match="finite scores"):
        chem_ga.run_ga(0, ["CCO", "CCN"], [1.0, float("nan")], _nitrogens, budget=3)
    with pytest.raises(ValueError):
        chem_ga.GAConfig(crossover_rate=2.0)


def test_baselines_script_runs_and_reports(tmp_path):
    from experiments import chem_baselines

    out = tmp_path / "bl"
    args = ["--objective", "plogp_capped", "--method", "ga", "--seeds", "0", "1",
            "--budget", "12", "--out", str(out)]
    chem_baselines.main(args)
    runs = sorted(out.glob("plogp_capped/ga/seed_*/summary.json"))
    assert len(runs) == 2
    summary = json.loads(runs[0].read_text())
    recs = [json.loads(x) for x in (runs[0].parent / "records.jsonl").read_text().splitlines()]
    assert summary["evaluations"] == len(recs) == 12 and summary["status"] == "complete"
    ok = sorted((r["score"] for r in recs if r["status"] == "ok"), reverse=True)
    assert summary["topk_final"]["top10"] == pytest.approx(ok[9])
    assert all(b["heavy_atoms"] <= chem.ZINC_MAX_HEAVY_ATOMS or b["score"] == -6.0
               for b in summary["best"])
    mtime = runs[0].stat().st_mtime_ns
    chem_baselines.main(args)  # finished runs are not repeated
    assert runs[0].stat().st_mtime_ns == mtime


def test_shipped_gru_checkpoint_reconstructs_as_recorded():
    """The shipped reconstructing model gives the recorded held-out exact reconstruction
    (2,000 valid-split molecules in its JSON) on 200 other (test-split) molecules."""
    from experiments.chem_model_report import reconstruction

    model = chem.load_model()
    recorded = model.metadata["results"]["reconstruction"]["molecule_accuracy"]
    assert recorded > 0.3  # the floor for running the ablation at all
    rng = np.random.default_rng(0)
    test = chem.load_zinc("test")
    pick = [test[i] for i in rng.choice(len(test), 200, replace=False)]
    got = reconstruction(model, pick, jax.random.key(0), 0.1)
    # Two binomial estimates (200 test, 2,000 valid molecules): within 4 standard errors of
    # their difference (0.146 at p = 0.59; this sample of 200 reads 0.695 against 0.589).
    se = np.sqrt(recorded * (1 - recorded) * (1 / 200 + 1 / 2000))
    assert got["exact"] == pytest.approx(recorded, abs=4 * se)
    assert got["tanimoto_mean"] > 2 * got["tanimoto_random_pairs"]
