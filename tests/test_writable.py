"""Places that cannot be written: each is refused with one sentence (exit 2) before any work starts.

Issue 11: an ``--out`` that is a file, a path under a file, a read-only folder (empty, or holding a
complete run), a missing folder under a read-only parent, and ``icpcv report`` on a read-only run
directory ended in FileExistsError, NotADirectoryError or ``OSError: [Errno 30]``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from cli_support import assert_clean_refusal, icpcv
from icpcv.errors import RunDirError, UnwritableError
from icpcv.writable import check_output_dir, check_output_file

LABELS = ["--models", "mean,ols_iop", "--n-boot", "20", "--quiet"]


def _labels_table(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [dict(scan_id=f"{s}-{i}", subject=s, iop=10 + 5 * i, icp=5 + s + 0.5 * i, path="")
            for s in range(1, 5) for i in range(4)]
    path = folder / "labels.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A complete labels-only run: its table and its run directory."""
    base = tmp_path_factory.mktemp("writable")
    table = _labels_table(base / "data")
    rc, _, err = icpcv("run", "--manifest", table, "--out", base / "run", *LABELS)
    assert rc == 0, err
    return table, base / "run"


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_out_that_is_a_file_or_under_a_file(tmp_path):
    table = _labels_table(tmp_path / "data")
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    for out in (afile, afile / "run"):
        rc, _, err = icpcv("run", "--manifest", table, "--out", out, *LABELS)
        assert_clean_refusal(rc, err, f"--out {out}", f"{afile} is a file, not a folder")
    rc, _, err = icpcv("analyze", tmp_path / "whatever.csv", "--out", afile)
    assert_clean_refusal(rc, err, f"--out {afile}", "is a file, not a folder")
    rc, _, err = icpcv("prepare", table, "--out", afile, "--shape", "12x12x32", "--quiet")
    assert_clean_refusal(rc, err, f"--out {afile}", "is a file, not a folder")
    rc, _, err = icpcv("calibrate", "--n-sim", "2", "--n-boot", "10", "--workers", "1", "--out", afile / "t.md")
    assert_clean_refusal(rc, err, f"--out {afile / 't.md'}", f"{afile} is a file, not a folder")
    rc, _, err = icpcv("run", "--manifest", table, "--out", tmp_path / "run", "--log-file", tmp_path, *LABELS)
    assert_clean_refusal(rc, err, f"--log-file {tmp_path}", "is a folder, not a file")
    assert afile.read_text() == "mine" and not (tmp_path / "run").exists()


def test_read_only_folders_are_refused_before_any_work(tmp_path, read_only):
    table = _labels_table(tmp_path / "data")
    empty = tmp_path / "empty"
    empty.mkdir()
    read_only(empty)
    for out in (empty, empty / "new" / "run"):
        rc, _, err = icpcv("run", "--manifest", table, "--out", out, *LABELS)
        assert_clean_refusal(rc, err, f"--out {out}", f"{empty} is read-only")
        rc, _, err = icpcv("analyze", tmp_path / "absent.csv", "--out", out)
        assert_clean_refusal(rc, err, f"--out {out}", f"{empty} is read-only")
    rc, _, err = icpcv("prepare", table, "--out", empty / "prepared", "--shape", "12x12x32", "--quiet")
    assert_clean_refusal(rc, err, f"{empty} is read-only")
    assert list(empty.iterdir()) == []  # no lock, no probe, no folder left behind


def test_a_read_only_complete_run_is_refused_for_run_report_and_analyze(finished, tmp_path, read_only):
    table, run_dir = finished
    copy = tmp_path / "archived"
    shutil.copytree(run_dir, copy)
    before = _snapshot(copy)
    read_only(copy)
    rc, _, err = icpcv("run", "--manifest", table, "--out", copy, *LABELS)
    assert_clean_refusal(rc, err, f"--out {copy}", f"{copy} is read-only")
    rc, _, err = icpcv("report", copy)
    assert_clean_refusal(rc, err, f"{copy} is read-only", "copy the folder")
    rc, _, err = icpcv("analyze", copy / "predictions.csv", "--out", copy, "--n-boot", "20")
    assert_clean_refusal(rc, err, f"{copy} is read-only")
    rc, _, err = icpcv("compare", run_dir, copy, "--out", copy / "cmp", "--models", "mean")
    assert_clean_refusal(rc, err, f"{copy} is read-only")
    assert _snapshot(copy) == before


def test_a_read_only_figures_folder_is_named(finished, tmp_path, read_only):
    _, run_dir = finished
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    read_only(copy / "figures")
    rc, _, err = icpcv("report", copy)
    assert_clean_refusal(rc, err, f"{copy / 'figures'} is read-only")


def test_check_output_dir_and_file(tmp_path, read_only):
    assert check_output_dir(tmp_path / "a" / "b", what="run directory") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # a check, not a mkdir
    (tmp_path / "f").write_text("x")
    with pytest.raises(UnwritableError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "f" / "g", what="run directory")
    assert issubclass(UnwritableError, RunDirError)  # the CLI's exit code 2
    with pytest.raises(UnwritableError, match="no such folder"):
        check_output_dir(tmp_path / "missing", what="report", create=False)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UnwritableError, match="broken symbolic link"):
        check_output_dir(tmp_path / "link", what="run directory")
    with pytest.raises(UnwritableError, match="is a folder, not a file"):
        check_output_file(tmp_path, what="log file", option="--log-file")
    assert check_output_file(tmp_path / "new" / "log.txt", what="log file") == tmp_path / "new" / "log.txt"
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(ro)
    with pytest.raises(UnwritableError, match="is read-only"):
        check_output_file(ro / "log.txt", what="log file", option="--log-file")
    assert list(ro.iterdir()) == []
