"""Tests for wrjax.bo: one BO query end to end, warm starts, no recompilation, the configs.

One module-scoped run (cold fit, warm refit, warm refit after a new point, cold refit)
feeds most tests, so the programs compile once. References: a dense grid search of the
same acquisition surface rebuilt from the returned state, the bound evaluated
independently at the state's parameters, and trace counts.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wrjax import acquisition as acq
from wrjax import bo, gp
from wrjax.precision import float64_scope

CFG = bo.BOConfig(
    num_inducing=12,
    n_best=40,
    n_random=80,
    n_include=4,
    kmeans_iters=5,
    cold_fit="authors",  # the step counts below are the authors' phases'
    cold_kernel_steps=30,
    cold_steps=30,
    warm_steps=7,
    num_restarts=6,
    num_random_starts=3,
    ascent_steps=200,
)
C, D, N_VALID = 160, 2, 140
OPT = np.array([0.7, -0.4])


def _objective(z):
    return -np.sum((z - OPT) ** 2, axis=-1) + 0.1 * np.sin(3 * z[:, 0])


class _TraceEvents:
    """Counts jaxpr traces (jax.monitoring's public compile events) while active."""

    EVENT = "/jax/core/compile/jaxpr_trace_duration"

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == self.EVENT:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(1)
    z = rng.uniform(-2, 2, size=(C, D)).astype(np.float32)
    y = _objective(z).astype(np.float32)
    mask = np.arange(C) < N_VALID
    z[~mask] = np.nan  # garbage in the empty slots must not matter
    with _TraceEvents() as counter:
        counts = []
        keys = jax.random.split(jax.random.key(0), 4)
        cold = bo.bo_suggest(keys[0], z, y, mask, config=CFG)
        counts.append(counter.count)
        warm = bo.bo_suggest(keys[1], z, y, mask, config=CFG, state=cold[1])
        counts.append(counter.count)
        # a query comes back: a new valid point, forced into the GP data
        z2, y2, mask2 = z.copy(), y.copy(), mask.copy()
        z2[N_VALID] = [-1.9, 1.9]
        y2[N_VALID] = _objective(z2[N_VALID : N_VALID + 1])[0]
        mask2[N_VALID] = True
        include = np.zeros(C, bool)
        include[N_VALID] = True
        warm2 = bo.bo_suggest(keys[2], z2, y2, mask2, config=CFG, state=warm[1], include=include)
        counts.append(counter.count)
        recold = bo.bo_suggest(keys[3], z2, y2, mask2, config=CFG, state=warm2[1], refit_inducing=True)
        counts.append(counter.count)
    return dict(
        z=z, y=y, mask=mask, z2=z2, y2=y2, mask2=mask2, keys=keys,
        cold=cold, warm=warm, warm2=warm2, recold=recold, counts=counts,
    )  # fmt: skip


def test_no_recompilation_from_one_query_to_the_next(runs):
    c_cold, c_warm, c_warm2, c_recold = runs["counts"]
    assert c_cold > 0  # the cold program was traced here (this config is unique to this file)
    assert c_warm > c_cold  # the warm program is a second program
    assert c_warm2 == c_warm  # new data, same shapes: no retrace
    assert c_recold == c_warm2  # a cold refit at the start of a cycle reuses the cold program


def test_candidates_are_ranked_distinct_float32_points_inside_the_box(runs):
    for name in ("cold", "warm", "warm2", "recold"):
        cand, _, info = runs[name]
        assert cand.dtype == np.float32 and cand.ndim == 2 and cand.shape[1] == D
        assert 1 <= len(cand) <= CFG.num_restarts
        assert len(info.acquisition_values) == len(cand)
        assert np.all(np.diff(info.acquisition_values) <= 0)
        lo, hi = info.bounds
        assert np.all(cand >= lo - 1e-6) and np.all(cand <= hi + 1e-6)
        tol = CFG.min_distance * (hi - lo)
        for i in range(len(cand)):
            for j in range(i):
                assert not np.all(np.abs(cand[i] - cand[j]) <= tol)
        assert np.isfinite(info.elbo) and info.jitter > 0 and info.skipped_steps == 0


def test_info_reports_the_authors_box_and_incumbent(runs):
    _, _, info = runs["cold"]
    z, y, mask = runs["z"], runs["y"], runs["mask"]
    # all 140 valid points exceed the subset size (120): the box and quantile use the subset;
    # the incumbent is the 90th percentile of the subset's targets, so within the data range
    assert info.num_data == CFG.n_best + CFG.n_random
    assert np.quantile(y[mask], 0.5) < info.incumbent <= y[mask].max()
    r = info.bounds[1, 0]
    assert 1.0 * np.percentile(np.abs(z[mask]), 90) < r <= 1.1 * np.abs(z[mask]).max() + 1e-6
    assert info.cold and not runs["warm"][2].cold and runs["recold"][2].cold


@float64_scope
def _surface(state, z, y, mask, config):
    """log-EI surface of the returned state, rebuilt independently of bo's programs."""
    key = jax.random.wrap_key_data(jnp.asarray(state.subset_key))
    sub = gp.select_subset(key, y, mask, n_best=config.n_best, n_random=config.n_random, n_include=config.n_include)
    idx, m = np.asarray(sub.index), np.asarray(sub.mask)
    data = gp.make_data(np.where(m[:, None], z[idx], 0.0), y[idx], m)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state.params)
    pred = gp.build_predictor(params, data, jitter=config.jitter)
    tau = np.quantile(y[idx][m].astype(np.float64), config.incumbent_quantile)

    @float64_scope
    def log_ei(x):
        mean, var = gp.predict(pred, x)
        return np.asarray(acq.log_expected_improvement(mean, var, tau))

    return log_ei, gp.collapsed_elbo(params, data, jitter=config.jitter)


