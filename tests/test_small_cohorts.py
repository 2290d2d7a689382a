"""Small cohorts and uneven coverage (issue 10, part 5): found when the engine was checked
against independent code.

1. With 2-4 monkeys a bootstrap-t resample that drew one monkey only divides by an SE of ~1e-16:
   such intervals are null (ci None) with a warning naming the model, the metric and why.
2. The verdict's "best" model is chosen on the paired comparisons with the reference, so a
   model predicting 2 monkeys (or none shared with the reference) cannot hide a model that
   beats the reference on all 14; partial coverage is named in a warning.
3. With 5 or fewer monkeys (or too many comparisons for Holm) p < 0.05 is out of reach: said so.
4. A model clearly worse than the reference is stated as worse.
5. One order of subjects (natural: M1, M2, M10) in every subject-keyed part of stats.json.
"""

import json
import re

import numpy as np
import pandas as pd
import pytest

from icpcv.report.build import agreement_rows, fmt_ci, model_rows
from icpcv.stats import analyze
from icpcv.stats.bootstrap import Estimand, counts_from_indices, run_bootstrap, subject_sums
from icpcv.stats.repeats import verdict_winner
from icpcv.stats.results import AnalysisResult
from icpcv.stats.study import analyze_study
from icpcv.stats.synthetic import synthetic_predictions
from icpcv.util import natural_key


def _numbers(sentence):
    return [float(x) for x in re.findall(r"-?\d+\.\d+", sentence)]


# --------------------------------------------------------------------------- 1. intervals


def test_resample_of_one_repeated_monkey_has_no_studentized_se():
    """Drawing monkey 0 three times: the linearised SE is 0 up to rounding; it must be undefined."""
    S = subject_sums([0, 0, 1, 1, 2, 2], [10.0, 12, 20, 14, 9, 11], [11.0, 15, 18, 14, 9.5, 13], 3)
    counts = counts_from_indices(np.array([[0, 0, 0], [0, 1, 2], [1, 1, 2]]), 3)
    out = run_bootstrap(S, [Estimand("mae", "mae", block=0)], counts, studentized=True)
    assert np.isnan(out.se_boot[0, 0])
    assert np.isfinite(out.se_boot[1:, 0]).all() and (out.se_boot[1:, 0] > 0).all()


@pytest.mark.parametrize("G", [2, 3])
def test_tiny_cohort_intervals_are_null_with_a_reason_never_absurd(G):
    preds = synthetic_predictions(n_subjects=G, scans=(5, 20), seed=G)
    res = analyze(preds, n_boot=2000)
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    y = preds["y_true"].to_numpy()
    data_range = float(np.ptp(np.concatenate([y, preds["y_pred"].to_numpy()])))
    for name, m in d["models"].items():
        for metric in ("mae", "rmse", "bias", "r2", "pearson_r", "mae_subject_mean"):
            ci = m[metric]["ci"]
            assert ci is None or (len(ci) == 2 and all(np.isfinite(ci))
                                  and ci[1] - ci[0] < 10 * data_range), (name, metric, ci)
        # the studentized MAE: a share of resamples drew one monkey only (1/G^(G-1) >= 2.5%)
        assert m["mae"]["method"] == "studentized" and m["mae"]["ci"] is None, name
        warning = next(w for w in d["warnings"] if w.startswith(f"No 95% interval (ci null) for model {name}:"))
        assert "mae" in warning and "studentized" in warning and "fewer than 2 distinct monkeys drawn" in warning
    for c in d["comparisons"]:
        assert c["ci"] is None or all(np.isfinite(c["ci"])), c
    # the report's tables and the text summary cope with a null interval
    back = AnalysisResult.from_dict(d)
    assert "n/a" in back.summary() and "(n/a)" in back.models["cnn"].summary()
    cells = model_rows(back)[0]["cells"]
    assert cells[0]["ci"] is None and fmt_ci(cells[0]["ci"]) == "–"
    assert len(agreement_rows(back)) == len(d["models"])


# --------------------------------------------------------------------------- 2. the best model


@pytest.fixture(scope="module")
def uneven():
    """14 monkeys: `good` clearly beats ols_iop on all of them; `tiny` predicts 2 monkeys (very
    well); `apart` predicts well but shares no scan with the reference."""
    preds = synthetic_predictions(n_subjects=14, scans=(10, 30), seed=4,
                                  models={"ols_iop": (0.0, 1.0), "good": (0.0, 0.3), "tiny": (0.0, 0.05)})
    keep = (preds["model"] != "tiny") | preds["subject"].isin([1, 2])
    preds = preds[keep]
    apart = preds[preds["model"] == "tiny"].assign(model="apart", scan_id=lambda t: t["scan_id"] + "x")
    return pd.concat([preds, apart], ignore_index=True)


