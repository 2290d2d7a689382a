"""The region-share statistic against independent computations: scipy's t interval, a naive bootstrap loop,
an enumerated sign-flip test."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import icpcv.stats.attribution as attribution_stats
from icpcv.explain.scoring import region_table, score_regions
from icpcv.stats.attribution import region_share


def _scans(seed=0, G=9):
    """Unequal numbers of scans per monkey, per-monkey attribution shares around 10-30%."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(1, G + 1):
        level = rng.uniform(0.1, 0.3)
        for _ in range(int(rng.integers(1, 6))):
            total = rng.uniform(50, 150)
            vox_total = 1000
            rows.append(dict(subject=str(g), a_in=total * np.clip(level + rng.normal(0, 0.03), 0, 1), a_tot=total,
                             v_in=int(rng.integers(20, 40)), v_tot=vox_total))
    return pd.DataFrame(rows)


def _call(d, **kw):
    return region_share(d["subject"], d["a_in"], d["a_tot"], d["v_in"], d["v_tot"], **kw)


def test_estimates_are_means_over_monkeys_of_means_over_scans():
    d = _scans()
    r = _call(d)
    per = d.assign(a=d.a_in / d.a_tot, s=d.v_in / d.v_tot).groupby("subject")[["a", "s"]].mean()
    assert r.attribution_share == pytest.approx(per["a"].mean(), rel=1e-12)
    assert r.volume_share == pytest.approx(per["s"].mean(), rel=1e-12)
    assert r.enrichment == pytest.approx(per["a"].mean() / per["s"].mean(), rel=1e-12)
    assert r.n_subjects == 9 and r.n_scans == len(d)
    assert list(r.per_subject["subject"]) == [str(g) for g in range(1, 10)]


def test_difference_t_interval_is_the_one_sample_t_interval_over_monkeys():
    d = _scans(seed=3)
    r = _call(d, ci_method="t", ci_level=0.9)
    per = d.assign(a=d.a_in / d.a_tot, s=d.v_in / d.v_tot).groupby("subject")[["a", "s"]].mean()
    ci = sps.ttest_1samp(per["a"] - per["s"], 0).confidence_interval(0.9)
    assert r.difference_ci == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_percentile_interval_of_the_enrichment_matches_a_naive_monkey_bootstrap():
    d = _scans(seed=5)
    n_boot, seed = 2000, 11
    r = _call(d, ci_method="percentile", n_boot=n_boot, seed=seed)
    # the same draws (subject indices from default_rng(seed)), the ratio recomputed scan by scan in pandas
    subjects = sorted(d["subject"].unique(), key=int)
    idx = np.random.default_rng(seed).integers(0, len(subjects), size=(n_boot, len(subjects)))
    scan_shares = {g: ([r.a_in / r.a_tot for r in d[d.subject == g].itertuples()],
                       [r.v_in / r.v_tot for r in d[d.subject == g].itertuples()]) for g in subjects}
    ratios = []
    for row in idx:
        a = [sum(scan_shares[subjects[i]][0]) / len(scan_shares[subjects[i]][0]) for i in row]
        s = [sum(scan_shares[subjects[i]][1]) / len(scan_shares[subjects[i]][1]) for i in row]
        ratios.append(sum(a) / sum(s))
    assert r.enrichment_ci == pytest.approx(tuple(np.quantile(ratios, [0.025, 0.975])), rel=1e-9)
    # and the interval brackets the estimate
    assert r.enrichment_ci[0] < r.enrichment < r.enrichment_ci[1]


def test_sign_flip_p_value_is_the_enumerated_one():
    d = _scans(seed=7, G=6)
    r = _call(d)
    per = d.assign(a=d.a_in / d.a_tot, s=d.v_in / d.v_tot).groupby("subject")[["a", "s"]].mean()
    diff = (per["a"] - per["s"]).to_numpy()
    t_obs = abs(diff.sum())
    hits = [abs(np.dot(signs, diff)) >= t_obs - 1e-12 for signs in itertools.product((-1, 1), repeat=len(diff))]
    assert r.p_value == pytest.approx(np.mean(hits))


def test_all_zero_maps_are_left_out_and_said_so_and_bad_sums_are_refused():
    d = _scans(seed=1)
    d.loc[d.index[:2], ["a_in", "a_tot"]] = 0.0
    r = _call(d)
    assert r.n_scans_without_attribution == 2 and r.n_scans == len(d) - 2
    assert "all-zero map" in r.sentence()
    nothing = _call(d.assign(a_in=0.0, a_tot=0.0))
    assert np.isnan(nothing.attribution_share) and "no scan had any attribution" in nothing.sentence()
    with pytest.raises(ValueError, match="attribution_in <= attribution_total"):
        _call(d.assign(a_in=d.a_tot * 2))
    with pytest.raises(ValueError, match="ci_method"):
        _call(d, ci_method="studentized")


