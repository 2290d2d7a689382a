"""Scan tables: every dropped row gets its own reason; the real table gives the seed's 1243 scans."""
from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from icpcv.cohort.table import read_scan_table
from icpcv.errors import InputError
from cli_support import write_csv


@pytest.fixture
def seed_table(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    import torch

    for i in (1, 2, 3, 4, 5, 6, 7, 8, 10):
        torch.save(torch.zeros(4, 4, 8), scans / f"{i}.pt")
    rows = [
        (1, 1, 15, 8.5, "TRUE"),      # kept
        (2, 1, 15, "0-2", "TRUE"),    # icp_range
        (3, 1, 15, "", "TRUE"),       # icp_missing
        (4, 1, 15, "high", "TRUE"),   # icp_not_numeric
        (5, "", 15, 8, "TRUE"),       # subject_missing
        (6, 2, "", 8, "TRUE"),        # iop_missing (the seed's rule requires IOP)
        (7, 2, 20, -1.5, "TRUE"),     # icp_not_positive
        (8, 2, 20, 9, "FALSE"),       # no_volume
        (9, 2, 20, 9, "TRUE"),        # volume_file_missing (no 9.pt)
        (1, 2, 20, 9, "TRUE"),        # duplicate_scan_id
        (10, 3, 30, 12.0, "TRUE"),    # kept
    ]
    path = write_csv(tmp_path / "seed.csv", ["id", "monkey_id", "iop", "icp", "torch_present", "scan notes"],
                  [r + ("",) for r in rows])
    return path, scans


def test_each_reason_is_recorded_for_its_row(seed_table):
    path, scans = seed_table
    t = read_scan_table(path, scans_dir=scans)
    q = t.quality.set_index("row")
    expected = {1: "", 2: "icp_range", 3: "icp_missing", 4: "icp_not_numeric", 5: "subject_missing",
                6: "iop_missing", 7: "icp_not_positive", 8: "no_volume", 9: "volume_file_missing",
                10: "duplicate_scan_id", 11: ""}
    assert q["reason"].to_dict() == expected
    assert q.loc[2, "column"] == "icp" and q.loc[2, "value"] == "0-2"
    assert q.loc[10, "value"].startswith("1 (first on row 1)")
    assert list(t.scans["scan_id"]) == ["1", "10"]
    assert (q["status"] == "kept").sum() == 2 and len(q) == 11
    assert t.scans["path"].str.endswith(".pt").all()


def test_plain_format_missing_iop_drops_only_for_iop_models(tmp_path):
    vols = tmp_path / "v"
    vols.mkdir()
    for i in range(3):
        np.save(vols / f"a{i}.npy", np.zeros((4, 4, 8), np.uint8))
    path = write_csv(tmp_path / "plain.csv", ["scan_id", "subject", "iop", "icp", "path"],
                  [("a0", "m1", 10, 5, "v/a0.npy"), ("a1", "m1", "", 6, "v/a1.npy"), ("a2", "m2", 12, -1, "v/a2.npy"),
                   ("a3", "m2", 12, 7, "v/nope.npy")])
    with_iop = read_scan_table(path, need_iop=True)
    without = read_scan_table(path, need_iop=False)
    assert with_iop.quality.set_index("scan_id")["reason"].to_dict() == {
        "a0": "", "a1": "iop_missing", "a2": "", "a3": "volume_file_missing"}
    assert without.quality.set_index("scan_id")["reason"].to_dict() == {
        "a0": "", "a1": "", "a2": "", "a3": "volume_file_missing"}
    assert np.isnan(without.scans.set_index("scan_id").loc["a1", "iop"])
    # negative ICP is a value, not an error, outside the seed's rule
    assert without.scans.set_index("scan_id").loc["a2", "icp"] == -1


def test_non_numeric_iop_has_its_own_reason(tmp_path):
    path = write_csv(tmp_path / "plain.csv", ["scan_id", "subject", "iop", "icp", "path"],
                  [("a", "1", "15mmHg", 5, ""), ("b", "1", 15, 5, "")])
    t = read_scan_table(path, need_iop=False)
    assert t.quality.set_index("scan_id")["reason"].to_dict() == {"a": "iop_not_numeric", "b": ""}
    assert not t.has_volumes


def test_unknown_header_names_the_file(tmp_path):
    path = write_csv(tmp_path / "x.csv", ["a", "b"], [(1, 2)])
    with pytest.raises(InputError, match="x.csv.*cannot tell the table's format"):
        read_scan_table(path)


def test_volumes_needed_but_absent(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["scan_id", "subject", "iop", "icp", "path"], [("a", "1", 10, 5, "")])
    with pytest.raises(InputError, match="needs volumes"):
        read_scan_table(path, need_volumes=True)


def test_real_table_gives_the_seed_cohort(monkey_table):
    t = read_scan_table(monkey_table)
    # an independent count of the data rows, with the csv module
    with open(monkey_table, newline="") as fh:
        n_rows = sum(1 for _ in csv.reader(fh)) - 1
    assert len(t.quality) == n_rows
    assert list(t.quality["row"]) == list(range(1, n_rows + 1))
    assert len(t.scans) == 1243
    assert t.scans["subject"].nunique() == 13
    assert "12" not in set(t.scans["subject"])  # monkey 12 has no IOP
    per = t.scans.groupby("subject").size()
    assert per.min() == 19 and per.idxmin() == "14" and per.max() == 251 and per.idxmax() == "5"
    assert set(t.quality["status"]) == {"kept", "dropped"}
    dropped = t.quality[t.quality["status"] == "dropped"]
    assert (dropped["reason"] != "").all() and len(dropped) == n_rows - 1243
    # cross-check the seed's rule directly with pandas
    raw = pd.read_csv(monkey_table, dtype=str, keep_default_na=False)
    icp = pd.to_numeric(raw["icp"], errors="coerce")
    rule = (raw["torch_present"].str.upper() == "TRUE") & (icp > 0) & (raw["iop"].str.strip() != "") & \
        (raw["monkey_id"].str.strip() != "")
    assert set(raw.loc[rule, "id"]) == set(t.scans["scan_id"])
    assert round(t.scans[["iop", "icp"]].corr().iloc[0, 1], 2) == 0.10


def test_a_control_character_in_an_id_subject_or_path_drops_the_row(tmp_path):
    """A NUL byte in a label is not a monkey: numpy's text arrays drop a trailing NUL, so monkey '\\x00' became
    '' inside the fold plan (a KeyError traceback in `run`), and 'a\\x00' would have merged with 'a'. Such a
    row is dropped with its reason, naming its column; the seed format's id is never made into a file name."""
    from icpcv.folds import make_plan

    (tmp_path / "vol").mkdir()
    rows = []
    for k in range(12):
        np.save(tmp_path / "vol" / f"v{k}.npy", np.full((4, 4, 8), k, np.uint8))
        rows.append([f"s{k}", str(k // 4 + 1), 10 + k % 4, 5 + k % 3, f"vol/v{k}.npy"])
    rows[1][1] = "\x00"           # subject: a NUL alone
    rows[5][1] = "2\x00"          # subject: one that numpy would read as monkey '2'
    rows[6][0] = "s\x006"         # scan id
    rows[9][4] = "vol/v9\x00.npy"  # path: the OS refuses it (ValueError: embedded null byte)
    rows[10][1] = "3\n"          # a line break inside the cell (after the strip: '3\n' is stripped to '3')
    t = read_scan_table(write_csv(tmp_path / "t.csv", ["scan_id", "subject", "iop", "icp", "path"], rows),
                        need_volumes=True)
    q = t.quality.set_index("row")
    assert [(r, q.loc[r, "reason"], q.loc[r, "column"]) for r in (2, 6, 7, 10)] == \
        [(2, "control_character", "subject"), (6, "control_character", "subject"),
         (7, "control_character", "scan_id"), (10, "control_character", "path")]
    assert q.loc[11, "status"] == "kept"  # surrounding whitespace is trimmed, as everywhere
    assert sorted(set(t.scans["subject"])) == ["1", "2", "3"]
    make_plan(t.scans, seed=0)  # the plan of what is kept builds
    # data_quality.csv shows the character as its escape: a raw NUL in a CSV stops other readers
    from icpcv.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_quality(t.quality)
    raw = run.data_quality_csv.read_bytes()
    assert b"\x00" not in raw, raw
    back = run.read_quality().set_index("row")
    assert (back.loc["7", "scan_id"], back.loc["6", "subject"]) == ("s\\x006", "2\\x00")


def test_seed_format_id_with_a_control_character_is_dropped_not_opened(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    import torch

    for i in range(1, 7):
        torch.save(torch.zeros(4, 4, 8), scans / f"{i}.pt")
    rows = [[i, (i - 1) // 2 + 1, 15, 8, "TRUE"] for i in range(1, 7)]
    rows[2][0] = "3\x00"
    t = read_scan_table(write_csv(tmp_path / "t.csv", ["id", "monkey_id", "iop", "icp", "torch_present"], rows),
                        scans_dir=scans)
    q = t.quality.set_index("row")
    assert (q.loc[3, "reason"], q.loc[3, "column"]) == ("control_character", "id")
    assert len(t.scans) == 5