def test_partial_coverage_cannot_hide_the_model_that_beats_the_reference(uneven):
    res = analyze_study(uneven, n_boot=1000)
    d = res.to_dict()
    assert d["models"]["tiny"]["mae"]["estimate"] < d["models"]["good"]["mae"]["estimate"]
    good = res.comparison("good")
    assert good.better(0.05) and good.n_subjects == 14
    assert res.verdict.startswith("The good lowers MAE by") and "14 monkeys" in res.verdict
    reduction, lo, hi = _numbers(res.verdict)[:3]
    assert reduction == pytest.approx(-good.delta, abs=0.051) and hi == pytest.approx(-good.ci[0], abs=0.051)
    # the mirrors: the repeats' winner and the trending section's model
    assert verdict_winner(d) == "good"
    assert d["trending"]["verdict_model"] == "good"
    # partial coverage is named
    assert any(w.startswith("Model tiny covers only 2 of the 14 monkeys") for w in d["warnings"])
    assert any(w.startswith("Model apart covers only 2 of the 14 monkeys") for w in d["warnings"])
    assert not any(w.startswith("Model good covers") for w in d["warnings"])


def test_a_model_sharing_no_scans_is_never_the_best():
    preds = synthetic_predictions(n_subjects=12, scans=(10, 30), seed=8,
                                  models={"ols_iop": (0.0, 1.0), "cnn": (0.0, 1.0), "apart": (0.0, 0.05)})
    apart = preds["model"] == "apart"
    preds.loc[apart, "scan_id"] = preds.loc[apart, "scan_id"] + "x"
    res = analyze(preds, n_boot=300)
    assert "apart" not in res.verdict and "n/a" not in res.verdict
    assert re.search(r"the (best|closest), cnn, changes MAE by", res.verdict)
    only_apart = preds[preds["model"] != "cnn"]
    res = analyze(only_apart, n_boot=300)
    assert res.verdict.startswith("No model shares scans with the reference ols_iop")
    assert verdict_winner(res.to_dict()) is None


def test_a_model_called_better_is_preferred_to_a_lower_point_estimate():
    """Seed 1 of the default synthetic cohort: cnn has the lowest MAE (Holm p 0.4), cnn_iop passes
    the rule; the verdict must not say that no model beats the reference."""
    res = analyze(synthetic_predictions(seed=1), n_boot=2000)
    mae = {c.model: c for c in res.comparisons if c.metric == "mae"}
    assert mae["cnn"].delta < mae["cnn_iop"].delta and not mae["cnn"].better() and mae["cnn_iop"].better()
    assert res.verdict.startswith("The cnn_iop lowers MAE by")
    assert verdict_winner(res.to_dict()) == "cnn_iop"


# --------------------------------------------------------------------------- 3. unreachable p


def test_five_monkeys_cannot_reach_p_below_005_and_the_verdict_says_so():
    preds = synthetic_predictions(n_subjects=5, scans=(10, 30), seed=2,
                                  models={"ols_iop": (0.0, 1.0), "cnn": (0.0, 0.2)})
    res = analyze(preds, n_boot=500)
    c = res.comparison("cnn")
    assert c.ci[1] < 0 and c.p_signflip == pytest.approx(0.0625)
    assert res.verdict.startswith("There is no evidence that any model beats ols_iop on MAE: the best, cnn,")
    assert ("With 5 monkeys the exact sign-flip test cannot reach p < 0.05 (smallest possible p = "
            "2/2^5 = 0.0625), so no verdict of better is possible.") in res.verdict


def test_holm_family_can_make_p_below_005_unreachable():
    preds = synthetic_predictions(n_subjects=6, scans=(10, 30), seed=2,
                                  models={"ols_iop": (0.0, 1.0), "cnn": (0.0, 0.2), "weak": (0.0, 0.9)})
    res = analyze(preds, n_boot=500)
    assert res.comparison("cnn").p_signflip == pytest.approx(2 / 64)
    assert ("With 6 monkeys and 4 comparisons in the Holm family the Holm-adjusted sign-flip p cannot "
            "fall below 0.05 (smallest possible 4 × 2/2^6 = 0.125)") in res.verdict
    # with 14 monkeys nothing is added
    big = analyze(synthetic_predictions(n_subjects=14, scans=(10, 30), seed=2,
                                        models={"ols_iop": (0.0, 1.0), "cnn": (0.0, 1.0)}), n_boot=300)
    assert "cannot" not in big.verdict


# --------------------------------------------------------------------------- 4. clearly worse


