"""The power planner: its rule equals the verdict engine's, and its power has known answers.

(a) Normal per-monkey differences with equal scan counts: the interval half of the rule is the
    paired t-test, whose power is the noncentral t formula.
(b) The planner's power at G monkeys, resampling a large population, equals the rejection rate of
    the verdict rule on fresh simulated cohorts of G monkeys (each judged study by study with the
    engine's own sign-flip test and t interval), and on a few cohorts the real ``analyze`` gives the
    same interval and p as the planner's rule.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from icpcv.stats import analyze, bootstrap
from icpcv.errors import InputError
from icpcv.stats.inference import signflip_test
from icpcv.stats.power import (PairedDifferences, paired_differences, plan_power, signflip_pvalues,
                               verdict_rule)


def _population(per_subject, n_scans):
    per_subject = np.asarray(per_subject, float)
    n = np.broadcast_to(np.asarray(n_scans, float), per_subject.shape).copy()
    ref = n * 10.0
    return PairedDifferences("cnn", "ols_iop", [str(g) for g in range(n.size)], n, ref + n * per_subject, ref)


def _normal_population(mean, sd, size=20_000, seed=0):
    z = np.random.default_rng(seed).normal(size=size)
    return _population(mean + sd * (z - z.mean()) / z.std(ddof=0), 25.0)


def _cohort_table(G, seed, mean=-1.0):
    """Scan-level predictions of two models for G monkeys with clustered, unequal data."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(G):
        n = int(rng.integers(5, 40))
        offset = rng.normal(mean, 1.5)
        y = rng.uniform(2, 40, n)
        ref = y + rng.normal(0, 6, n)
        model = y + rng.normal(0, 6, n) * 0.9 + np.sign(rng.normal(size=n)) * offset
        for i in range(n):
            rows.append((g, str(g), f"{g}-{i}", y[i], model[i], ref[i]))
    t = pd.DataFrame(rows, columns=["fold", "subject", "scan_id", "y_true", "cnn", "ols_iop"])
    return pd.concat([t.assign(model=m, y_pred=t[m]) for m in ("ols_iop", "cnn")], ignore_index=True)[
        ["fold", "subject", "scan_id", "model", "y_true", "y_pred"]]


# ----------------------------------------------------------------------------- pieces


def test_paired_differences_by_hand_and_bad_input():
    t = pd.DataFrame({"fold": [0, 0, 1, 1], "subject": ["a", "a", "b", "b"], "scan_id": list("1234"),
                      "y_true": [10.0, 20.0, 30.0, 5.0]})
    preds = pd.concat([t.assign(model="cnn", y_pred=[11.0, 18.0, 30.5, 5.0]),
                       t.assign(model="ols_iop", y_pred=[14.0, 15.0, 25.0, 9.0])]).iloc[:-1]  # scan 4 only cnn
    d = paired_differences(preds)
    assert d.subjects == ["a", "b"] and d.n_scans.tolist() == [2, 1]
    assert d.loss_model.tolist() == [3.0, 0.5] and d.loss_reference.tolist() == [9.0, 5.0]
    assert d.pooled == pytest.approx((3 + 0.5 - 9 - 5) / 3)
    with pytest.raises(InputError, match="'resnet' is not among the models"):
        paired_differences(preds, model="resnet")


@pytest.mark.parametrize("G", [1, 2, 3, 7, 12, 17, 20])
def test_signflip_pvalues_equal_the_engine(G):
    rng = np.random.default_rng(G)
    rows = np.vstack([rng.normal(0.4, 1, (6, G)), rng.integers(-2, 3, (4, G)).astype(float)])
    p, method = signflip_pvalues(rows)
    assert method == "exact"
    assert p == pytest.approx([signflip_test(r)["p"] for r in rows], abs=1e-12)


def test_signflip_monte_carlo_above_twenty():
    rows = np.random.default_rng(2).normal(0.3, 1, (5, 22))
    p, method = signflip_pvalues(rows, n_perm=20_000, seed=1)
    exact = np.array([signflip_test(r, max_exact=22)["p"] for r in rows])
    assert method == "monte_carlo"
    assert np.all(np.abs(p - exact) < 4 * np.sqrt(exact * (1 - exact) / 20_000) + 1e-4)