def test_result_object_summary_and_json():
    r = _call(_scans(seed=2), model="cnn", method="integrated_gradients")
    text = r.summary()
    assert text.startswith("cnn (integrated gradients):") and "| monkey | scans |" in text
    assert "more than its share of the volume" in text  # 10-30% of the attribution on 2-4% of the volume
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["enrichment"]["estimate"] == pytest.approx(r.enrichment) and len(d["per_subject"]) == 9
    assert d["sentence"] == r.sentence()


def test_region_table_sums_absolute_attribution_per_label_and_score_regions_groups():
    maps = np.array([[[[1.0, -2.0], [3.0, 0.5]]], [[[0.0, 0.0], [-1.0, 1.0]]]])  # (2, 1, 2, 2)
    labels = np.array([[[[0, 4], [4, 1]]], [[[4, 4], [0, 0]]]], dtype=np.uint8)
    t = region_table(maps, labels, scan_ids=["a", "b"], subjects=["1", "2"])
    lam = t[t.region == "lamina"].set_index("scan_id")
    assert lam.loc["a", "attribution"] == 5.0 and lam.loc["a", "voxels"] == 2
    assert lam.loc["a", "attribution_total"] == 6.5 and lam.loc["a", "voxels_total"] == 4
    assert lam.loc["b", "attribution"] == 0.0 and lam.loc["b", "attribution_total"] == 2.0
    assert (t[t.region == "marker"]["voxels"] == 0).all()
    both = pd.concat([t.assign(model="cnn", method="occlusion"), t.assign(model="cnn", method="gradient")])
    scores = score_regions(both, n_boot=200)
    assert [r.method for r in scores.results] == ["occlusion", "gradient"]
    assert scores.get("cnn", "gradient").attribution_share == pytest.approx((5 / 6.5 + 0) / 2)
    assert len(scores.table()) == 2 and len(scores.to_dict()["results"]) == 2
    with pytest.raises(ValueError, match="region 'optic_disc'"):
        score_regions(both, regions=("optic_disc",))
    with pytest.raises(ValueError, match="label codes"):
        region_table(maps, labels + 9, scan_ids=["a", "b"], subjects=["1", "2"])


def test_t_interval_covers_the_known_truth_at_about_the_nominal_rate():
    table = attribution_stats.calibrate_region_share(n_sims=150, methods=("t",), seed=1)
    row = table.iloc[0]
    # nominal 95%; 150 cohorts give a Monte Carlo SE of 1.8 points
    assert 0.88 <= row.enrichment_coverage <= 0.995 and 0.88 <= row.difference_coverage <= 0.995


def test_trained_against_randomised_is_a_paired_t_interval_and_an_enumerated_sign_flip():
    d = _scans(seed=4, G=7)
    trained = _call(d, model="cnn", method="occlusion")
    noise = _call(d.assign(a_in=d.a_in * 0.3), model="cnn_randomised", method="occlusion")
    c = attribution_stats.compare_region_shares(trained, noise, ci_level=0.9)
    per = d.assign(a=d.a_in / d.a_tot).groupby("subject")["a"].mean()
    diff = per - 0.3 * per
    ci = sps.ttest_1samp(diff, 0).confidence_interval(0.9)
    assert c.difference == pytest.approx(diff.mean()) and c.difference_ci == pytest.approx((ci.low, ci.high))
    assert c.ratio == pytest.approx(1 / 0.3) and c.p_value == pytest.approx(2 / 2**7)
    assert "puts more of its absolute attribution in the lamina than cnn_randomised" in c.sentence()
    table = pd.concat([
        pd.DataFrame(dict(scan_id=[f"s{i}" for i in range(len(d))], subject=d.subject, region="lamina",
                          attribution=d.a_in * k, voxels=d.v_in, attribution_total=d.a_tot, voxels_total=d.v_tot,
                          model=m, method="occlusion")) for m, k in (("cnn", 1.0), ("cnn_randomised", 0.3))])
    scores = score_regions(table, n_boot=100)
    assert len(scores.comparisons) == 1 and scores.comparisons[0].difference == pytest.approx(c.difference)
    assert scores.to_dict()["against_randomised"][0]["label"] == "cnn (occlusion)"
    with pytest.raises(ValueError, match="different regions"):
        attribution_stats.compare_region_shares(trained, _call(d, region="marker"))
