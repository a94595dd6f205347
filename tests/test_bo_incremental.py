"""The incremental refit schedule of wrjax.bo.make_gp_ei (``GPFitConfig(refit="incremental")``).

A simulated retrain cycle (a buffer that grows by the top candidate of each query) checks:
the optimiser's posterior after k queries equals a from-scratch predictor on the same data
and hyperparameters (1e-8, float64), the data it holds are the cycle's subset plus the new
points, refits trigger as configured (cycle start, every r, staleness, window overflow),
nothing recompiles from one query or cycle to the next, and a toy loop resumes exactly.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wrjax import acquisition as acq
from wrjax import bo, gp, gp_update
from wrjax import loop as lso
from wrjax.loop import LSOConfig, ProposeContext
from wrjax.precision import float64_scope
from wrjax.tasks.toy import make_toy_task

from test_bo import _objective, _TraceEvents

C, D, N0, CAP = 150, 2, 110, 6
NEVER = dict(refit="incremental", refit_every=0, refit_max_bound_drop=None, refit_max_uncovered=None,
             refit_max_mean_sq_zscore=None)  # fmt: skip
FIT = bo.GPFitConfig(num_inducing=10, n_best=30, n_random=60, kmeans_iters=3, cold_fit="authors",
                     cold_kernel_steps=20,
                     cold_steps=20, warm_steps=5, refit_max_steps=30, **NEVER)  # fmt: skip
ACQ = bo.AcquisitionConfig(num_restarts=4, num_random_starts=2, ascent_steps=30)


def _buffer(seed=1):
    rng = np.random.default_rng(seed)
    z = rng.uniform(-2, 2, size=(C, D)).astype(np.float32)
    y = _objective(z).astype(np.float32)
    mask = np.arange(C) < N0
    z[~mask], y[~mask] = 0.0, 0.0
    return z, y, mask


def _ctx(z, y, mask, in_cycle, cycle_start):
    return ProposeContext(jnp.asarray(z), jnp.asarray(y), jnp.asarray(mask), jnp.asarray(in_cycle),
                          None, None, 0, cycle_start, 1, CAP)  # fmt: skip


def _cycle(opt, n, *, seed=1, cycle_starts=(0,), extra=None):
    """``n`` queries; after each the top candidate joins the buffer (``extra[i]`` more rows
    after query i: random points). Returns the states, the stats, and the buffer."""
    z, y, mask = _buffer(seed)
    in_cycle = np.zeros(C, bool)
    state, states, stats = None, [], []
    row = N0
    rng = np.random.default_rng(seed + 100)
    for i in range(n):
        if i in cycle_starts:
            in_cycle[:] = False
        ctx = _ctx(z, y, mask, in_cycle, i in cycle_starts)
        prop, state = opt.propose(jax.random.key(10 * seed + i), state, ctx)
        states.append(state)
        stats.append(prop.info)
        adds = [prop.z[0]] + [rng.uniform(-2, 2, D).astype(np.float32) for _ in range((extra or {}).get(i, 0))]
        for p in adds:
            z[row], y[row], mask[row], in_cycle[row] = p, _objective(p[None])[0], True, True
            row += 1
    return states, stats, (z, y, mask)


@pytest.fixture(scope="module")
def never():
    """No refit within the cycle; query 4 adds 2 extra rows to a window of 1 (overflow)."""
    fit = dataclasses.replace(FIT, incremental_window=1)
    return _cycle(bo.make_gp_ei(fit, ACQ), 6, extra={3: 2})


def test_posterior_after_k_queries_equals_a_from_scratch_predictor(never):
    states, stats, (z, y, mask) = never
    k = 3
    state = states[k]  # cold fit at query 0, then k queries that only absorbed points
    assert [s["refitted"] for s in stats[: k + 1]] == [True] + [False] * k
    assert isinstance(state, bo.IncrementalBOState)
    # the data: the cold fit's subset of the initial buffer, then the k new rows, in order,
    # standardised with the cold fit's scaling
    cap = max(FIT.n_include, CAP)
    sub = bo.select_subset(jax.random.wrap_key_data(jnp.asarray(state.subset_key)), y * (np.arange(C) < N0),
                           np.arange(C) < N0, n_best=FIT.n_best, n_random=FIT.n_random,
                           include=np.zeros(C, bool), n_include=cap)  # fmt: skip
    idx = np.asarray(sub.index)[np.asarray(sub.mask)]
    base = float64_scope(gp.make_data)(z[idx], y[idx], np.ones(len(idx), bool))
    s = len(np.asarray(sub.index))
    data = state.data
    assert data.x.shape == (s + cap, D)
    assert data.mask[:s].sum() == len(idx) and data.mask[s : s + k].all() and not data.mask[s + k :].any()
    np.testing.assert_array_equal(data.x[s : s + k], z[N0 : N0 + k].astype(np.float64))
    np.testing.assert_allclose(data.y[s : s + k], (y[N0 : N0 + k].astype(np.float64) - float(base.y_mean)) / float(base.y_std),
                               rtol=1e-12)
    np.testing.assert_allclose([data.y_mean, data.y_std], [base.y_mean, base.y_std], rtol=1e-12)
    assert int(state.inc.num_data) == len(idx) + k

    @float64_scope
    def compare():
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state.params)
        ref = gp.build_predictor(params, jax.tree.map(jnp.asarray, data), jitter=FIT.jitter, form="solve")
        inc = jax.tree.map(jnp.asarray, state.inc.pred)
        xt = jax.random.uniform(jax.random.key(7), (64, D), jnp.float64, -2.5, 2.5)
        xt = jnp.concatenate([xt, jnp.asarray(z[N0 : N0 + k], jnp.float64)])
        (m1, v1), (m2, v2) = gp.predict(inc, xt), gp.predict(ref, xt)
        return [np.asarray(a) for a in (m1, v1, m2, v2)]

    m1, v1, m2, v2 = compare()
    np.testing.assert_allclose(m1, m2, rtol=0, atol=1e-8)
    np.testing.assert_allclose(v1, v2, rtol=1e-8, atol=1e-8)


def test_overflowing_the_window_refits_and_never_means_cycle_start_only(never):
    _, stats, _ = never
    # query 4 sees 3 new rows with a window of 1: refit (warm, converged); 5 absorbs again
    assert [s["refitted"] for s in stats] == [True, False, False, False, True, False]
    assert 0 < stats[4]["fit_steps"] <= FIT.refit_max_steps and stats[1]["fit_steps"] == 0
    assert stats[0]["fit_steps"] == FIT.cold_kernel_steps + FIT.cold_steps


def test_refit_every_r_and_cycle_start_without_recompilation():
    opt = bo.make_gp_ei(dataclasses.replace(FIT, refit_every=2), ACQ)
    _, stats, _ = _cycle(opt, 5)  # compiles: cold, absorb, warm refit, acquisition
    assert [s["refitted"] for s in stats] == [True, False, True, False, True]
    with _TraceEvents() as counter:
        _, stats2, _ = _cycle(opt, 5, seed=2, cycle_starts=(0, 3))
    assert counter.count == 0
    # a cycle start refits (cold) whatever the count says
    assert [s["refitted"] for s in stats2] == [True, False, True, True, False]
    assert all(np.isfinite(s["elbo"]) for s in stats + stats2)


def test_staleness_rule_triggers_refits():
    # mean z^2 > 0: any added point is "stale"; the bound and coverage rules off
    opt = bo.make_gp_ei(dataclasses.replace(FIT, refit_max_mean_sq_zscore=0.0), ACQ)
    _, stats, _ = _cycle(opt, 3)
    assert [s["refitted"] for s in stats] == [True, True, True]
    # each warm query reports the signals its decision read (the cold one has none)
    assert "staleness" not in stats[0]
    for s in stats[1:]:
        sig = s["staleness"]
        assert sig["num_added"] == 1 and not sig["overflow"] and sig["mean_sq_zscore"] > 0.0
        assert 0.0 <= sig["max_uncovered"] <= 1.0 and np.isfinite(sig["elbo_per_point_change"])


def test_default_schedule_is_every_query():
    assert bo.GPFitConfig().refit == "every-query"
    with pytest.raises(ValueError, match="refit"):
        bo.GPFitConfig(refit="sometimes")
    # the default's config.json is unchanged (old run directories resume); the schedule's is full
    assert "refit" not in bo.make_gp_ei().config["fit"]
    assert bo.make_gp_ei(FIT).config["fit"]["refit"] == "incremental"


def _strip(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


class _Interrupt(Exception):
    pass


def test_toy_loop_with_the_incremental_schedule_resumes_exactly(tmp_path):
    toy = make_toy_task(jax.random.key(0))
    # cold_fit="authors": on the toy most proposals decode to known points (256 duplicates for
    # 8 evaluations); this run stays under the stall limit with the fit it was written for
    fit = bo.GPFitConfig(num_inducing=8, n_best=40, n_random=40, cold_kernel_steps=20, cold_steps=20,
                         warm_steps=5, kmeans_iters=3, refit="incremental", refit_every=2,
                         refit_max_steps=20, cold_fit="authors")  # fmt: skip
    opt = bo.make_gp_ei(fit, bo.AcquisitionConfig(num_restarts=6, num_random_starts=3, ascent_steps=20))
    cfg = LSOConfig(budget=8, retrain_every=4, batch_size=16, finetune_steps=2, initial_finetune_epochs=0.1)
    key = jax.random.key(5)
    full = lso.run(key, toy, cfg, optimizer=opt, workdir=tmp_path / "full", progress=False)
    assert sum(r["eval"] is not None for r in full.records) == 8

    def interrupt(event, payload):
        if event == "record" and payload["seq"] == 5:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        lso.run(key, toy, cfg, optimizer=opt, workdir=tmp_path / "cut", progress=False, callbacks=[interrupt])
    resumed = lso.run(key, toy, cfg, optimizer=opt, workdir=tmp_path / "cut", progress=False)
    assert _strip(resumed.records) == _strip(full.records)


@pytest.mark.slow  # four L-BFGS/EI programs to compile: 333 s on 2 loaded cores
def test_every_query_converged_refits_to_what_fit_converged_reaches():
    """The converged every-query refit is gp.fit_converged from the previous fit's parameters
    on the same subset (reference: that call made by hand), in more steps than the fixed
    refit's ``warm_steps``, through both fit_sparse_gp and the suggest path."""
    z, y, mask = _buffer()
    conv = dataclasses.replace(FIT, refit="every-query-converged", refit_max_steps=60, refit_tol=1e-7)
    cold = bo.fit_sparse_gp(jax.random.key(0), z, y, mask, fit=conv)  # a cold fit: as every-query
    warm_conv = bo.fit_sparse_gp(jax.random.key(1), z, y, mask, fit=conv, state=cold.state)

    @float64_scope
    def reference():
        p0 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), cold.state.params)
        opt = gp.make_optimizer(conv.learning_rate, method="lbfgs")
        _, _, info = gp.fit_converged(p0, opt.init(p0), cold.data, optimizer=opt,
                                      max_steps=conv.refit_max_steps, tol=conv.refit_tol, window=1,
                                      jitter=conv.jitter)  # fmt: skip
        return float(info.elbo), int(info.num_steps)

    elbo, steps = reference()
    assert conv.warm_steps < steps <= conv.refit_max_steps
    # the same steps (rounding differs between the two programs' fusions: 1e-7 measured)
    np.testing.assert_allclose(warm_conv.elbo, elbo, rtol=1e-6)
    # the suggest path takes the same refit and says how many steps it made
    _, _, info = bo.bo_suggest(jax.random.key(1), z, y, mask,
                               config=bo.BOConfig(**dataclasses.asdict(conv), num_restarts=4,
                                                  num_random_starts=2, ascent_steps=30),
                               state=cold.state)  # fmt: skip
    assert info.fit_steps == steps
    np.testing.assert_allclose(info.elbo, elbo, rtol=1e-6)
    # its config.json names only the fields it uses
    fit_json = bo.make_gp_ei(conv).config["fit"]
    assert fit_json["refit"] == "every-query-converged" and fit_json["refit_max_steps"] == 60
    assert "refit_every" not in fit_json and "incremental_window" not in fit_json