def test_top_candidate_maximises_the_acquisition_against_a_grid_search(runs):
    cand, state, info = runs["warm"]
    log_ei, elbo = _surface(state, runs["z"], runs["y"], runs["mask"], CFG)
    # (1e-6: the bound is a sum of large cancelling terms, jit and eager round differently)
    np.testing.assert_allclose(float(elbo), info.elbo, rtol=1e-6)
    lo, hi = info.bounds
    g = np.linspace(lo[0], hi[0], 161)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    best_grid = log_ei(grid).max()
    at_cand = log_ei(cand.astype(np.float64))
    # the reported values are the surface's (up to the float32 rounding of the points)
    np.testing.assert_allclose(at_cand, info.acquisition_values, rtol=1e-4, atol=1e-4)
    assert at_cand[0] >= best_grid - 1e-4


def test_warm_refit_continues_from_the_state(runs):
    _, _, cold_info = runs["cold"]
    _, _, warm_info = runs["warm"]
    # same data and subset key: the warm fit starts exactly where the cold one ended
    np.testing.assert_allclose(warm_info.loss[0], -cold_info.elbo, rtol=1e-9)
    assert warm_info.elbo >= cold_info.elbo - 1e-6
    assert len(warm_info.loss) == CFG.warm_steps
    assert len(cold_info.loss) == CFG.cold_kernel_steps + CFG.cold_steps
    assert cold_info.loss[-1] < cold_info.loss[0]


def test_forced_points_enter_the_gp_data(runs):
    assert runs["warm2"][2].num_data == runs["warm"][2].num_data + 1


def test_state_leaves_are_numpy_and_precision_is_scoped(runs):
    _, state, _ = runs["warm"]
    for leaf in jax.tree.leaves(state):
        assert isinstance(leaf, np.ndarray)
    assert state.params.inducing.shape == (CFG.num_inducing, D)
    assert state.params.inducing.dtype == np.float64
    assert not jax.config.jax_enable_x64


def test_kriging_believer_batch(runs):
    cfg = dataclasses.replace(CFG, batch_size=3)
    cand, _, info = bo.bo_suggest(runs["keys"][1], runs["z"], runs["y"], runs["mask"], config=cfg, state=runs["cold"][1])
    single = runs["warm"][0]
    # same key and state: the first pick is the q = 1 suggestion
    np.testing.assert_allclose(cand[0], single[0], rtol=0, atol=1e-6)
    batch = cand[:3]
    assert len(single) >= 3  # the first round had 3 distinct results to fall back on
    width = info.bounds[1] - info.bounds[0]
    for i in range(3):
        for j in range(i):
            assert np.max(np.abs(batch[i] - batch[j]) / width) > CFG.min_distance


def test_bad_input_raises(runs):
    z, y, mask = runs["z"], runs["y"], runs["mask"]
    key = jax.random.key(3)
    bad = z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        bo.bo_suggest(key, bad, y, mask, config=CFG)
    with pytest.raises(ValueError, match="no valid point"):
        bo.bo_suggest(key, z, y, np.zeros(C, bool), config=CFG)
    with pytest.raises(ValueError, match="shape"):
        bo.bo_suggest(key, z, y[:-1], mask, config=CFG)
    with pytest.raises(ValueError, match="inducing"):
        bo.bo_suggest(key, z[:, :1], y, mask, config=CFG, state=runs["cold"][1])
    with pytest.raises(ValueError, match="fit_method"):
        bo.BOConfig(fit_method="sgd")
    with pytest.raises(ValueError, match="num_random_starts"):
        bo.BOConfig(num_restarts=4, num_random_starts=5)
    with pytest.raises(ValueError, match=r"GPFitConfig\.num_inducing"):
        bo.GPFitConfig(num_inducing=0)
    with pytest.raises(ValueError, match=r"AcquisitionConfig\.incumbent"):
        bo.AcquisitionConfig(incumbent="median")


