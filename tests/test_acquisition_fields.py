"""Acquisition fields of a scan table (issue 19, part 1): read, checked, kept per scan in cohort/scans.csv.

A bad value is a warning naming row, column and value, and the scan is kept with that field
unknown; the real label table's fields are counted against an independent pandas reading.
"""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED
from icpcv.cohort.geometry import ACQ_COLUMNS
from icpcv.cohort.table import read_scan_table
from cli_support import write_csv

REAL = SHARED / "data" / "monkey_data.csv"
SEED_HEADER = ["id", "monkey_id", "iop", "icp", "torch_present", "scan_shape", "scan date", "scan time",
               "eyeball (od or os)", "scan area", "scan notes"]


@pytest.fixture
def seed_rows(tmp_path):
    rows = [
        # id, monkey, iop, icp, torch, scan_shape, date, time, eye, area, notes
        (1, 1, 15, 8, "TRUE", "[512, 512, 2048]", "3/30/15", "11:50", "OD", "7x7", "EDI"),
        (2, 1, 15, 9, "TRUE", "[400, 400, 1024]", "3/30/15", "1:05:00", "od", "3x3", ""),   # 12-hour clock: 13:05
        (3, 1, 15, 9, "TRUE", "", "3/30/15", "25:99", "left", "abc", ""),                  # time, eye, area bad
        (4, 1, 15, 9, "TRUE", "[0, 5, 5]", "13/45/2015", "12:10", "OS", "0x5", ""),         # shape, date, area bad
        (5, 2, 20, 10, "TRUE", "512x512x1024", "04/25/2013", "13:46", "OS", "7x", ""),     # 24-hour session
        (6, 2, 20, 10, "TRUE", "", "04/25/2013", "11:43", "NULL", "-3x3", ""),              # NULL: unknown
        (7, 2, 20, 11, "TRUE", "", "04/25/2013", "12:13", "OS", "7x0.1", ""),
        (8, 2, "", 11, "TRUE", "", "04/25/2013", "10:00", "OS", "left", ""),               # dropped: no IOP
    ]
    return write_csv(tmp_path / "seed.csv", SEED_HEADER, rows)


def test_seed_fields_parsed_and_each_bad_value_is_a_warning_on_a_kept_scan(seed_rows):
    t = read_scan_table(seed_rows)
    q = t.quality.set_index("row")
    s = t.scans.set_index("scan_id")
    assert list(s.index) == ["1", "2", "3", "4", "5", "6", "7"]  # no scan dropped for an acquisition field
    assert (q.loc[1:7, "status"] == "kept").all() and q.loc[8, "status"] == "dropped"
    # a kept row's reason stays empty (kept <=> no reason); its warnings name code, column and value
    assert (q.loc[1:7, "reason"] == "").all()
    assert q.loc[3, "warnings"] == ("scan_area_invalid (column scan area, value 'abc'); eye_invalid (column eyeball "
                                    "(od or os), value 'left'); time_invalid (column scan time, value '25:99')")
    assert q.loc[4, "warnings"] == ("scan_area_invalid (column scan area, value '0x5'); date_invalid (column scan "
                                    "date, value '13/45/2015'); scan_shape_invalid (column scan_shape, value "
                                    "'[0, 5, 5]')")
    assert q.loc[5, "warnings"] == "scan_area_invalid (column scan area, value '7x')"
    assert q.loc[6, "warnings"] == "scan_area_invalid (column scan area, value '-3x3')"  # NULL eye: unknown, no warning
    assert q.loc[1, "warnings"] == "" and q.loc[7, "warnings"] == ""
    # a dropped row keeps its drop reason and carries its acquisition warning beside it
    assert q.loc[8, "reason"] == "iop_missing" and "scan_area_invalid" in q.loc[8, "warnings"]
    # the fields, unknown where the value was bad
    assert s.loc["1", ["fov_x_mm", "fov_y_mm"]].tolist() == [7.0, 7.0] and s.loc["7", "fov_y_mm"] == 0.1
    assert s[["fov_x_mm"]].loc[["3", "4", "5", "6"]].isna().all().all()
    assert s["eye"].tolist() == ["OD", "OD", "", "OS", "OS", "", "OS"]
    assert s["protocol"].tolist() == ["7x7", "3x3", "", "", "", "", "7x0.1"]
    assert s["scan_shape"].tolist() == ["512x512x2048", "400x400x1024", "", "", "512x512x1024", "", ""]
    assert s.loc["1", "notes"] == "EDI"
    # time: monkey 1's session has no hour above 12, so 1:05 is 13:05; monkey 2's has 13:46, a 24-hour clock
    assert s["acquired_at"].tolist() == ["2015-03-30T11:50:00", "2015-03-30T13:05:00", "2015-03-30", "",
                                         "2013-04-25T13:46:00", "2013-04-25T11:43:00", "2013-04-25T12:13:00"]
    assert s["session"].tolist() == ["1 2015-03-30"] * 3 + [""] + ["2 2013-04-25"] * 3
    # minutes since the session's first scan, over every row (row 8, dropped, is monkey 2's first at 10:00)
    first2 = datetime(2013, 4, 25, 10, 0)
    expect = [0.0, 75.0, np.nan, np.nan] + [(datetime(2013, 4, 25, h, m) - first2).total_seconds() / 60
                                           for h, m in ((13, 46), (11, 43), (12, 13))]
    np.testing.assert_allclose(s["session_minutes"].to_numpy(float), expect)
    assert t.meta["acquisition"]["times_read_as_afternoon"] == 1


