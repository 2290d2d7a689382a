"""Trending statistics: change pairs, four-quadrant concordance, polar plot, comparison.

No data set with published concordance-rate and polar statistics could be found (searched:
package documentation, public code, method papers; Critchley's and Saugel's worked examples are
figures without the data), so every number is checked against an independent computation written
here (plain loops, other formulas) or against an analytic answer (Sheppard's formula for the
bivariate normal, constructed angles).
"""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy import stats as sps

from icpcv.errors import InputError
from icpcv.stats.trending import (change_pairs, compare_concordance, concordance_rate, gap_levels,
                                  polar_coordinates, polar_statistics, trending)


def _table(rows, models):
    """rows: (subject, scan_id, y_true, iop, iop_step, icp_step); models: name -> f(row) prediction."""
    t = pd.DataFrame(rows, columns=["subject", "scan_id", "y_true", "iop", "iop_step", "icp_step"])
    t["fold"] = t["subject"]
    return pd.concat([t.assign(model=m, y_pred=[f(r) for r in t.itertuples()]) for m, f in models.items()],
                     ignore_index=True)


def _design(n_subjects=8, seed=0, iops=(10, 20, 35), icps=(3, 8, 15, 25, 35), reps=(1, 3), noise=0.8):
    """A factorial design like the phantom's: set levels, measured values scatter around them."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_subjects):
        for icp in rng.choice(icps, size=rng.integers(3, len(icps) + 1), replace=False):
            for iop in iops:
                for r in range(rng.integers(reps[0], reps[1] + 1)):
                    rows.append((str(g + 1), f"m{g + 1}-{iop}-{icp}-{r}",
                                 float(icp + np.clip(rng.normal(0, noise), -1.2, 1.2)),
                                 float(iop + np.clip(rng.normal(0, noise), -1.2, 1.2)), float(iop), float(icp)))
    return pd.DataFrame(rows, columns=["subject", "scan_id", "y_true", "iop", "iop_step", "icp_step"])


def _predictions(design, seed=0, signal=1.0):
    """cnn follows ICP (times ``signal``) with noise and a per-monkey offset; ols_iop sees only IOP."""
    rng = np.random.default_rng(seed + 100)
    t = design.assign(fold=design["subject"])
    offset = {s: rng.normal(0, 3) for s in t["subject"].unique()}
    cnn = (15 + signal * (t["y_true"] - 15) + t["subject"].map(offset) + rng.normal(0, 4.5, len(t)))
    ols = 14 + 0.1 * t["iop"] + rng.normal(0, 0.05, len(t))
    return pd.concat([t.assign(model="ols_iop", y_pred=ols), t.assign(model="cnn", y_pred=cnn)],
                     ignore_index=True)


# ----------------------------------------------------------------------------- change pairs


def test_change_pairs_by_hand():
    # monkey A at IOP 15: ICP steps measured 5.0/5.4 (mean 5.2), 20.0, 12.0/12.6 (mean 12.3);
    # at IOP 30: 5.0 and 21.0. Ordered by measured ICP: 5.2 -> 12.3 -> 20.0; 5.0 -> 21.0.
    rows = [("A", "a1", 5.0, 15.1, 15, 5), ("A", "a2", 5.4, 14.9, 15, 5), ("A", "a3", 20.0, 15.0, 15, 20),
            ("A", "a4", 12.0, 15.2, 15, 12), ("A", "a5", 12.6, 15.0, 15, 12),
            ("A", "a6", 5.0, 30.0, 30, 5), ("A", "a7", 21.0, 30.2, 30, 20)]
    preds = _table(rows, {"cnn": lambda r: 2 * r.y_true, "ols_iop": lambda r: r.iop})
    got = change_pairs(preds).for_model("cnn")
    assert got["iop_step"].tolist() == ["15", "15", "30"]
    assert got["delta_measured"].tolist() == pytest.approx([12.3 - 5.2, 20.0 - 12.3, 21.0 - 5.0])
    assert got["delta_predicted"].tolist() == pytest.approx([2 * 7.1, 2 * 7.7, 2 * 16.0])
    assert got["n_from"].tolist() == [2, 2, 1] and got["n_to"].tolist() == [2, 1, 1]
    ols = change_pairs(preds).for_model("ols_iop")
    assert ols["delta_predicted"].tolist() == pytest.approx([15.1 - 15.0, 15.0 - 15.1, 30.2 - 30.0])
    assert ols["delta_iop"].tolist() == pytest.approx(ols["delta_predicted"].tolist())


def test_steps_from_values_match_set_levels_when_levels_are_separated():
    d = _design(seed=3, noise=0.5)
    preds = _predictions(d)
    from_cols = change_pairs(preds).frame
    from_values = change_pairs(preds.drop(columns=["iop_step", "icp_step"])).frame
    cols = ["model", "subject", "delta_measured", "delta_predicted", "n_from", "n_to"]
    pd.testing.assert_frame_equal(from_cols[cols], from_values[cols])
    assert "gap rule" in change_pairs(preds.drop(columns=["iop_step", "icp_step"])).step_source


def test_steps_table_overrides_columns_and_pairs_match_a_plain_loop():
    d = _design(seed=5)
    preds = _predictions(d).drop(columns=["iop_step", "icp_step"])
    steps = d[["scan_id", "iop_step", "icp_step"]]
    got = change_pairs(preds, steps=steps).frame
    # independent: dictionaries of step means, sorted by measured ICP, consecutive differences
    expected = []
    step = {r.scan_id: (r.iop_step, r.icp_step) for r in steps.itertuples()}
    for model in ("ols_iop", "cnn"):
        cells = {}
        for r in preds[preds.model == model].itertuples():
            i, c = step[r.scan_id]
            cells.setdefault((r.subject, i), {}).setdefault(c, []).append((r.y_true, r.y_pred))
        for (subject, _), by_icp in cells.items():
            means = sorted((sum(v[0] for v in vals) / len(vals), sum(v[1] for v in vals) / len(vals))
                           for vals in by_icp.values())
            for a, b in zip(means, means[1:]):
                expected.append((model, subject, round(b[0] - a[0], 9), round(b[1] - a[1], 9)))
    actual = [(r.model, r.subject, round(r.delta_measured, 9), round(r.delta_predicted, 9))
              for r in got.itertuples()]
    assert sorted(actual) == sorted(expected)
    assert len(actual) == len(expected) > 50


def test_gap_rule():
    assert gap_levels([5.0, 6.9, 9.5, 30.0, 31.0], 2.5).tolist() == [0, 0, 1, 2, 2]
    # a gap of exactly the tolerance does not split
    assert gap_levels([1.0, 3.5], 2.5).tolist() == [0, 0]


def test_only_scans_every_model_has_are_used():
    preds = _predictions(_design(seed=1))
    dropped = preds[(preds.model == "cnn")].scan_id.iloc[:3]
    pairs = change_pairs(preds[~((preds.model == "cnn") & preds.scan_id.isin(dropped))])
    assert not pairs.scan_steps["scan_id"].isin(dropped).any()
    assert any("3 scans lacking a model" in w for w in pairs.warnings)
    a, b = pairs.for_model("cnn"), pairs.for_model("ols_iop")
    assert a["delta_measured"].tolist() == b["delta_measured"].tolist()


def test_bad_input_names_file_row_and_column():
    preds = _predictions(_design(seed=2))
    preds["icp_step"] = preds["icp_step"].astype(object)
    preds.loc[4, "icp_step"] = " "
    with pytest.raises(InputError, match=r"preds\.csv row 5, column icp_step"):
        change_pairs(preds, source="preds.csv")
    steps = preds.drop_duplicates("scan_id")[["scan_id", "iop_step", "icp_step"]].reset_index(drop=True)
    steps["iop_step"] = steps["iop_step"].astype(object)
    steps.loc[2, "iop_step"] = ""
    with pytest.raises(InputError, match=r"steps table row 3, column iop_step"):
        change_pairs(preds.drop(columns=["iop_step", "icp_step"]), steps=steps)
    with pytest.raises(InputError, match="missing column.*icp_step"):
        change_pairs(preds, steps=preds[["scan_id", "iop_step"]])
    with pytest.raises(InputError, match="needs the pressure steps"):
        change_pairs(preds.drop(columns=["iop", "iop_step", "icp_step"]))


# ----------------------------------------------------------------------------- concordance


def _slow_rate(dm, dp, zone, rule):
    kept = score = 0.0
    for x, y in zip(dm, dp):
        if rule == "measured" and abs(x) < zone:
            continue
        if rule == "square" and abs(x) < zone and abs(y) < zone:
            continue
        kept += 1
        score += 0.5 if (x == 0 or y == 0) else (1.0 if x * y > 0 else 0.0)
    return score, kept


@pytest.mark.parametrize("rule", ["measured", "square"])
def test_concordance_and_its_interval_against_a_plain_loop(rule):
    rng = np.random.default_rng(7)
    n = 120
    subject = rng.integers(0, 9, n).astype(str)
    dm = np.round(rng.normal(3, 4, n), 1)
    dp = np.round(0.6 * dm + rng.normal(0, 3, n), 1)
    dp[:6] = 0.0  # predictions that did not move count one half
    res = concordance_rate(dm, dp, subject, exclusion_zone=1.5, exclusion=rule)
    score, kept = _slow_rate(dm, dp, 1.5, rule)
    assert res.rate == pytest.approx(score / kept)
    assert res.n_pairs == kept and res.n_pairs_total == n
    # the interval: leave each monkey out, recount, logit with +1/2 and +1, jackknife SE, t(G-1)
    monkeys = sorted(set(subject))
    theta = math.log((score + 0.5) / (kept - score + 0.5))
    jack = []
    for g in monkeys:
        keep = subject != g
        s, k = _slow_rate(dm[keep], dp[keep], 1.5, rule)
        jack.append(math.log((s + 0.5) / (k - s + 0.5)))
    G = len(monkeys)
    se = math.sqrt((G - 1) / G * sum((j - sum(jack) / G) ** 2 for j in jack))
    q = sps.t.ppf(0.975, G - 1)
    expit = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert res.ci[0] == pytest.approx(min(expit(theta - q * se), score / kept), abs=1e-12)
    assert res.ci[1] == pytest.approx(max(expit(theta + q * se), score / kept), abs=1e-12)


@pytest.mark.parametrize("rho, zone", [(0.6, 0.0), (0.0, 0.0), (0.6, 1.0), (-0.3, 0.5)])
def test_concordance_of_a_bivariate_normal(rho, zone):
    # P(XY > 0) = 1/2 + arcsin(rho)/pi (Sheppard); with |X| >= z, P(Y > 0 | X >= z) by integration
    rng = np.random.default_rng(11)
    n = 200_000
    x = rng.normal(size=n)
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=n)
    if zone == 0:
        expected = 0.5 + math.asin(rho) / math.pi
    else:
        num, _ = integrate.quad(lambda u: sps.norm.pdf(u) * sps.norm.cdf(rho * u / math.sqrt(1 - rho**2)),
                                zone, np.inf)
        expected = num / sps.norm.sf(zone)
    res = concordance_rate(x, y, exclusion_zone=zone)
    se = math.sqrt(expected * (1 - expected) / res.n_pairs)
    assert abs(res.rate - expected) < 4 * se
    assert res.ci is None and "1 monkey" in res.ci_note  # one subject: no monkey-level interval


def test_no_honest_interval_when_every_pair_agrees_or_nothing_moves():
    subject = np.repeat(list("abcde"), 4)
    res = concordance_rate(np.full(20, 5.0), np.full(20, 3.0), subject)
    assert res.rate == 1.0 and res.ci is None and "no spread" in res.ci_note
    flat = concordance_rate(np.full(20, 5.0), np.zeros(20), subject)
    assert flat.rate == 0.5 and flat.ci is None and "chance level" in flat.ci_note
    assert json.dumps(flat.to_dict(), allow_nan=False)


def test_interval_coverage_with_heterogeneous_monkeys():
    # 14 monkeys, 8-16 pairs each, per-monkey rates Beta around 0.8: the 95% interval should cover
    # near 95% (calibration in the module docstring; here 400 data sets, MC SE about 1.1%)
    rng = np.random.default_rng(21)
    hits = 0
    R = 400
    for _ in range(R):
        n = rng.integers(8, 17, 14)
        p = rng.beta(8, 2, 14)
        subject = np.repeat(np.arange(14), n)
        agree = rng.random(n.sum()) < p[subject]
        res = concordance_rate(np.full(n.sum(), 4.0), np.where(agree, 1.0, -1.0), subject)
        hits += res.ci[0] <= 0.8 <= res.ci[1]
    assert 0.91 <= hits / R <= 0.99


# ----------------------------------------------------------------------------- polar


def test_polar_coordinates_against_the_rotation_formula():
    rng = np.random.default_rng(3)
    dm, dp = rng.normal(0, 5, 500), rng.normal(0, 5, 500)
    r, theta = polar_coordinates(dm, dp)
    # the angle to the identity line is arctan of (difference / sum) in the frame turned by 45°
    assert theta == pytest.approx(np.degrees(np.arctan((dp - dm) / (dp + dm))), abs=1e-9)
    assert r == pytest.approx(np.abs(dm + dp) / 2)


def test_polar_statistics_on_constructed_angles():
    angles = np.array([-20.0, -10.0, 0.0, 5.0, 10.0, 35.0])
    radius = np.array([3.0, 4.0, 5.0, 6.0, 2.5, 4.0])
    # a point at angle a from identity with mean change r: direction 45° + a, length r*sqrt(2)/cos(a)
    length = radius * math.sqrt(2) / np.cos(np.radians(angles))
    dm = length * np.cos(np.radians(45 + angles))
    dp = length * np.sin(np.radians(45 + angles))
    # the same changes taken downwards (mean change negative) must give the same statistics
    dm = np.r_[dm, -dm]
    dp = np.r_[dp, -dp]
    subject = np.r_[list("aabbcc"), list("ddeeff")]
    res = polar_statistics(dm, dp, subject, exclusion_zone=2.8)  # leaves out r = 2.5 (twice)
    kept = angles[radius >= 2.8]
    both = np.r_[kept, kept]
    assert res.n_pairs == 10 and res.n_pairs_total == 12
    assert res.angular_bias == pytest.approx(both.mean())
    assert res.angular_sd == pytest.approx(both.std(ddof=1))
    assert res.radial_loa == pytest.approx((both.mean() - 1.96 * both.std(ddof=1),
                                            both.mean() + 1.96 * both.std(ddof=1)))
    assert res.within_accept == pytest.approx(np.mean(np.abs(both) <= 30))
    # angular bias interval: jackknife over subjects by a loop
    r_all, th_all = polar_coordinates(dm, dp)
    keep = r_all >= 2.8
    jack = [th_all[keep & (subject != s)].mean() for s in "abcdef"]
    se = math.sqrt(5 / 6 * sum((j - np.mean(jack)) ** 2 for j in jack))
    q = sps.t.ppf(0.975, 5)
    assert res.angular_bias_ci == pytest.approx((both.mean() - q * se, both.mean() + q * se))


def test_a_model_that_never_moves_sits_at_minus_45_degrees():
    res = polar_statistics([4.0, 6.0, -5.0], [0.0, 0.0, 0.0], exclusion_zone=0)
    assert res.angular_bias == pytest.approx(-45.0) and res.angular_sd == pytest.approx(0.0)


# ----------------------------------------------------------------------------- comparison and trending()


def test_comparison_against_brute_force():
    rng = np.random.default_rng(4)
    G = 9
    nm = rng.integers(3, 9, G).astype(float)
    cm = np.floor(nm * rng.uniform(0.5, 1, G))
    cr = np.floor(nm * rng.uniform(0.2, 0.8, G))
    res = compare_concordance(cm, nm, cr, nm)
    d = cm / nm - cr / nm
    hits = sum(abs(np.dot(s, d)) >= abs(d.sum()) - 1e-12 for s in itertools.product((-1, 1), repeat=G))
    assert res.p_signflip == pytest.approx(hits / 2**G)
    assert res.difference == pytest.approx(cm.sum() / nm.sum() - cr.sum() / nm.sum())
    jack = [(cm.sum() - cm[g]) / (nm.sum() - nm[g]) - (cr.sum() - cr[g]) / (nm.sum() - nm[g]) for g in range(G)]
    se = math.sqrt((G - 1) / G * sum((j - np.mean(jack)) ** 2 for j in jack))
    q = sps.t.ppf(0.975, G - 1)
    assert res.ci == pytest.approx((res.difference - q * se, res.difference + q * se))


def test_scan_signal_tracks_changes_and_iop_only_does_not():
    d = _design(n_subjects=12, seed=8)
    res = trending(_predictions(d, signal=1.0))
    cnn, ols = res["cnn"], res["ols_iop"]
    assert cnn.n_subjects == 12 and cnn.n_pairs == ols.n_pairs
    assert cnn.concordance.ci[0] > 0.75 and ols.concordance.ci[0] < 0.5 < ols.concordance.ci[1]
    assert cnn.comparison.ci[0] > 0 and cnn.comparison.p_adjusted < 0.05
    assert abs(ols.polar.angular_bias + 45) < 2  # an IOP-only model's change is about zero
    assert "follows ICP changes better than ols_iop" in res.sentence()
    null = trending(_predictions(d, signal=0.0))
    assert null["cnn"].comparison.ci[0] < 0 < null["cnn"].comparison.ci[1]
    assert "no evidence" in null.sentence()


def test_result_is_json_ready_and_summarised():
    res = trending(_predictions(_design(n_subjects=6, seed=9)))
    data = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert data["reference"] == "ols_iop" and data["exclusion_zone"] == 2.0
    assert set(data["models"]) == {"ols_iop", "cnn"}
    assert data["models"]["ols_iop"]["comparison"] is None
    assert data["models"]["cnn"]["comparison"]["reference"] == "ols_iop"
    assert data["n_subjects"] == 6 and any("fewer than 10" in w for w in data["warnings"])
    text = res.summary()
    assert "cnn" in text and "concordance" in text and "radial LoA" in text


def test_bad_arguments():
    preds = _predictions(_design(seed=2))
    with pytest.raises(ValueError, match="exclusion rule"):
        trending(preds, exclusion="circle")
    with pytest.raises(ValueError, match="ci_method"):
        trending(preds, ci_method="wald")
