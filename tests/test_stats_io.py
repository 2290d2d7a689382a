"""read_predictions validation and the atomic stats.json writer."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from icpcv.stats import InputError, read_predictions, write_stats

GOOD = pd.DataFrame({
    "fold": [0, 0, 1, 1] * 2,
    "subject": [1, 1, 2, 2] * 2,
    "scan_id": ["a", "b", "c", "d"] * 2,
    "model": ["ols_iop"] * 4 + ["cnn"] * 4,
    "y_true": [10.0, 12.0, 20.0, 22.5] * 2,
    "y_pred": [11, 12, 18, 21, 10, 13, 19, 22.0],
})


def _csv(tmp_path, df, name="predictions.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_reads_csv_and_parquet(tmp_path):
    a = read_predictions(_csv(tmp_path, GOOD))
    GOOD.to_parquet(tmp_path / "p.parquet")
    b = read_predictions(tmp_path / "p.parquet")
    for df in (a, b):
        assert list(df["subject"].unique()) == ["1", "2"]  # labels as str
        assert df["y_pred"].dtype == float
        np.testing.assert_allclose(df["y_pred"], GOOD["y_pred"])


def test_missing_column_names_file_and_column(tmp_path):
    path = _csv(tmp_path, GOOD.drop(columns="y_pred"))
    with pytest.raises(InputError, match=r"predictions\.csv.*missing.*y_pred"):
        read_predictions(path)


def test_non_numeric_value_names_file_row_and_column(tmp_path):
    rows = pd.concat([GOOD] * 3, ignore_index=True)
    rows["scan_id"] = [f"s{i}" for i in range(len(rows))]
    rows["y_pred"] = rows["y_pred"].astype(object)
    rows.loc[16, "y_pred"] = "abc"  # 0-based index 16 = data row 17 (header not counted)
    path = _csv(tmp_path, rows)
    with pytest.raises(InputError) as exc:
        read_predictions(path)
    assert str(exc.value) == "predictions.csv row 17, column y_pred: 'abc' is not a number"
    # the CSV line of that row is 18 (line 1 is the header)
    assert path.read_text().splitlines()[17].split(",")[-1] == "abc"


def test_empty_and_infinite_values_are_rejected(tmp_path):
    bad = GOOD.astype({"y_true": object})
    bad.loc[2, "y_true"] = ""
    with pytest.raises(InputError, match=r"row 3, column y_true: empty is not a number"):
        read_predictions(_csv(tmp_path, bad))
    bad = GOOD.astype({"y_pred": object})
    bad.loc[0, "y_pred"] = "inf"
    with pytest.raises(InputError, match=r"row 1, column y_pred: 'inf'"):
        read_predictions(_csv(tmp_path, bad))


def test_duplicate_model_scan_pair(tmp_path):
    dup = pd.concat([GOOD, GOOD.iloc[[5]]], ignore_index=True)
    with pytest.raises(InputError) as exc:
        read_predictions(_csv(tmp_path, dup))
    msg = str(exc.value)
    assert "predictions.csv rows 6, 9" in msg and "model/scan_id" in msg and "'cnn'" in msg


def test_scan_with_inconsistent_truth_across_models(tmp_path):
    bad = GOOD.copy()
    bad.loc[6, "y_true"] = 99.0
    with pytest.raises(InputError, match=r"row 7, column y_true: scan_id 'c'"):
        read_predictions(_csv(tmp_path, bad))


def test_unsupported_and_empty_files(tmp_path):
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported"):
        read_predictions(tmp_path / "p.txt")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(InputError, match="e.csv"):
        read_predictions(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text(",".join(GOOD.columns) + "\n")
    with pytest.raises(InputError, match="no data rows"):
        read_predictions(tmp_path / "h.csv")


def test_optional_iop_may_be_blank_but_not_text(tmp_path):
    df = GOOD.assign(iop=[15, "", 20, 21, 15, "", 20, 21])
    assert read_predictions(_csv(tmp_path, df))["iop"].isna().sum() == 2
    df = GOOD.assign(iop=[15, "high", 20, 21, 15, 1, 20, 21])
    with pytest.raises(InputError, match=r"row 2, column iop: 'high' is not a number"):
        read_predictions(_csv(tmp_path, df))


def test_write_stats_is_atomic_and_plain_json(tmp_path):
    path = tmp_path / "out" / "stats.json"
    write_stats({"a": np.float64(1.5), "b": float("nan"), "c": [np.int64(3)]}, path)
    assert json.loads(path.read_text()) == {"a": 1.5, "b": None, "c": [3]}
    # a failing write leaves the old file untouched and no temp file behind
    with pytest.raises(TypeError):
        write_stats({"bad": object()}, path)
    assert json.loads(path.read_text())["a"] == 1.5
    assert os.listdir(path.parent) == ["stats.json"]


def test_write_stats_failure_during_replace_keeps_old_file(tmp_path, monkeypatch):
    import icpcv.util as util_mod  # write_stats writes through icpcv.util.atomic_write

    path = tmp_path / "stats.json"
    write_stats({"v": 1}, path)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(util_mod.os, "replace", boom)
    with pytest.raises(OSError):
        write_stats({"v": 2}, path)
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["stats.json"]