def test_plain_format_fields(tmp_path):
    rows = [
        ("a", "m1", 10, 5, "", "3", "3", "2.0", "OD", "2020-01-02T09:00", "Box 3x3", "Spectralis"),
        ("b", "m1", 10, 6, "", "3", "", "", "os", "2020-01-02T09:30:15", "", ""),          # fov_y missing
        ("c", "m1", 10, 7, "", "0", "3", "-1", "OS", "2020-01-02 10:00", "", ""),         # fov 0, depth < 0
        ("d", "m2", 12, 7, "", "7", "7", "2", "OD", "yesterday", "", ""),                  # acquired_at bad
        ("e", "m2", 12, 8, "", "inf", "7", "abc", "R", "2020-13-01", "", ""),             # everything bad
    ]
    p = write_csv(tmp_path / "plain.csv", ["scan_id", "subject", "iop", "icp", "path", "fov_x_mm", "fov_y_mm",
                                        "depth_mm", "eye", "acquired_at", "protocol", "device"], rows)
    t = read_scan_table(p, need_iop=False)
    q = t.quality.set_index("scan_id")
    s = t.scans.set_index("scan_id")
    assert len(s) == 5
    assert q.loc["b", "warnings"] == "fov_invalid (column fov_y_mm, value '(empty)')"
    assert q.loc["c", "warnings"] == "fov_invalid (column fov_x_mm, value '0'); depth_invalid (column depth_mm, value '-1')"
    assert q.loc["d", "warnings"] == "acquired_at_invalid (column acquired_at, value 'yesterday')"
    assert [w.split(" ")[0] for w in q.loc["e", "warnings"].split("; ")] == \
        ["fov_invalid", "depth_invalid", "eye_invalid", "acquired_at_invalid"]
    assert (q["reason"] == "").all()
    assert s.loc["a", ["fov_x_mm", "fov_y_mm", "depth_mm"]].tolist() == [3.0, 3.0, 2.0]
    assert s["eye"].tolist() == ["OD", "OS", "OS", "OD", ""]
    assert s.loc["a", "protocol"] == "Box 3x3" and s.loc["d", "protocol"] == "7x7" and s.loc["a", "device"] == "Spectralis"
    np.testing.assert_allclose(s["session_minutes"].to_numpy(float), [0, 30.25, 60, np.nan, np.nan])
    assert s.loc["c", "acquired_at"] == "2020-01-02T10:00:00"


def test_a_table_without_acquisition_columns_is_read_as_before(tmp_path):
    p = write_csv(tmp_path / "plain.csv", ["scan_id", "subject", "iop", "icp", "path"], [("a", "m1", 10, 5, "")])
    t = read_scan_table(p)
    assert list(t.scans.columns) == ["scan_id", "subject", "iop", "icp", "path", "row"]
    assert "warnings" not in t.quality.columns and "acquisition" not in t.meta