def test_the_incremental_schedule_is_gp_eis_only():
    from wrjax import latent_bo

    inc = bo.GPFitConfig(refit="incremental")
    for make in (lambda: latent_bo.make_thompson(inc), lambda: latent_bo.make_trust_region(10, inc),
                 lambda: latent_bo.make_constrained_ei(lambda t, r: np.zeros(len(r)), 1.0, inc),
                 lambda: latent_bo.make_constrained_ei(lambda t, r: np.zeros(len(r)), 1.0,
                                                       constraint_fit=inc)):  # fmt: skip
        with pytest.raises(ValueError, match="gp-ei's schedule only"):
            make()
    conv = bo.GPFitConfig(refit="every-query-converged")
    assert latent_bo.make_thompson(conv).config["fit"]["refit"] == "every-query-converged"


@pytest.mark.parametrize("refit", ["every-query", "every-query-converged"])
def test_audit_without_the_incremental_schedule_is_refused(refit):
    # only "incremental" skips refits; an audit elsewhere would silently log nothing
    with pytest.raises(ValueError, match="audit_every"):
        bo.GPFitConfig(refit=refit, audit_every=5)
    assert bo.GPFitConfig(refit=refit, audit_every=0).audit_every == 0
    assert bo.GPFitConfig(refit="incremental", audit_every=5).audit_every == 5


