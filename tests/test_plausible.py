"""Implausible numbers: pressures in scan tables, predictions tables for ``analyze``.

Issue 11: an ICP or IOP of 1e300 in a scan table, or a y_pred of 1e300 for ``icpcv analyze``,
ended in OverflowError; a negative IOP was kept without a word (and a negative ICP was dropped in
the seed's format but kept in the plain one). Ranges: docs/inputs.md, icpcv.plausible.
"""
from __future__ import annotations

import pandas as pd
import pytest

from cli_support import assert_clean_refusal, icpcv, write_csv
from icpcv.cohort.table import REASONS, read_scan_table
from icpcv.errors import InputError
from icpcv.plausible import ICP_MMHG, IOP_MMHG, PREDICTION_MMHG
from icpcv.stats.io import read_predictions

LABELS = ["--models", "mean,ols_iop", "--n-boot", "20", "--quiet"]


def _plain(tmp_path, edits: dict) -> "Path":
    """A labels-only plain table of 4 monkeys x 4 scans; ``edits`` maps scan_id -> {column: text}."""
    rows = []
    for s in range(1, 5):
        for i in range(4):
            r = dict(scan_id=f"{s}-{i}", subject=str(s), iop=str(10 + 5 * i), icp=str(5 + s + 0.5 * i), path="")
            r.update(edits.get(r["scan_id"], {}))
            rows.append(r)
    return write_csv(tmp_path / "labels.csv", list(rows[0]), [list(r.values()) for r in rows])


@pytest.mark.parametrize("column", ["icp", "iop"])
def test_extreme_pressures_in_a_table_are_dropped_with_a_reason_and_the_run_finishes(tmp_path, column):
    table = _plain(tmp_path, {"2-1": {column: "1e300"}, "3-2": {column: "-1e300"}})
    out = tmp_path / "run"
    rc, _, err = icpcv("run", "--manifest", table, "--out", out, *LABELS)
    assert rc == 0 and "Traceback" not in err, err
    q = pd.read_csv(out / "data_quality.csv", dtype=str, keep_default_na=False).set_index("scan_id")
    for x, text in (("2-1", "1e300"), ("3-2", "-1e300")):
        assert q.at[x, "status"] == "dropped" and q.at[x, "reason"] == f"{column}_out_of_range"
        assert q.at[x, "column"] == column and q.at[x, "value"] == text
    assert (q["status"] == "kept").sum() == 14
    preds = pd.read_csv(out / "predictions.csv", dtype={"scan_id": str})
    assert not {"2-1", "3-2"} & set(preds["scan_id"])


def _seed(tmp_path, rows):
    scans = tmp_path / "scans"
    scans.mkdir(exist_ok=True)
    import torch

    for r in rows:
        torch.save(torch.zeros(4, 4, 8), scans / f"{r[0]}.pt")
    return write_csv(tmp_path / "seed.csv", ["id", "monkey_id", "iop", "icp", "torch_present"],
                  [r + ("TRUE",) for r in rows]), scans


def test_one_range_per_pressure_in_both_formats(tmp_path):
    rows = [("a", "1", "15", "8"),       # kept
            ("b", "1", "-5", "8"),       # negative IOP: impossible in a living eye
            ("c", "1", "150", "8"),      # IOP above 100 mmHg
            ("d", "2", "15", "-3"),      # negative ICP within range: the seed's rule alone drops it
            ("e", "2", "15", "-25"),     # ICP below -20 mmHg
            ("f", "2", "15", "120"),     # ICP above 100 mmHg
            ("g", "2", "15", "inf"),     # not finite
            ("h", "2", "100", "-20")]    # both on their bounds: kept (plain), ICP <= 0 (seed)
    seed, scans = _seed(tmp_path, rows)
    plain = write_csv(tmp_path / "plain.csv", ["scan_id", "subject", "iop", "icp", "path"],
                   [r + ("",) for r in rows])
    got_seed = read_scan_table(seed, scans_dir=scans).quality.set_index("scan_id")["reason"].to_dict()
    got_plain = read_scan_table(plain, need_iop=False).quality.set_index("scan_id")["reason"].to_dict()
    assert got_plain == {"a": "", "b": "iop_out_of_range", "c": "iop_out_of_range", "d": "",
                         "e": "icp_out_of_range", "f": "icp_out_of_range", "g": "icp_out_of_range", "h": ""}
    assert got_seed == got_plain | {"d": "icp_not_positive", "h": "icp_not_positive"}
    for code in ("iop_out_of_range", "icp_out_of_range"):
        assert code in REASONS
    assert f"{IOP_MMHG[0]:g} to {IOP_MMHG[1]:g} mmHg" in REASONS["iop_out_of_range"]
    assert f"{ICP_MMHG[0]:g} to {ICP_MMHG[1]:g} mmHg" in REASONS["icp_out_of_range"]


