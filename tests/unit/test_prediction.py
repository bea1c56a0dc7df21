"""The predictor on synthetic profiles whose co-located behaviour is known (predictfixtures)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from scipy.optimize import brentq

from reports.aggregate import experiment_table
from reports.explain import Explanation, explain, predict_capacity, predict_rates
from reports.prediction import (
    HOST,
    TIME_SLICE,
    Model,
    model_for,
    predict_set,
    set_capacity,
    solo_capacity,
)
from rundir.reader import load_run
from tests.unit.predictfixtures import (
    Law,
    Plan,
    attainment,
    solo_latency,
    stretches,
    write_predict_run,
)

# heavy engines: 2 and 2.4 cores at their nominal rates, so the 2 cores' fluid bound stretches
A = Law("a", rate=4.0, cores_per_rps=0.5)
B = Law("b", rate=6.0, tpot0=0.02, cores_per_rps=0.4, alpha=0.8)
E = Law("e", kind="encoder", rate=10.0, cores_per_rps=0.08, alpha=0.3)  # 0.8 core
LAWS = {x.name: x for x in (A, B, E)}
# light engines (0.8, 0.9, 0.8 core): the fluid bound never binds, only the co-tenants' pull
LIGHT = [replace(A, cores_per_rps=0.2), replace(B, cores_per_rps=0.15), E]
# bounds that every rung's attainment straddles (no rung at 0 or 1): attainment is then a
# straight line in log rate, and the interpolated capacity is exact
SLO = {"a": {"ttft_ms": 57.0}, "b": {"ttft_ms": 46.0}, "e": {"e2e_ms": 65.0}}
PAIRS = [(("a", "b"), 1.0), (("a", "e"), 1.0), (("b", "e"), 1.0), (("a", "b", "e"), 1.0),
         (("a", "b"), 0.5), (("a", "e"), 0.5)]


def _explain(run_dir: Path) -> Explanation:
    run = load_run(run_dir)
    exp, dev = experiment_table(run)
    return explain(run, exp, dev)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Explanation:
    root = tmp_path_factory.mktemp("plain")
    return _explain(write_predict_run(root, Plan([A, B, E], sets=PAIRS, slo=SLO)))


@pytest.fixture(scope="module")
def kappa_run(tmp_path_factory: pytest.TempPathFactory) -> Explanation:
    root = tmp_path_factory.mktemp("kappa")
    return _explain(write_predict_run(root, Plan(LIGHT, sets=PAIRS, slo=SLO, kappa=0.5,
                                                 name="kappa-fixture")))


def test_profiles_have_one_rung_per_offered_rate(plain_run: Explanation) -> None:
    t = plain_run.profile_table
    assert t.height == 9  # 3 tenants x 3 rates
    a = t.filter(t["tenant"] == "a").sort("offered_rps")
    assert a["offered_rps"].to_list() == [2.0, 4.0, 8.0]
    assert a["experiments"].to_list() == [2, 2, 2]
    assert a["proc_cpu_mean_pct"].to_list() == pytest.approx([100.0, 200.0, 400.0])
    assert a["tpot_p50_s"][1] == pytest.approx(solo_latency(A, A.tpot0, 4.0))
    assert a["ttft_p99_s"][2] == pytest.approx(solo_latency(A, A.ttft0, 8.0, q=0.99))
    e = t.filter(t["tenant"] == "e")
    assert e["tpot_p50_s"].is_null().all() and e["e2e_p99_s"].is_not_null().all()


def test_host_mode_and_cores_come_from_the_run(plain_run: Explanation) -> None:
    assert plain_run.plain.mode == HOST and plain_run.plain.cores == 2
    assert plain_run.plain.kappa == 0.0


def test_a_pair_is_predicted_exactly_where_the_model_holds(plain_run: Explanation) -> None:
    rates = {"a": 5.0, "b": 7.0}  # between rungs: interpolation must be exact on power laws
    s = stretches(LAWS, rates, 0.0)
    assert s["a"] > 1.0  # 2.5 + 2.8 cores > 2 cores: the fluid bound stretches both
    pred = predict_set(plain_run.profiles, rates, plain_run.plain)
    assert pred["a"].stretch == pytest.approx(s["a"])
    assert pred["a"].figures["tpot_p50_s"] == pytest.approx(
        solo_latency(A, A.tpot0, 5.0, s["a"]), rel=1e-9)
    assert pred["b"].figures["ttft_p99_s"] == pytest.approx(
        solo_latency(B, B.ttft0, 7.0, s["b"], q=0.99), rel=1e-9)
    want = attainment(A, 0.057, A.ttft0, 5.0, s["a"])
    assert pred["a"].figures["slo_attainment"] == pytest.approx(want, abs=0.01)


def test_leave_one_out_errors_vanish_for_the_plain_model(plain_run: Explanation) -> None:
    m = plain_run.mape.filter(plain_run.mape["model"] == "plain")
    lat = m.filter(m["figure"].is_in(["tpot_p50_s", "ttft_p99_s", "e2e_p99_s"]))
    # a decoder has two latency figures, the encoder one: 4 + 3 + 3 + 5 + 4 + 3 over the sets
    assert lat["n"].sum() == 22 and lat["unscored"].sum() == 0
    assert lat["mape_pct"].max() < 1e-6
    att = plain_run.scores.filter((plain_run.scores["model"] == "plain")
                                  & (plain_run.scores["figure"] == "slo_attainment"))
    # in points: a rung whose attainment is clipped at 0 bends the straight line a little
    assert att["residual"].abs().max() < 0.03
    assert plain_run.model.fitted_on == 0  # nothing to gain from fitting: the plain model


def test_stretch_from_co_tenants_is_fitted_and_refit_without_the_left_out_set(
        kappa_run: Explanation) -> None:
    x = kappa_run
    scores = x.scores
    enc = scores.filter((scores["tenant"] == "e") & (scores["figure"] == "e2e_p99_s"))
    plain = enc.filter(enc["model"] == "plain")
    fitted = scores.filter(scores["model"] == "calibrated")
    assert plain["ape_pct"].min() > 5.0  # the plain host model misses the encoder's stalls
    # each left-out pairing's κ was fitted on the others and lands on the truth
    assert fitted["kappa"].to_list() == pytest.approx([0.5] * fitted.height, abs=0.051)
    assert x.model.fitted_on == 6 and x.model.kappa == pytest.approx(0.5, abs=0.051)
    assert "fitted on all 6 measured sets" in x.why
    m = x.mape.filter(x.mape["model"] == "calibrated")
    assert m.filter(m["figure"] == "e2e_p99_s")["mape_pct"][0] < 1.0
    # the one-thread engines feel nothing below the fluid bound, fitted or not
    dec = scores.filter((scores["tenant"] == "a") & (scores["figure"] == "tpot_p50_s"))
    assert dec["ape_pct"].max() < 1e-6


def test_only_lockstep_tenants_feel_co_tenants_on_the_host(kappa_run: Explanation) -> None:
    m = Model(HOST, 2.0, 1.0)
    s = m.stretches(kappa_run.profiles, {"a": 2.0, "e": 5.0})
    assert s["a"] == 1.0  # 0.4 + 0.4 cores of 2: below the fluid bound
    assert s["e"] == pytest.approx(1.0 + 1.0 * 1.0 * 0.4 / 2)  # κ x (cores - 1) x 0.2


def test_time_slice_stretch_is_one_plus_the_co_tenants_busy_time() -> None:
    m = model_for(TIME_SLICE, None)
    assert m.kappa == 1.0
    assert m.co_demand({"a": 0.3, "b": 0.2, "c": 0.1}, "a") == pytest.approx(0.3)


def test_solo_capacity_is_where_attainment_crosses_the_target(plain_run: Explanation) -> None:
    # attainment is linear in log r on these laws: the crossing is exact up to discreteness
    want = brentq(lambda r: attainment(A, 0.057, A.ttft0, r) - 0.90, 0.5, 50.0)
    c = plain_run.capacities["a"]
    assert c.source == "profile" and c.censored is None
    assert c.rps == pytest.approx(want, rel=0.03)
    assert c.lo is not None and c.hi is not None and c.lo <= c.rps <= c.hi
    measured = solo_capacity(plain_run.profiles["a"], {"capacity_rps": 3.3, "bracket": [3.2, 3.4]})
    assert (measured.rps, measured.source) == (3.3, "capacity.json")


def test_co_located_capacity_along_a_mix_is_the_analytic_one(plain_run: Explanation) -> None:
    x = plain_run
    caps = x.capacities
    mix = {"a": caps["a"].rps, "b": caps["b"].rps}

    def worst(lam: float) -> float:
        rates = {t: lam * w for t, w in mix.items()}
        s = stretches(LAWS, rates, 0.0)
        return min(attainment(A, 0.057, A.ttft0, rates["a"], s["a"]),
                   attainment(B, 0.046, B.ttft0, rates["b"], s["b"])) - 0.90

    assert worst(1.0) < 0  # each at its solo capacity, together: the stretch costs capacity
    want = brentq(worst, 0.3, 1.0)
    got = set_capacity(x.profiles, mix, caps, x.plain)
    assert got.scale == pytest.approx(want, rel=0.03)
    assert pytest.approx(2 * got.scale) == got.W  # w_i = C_i: W = n λ
    assert got.first_fail in ("a", "b") and got.censored is None
    c = predict_capacity(x, ["a", "b"])
    assert c["scale_lo"] <= c["scale"] <= c["scale_hi"] and "leave-one-out" in c["interval"]


def test_predictions_carry_intervals_and_say_how(plain_run: Explanation) -> None:
    rows = predict_rates(plain_run, {"a": 3.0, "e": 5.0})
    figs = {(r["tenant"], r["figure"]) for r in rows}
    assert figs == {("a", "tpot_p50_s"), ("a", "ttft_p99_s"), ("a", "slo_attainment"),
                    ("e", "e2e_p99_s"), ("e", "slo_attainment")}
    for r in rows:
        assert r["lo"] <= r["predicted"] <= r["hi"]
        assert r["interval"].startswith("leave-one-out residuals")


def test_without_measured_sets_the_interval_is_the_repetition_spread(tmp_path: Path) -> None:
    x = _explain(write_predict_run(tmp_path, Plan([A, B], slo=SLO, rep_noise=0.05)))
    assert x.scores.height == 0 and x.sets == []
    rows = predict_rates(x, {"a": 4.0, "b": 6.0})
    tp = next(r for r in rows if r["tenant"] == "a" and r["figure"] == "tpot_p50_s")
    assert tp["interval"].startswith("the profile's repetition spread")
    # two repetitions at ±5%: sd/mean = 0.0707; 1.96 of it on the log scale
    assert math.log(tp["hi"] / tp["predicted"]) == pytest.approx(1.96 * 0.05 * math.sqrt(2),
                                                                 rel=0.02)


def test_beyond_the_ladder_is_marked_extrapolated(plain_run: Explanation) -> None:
    pred = predict_set(plain_run.profiles, {"a": 7.0, "b": 12.0}, plain_run.plain)
    assert pred["b"].equivalent_rate > 12.0 and pred["b"].extrapolated
    ok = predict_set(plain_run.profiles, {"a": 2.0, "b": 2.5}, Model(HOST, 2.0, 0.0))
    assert not ok["a"].extrapolated and ok["a"].stretch == 1.0


def test_report_shows_bottlenecks_and_scored_predictions(tmp_path: Path) -> None:
    from reports.build import build_report

    run_dir = write_predict_run(tmp_path, Plan([A, B, E], sets=PAIRS[:3], slo=SLO, repetitions=1))
    paths = build_report(run_dir)
    html = paths.html.read_text()
    assert 'id="explain"' in html and 'id="mape-table"' in html and 'id="loo-table"' in html
    assert 'data-figure="predicted_vs_measured"' in html
    assert "Model: time rescaling, host CPU" in html and "Parallax" in html
    md = paths.summary_md.read_text()
    assert "## Predictions from the solo profiles" in md and "| plain (used) | TPOT p50 |" in md
    for t in ("profiles", "attribution", "prediction_scores", "prediction_mape"):
        assert (paths.tables_dir / f"{t}.parquet").is_file()


def test_predict_command(plain_run: Explanation, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from orchestrator.cli.reports import predict

    run_dir = write_predict_run(tmp_path, Plan([A, B, E], sets=PAIRS[:2], slo=SLO))
    res = CliRunner().invoke(predict, [str(run_dir), "--set", "a+b", "--rates", "a=3,b=4"])
    assert res.exit_code == 0, res.output
    assert "TPOT p50" in res.output and "95% [" in res.output and "stretch" in res.output
    assert "intervals: leave-one-out residuals" in res.output
    res = CliRunner().invoke(predict, [str(run_dir), "--set", "a+e", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["capacity"]["scale"] > 0 and out["capacity"]["W"] is not None
    assert out["model"].startswith("time rescaling")
    bad = CliRunner().invoke(predict, [str(run_dir), "--set", "a+b", "--rates", "a=3"])
    assert bad.exit_code != 0 and "every tenant of --set" in str(bad.exception)
    bad = CliRunner().invoke(predict, [str(run_dir), "--set", "a+b", "--rates", "a:3"])
    assert bad.exit_code != 0 and "TENANT=NUMBER" in bad.output


def test_capacity_searches_are_scored_from_capacity_json(tmp_path: Path) -> None:
    run_dir = write_predict_run(tmp_path, Plan([A, B], sets=[(("a", "b"), 0.5)], slo=SLO))
    ca = brentq(lambda r: attainment(A, 0.057, A.ttft0, r) - 0.90, 0.5, 50.0)
    cb = brentq(lambda r: attainment(B, 0.046, B.ttft0, r) - 0.90, 0.5, 50.0)

    def worst(lam: float) -> float:
        rates = {"a": lam * ca, "b": lam * cb}
        s = stretches(LAWS, rates, 0.0)
        return min(attainment(A, 0.057, A.ttft0, rates["a"], s["a"]),
                   attainment(B, 0.046, B.ttft0, rates["b"], s["b"])) - 0.90

    lam = brentq(worst, 0.3, 1.0)
    (run_dir / "capacity.json").write_text(json.dumps({
        "tenants": {"a": {"capacity_rps": ca, "bracket": [ca * 0.97, ca * 1.03]},
                    "b": {"capacity_rps": cb, "bracket": [cb * 0.97, cb * 1.03]}},
        "sets": {"a+b": {"mix": {"a": ca, "b": cb}, "scale": lam, "W": 2 * lam}}}))
    x = _explain(run_dir)
    assert x.capacities["a"].source == "capacity.json"
    cap = x.scores.filter(x.scores["figure"].is_in(["capacity_scale", "W"])
                          & (x.scores["model"] == "plain"))
    assert sorted(cap["figure"]) == ["W", "capacity_scale"]
    assert cap["ape_pct"].max() < 3.0
    assert cap["set"][0] == "a + b (co-located capacity)"


def test_the_noise_floor_is_one_repetition_against_the_others(tmp_path: Path) -> None:
    # repetition r0 is 5% slow, r1 5% fast: each predicts the other with 10/0.95 or 10/1.05 %
    x = _explain(write_predict_run(tmp_path, Plan([A, B], sets=[(("a", "b"), 0.5)], slo=SLO,
                                                 rep_noise=0.05)))
    noise = x.mape.filter((x.mape["model"] == "repetition noise")
                          & (x.mape["figure"] == "tpot_p50_s")).row(0, named=True)
    assert noise["n"] == 2 * 3 * 2  # 2 tenants x 3 loads x 2 repetitions
    assert noise["mape_pct"] == pytest.approx((10 / 0.95 + 10 / 1.05) / 2, rel=1e-6)
    att = x.mape.filter((x.mape["model"] == "plain") & (x.mape["figure"] == "slo_attainment"))
    assert att["mae_points"][0] is not None