def test_a_clearly_worse_model_is_stated_as_worse():
    preds = synthetic_predictions(n_subjects=14, scans=(10, 30), seed=4,
                                  models={"ols_iop": (0.0, 1.0), "cnn": (0.0, 0.3), "bad": (0.0, 1.8)})
    res = analyze(preds, n_boot=1000)
    bad = res.comparison("bad")
    assert bad.ci[0] > 0 and bad.p_adjusted < 0.05
    assert res.verdict.startswith("The cnn lowers MAE by")
    m = re.search(r"The bad is worse than ols_iop on MAE: it raises MAE by (\d+\.\d+) mmHg \(95% CI "
                  r"(\d+\.\d+) to (\d+\.\d+) mmHg; sign-flip p [<=] [\d.]+, Holm-adjusted p [<=] [\d.]+; "
                  r"14 monkeys\)\.", res.verdict)
    assert m, res.verdict
    assert [float(x) for x in m.groups()] == pytest.approx([bad.delta, *bad.ci], abs=0.051)
    assert "The cnn is worse" not in res.verdict


# --------------------------------------------------------------------------- 5. one subject order


LABELS = {1: "M1", 2: "M2", 3: "M3", 4: "M10", 5: "M11", 6: "M20"}


def _subject_orders(node, subjects, path="$"):
    """(path, labels) of every dict keyed by subjects and every list of subjects (or of records
    with a subject) in a stats.json tree."""
    found = []
    if isinstance(node, dict):
        keys = [str(k) for k in node]
        if len(keys) >= 2 and set(keys) <= subjects:
            found.append((path, keys))
        for k, v in node.items():
            found += _subject_orders(v, subjects, f"{path}.{k}")
    elif isinstance(node, list):
        if len(node) >= 2 and all(isinstance(x, str) for x in node) and set(node) <= subjects:
            found.append((path, list(node)))
        rec = [x.get("subject") for x in node if isinstance(x, dict)]
        if len(rec) >= 2 and all(isinstance(s, str) and s in subjects for s in rec):
            found.append((path + "[].subject", list(dict.fromkeys(rec))))
        for i, v in enumerate(node):
            found += _subject_orders(v, subjects, f"{path}[{i}]")
    return found


def test_every_subject_keyed_part_of_stats_json_is_in_natural_order():
    base = synthetic_predictions(n_subjects=6, scans=(8, 14), seed=3,
                                 models={"ols_iop": (0.5, 1.0), "cnn": (0.0, 0.8)})
    base["fold"] = (base["subject"] - 1) // 2          # two monkeys per fold: M1 M2 | M3 M10 | M11 M20
    base["subject"] = base["subject"].map(LABELS)
    cnn = base[base["model"] == "cnn"]
    rng = np.random.default_rng(0)
    repeats = [cnn.assign(repeat=r, y_pred=cnn["y_pred"] + rng.normal(0, 0.5, len(cnn))) for r in range(2)]
    table = pd.concat([base[base["model"] == "ols_iop"]] + repeats, ignore_index=True)
    # listed in an order that is neither natural nor lexicographic
    table = table.sort_values("subject", key=lambda s: s.map({"M20": 0, "M2": 1, "M10": 2, "M1": 3,
                                                              "M3": 4, "M11": 5}), kind="stable")
    d = analyze_study(table, n_boot=200).to_dict()
    assert "training_variance" in d and d["training_variance"]["measured"]
    subjects = set(LABELS.values())
    orders = _subject_orders(d, subjects)
    assert any(p.endswith("per_subject") for p, _ in orders)
    assert any(".per_fold" in p for p, _ in orders)  # training_variance's per-fold subject lists
    for path, labels in orders:
        assert labels == sorted(labels, key=natural_key), (path, labels)
    assert d["subjects"] == ["M1", "M2", "M3", "M10", "M11", "M20"]


def test_the_seed_agreement_follows_the_sentence_it_is_about():
    """With repeats, "(k of R training seeds alone agree)" stays on the best model's sentence."""
    base = synthetic_predictions(n_subjects=14, scans=(10, 30), seed=4,
                                 models={"ols_iop": (0.0, 1.0), "cnn": (0.0, 0.3), "bad": (0.0, 1.8)})
    cnn = base[base["model"] == "cnn"]
    rng = np.random.default_rng(0)
    reps = [cnn.assign(repeat=r, y_pred=cnn["y_pred"] + rng.normal(0, 0.3, len(cnn))) for r in range(3)]
    table = pd.concat([base[base["model"] != "cnn"]] + reps, ignore_index=True)
    v = analyze_study(table, n_boot=300).verdict
    assert v.startswith("The cnn lowers MAE by")
    assert "14 monkeys) (3 of 3 training seeds alone agree). The bad is worse than ols_iop on MAE" in v
