"""The leakage audit (`run --leakage-audit`): a scan-level twin beside leave-one-monkey-out.

The numbers in leakage.json are checked against an independent computation from the two
predictions tables (pooled MAE per split, exact sign-flip p by brute force over all sign
patterns of the per-monkey MAE differences), not against the engine's own output.
"""
from __future__ import annotations

import itertools
import json

import markupsafe
import numpy as np
import pandas as pd
import pytest

from icpcv.commands import main
from icpcv.report import write_report
from icpcv.stats import leakage_summary
from icpcv.util import read_json


def _brute_force_p(d: np.ndarray) -> float:
    """Two-sided exact sign-flip p: share of sign patterns whose |sum| reaches the observed one."""
    obs = abs(d.sum())
    hits = sum(abs(np.dot(s, d)) >= obs - 1e-9 * np.abs(d).sum()
               for s in itertools.product((-1.0, 1.0), repeat=len(d)))
    return hits / 2 ** len(d)


def _per_monkey_mae(df: pd.DataFrame) -> pd.Series:
    return (df.y_pred - df.y_true).abs().groupby(df.subject).mean()


def _independent(honest: pd.DataFrame, leaky: pd.DataFrame, model: str) -> dict:
    a, b = honest[honest.model == model], leaky[leaky.model == model]
    d = (_per_monkey_mae(a) - _per_monkey_mae(b)).to_numpy()  # positive: the scan split flatters
    return dict(mae_subject_split=float((a.y_pred - a.y_true).abs().mean()),
                mae_scan_split=float((b.y_pred - b.y_true).abs().mean()), p=_brute_force_p(d))


def _tables(leaky_scale: float, seed: int = 1):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(8):
        for j in range(6):
            y = 10 + 2 * j + g
            rows.append(dict(fold=g, subject=f"M{g}", scan_id=f"M{g}-{j}", model="cnn", y_true=float(y),
                             err=rng.normal(0, 3) + (2.0 if g % 2 else -2.0)))
    honest = pd.DataFrame(rows)
    honest["y_pred"] = honest.y_true + honest.err
    leaky = honest.copy()
    leaky["fold"] = np.arange(len(leaky)) % 4
    leaky["y_pred"] = leaky.y_true + leaky_scale * leaky.err
    cols = ["fold", "subject", "scan_id", "model", "y_true", "y_pred"]
    return honest[cols], leaky[cols]


def test_summary_states_clear_optimism_with_monkey_level_interval():
    honest, leaky = _tables(leaky_scale=0.4)
    out = leakage_summary(honest, leaky, n_boot=2000, seed=0)
    (row,) = out["models"]
    ref = _independent(honest, leaky, "cnn")
    assert row["mae_subject_split"] == pytest.approx(ref["mae_subject_split"])
    assert row["mae_scan_split"] == pytest.approx(ref["mae_scan_split"])
    assert row["optimism"] == pytest.approx(ref["mae_subject_split"] - ref["mae_scan_split"])
    assert row["optimism_percent"] == pytest.approx(100 * row["optimism"] / ref["mae_subject_split"])
    assert row["p_signflip"] == pytest.approx(ref["p"]) and ref["p"] == pytest.approx(2 / 2 ** 8)
    assert row["p_adjusted"] == row["p_signflip"]  # one model: nothing to adjust
    lo, hi = row["optimism_ci"]
    assert 0 < lo < row["optimism"] < hi
    assert out["statement"].startswith(f"A scan-level split would have reported cnn's MAE as "
                                       f"{ref['mae_scan_split']:.1f} mmHg instead of {ref['mae_subject_split']:.1f}")
    assert "sign-flip p = 0.008" in out["statement"]
    assert out["statement"].endswith("1 of 1 models is clearly optimistic under it (interval above zero and "
                                     "Holm-adjusted p < 0.05): cnn.")


def test_summary_says_no_clear_optimism_when_the_splits_agree():
    honest, leaky = _tables(leaky_scale=1.0)
    leaky = leaky.assign(y_pred=leaky.y_pred + np.where(np.arange(len(leaky)) % 2, 0.3, -0.3))
    out = leakage_summary(honest, leaky, n_boot=2000, seed=0)
    (row,) = out["models"]
    assert row["optimism_ci"][0] < 0 < row["optimism_ci"][1]
    if row["optimism"] > 0:
        assert out["statement"].endswith("0 of 1 models are clearly optimistic under it (interval above zero and "
                                         "Holm-adjusted p < 0.05).")
    else:
        assert out["statement"].startswith("The scan-level split was not more optimistic")
    assert row["p_signflip"] == pytest.approx(_independent(honest, leaky, "cnn")["p"])