@pytest.mark.parametrize("seed, G", [(1, 14), (2, 14), (3, 8), (4, 20)])
def test_rule_equals_analyze_on_a_cohort(seed, G):
    table = _cohort_table(G, seed)
    res = analyze(table, n_boot=20)
    cmp_ = next(c for c in res.comparisons if c.metric == "mae")
    d = paired_differences(table)
    batch = verdict_rule(d.n_scans[None, :], d.loss_difference[None, :])
    assert batch.delta[0] == pytest.approx(cmp_.delta, abs=1e-10)
    assert batch.ci_high[0] == pytest.approx(cmp_.ci[1], abs=1e-10)
    assert batch.p_signflip[0] == pytest.approx(cmp_.p_signflip, abs=1e-12)
    # Holm over this file's 2 comparisons lies between p (m = 1) and 2p (m = 2, Bonferroni)
    verdict_says_better = res.verdict.startswith("The cnn lowers MAE")
    lenient = verdict_rule(d.n_scans[None, :], d.loss_difference[None, :], n_comparisons=1).better[0]
    strict = verdict_rule(d.n_scans[None, :], d.loss_difference[None, :], n_comparisons=2).better[0]
    assert (not strict or verdict_says_better) and (not verdict_says_better or lenient)


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("G, reduction", [(6, 1.2), (10, 0.8), (14, 0.6)])
def test_interval_power_is_the_paired_t_test_power(G, reduction):
    sd = 1.0
    pop = _normal_population(-0.3, sd)  # the run's own effect is replaced by the assumed one
    res = plan_power(pop, [G], effect=reduction, n_sim=4000, seed=G, detectable=False)
    t_crit = sps.t.ppf(0.975, G - 1)
    expected = 1 - sps.nct.cdf(t_crit, G - 1, reduction * math.sqrt(G) / sd)
    got = res.rows[0].power_interval
    assert abs(got - expected) < 4 * math.sqrt(expected * (1 - expected) / 4000) + 0.005
    assert res.rows[0].power <= got  # the full rule also needs the sign-flip test


def test_no_effect_gives_no_more_than_the_one_sided_level():
    res = plan_power(_normal_population(0.0, 1.0), [8, 14], effect=0.0, n_sim=4000, detectable=False)
    for r in res.rows:
        assert r.power < 0.025 + 4 * math.sqrt(0.025 * 0.975 / 4000)


def test_planner_power_matches_fresh_cohorts():
    # a population of monkeys with unequal scan counts and heterogeneous effects
    rng = np.random.default_rng(5)

    def monkeys(size):
        n = rng.integers(19, 120, size).astype(float)
        mu = rng.normal(-0.9, 1.2, size)
        return n, n * mu + np.sqrt(n) * 4.0 * rng.normal(size=size)

    n_pop, dl_pop = monkeys(30_000)
    pop = PairedDifferences("cnn", "ols_iop", [str(i) for i in range(n_pop.size)], n_pop, dl_pop,
                            np.zeros_like(dl_pop))
    G, R = 12, 2000
    planned = plan_power(pop, [G], n_sim=R, seed=1, detectable=False).rows[0].power
    better = 0
    for _ in range(R):  # fresh cohorts, judged one by one with the engine's functions
        n, dl = monkeys(G)
        delta = dl.sum() / n.sum()
        _, hi = bootstrap.t_interval(delta, (dl.sum() - dl) / (n.sum() - n), 0.95)
        better += bool(hi < 0 and signflip_test(dl / n)["p"] < 0.05)
    direct = better / R
    se = math.sqrt(2 * direct * (1 - direct) / R)
    assert 0.2 < direct < 0.9
    assert abs(planned - direct) < 4 * se


def test_detectable_effect_is_the_smallest_with_the_target_power():
    pop = _normal_population(-0.5, 1.0, seed=3)
    res = plan_power(pop, [14], n_sim=1500, seed=2, detect_at=14)
    det = res.detectable
    assert det["n_monkeys"] == 14 and det["power"] >= 0.8
    again = plan_power(pop, [14], effect=det["effect"], n_sim=1500, seed=2, detectable=False)
    assert again.rows[0].power == pytest.approx(det["power"])
    below = plan_power(pop, [14], effect=det["effect"] - 0.02, n_sim=1500, seed=2, detectable=False)
    assert below.rows[0].power < 0.8
    # the interval half alone is the t-test, so the full rule needs at least the t-test's effect
    t_effect = next(e for e in np.arange(0.3, 2, 0.001)
                    if 1 - sps.nct.cdf(sps.t.ppf(0.975, 13), 13, e * math.sqrt(14)) >= 0.8)
    assert det["effect"] >= t_effect - 0.05


def test_too_few_monkeys_for_the_sign_flip_test():
    res = plan_power(_normal_population(-3.0, 1.0), [4, 5, 6], n_sim=500, detectable=False)
    assert res.rows[0].power == 0 and res.rows[1].power == 0 and res.rows[2].power > 0.5
    assert any("cannot reach" in n for n in res.notes)
    small = plan_power(_population([-3.0, -2.0, -4.0, -3.5], 10.0), [4], n_sim=100)
    assert small.detectable["effect"] is None and "cannot reach" in small.detectable["note"]


def test_result_is_json_ready_and_summarised():
    res = plan_power(_normal_population(-0.8, 1.0), [6, 14, 24], n_sim=300, n_perm=500, detect_at=10)
    data = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert [r["n_monkeys"] for r in data["table"]] == [6, 14, 24]
    assert data["table"][2]["signflip_method"] == "monte_carlo"
    assert data["observed_reduction"] == pytest.approx(0.8) and data["effect"] is None
    text = res.summary()
    assert "monkeys" in text and "80% power" in text
    with pytest.raises(InputError, match="at least 2"):
        plan_power(_normal_population(-1, 1), [1])
