"""Issue 22, cause 1: every numeric option of every subcommand has its range in icpcv.plausible and
is checked in one place (icpcv.commands.main, and each benchmark's parser) before anything is
written, with a message stating the range both ways ("--repeats 1001: accepted 1 to 1000")."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd
import pytest

from cli_support import assert_clean_refusal, icpcv
from icpcv.commands import make_parser
from icpcv.plausible import OPTION_RANGES, option_range

#: "accepted LO to HI", "above LO up to HI", "above LO and below HI", "LO up to (not including) HI"
BOTH_WAYS = re.compile(r"accepted (above )?-?[\d.e+]+ (to|up to|and below|up to \(not including\)) -?[\d.e+]+")


def _labels_table(path: Path) -> Path:
    rows = [dict(scan_id=f"{s}-{i}", subject=s, iop=10 + 5 * i, icp=5 + s + 0.5 * i) for s in range(1, 5)
            for i in range(3)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _numeric_actions():
    parser = make_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, sub in subs.choices.items():
        for action in sub._actions:
            if getattr(action.type, "kind", action.type) in (int, float) and action.option_strings:
                yield command, action.option_strings[-1]


def test_every_numeric_option_of_every_subcommand_has_a_range():
    found = list(_numeric_actions())
    assert len(found) > 30, found  # run, analyze, calibrate, compare, power, prepare
    missing = [(c, o) for c, o in found if option_range(o, c) is None]
    assert not missing, missing
    for key, r in OPTION_RANGES.items():  # both ends, and finite: "without upper bound" was the defect
        assert r.lo < r.hi and abs(r.hi) < float("inf") and abs(r.lo) < float("inf"), key


@pytest.mark.parametrize("option,value", [
    ("--seed", "-1"), ("--seed", "99999999999999999999"), ("--data-seed", "-5"), ("--data-seed", "18446744073709551616"),
    ("--weight-decay", "-0.1"), ("--weight-decay", "nan"), ("--signal", "nan"), ("--signal", "inf"),
    ("--signal", "1e300"), ("--signal", "-1"), ("--threads", "0"), ("--workers", "0"), ("--time", "-5"),
    ("--repeats", "1001"), ("--n-boot", "0"), ("--ci-level", "1"), ("--lr", "inf"), ("--epochs", "-1"),
    ("--gpus", "-1"), ("--cpus", "0"), ("--mem", "0"), ("--max-parallel", "0"), ("--deadline", "-1"),
    ("--saliency", "-3"), ("--folds", "-1"), ("--val-fraction", "nan"), ("--patience", "1000000")])
def test_run_refuses_a_number_outside_its_range_before_writing_anything(tmp_path, option, value):
    out = tmp_path / "run"
    rc, _, err = icpcv("run", "--manifest", _labels_table(tmp_path / "t.csv"), "--models", "mean,ols_iop",
                       "--out", out, "--quiet", option, value)
    assert_clean_refusal(rc, err, f"{option} ")
    assert BOTH_WAYS.search(err), err
    assert not out.exists()


def test_the_message_states_the_range_both_ways():
    rc, _, err = icpcv("run", "--phantom", "tiny", "--repeats", "1001", "--out", "/nonexistent/never")
    assert_clean_refusal(rc, err, "--repeats 1001: accepted 1 to 1000")


@pytest.mark.parametrize("args,needle", [
    (["--models", ","], "--models ',' names no model"),
    (["--models", " , ,"], "names no model"),
    (["--device", "gpu"], "--device 'gpu': accepted auto"),
    (["--device", "cuda:99"], "--device cuda:99"),
    (["--shape", "4096x4096x4096"], "accepted up to 134,217,728"),
    (["--shape", "9000x8x8"], "accepted up to 4096 per axis"),
])
def test_run_refuses_what_cannot_run_before_writing_anything(tmp_path, args, needle):
    out = tmp_path / "run"
    rc, _, err = icpcv("run", "--manifest", _labels_table(tmp_path / "t.csv"), "--out", out, "--quiet", *args)
    assert_clean_refusal(rc, err, needle)
    assert not out.exists()


def test_a_phantom_that_cannot_be_held_is_refused_before_it_is_drawn(tmp_path):
    out = tmp_path / "run"  # 2**27 voxels is a legal volume; the small phantom's ~840 of them are ~105 GiB
    rc, _, err = icpcv("run", "--phantom", "small", "--shape", "2048x2048x32", "--out", out, "--quiet")
    assert_clean_refusal(rc, err, "the small phantom's volumes at this shape need up to 105.0 GiB")
    assert not out.exists()


@pytest.mark.parametrize("argv,needle", [
    (["analyze", "p.csv", "--out", "A", "--n-boot", "-1"], "--n-boot -1: accepted 1 to 1000000"),
    (["analyze", "p.csv", "--out", "A", "--seed", "-2"], "--seed -2: accepted 0 to"),
    (["analyze", "p.csv", "--out", "A", "--ci-level", "nan"], "--ci-level nan: accepted above 0 and below 1"),
    (["compare", "r1", "r2", "--out", "A", "--n-boot", "0"], "--n-boot 0: accepted 1 to"),
    (["compare", "r1", "r2", "--out", "A", "--ci-level", "1.5"], "--ci-level 1.5"),
    (["power", "r1", "--alpha", "2"], "--alpha 2: accepted above 0 and below 1"),
    (["power", "r1", "--n-sim", "50"], "--n-sim 50: accepted 100 to"),
    (["power", "r1", "--effect", "inf"], "--effect inf: accepted -1000 to 1000"),
    (["power", "r1", "--monkeys", "6,5000"], "--monkeys 5000: accepted 2 to 1000"),
    (["power", "r1", "--seed", "-1"], "--seed -1"),
    (["prepare", "t.csv", "--out", "A", "--shape", "8", "8", "8", "--workers", "0"], "--workers 0: accepted 1 to"),
    (["prepare", "t.csv", "--out", "A", "--shape", "8", "8", "8", "--saturation", "nan"], "--saturation nan"),
    (["prepare", "t.csv", "--out", "A", "--shape", "5000x8x8"], "accepted up to 4096 per axis"),
    (["calibrate", "--n-sim", "0", "--out", "A/c.md"], "--n-sim 0: accepted 1 to"),
    (["calibrate", "--n-subjects", "2"], "--n-subjects 2: accepted 3 to"),
    (["calibrate", "--workers", "-1"], "--workers -1"),
    (["bench", "stats", "--n-boot", "-3"], "--n-boot -3: accepted 1 to"),
    (["bench", "memory", "--gpu-mem", "nan"], "--gpu-mem nan: accepted above 0"),
    (["bench", "train", "--steps", "0"], "--steps 0: accepted 1 to"),
    (["bench", "prepare", "--volumes", "0"], "--volumes 0"),
    (["bench", "report", "run", "--rounds", "0"], "--rounds 0: accepted 1 to 1000"),
    (["bench", "repeats", "r1", "--n-boot", "0"], "--n-boot 0"),
    (["bench", "run", "--budget", "-1"], "--budget -1"),
    (["bench", "variance", "--cohorts", "0"], "--cohorts 0: accepted 1 to"),
])
def test_every_subcommand_refuses_a_number_outside_its_range(tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    rc, _, err = icpcv(*argv)
    assert_clean_refusal(rc, err, needle)
    assert not (tmp_path / "A").exists()


def test_ranges_checked_by_a_rule_of_their_own_agree_with_the_table():
    from icpcv.cohort import geometry

    assert (OPTION_RANGES["--fov-mm"].lo, OPTION_RANGES["--fov-mm"].hi) == geometry.FOV_RANGE_MM
    assert (OPTION_RANGES["--depth-mm"].lo, OPTION_RANGES["--depth-mm"].hi) == geometry.DEPTH_RANGE_MM


@pytest.mark.parametrize("value", ["1_0", "\uff11\uff10", "\u0661\u0660", "0x10"])
def test_numbers_are_plain_decimal_numbers_in_options_too(tmp_path, value):
    """As in tables (issue 22, cause 5): Python's int() reads "1_0" as 10 and full-width or Arabic-Indic
    digits as digits; an option takes ASCII digits only."""
    out = tmp_path / "run"
    rc, _, err = icpcv("run", "--manifest", _labels_table(tmp_path / "t.csv"), "--models", "mean,ols_iop",
                       "--out", out, "--quiet", "--folds", value)
    assert_clean_refusal(rc, err, f"--folds: invalid int value: '{value}'")
    assert not out.exists()
    rc, _, err = icpcv("power", "--monkeys", "14", "--effect", value)
    assert_clean_refusal(rc, err, f"--effect: invalid float value: '{value}'")