def test_config_halves_recompile_only_their_program(runs):
    """A changed acquisition setting reuses the compiled fit program, and vice versa."""
    fit, acquisition = CFG.split()
    assert dataclasses.fields(bo.BOConfig) and set(dataclasses.asdict(CFG)) == (
        set(dataclasses.asdict(fit)) | set(dataclasses.asdict(acquisition)))  # fmt: skip
    other = dataclasses.replace(CFG, ascent_steps=CFG.ascent_steps + 1)
    with _TraceEvents() as counter:
        bo.bo_suggest(runs["keys"][1], runs["z"], runs["y"], runs["mask"], config=other, state=runs["cold"][1])
    fit_traces = counter.count
    with _TraceEvents() as counter:
        bo.bo_suggest(runs["keys"][1], runs["z"], runs["y"], runs["mask"], config=other, state=runs["cold"][1])
    assert counter.count == 0 and fit_traces > 0  # the new acquisition program, once


def test_select_subset_lives_beside_the_optimiser():
    y = np.array([3.0, 1.0, 2.0, 0.0], np.float32)
    sub = bo.select_subset(jax.random.key(0), y, np.array([True, True, True, False]), n_best=2, n_random=1)
    assert set(np.asarray(sub.index)[np.asarray(sub.mask)].tolist()) == {0, 1, 2}
    assert np.asarray(sub.index)[:2].tolist() == [0, 2]
    with pytest.raises(ValueError, match="finite"):
        bo.select_subset(jax.random.key(0), np.array([np.nan, 1.0]), np.array([True, True]),
                         n_best=1, n_random=1)  # fmt: skip


def test_make_gp_ei_is_an_init_propose_pair(runs):
    from wrjax.loop import ProposeContext

    fit, acquisition = CFG.split()
    opt = bo.make_gp_ei(fit, acquisition)
    c = runs["z"].shape[0]
    ctx = ProposeContext(jnp.asarray(np.nan_to_num(runs["z"])), jnp.asarray(runs["y"]), jnp.asarray(runs["mask"]),
                         jnp.zeros((c,), bool), None, None, 0, True, 1, 4)  # fmt: skip
    state = opt.init(ctx)
    proposal, state = opt.propose(runs["keys"][0], state, ctx)
    # the same query as bo_suggest's cold fit with the same key
    np.testing.assert_array_equal(proposal.z, runs["cold"][0])
    assert isinstance(state, bo.BOState) and np.isfinite(proposal.info["elbo"])


def test_cold_fit_choice_is_validated_and_recorded_only_where_used():
    with pytest.raises(ValueError, match=r"GPFitConfig\.cold_fit"):
        bo.GPFitConfig(cold_fit="fast")
    with pytest.raises(ValueError, match=r"cold_subset"):
        bo.GPFitConfig(cold_subset=0)
    with pytest.raises(ValueError, match=r"cold_max_steps"):
        bo.GPFitConfig(cold_max_steps=-1)
    default = bo.make_gp_ei(bo.GPFitConfig()).config["fit"]
    authors = bo.make_gp_ei(bo.GPFitConfig(cold_fit="authors")).config["fit"]
    assert default["cold_fit"] == "subset-greedy" and "cold_steps" not in default
    # an "authors" run writes the config.json of the runs recorded before the choice existed
    assert not {"cold_fit", "cold_subset", "cold_warmup_steps", "cold_kernel_max_steps",
                "cold_max_steps"} & set(authors)  # fmt: skip
    assert authors["cold_kernel_steps"] == 100 and authors["cold_steps"] == 100


class _Stop(Exception):
    pass


@pytest.mark.parametrize("cold_tol, want", [(None, 3.25e-3), (7.5e-7, 7.5e-7)])
def test_cold_tol_is_the_cold_fits_tolerance_and_refit_tol_without_it(runs, monkeypatch, cold_tol, want):
    """``cold_tol`` reaches the subset-greedy cold fit; unset, the cold fit uses ``refit_tol``
    (as before the field existed), and config.json leaves it out then."""
    seen = {}

    def cold_fit(*args, **kwargs):  # traced once: record the tolerance, stop before compiling
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(bo.gp, "cold_fit", cold_fit)
    cfg = dataclasses.replace(CFG, cold_fit="subset-greedy", refit_tol=3.25e-3, cold_tol=cold_tol)
    with pytest.raises(_Stop):
        bo.bo_suggest(runs["keys"][0], runs["z"], runs["y"], runs["mask"], config=cfg)
    assert seen["tol"] == want
    fit_json = bo.make_gp_ei(cfg).config["fit"]
    assert fit_json.get("cold_tol") == cold_tol and ("cold_tol" in fit_json) == (cold_tol is not None)
    assert "cold_tol" not in bo.make_gp_ei(dataclasses.replace(cfg, cold_fit="authors")).config["fit"]
    with pytest.raises(ValueError, match="cold_tol"):
        dataclasses.replace(cfg, cold_tol=-1.0)