def test_real_table_keeps_its_1243_rows_under_the_ranges(monkey_table):
    t = read_scan_table(monkey_table)
    assert len(t.scans) == 1243
    q = t.quality
    assert not q["reason"].isin(["iop_out_of_range", "icp_out_of_range"]).any()
    assert t.scans["iop"].between(*IOP_MMHG).all() and t.scans["icp"].between(*ICP_MMHG).all()


GOOD = pd.DataFrame({
    "fold": [0, 0, 1, 1, 2, 2] * 2,
    "subject": [1, 1, 2, 2, 3, 3] * 2,
    "scan_id": ["a", "b", "c", "d", "e", "f"] * 2,
    "model": ["ols_iop"] * 6 + ["cnn"] * 6,
    "y_true": [10.0, 12.0, 20.0, 22.5, 8.0, 9.0] * 2,
    "y_pred": [11, 12, 18, 21, 9, 10, 10, 13, 19, 22.0, 8, 8],
    "iop": [15.0, 20, 25, 30, 12, 14] * 2,
})


@pytest.mark.parametrize("column,value,accepted", [
    ("y_pred", 1e300, PREDICTION_MMHG), ("y_pred", -5000.0, PREDICTION_MMHG),
    ("y_true", 1e300, ICP_MMHG), ("iop", 1e300, IOP_MMHG), ("iop", -5.0, IOP_MMHG)])
def test_analyze_refuses_implausible_predictions_naming_row_and_column(tmp_path, column, value, accepted):
    df = GOOD.copy()
    df.loc[df["scan_id"] == "c", column] = value  # rows 3 and 9 (both models share y_true and iop)
    path = tmp_path / "preds.csv"
    df.to_csv(path, index=False)
    rc, _, err = icpcv("analyze", path, "--out", tmp_path / "out", "--n-boot", "20")
    assert_clean_refusal(rc, err, f"preds.csv row 3, column {column}: {value:g}",
                         f"{accepted[0]:g} to {accepted[1]:g} mmHg")
    assert not (tmp_path / "out" / "stats.json").exists()
    with pytest.raises(InputError, match=f"row 3, column {column}"):
        read_predictions(path)


def test_messages_show_plain_numbers(tmp_path):
    df = GOOD.copy()
    df.loc[9, "y_true"] = 8.09  # scan d: 22.5 for ols_iop, 8.09 for cnn
    df.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(InputError) as err:
        read_predictions(tmp_path / "p.csv")
    msg = str(err.value)
    assert "np.float64" not in msg and "y_true 8.09 here but 22.5 in row 4" in msg, msg


def test_missing_value_tokens_are_missing_not_labels(tmp_path):
    """'NA', 'None', 'null' ... mean missing to R, spreadsheets and pandas (which reads the run's own files
    back): as a subject they grouped unrelated rows into one monkey "NA", and as a scan id a finished
    run's predictions.csv read it back as NaN and the analysis refused the run after every fold."""
    table = _plain(tmp_path, {"1-0": {"subject": "NA"}, "1-1": {"subject": "NA"}, "2-0": {"scan_id": "None"},
                              "3-0": {"icp": "NaN"}, "3-1": {"iop": "null"}})
    q = read_scan_table(table, need_iop=True).quality.set_index("row")
    assert q.loc[1, "reason"] == q.loc[2, "reason"] == "subject_missing" and q.loc[1, "value"] == "NA"
    assert q.loc[5, "reason"] == "scan_id_missing" and q.loc[5, "value"] == "None"
    assert q.loc[9, "reason"] == "icp_missing" and q.loc[10, "reason"] == "iop_missing"
    assert read_scan_table(table, need_iop=False).quality.set_index("row").loc[10, "status"] == "kept"
    df = GOOD.copy()
    df["subject"] = df["subject"].astype(str)
    df.loc[4, "subject"] = "None"
    df.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(InputError, match=r"p.csv row 5, column subject: 'None' reads as a missing value"):
        read_predictions(tmp_path / "p.csv")
