"""Smaller answers that misled (issue 11): fold options, compare, and reason codes the report explains."""
from __future__ import annotations

import html
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cli_support import assert_clean_refusal, icpcv
from icpcv.cohort.table import REASONS, read_scan_table

LABELS = ["--models", "mean,ols_iop", "--n-boot", "20", "--quiet"]


def _labels_table(path: Path, n_subjects: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [dict(scan_id=f"{s}-{i}", subject=s, iop=10 + 5 * i, icp=5 + s + 0.5 * i, path="")
            for s in range(1, n_subjects + 1) for i in range(4)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_fold_options_on_tiny_tables(tmp_path):
    one = _labels_table(tmp_path / "one.csv", 1)
    rc, _, err = icpcv("run", "--manifest", one, "--out", tmp_path / "r1", *LABELS)
    assert_clean_refusal(rc, err, "only 1 subject (1)")
    assert "--folds must be" not in err
    two = _labels_table(tmp_path / "two.csv", 2)
    # labels only: no model early-stops, so a fold with one training subject keeps it (refused before)
    rc, _, err = icpcv("run", "--manifest", two, "--out", tmp_path / "r2", *LABELS)
    assert rc == 0 and "Traceback" not in err, err
    rc, _, err = icpcv("run", "--manifest", two, "--out", tmp_path / "r2b", *LABELS, "--val-fraction", "0")
    assert rc == 0 and "Traceback" not in err, err
    rc, _, err = icpcv("run", "--manifest", two, "--out", tmp_path / "r3", "--models", "mean,cnn",
                       "--val-fraction", "0", "--quiet")
    assert_clean_refusal(rc, err, "--val-fraction 0", "cnn")
    rc, _, err = icpcv("run", "--manifest", two, "--out", tmp_path / "r4", *LABELS, "--val-fraction", "2")
    assert_clean_refusal(rc, err, "--val-fraction 2")


@pytest.fixture(scope="module")
def labels_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("messages")
    table = _labels_table(base / "labels.csv", 4)
    rc, _, err = icpcv("run", "--manifest", table, "--out", base / "run", *LABELS)
    assert rc == 0, err
    return base / "run"


def test_compare_a_run_with_itself_or_its_copy(labels_run, tmp_path):
    rc, _, err = icpcv("compare", labels_run, labels_run, "--out", tmp_path / "cmp")
    assert_clean_refusal(rc, err, "the same run directory")
    copy = tmp_path / "copy"
    shutil.copytree(labels_run, copy)
    rc, _, err = icpcv("compare", labels_run, copy, "--out", tmp_path / "cmp")
    assert_clean_refusal(rc, err, "no model's predictions differ", "--models")
    assert not (tmp_path / "cmp").exists()


def _table_codes(tmp_path: Path) -> set[str]:
    """Every reason code reading a table can write, from rows made to trigger each (both formats)."""
    import torch

    scans = tmp_path / "scans"
    scans.mkdir()
    for x in ("a", "b"):
        torch.save(torch.zeros(4, 4, 8), scans / f"{x}.pt")
    (scans / "loop.pt").symlink_to(scans / "loop.pt")
    seed = [("a", "1", "10", "5", "TRUE"), ("", "", "", "", "maybe"), ("a", "1", "x", "0-2", "TRUE"),
            ("c", "1", "-1", "x", "FALSE"), ("d", "1", "10", "-3", "TRUE"), ("e", "1", "10", "500", "TRUE"),
            ("loop", "1", "10", "5", "TRUE"), ("../b", "1", "10", "5", "TRUE"), ("f\x01", "1", "10", "5", "TRUE")]
    pd.DataFrame(seed, columns=["id", "monkey_id", "iop", "icp", "torch_present"]).to_csv(tmp_path / "s.csv",
                                                                                         index=False)
    q = read_scan_table(tmp_path / "s.csv", scans_dir=scans).quality
    return {c for rs in q["all_reasons"] for c in rs.split(",") if c}


def test_every_reason_code_has_a_meaning_and_the_report_shows_it(tmp_path):
    codes = _table_codes(tmp_path)
    volume_codes = {"bad_volume", "bad_volume_shape", "bad_volume_values",  # tests/test_volume_checks.py writes them
                    "line_scan", "fov_too_small", "fov_unknown"}  # tests/test_acquisition_geometry.py writes these
    assert codes <= set(REASONS), codes - set(REASONS)
    assert codes | volume_codes == set(REASONS), set(REASONS) - codes - volume_codes  # each code can be written
    # a run that drops rows for many reasons: its report lists each code with its meaning
    rows = [("", "1", "10", "5"), ("a", "", "10", "5"), ("b", "1", "x", "5"), ("c", "1", "-3", "5"),
            ("d", "1", "10", "0-2"), ("e", "1", "10", "x"), ("f", "1", "10", "500"), ("g", "1", "10", ""),
            ("h", "1", "10", "5"), ("h", "1", "10", "5")] + \
        [(f"k{s}{i}", str(s), "10", str(4 + i)) for s in range(1, 4) for i in range(3)]
    table = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=["scan_id", "subject", "iop", "icp"]).to_csv(table, index=False)
    dropped = set(read_scan_table(table, need_iop=True).quality["reason"]) - {""}
    assert len(dropped) == 9
    rc, _, err = icpcv("run", "--manifest", table, "--out", tmp_path / "run", *LABELS)
    assert rc == 0, err
    page = html.unescape((tmp_path / "run" / "index.html").read_text())
    for code in dropped:
        assert REASONS[code] in page, code


@pytest.mark.parametrize("option,value,needle", [
    ("--n-boot", "0", "--n-boot 0: accepted 1 to"), ("--ci-level", "1.5", "--ci-level 1.5: accepted above 0 and below 1"),
    ("--batch-size", "0", "--batch-size 0"), ("--lr", "-1", "--lr -1: accepted above 0"),
    ("--patience", "-2", "--patience -2")])
def test_numeric_options_are_checked_before_any_fold(tmp_path, option, value, needle):
    """--n-boot 0 and --ci-level 1.5 ended in a ValueError traceback after every fold had run."""
    table = _labels_table(tmp_path / "t.csv", 3)
    rc, _, err = icpcv("run", "--manifest", table, "--out", tmp_path / "run", "--models", "mean,ols_iop", "--quiet",
                       option, value)
    assert_clean_refusal(rc, err, needle)
    assert not (tmp_path / "run").exists()


def test_a_missing_scans_folder_and_an_unusable_table_say_so(tmp_path):
    seed = tmp_path / "seed.csv"
    pd.DataFrame([("1", "1", "10", "5", "TRUE")], columns=["id", "monkey_id", "iop", "icp", "torch_present"]) \
        .to_csv(seed, index=False)
    rc, _, err = icpcv("run", "--manifest", seed, "--scans", tmp_path / "nowhere", "--out", tmp_path / "r", *LABELS)
    assert_clean_refusal(rc, err, f"{tmp_path / 'nowhere'}: --scans folder not found")
    plain = tmp_path / "plain.csv"
    pd.DataFrame([("a", "1", "x", "")], columns=["scan_id", "subject", "iop", "icp"]).to_csv(plain, index=False)
    rc, _, err = icpcv("run", "--manifest", plain, "--out", tmp_path / "r", *LABELS)
    assert_clean_refusal(rc, err, "no row is usable (reasons: icp_missing (1);")
    assert "{" not in err