def test_audit_judges_the_schedules_proposal_on_the_skipped_refit_and_changes_nothing(never):
    """``audit_every``: each audited query reports the warm converged refit it skipped
    (reference: that refit made by hand with fit_sparse_gp from the same state and the
    schedule's proposal scored by log_ei_at on it) and the trajectory is the same without it
    (``never``'s first 3 queries: its extra rows come after query 3)."""
    fit = dataclasses.replace(FIT, incremental_window=1, audit_every=1)
    audited = _cycle(bo.make_gp_ei(fit, ACQ), 3)
    assert "audit_every" not in bo.make_gp_ei(fit).config["fit"]
    for (s0, a0), (s1, a1) in zip(zip(never[0][:3], never[1][:3]), zip(audited[0], audited[1])):
        jax.tree.map(np.testing.assert_array_equal, s0, s1)  # the same states, query by query
        assert {k: v for k, v in a0.items() if "seconds" not in k} == \
            {k: v for k, v in a1.items() if "seconds" not in k and k != "audit"}
    stats, states = audited[1], audited[0]
    assert "audit" not in stats[0]  # a cold fit is not audited: it is a refit
    z_all, y_all, _ = audited[2]
    conv = dataclasses.replace(fit, refit="every-query-converged", n_include=CAP, audit_every=0)
    rows = np.arange(C)
    for i in (1, 2):  # query i saw the initial rows and queries 0..i-1's proposals
        mask = rows < N0 + i
        in_cycle = mask & (rows >= N0)
        z, y = np.where(mask[:, None], z_all, 0.0), np.where(mask, y_all, 0.0)
        prev = states[i - 1]
        ref = bo.fit_sparse_gp(jax.random.key(10 + i), z, y, mask, fit=conv, include=in_cycle,
                               state=bo.BOState(prev.params, prev.opt_state, prev.subset_key))  # fmt: skip
        audit = stats[i]["audit"]
        inc = states[i].inc  # the stale posterior: its bound in original units, per point
        stale = stats[i]["elbo"] / int(inc.num_data) - np.log(float(inc.pred.y_std))
        fresh = ref.elbo / ref.num_data - np.log(float(ref.predictor.y_std))
        np.testing.assert_allclose(audit["elbo_gain_per_point"], fresh - stale, atol=2e-6)

        @float64_scope
        def scored(pred=ref.predictor, data=ref.data, x=z_all[N0 + i]):
            tau = acq.incumbent(data.y * pred.y_std + pred.y_mean, data.mask, method="quantile",
                                quantile=ACQ.incumbent_quantile)  # fmt: skip
            return float(bo.log_ei_at(pred, tau, jnp.asarray(x, jnp.float64)))

        np.testing.assert_allclose(audit["ei_ratio"], np.exp(scored() - audit["refit_value"]), rtol=1e-4)
        assert audit["stale_value"] == pytest.approx(stats[i]["acq_best"], abs=1e-6)
        assert 0 < audit["refit_steps"] <= FIT.refit_max_steps and audit["distance"] >= 0
        assert 0 < audit["ei_ratio_other_starts"] < np.inf