def test_subset_greedy_cold_fit_in_a_query(runs):
    """The default cold fit through bo_suggest: its steps within the phases' caps, a bound
    equal to the float64 bound of the returned state on the query's data, and a warm refit
    that starts exactly there."""
    cfg = dataclasses.replace(CFG, cold_fit="subset-greedy", cold_subset=60, cold_warmup_steps=10,
                              cold_kernel_max_steps=20, cold_max_steps=15)  # fmt: skip
    z, y, mask = runs["z"], runs["y"], runs["mask"]
    keys = runs["keys"]
    cand, state, info = bo.bo_suggest(keys[0], z, y, mask, config=cfg)
    assert info.cold and 10 < info.fit_steps <= 10 + 20 + 15
    assert len(info.loss) == 10 + 20 + 15 and np.isfinite(info.elbo)
    assert cand.shape[1] == D and np.isfinite(cand).all()
    _, _, warm = bo.bo_suggest(keys[1], z, y, mask, config=cfg, state=state)
    np.testing.assert_allclose(warm.loss[0], -info.elbo, rtol=1e-9)
    assert warm.elbo >= info.elbo - 1e-6


def test_carry_lbfgs_continues_the_previous_fits_memory(runs):
    """``carry_lbfgs``: a warm query's L-BFGS state continues the cold fit's (its step count
    goes on from it) where the default starts afresh; recorded in config.json only when on;
    refused with Adam."""
    cfg = dataclasses.replace(CFG, carry_lbfgs=True)
    args = (runs["keys"][1], runs["z"], runs["y"], runs["mask"])
    cold_state = runs["cold"][1]
    cold_count = int(cold_state.opt_state[0].count)
    assert cold_count == CFG.cold_steps  # the "authors" cold fit's L-BFGS phase
    _, carried, info = bo.bo_suggest(*args, config=cfg, state=cold_state)
    _, fresh, _ = bo.bo_suggest(*args, config=CFG, state=cold_state)
    assert int(carried.opt_state[0].count) == cold_count + CFG.warm_steps
    assert int(fresh.opt_state[0].count) == CFG.warm_steps
    assert info.skipped_steps == 0 and np.isfinite(info.elbo)
    # the carried refit on the same data continues the cold fit: it never ends below it
    assert info.elbo >= runs["cold"][2].elbo - 1e-6 * abs(runs["cold"][2].elbo)
    assert bo.make_gp_ei(cfg.split()[0]).config["fit"]["carry_lbfgs"] is True
    assert "carry_lbfgs" not in bo.make_gp_ei(CFG.split()[0]).config["fit"]
    with pytest.raises(ValueError, match="carry_lbfgs"):
        bo.GPFitConfig(fit_method="adam", carry_lbfgs=True)


def test_predictor_forms_propose_the_same_points_and_only_triangular_is_recorded(runs):
    # the same warm query (key, data, state) with the ascent on the triangular posterior:
    # the same posterior, so the same candidates and values up to rounding
    cfg = dataclasses.replace(CFG, predictor_form="triangular")
    cand, _, info = bo.bo_suggest(runs["keys"][1], runs["z"], runs["y"], runs["mask"], config=cfg,
                                  state=runs["cold"][1])  # fmt: skip
    cand_d, _, info_d = runs["warm"]
    np.testing.assert_allclose(cand[:3], cand_d[:3], rtol=0, atol=1e-5)
    # (the ranked-lower starts stop short of their optima after a fixed step count, so rounding
    # moves their end points and values slightly more than the best one's)
    np.testing.assert_allclose(info.acquisition_values[0], info_d.acquisition_values[0], rtol=1e-8)
    np.testing.assert_allclose(info.acquisition_values[:3], info_d.acquisition_values[:3], rtol=1e-5)
    with pytest.raises(ValueError, match=r"predictor_form"):
        bo.AcquisitionConfig(predictor_form="cholesky")
    # the default stays out of config.json (recorded runs resume); the other choice is recorded
    assert "predictor_form" not in bo.make_gp_ei().config["acquisition"]
    tri = bo.make_gp_ei(acquisition=bo.AcquisitionConfig(predictor_form="triangular"))
    assert tri.config["acquisition"]["predictor_form"] == "triangular"