def test_fill_series_of_dates_is_flagged(tmp_path):
    rows = [(i, 7, 15, 8, "TRUE", "", f"5/{17 + i}/16", "3:00", "OD", "6x6", "") for i in range(1, 7)]
    rows.append((7, 7, 15, 8, "TRUE", "", "6/30/16", "3:00", "OD", "6x6", ""))
    t = read_scan_table(write_csv(tmp_path / "s.csv", SEED_HEADER, rows))
    q = t.quality.set_index("row")
    assert [w.split(" ")[0] for w in q["warnings"]] == [""] + ["date_fill_series"] * 5 + [""]
    assert t.scans["session"].tolist() == ["7 2016-05-18"] + [""] * 5 + ["7 2016-06-30"]


@pytest.mark.skipif(not REAL.exists(), reason="the real label table is not in ../shared/data")
def test_real_table_fields_against_an_independent_reading(tmp_path):
    t = read_scan_table(REAL, need_iop=False)
    raw = pd.read_csv(REAL, dtype=str, keep_default_na=False)
    kept = raw.set_index("id").loc[t.scans["scan_id"]]
    # the nine scan areas, each to its field of view
    areas = raw["scan area"][raw["scan area"] != ""]
    assert sorted(areas.unique()) == sorted(["3x3", "5x5", "7x7", "7x0.1", "6x6", "12x12", "7x0.5", "0.1x7", "20x20"])
    fov = t.scans["fov_x_mm"].map("{:g}".format) + "x" + t.scans["fov_y_mm"].map("{:g}".format)
    assert (fov.where(t.scans["fov_x_mm"].notna(), "") == kept["scan area"].to_numpy()).all()
    assert t.scans["protocol"].value_counts().to_dict() == kept["scan area"].value_counts().to_dict()
    assert (t.scans["eye"].to_numpy() == kept["eyeball (od or os)"].str.upper().to_numpy()).all()
    assert set(t.scans["eye"]) == {"OD", "OS", ""}
    grids = kept["scan_shape"].str.replace(r"[\[\] ]", "", regex=True).str.replace(",", "x")
    assert (t.scans["scan_shape"].to_numpy() == grids.to_numpy()).all()
    # every value parses; the only warnings are monkey 7's fill series of dates (5/19/16 to 6/23/16)
    q = t.quality
    warned = q[q["warnings"] != ""]
    assert {w.split(" ")[0] for ws in warned["warnings"] for w in ws.split("; ")} == {"date_fill_series"}
    # monkey 7's dates run 5/18/16 to 6/23/16, one a row, with 6/15 missing: two series whose first rows
    # (5/18 and 6/16) keep their dates
    m7 = raw[raw["monkey_id"] == "7"]
    assert len(m7) == 36 and m7["scan date"].iloc[0] == "5/18/16" and m7["scan date"].iloc[-1] == "6/23/16"
    flagged = set(m7["scan date"]) - {"5/18/16", "6/16/16"}
    values = {w.split("value ")[1].strip("')") for w in warned["warnings"]}
    assert len(warned) == len(flagged) == 34 and values == flagged
    assert set(warned["subject"]) == {"7"}
    # session minutes: an independent reading of one 24-hour session (monkey 4, 2/19/15)
    m4 = kept[(kept["monkey_id"] == "4") & (kept["scan time"] != "") & (kept["scan time"] != "NULL")]
    all4 = raw[(raw["monkey_id"] == "4") & raw["scan time"].str.match(r"^\d")]
    start = pd.to_datetime("2015-02-19 " + all4["scan time"]).min()
    expect = (pd.to_datetime("2015-02-19 " + m4["scan time"]) - start).dt.total_seconds() / 60
    got = t.scans.set_index("scan_id").loc[m4.index, "session_minutes"]
    np.testing.assert_allclose(got.to_numpy(float), expect.to_numpy(float))
    assert set(t.scans.columns) >= set(ACQ_COLUMNS)