def _run(*args):
    return main(["run", "--phantom", "tiny", "--models", "mean,ols_iop,ridge_scan", "--n-boot", "300", "--quiet",
                 *args])


def test_split_scans_adds_a_scan_level_twin_beside_the_honest_run(tmp_path):
    out = tmp_path / "run"
    assert _run("--out", str(out)) == 0
    records = {p: p.read_bytes() for p in sorted((out / "folds").glob("fold_*/record.json"))}
    assert len(records) == 6 and not (out / "leakage.json").exists()
    assert "No scan-level twin" in (out / "index.html").read_text()

    assert _run("--out", str(out), "--leakage-audit") == 0
    # the honest folds were reused, not retrained (their records would carry new timings)
    assert {p: p.read_bytes() for p in records} == records
    honest_plan, twin_plan = read_json(out / "fold_plan.json"), read_json(out / "scan_split" / "fold_plan.json")
    assert honest_plan["kind"] == "subjects" and twin_plan["kind"] == "scans"
    assert twin_plan["n_folds"] == honest_plan["n_folds"] == 6
    assert read_json(out / "leakage_audit.json")["passed"]
    assert not read_json(out / "scan_split" / "leakage_audit.json")["passed"]  # monkeys on both sides
    assert any("leakage audit FAILED" in w for w in read_json(out / "scan_split" / "stats.json")["warnings"])
    assert not any("leakage audit" in w for w in read_json(out / "stats.json")["warnings"])

    honest = pd.read_csv(out / "predictions.csv", dtype={"subject": str, "scan_id": str})
    leaky = pd.read_csv(out / "scan_split" / "predictions.csv", dtype={"subject": str, "scan_id": str})
    assert sorted(honest.scan_id) == sorted(leaky.scan_id)
    # in the twin some test scan shares its monkey with training scans of the same fold
    test_monkeys = leaky.groupby("fold").subject.agg(set)
    assert any(len(s) > 1 for s in test_monkeys)

    audit = read_json(out / "leakage.json")
    assert audit["run_key"] == read_json(out / "run.json")["key"]
    assert audit["scan_split_run_key"] == read_json(out / "scan_split" / "run.json")["key"]
    assert [r["model"] for r in audit["models"]] == ["mean", "ols_iop", "ridge_scan"]
    ps = []
    for row in audit["models"]:
        ref = _independent(honest, leaky, row["model"])
        assert row["mae_subject_split"] == pytest.approx(ref["mae_subject_split"])
        assert row["mae_scan_split"] == pytest.approx(ref["mae_scan_split"])
        assert row["optimism"] == pytest.approx(ref["mae_subject_split"] - ref["mae_scan_split"])
        assert row["p_signflip"] == pytest.approx(ref["p"])
        ps.append(ref["p"])
        lo, hi = row["optimism_ci"]
        assert lo < row["optimism"] < hi

    # Holm across the three models, computed here by hand: sort, multiply by m - rank, running max, cap at 1
    order = np.argsort(ps)
    adj, run = np.empty(3), 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (3 - rank) * ps[i]))
        adj[i] = run
    assert [r["p_adjusted"] for r in audit["models"]] == pytest.approx(list(adj))

    stats = read_json(out / "stats.json")
    assert stats["scan_split_audit"]["statement"] == audit["statement"]
    assert stats["scan_split_audit"]["models"] == audit["models"]
    html = (out / "index.html").read_text()
    assert "What a scan-level split would have claimed" in html and "No scan-level twin" not in html
    assert str(markupsafe.escape(audit["statement"])) in html  # as Jinja's autoescape writes it
    assert 'href="scan_split/index.html"' in html and (out / "scan_split" / "index.html").exists()
    # re-analysing the twin's own predictions keeps the warning of its failed fold-plan audit
    twin = out / "scan_split"
    assert main(["analyze", str(twin / "predictions.csv"), "--out", str(twin), "--n-boot", "200"]) == 0
    assert any("leakage audit FAILED" in w for w in read_json(twin / "stats.json")["warnings"])


def test_stale_leakage_json_is_not_shown(tmp_path):
    out = tmp_path / "run"
    assert _run("--out", str(out), "--split", "scans", "--models", "mean,ols_iop") == 0
    assert "What a scan-level split would have claimed" in (out / "index.html").read_text()
    data = read_json(out / "leakage.json")
    data["scan_split_run_key"] = "0" * 16  # as if the twin had been rerun with other settings since
    (out / "leakage.json").write_text(json.dumps(data))
    html = write_report(out).read_text()
    assert "What a scan-level split would have claimed" not in html
    assert "leakage.json belongs to an earlier version" in html