def _grown(state, form="product"):
    """The state's posterior with the rows absorbed since its fit added as inducing inputs."""
    data = jax.tree.map(jnp.asarray, state.data)
    s = data.x.shape[0] - max(FIT.n_include, CAP)
    pred = jax.tree.map(jnp.asarray, state.inc.pred)
    return gp_update.grown_predictor(pred, data, data.x[s:], data.mask[s:], jitter=FIT.jitter, form=form), data, s


def test_grown_predictor_is_the_predictor_of_the_grown_inducing_set(never):
    states, _, (z, _, _) = never
    k = 3
    state = states[k]  # three rows absorbed since the cold fit

    @float64_scope
    def compare():
        grown, data, s = _grown(state, form="solve")
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state.params)
        # the reference: an ordinary predictor whose inducing inputs are the fitted ones and
        # the three absorbed points, nothing parked
        bigger = params._replace(inducing=jnp.concatenate([params.inducing, data.x[s : s + k]]))
        ref = gp.build_predictor(bigger, data, jitter=FIT.jitter, form="solve")
        plain = gp.build_predictor(params, data, jitter=FIT.jitter, form="solve")
        # nothing used: the parked slots change nothing
        none_used = gp_update.grown_predictor(plain, data, data.x[s:], jnp.zeros(data.x.shape[0] - s, bool),
                                              jitter=FIT.jitter, form="solve")  # fmt: skip
        xt = jax.random.uniform(jax.random.key(3), (64, D), jnp.float64, -2.5, 2.5)
        xt = jnp.concatenate([xt, data.x[s : s + k]])
        out = [gp.predict(p, xt) for p in (grown, ref, none_used, plain)]
        # Titsias' bound with the same hyperparameters cannot fall when inducing inputs are added
        elbos = [gp.collapsed_elbo(p, data, jitter=FIT.jitter) for p in (bigger, params)]
        return [np.asarray(a) for pair in out for a in pair], [float(e) for e in elbos], grown.inducing.shape

    (mg, vg, mr, vr, mn, vn, mp, vp), (e_big, e_plain), shape = compare()
    assert shape == (FIT.num_inducing + max(FIT.n_include, CAP), D)
    np.testing.assert_allclose(mg, mr, rtol=0, atol=1e-8)
    np.testing.assert_allclose(vg, vr, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(mn, mp, rtol=0, atol=1e-10)
    np.testing.assert_allclose(vn, vp, rtol=1e-10, atol=1e-10)
    assert e_big >= e_plain
    # and it does move the posterior at the absorbed points (a fixed 10-point Z only
    # approximates them): otherwise the option would change nothing
    assert np.max(np.abs(mg[-k:] - mp[-k:])) > 1e-6


@pytest.mark.parametrize("noise, m", [(0.3, 5), (1e-3, 12)])
def test_extend_inducing_borders_the_factors_into_the_grown_predictor(noise, m):
    # the factors extended by new inducing inputs against the from-scratch build of the grown
    # set, with one parked slot; masked data rows must count in neither
    rng = np.random.default_rng(7)
    x = rng.uniform(-2, 2, (60, 2))
    y = np.sin(2 * x[:, 0]) + x[:, 1] ** 2
    mask = np.arange(60) < 56
    extra, used = rng.uniform(-2, 2, (4, 2)), np.array([True, True, False, True])
    xt = rng.uniform(-2.5, 2.5, (50, 2))

    def both(params, data, extra, used, xt):
        plain = gp.build_predictor(params, data, form="solve")
        ext = gp_update.extend_inducing(plain, data, extra, used)
        grown = gp_update.grown_predictor(plain, data, extra, used, form="solve")
        none = gp_update.extend_inducing(plain, data, extra, jnp.zeros_like(used))
        return [gp.predict_standardized(p, xt) for p in (ext, grown, none, plain)], ext.chol_kzz, grown.chol_kzz

    @float64_scope
    def run():
        inv = lambda v: np.log(np.expm1(v))  # noqa: E731
        params = gp.SGPRParams(jnp.asarray(rng.uniform(-2, 2, (m, 2))), jnp.asarray(inv(np.array([0.8, 1.1]))),
                               jnp.asarray(inv(1.3)), jnp.asarray(inv(noise)))  # fmt: skip
        out, lze, lzg = jax.jit(both)(params, gp.make_data(x, y, mask), jnp.asarray(extra), jnp.asarray(used), jnp.asarray(xt))
        return [np.asarray(a) for pair in out for a in pair], np.asarray(lze), np.asarray(lzg)

    (me, ve, mg, vg, mn, vn, mp, vp), lze, lzg = run()
    np.testing.assert_allclose(lze, lzg, rtol=0, atol=1e-12)
    np.testing.assert_allclose(me, mg, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ve, vg, rtol=0, atol=1e-11)
    np.testing.assert_allclose(mn, mp, rtol=0, atol=1e-12)  # nothing used: nothing changes
    np.testing.assert_allclose(vn, vp, rtol=0, atol=1e-12)
    assert np.max(np.abs(me - mp)) > 1e-3  # and the added points do change it


def test_extend_inducing_from_the_schedules_updated_posterior(never):
    # the schedule's situation: a posterior that absorbed three rows by rank-one updates,
    # extended by them, against the from-scratch build; this fixture's B is ill-conditioned
    # (entries of L_B near 2e3), so both carry rounding that cond(B) amplifies (3e-6 in the
    # mean, 1.3e-5 relative in the variance here;
    # the algebra itself is checked to 1e-9 above)
    states, _, _ = never
    state = states[3]

    @float64_scope
    def compare():
        grown, data, s = _grown(state, form="solve")
        inc = jax.tree.map(jnp.asarray, state.inc.pred)
        ext = jax.jit(gp_update.extend_inducing)(inc, data, data.x[s:], data.mask[s:])
        xt = jnp.concatenate([jax.random.uniform(jax.random.key(4), (64, D), jnp.float64, -2.5, 2.5), data.x[s : s + 3]])
        out = [gp.predict(p, xt) for p in (ext, grown, inc)]
        return [np.asarray(a) for pair in out for a in pair], np.asarray(ext.inducing), np.asarray(grown.inducing)

    (me, ve, mg, vg, mp, vp), ze, zg = compare()
    np.testing.assert_array_equal(ze, zg)
    np.testing.assert_allclose(me, mg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ve, vg, rtol=1e-4, atol=1e-6)
    # the option's effect at the absorbed points is well above that rounding
    assert np.max(np.abs(me[-3:] - mp[-3:])) > 10 * np.max(np.abs(me - mg))


def test_grow_inducing_max_keeps_the_latest_absorbed_points(never):
    states, _, _ = never
    state = states[3]  # rows absorbed in slots s, s + 1, s + 2
    fit = dataclasses.replace(FIT, grow_inducing=True, grow_inducing_max=2, n_include=max(FIT.n_include, CAP))
    with pytest.raises(ValueError, match="grow_inducing_max"):
        dataclasses.replace(fit, grow_inducing_max=0)

    @float64_scope
    def compare():
        inc, data = jax.tree.map(jnp.asarray, state.inc), jax.tree.map(jnp.asarray, state.data)
        s = data.x.shape[0] - fit.n_include
        capped = bo._grow_program(inc, data, config=fit)
        ref = gp_update.extend_inducing(inc.pred, data, data.x[s + 1 : s + 3], jnp.ones(2, bool))
        roomy = bo._grow_program(inc, data, config=dataclasses.replace(fit, grow_inducing_max=8))
        all3 = gp_update.extend_inducing(inc.pred, data, data.x[s : s + 3], jnp.ones(3, bool))
        xt = jax.random.uniform(jax.random.key(5), (32, D), jnp.float64, -2.5, 2.5)
        out = [gp.predict(p, xt) for p in (capped, ref, roomy, all3)]
        return [np.asarray(a) for pair in out for a in pair], capped.inducing.shape[0], roomy.inducing.shape[0]

    (mc, vc, mr, vr, m8, v8, m3, v3), rows_capped, rows_roomy = compare()
    assert (rows_capped, rows_roomy) == (FIT.num_inducing + 2, FIT.num_inducing + min(8, fit.n_include))
    # (jitted against eager on this fixture's ill-conditioned B: rounding of 2e-7 relative)
    np.testing.assert_allclose(mc, mr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vc, vr, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m8, m3, rtol=1e-5, atol=1e-5)  # room for all: parked slots add nothing
    np.testing.assert_allclose(v8, v3, rtol=1e-4, atol=1e-6)
    # leaving out the first absorbed point does matter, far beyond that rounding
    assert np.max(np.abs(mc - m3)) > 10 * max(np.max(np.abs(mc - mr)), np.max(np.abs(m8 - m3)))
    # the default stays out of config.json, so the recorded grow runs resume
    on = bo.make_gp_ei(dataclasses.replace(FIT, grow_inducing=True)).config["fit"]
    assert on["grow_inducing"] is True and "grow_inducing_max" not in on
    assert bo.make_gp_ei(fit).config["fit"]["grow_inducing_max"] == 2


def test_grow_inducing_runs_ei_on_the_grown_posterior_and_keeps_the_schedule(never):
    # query 3 of the `never` cycle again, from the state after query 2, with grow_inducing
    states, stats, (z, y, _) = never
    k = 3
    fit = dataclasses.replace(FIT, incremental_window=1, grow_inducing=True)
    mask = np.arange(C) < N0 + k
    in_cycle = mask & (np.arange(C) >= N0)
    prop, state = bo.make_gp_ei(fit, ACQ).propose(jax.random.key(10 + k), states[k - 1],
                                                    _ctx(z, y * mask, mask, in_cycle, False))  # fmt: skip
    assert prop.info["refitted"] is False and prop.info["staleness"] == stats[k]["staleness"]
    # the schedule's own state is the same as without the option: only EI's posterior differs
    for a, b in zip(jax.tree.leaves(state.inc), jax.tree.leaves(states[k].inc)):
        np.testing.assert_array_equal(a, b)
    grown, data, _ = float64_scope(_grown)(state)

    @float64_scope
    def values_at(x):
        y_orig = data.y * grown.y_std + grown.y_mean
        tau = acq.incumbent(y_orig, data.mask, method="quantile", quantile=ACQ.incumbent_quantile)
        x = jnp.asarray(x, jnp.float64)
        plain = jax.tree.map(jnp.asarray, state.inc.pred)
        return float(bo._acq_partial(ACQ, grown, tau)(x)), float(bo._acq_partial(ACQ, plain, tau)(x))

    # the value the proposal reported is EI at its point on the grown posterior, not on the
    # fitted-inducing-points posterior (up to the float32 rounding of the stored point)
    on_grown, on_plain = values_at(prop.z[0])
    assert on_plain != on_grown
    assert abs(prop.info["acq_best"] - on_grown) < 0.1 * abs(on_plain - on_grown)
    with pytest.raises(ValueError, match="grow_inducing"):
        bo.GPFitConfig(grow_inducing=True)  # the default schedule refits anyway
