"""Volumes that would be used silently or fail deep inside a fold: each is an error naming the file, or
a recorded skip with its reason under --skip-bad-scans.

Issue 11: a float32 volume full of 1e38 passed the volume check and failed in scikit-learn in
fold 2; a (1,1,1) volume and a transposed (16,8,8) among (8,8,16) volumes were resampled and kept
without a word; a symbolic link loop was reported as a missing file.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from cli_support import assert_clean_refusal, icpcv
from icpcv.cohort.table import REASONS, read_scan_table
from icpcv.cohort.volumes import read_volume, shape_problem
from icpcv.config import RunConfig
from icpcv.errors import InputError
from icpcv.run.pipeline import prepare
from orch_support import file_cohort

RIDGE = ["--models", "mean,ols_iop,ridge_scan", "--shape", "12x12x32", "--folds", "3", "--n-boot", "20", "--quiet"]


@pytest.fixture(scope="module")
def cohort_files(tmp_path_factory):
    """The tiny phantom as .npy files and a plain table (89 scans of 12x12x32, 6 monkeys), written once."""
    return file_cohort(tmp_path_factory.mktemp("vols") / "data")


@pytest.fixture
def table(cohort_files, tmp_path):
    import shutil

    shutil.copytree(cohort_files.parent, tmp_path / "data")
    return tmp_path / "data" / "scans.csv"


def _config(table, **over):
    return RunConfig(manifest=str(table), models=("mean", "ols_iop", "ridge_scan"), folds=3, n_boot=20,
                     shape=(12, 12, 32), **over)


def _quality(out):
    return pd.read_csv(out / "data_quality.csv", dtype=str, keep_default_na=False).set_index("scan_id")


def test_extreme_voxel_values_are_refused_before_any_fold(table, tmp_path):
    vol = table.parent / "vol"
    np.save(vol / "s00020.npy", np.full((12, 12, 32), 1e38, np.float32))
    big = np.load(vol / "s00021.npy").astype(np.float32)
    big[2, 2, 2] = 3e6  # one voxel ~100,000 cohort standard deviations out
    np.save(vol / "s00021.npy", big)
    rc, _, err = icpcv("run", "--manifest", table, "--out", tmp_path / "run", *RIDGE)
    assert_clean_refusal(rc, err, "2 unusable volume(s)", f"{vol / 's00020.npy'}: ", f"{vol / 's00021.npy'}: ",
                         "--skip-bad-scans")
    assert "1e+38" in err and "standard deviations" in err
    assert not (tmp_path / "run" / "folds").exists() and not (tmp_path / "run" / "run.json").exists()
    rc, _, err = icpcv("run", "--manifest", table, "--out", tmp_path / "skip", *RIDGE, "--skip-bad-scans")
    assert rc == 0 and "Traceback" not in err, err
    q = _quality(tmp_path / "skip")
    assert q.at["s00020", "reason"] == q.at["s00021", "reason"] == "bad_volume_values"
    assert "bad_volume_values" in REASONS


def test_a_constant_volume_is_a_bad_volume(table, tmp_path):
    np.save(table.parent / "vol" / "s00030.npy", np.zeros((12, 12, 32), np.uint8))
    with pytest.raises(InputError, match=r"s00030\.npy: every voxel is 0"):
        prepare(_config(table), tmp_path / "run")


def test_shapes_that_resampling_should_not_absorb(table, tmp_path):
    vol = table.parent / "vol"
    good = np.load(vol / "s00010.npy")
    np.save(vol / "s00040.npy", np.full((1, 1, 1), 100, np.uint8))  # one voxel
    np.save(vol / "s00041.npy", np.ascontiguousarray(good.transpose(2, 0, 1)))  # (32, 12, 12): axes swapped
    np.save(vol / "s00042.npy", good[:, :, :8])  # a quarter of the depth
    rng = np.random.default_rng(0)
    np.save(vol / "s00043.npy", rng.integers(0, 200, (14, 10, 40), dtype=np.uint8))  # a little off: fine
    np.save(vol / "s00044.npy", good[None])  # a leading channel axis: fine
    with pytest.raises(InputError) as err:
        prepare(_config(table), tmp_path / "run")
    msg = str(err.value)
    assert msg.startswith("3 unusable volume(s): ")
    assert f"{vol / 's00041.npy'}: axes look swapped" in msg and "(32, 12, 12)" in msg
    assert f"{vol / 's00040.npy'}: shape (1, 1, 1)" in msg and f"{vol / 's00042.npy'}: shape (12, 12, 8)" in msg
    prepare(_config(table, skip_bad_scans=True), tmp_path / "skip")
    q = _quality(tmp_path / "skip")
    assert {x: q.at[x, "reason"] for x in ("s00040", "s00041", "s00042", "s00043", "s00044")} == {
        "s00040": "bad_volume_shape", "s00041": "bad_volume_shape", "s00042": "bad_volume_shape",
        "s00043": "", "s00044": ""}
    assert "bad_volume_shape" in REASONS


def test_a_whole_cohort_with_axes_swapped_against_shape_is_refused(table, tmp_path):
    vol = table.parent / "vol"
    for p in vol.glob("*.npy"):
        np.save(p, np.ascontiguousarray(np.load(p).transpose(2, 0, 1)))  # every volume (32, 12, 12)
    with pytest.raises(InputError, match=r"axes look swapped.*--shape 12x12x32"):
        prepare(_config(table), tmp_path / "run")


def test_shape_rule():
    assert shape_problem((8, 8, 16), (8, 8, 16)) is None
    assert "axes look swapped" in shape_problem((16, 8, 8), (8, 8, 16))
    assert "axes look swapped" in shape_problem((8, 16, 8), (8, 8, 16))
    assert shape_problem((1, 1, 1), (8, 8, 16)).startswith("shape (1, 1, 1)")
    assert shape_problem((14, 10, 40), (12, 12, 32)) is None
    # the seed's raw exports: 400x400x1024 and 512x512x2048 resample to one grid; 600x100x1024 does not
    assert shape_problem((512, 512, 2048), (400, 400, 1024)) is None
    assert shape_problem((600, 100, 1024), (400, 400, 1024)) is not None
    # --shape: any uniform down-sampling is resampling's job; a reordering of its axes is not
    assert shape_problem((128, 128, 512), (128, 128, 512), target=(20, 20, 48)) is None
    assert "axes look swapped" in shape_problem((512, 128, 128), (512, 128, 128), target=(128, 128, 512))


def test_symbolic_link_loops_and_broken_links_say_so(table, tmp_path):
    vol = table.parent / "vol"
    os.symlink("loop_b.npy", vol / "loop_a.npy")
    os.symlink("loop_a.npy", vol / "loop_b.npy")
    os.symlink("gone.npy", vol / "broken.npy")
    rows = pd.read_csv(table, dtype=str)
    rows.loc[rows["scan_id"] == "s00050", "path"] = "vol/loop_a.npy"
    rows.loc[rows["scan_id"] == "s00051", "path"] = "vol/broken.npy"
    rows.to_csv(table, index=False)
    q = read_scan_table(table).quality.set_index("scan_id")
    assert q.at["s00050", "reason"] == "volume_file_unreadable" and "symbolic link loop" in q.at["s00050", "value"]
    assert q.at["s00051", "reason"] == "volume_file_missing" and "broken symbolic link" in q.at["s00051", "value"]
    assert "volume_file_unreadable" in REASONS
    with pytest.raises(InputError, match="symbolic link loop"):
        read_volume(vol / "loop_a.npy")
    with pytest.raises(InputError, match="broken symbolic link"):
        read_volume(vol / "broken.npy")


def test_a_cache_larger_than_the_free_disk_is_refused_before_reading(table, tmp_path):
    # issue 22: a shape beyond any volume is refused by the option's range, before the table is read
    rc, _, err = icpcv("run", "--manifest", table, "--out", tmp_path / "run", "--models", "mean,ridge_scan",
                       "--shape", "10000x10000x10000", "--quiet")
    assert_clean_refusal(rc, err, "--shape 10000x10000x10000", "accepted up to 4096 per axis")
    # a legal shape (2**27 voxels, 512 MiB a volume) on 1,000 scans: half a terabyte of cache
    t = pd.read_csv(table, dtype=str)
    big = pd.concat([t.assign(scan_id=t["scan_id"] + f"_{k}") for k in range(1000 // len(t) + 1)])
    big.to_csv(table, index=False)
    rc, _, err = icpcv("run", "--manifest", table, "--out", tmp_path / "run", "--models", "mean,ridge_scan",
                       "--shape", "4096x4096x8", "--quiet")
    assert_clean_refusal(rc, err, "volumes.npy: the checked, resampled volumes need", "GiB are free",
                         "a smaller --shape")


def test_prepare_skips_a_transposed_raw_volume_while_its_shape_is_known(cohort_files, tmp_path):
    """Resampled to --shape, a transposed raw volume would look like the others to `icpcv run`."""
    from icpcv.prepare.core import EXIT_SKIPPED

    raw = cohort_files.parent
    table = pd.read_csv(cohort_files, dtype=str).head(12)
    np.save(tmp_path / "swapped.npy", np.ascontiguousarray(np.load(raw / "vol" / "s00003.npy").transpose(2, 1, 0)))
    table.loc[3, "path"] = str(tmp_path / "swapped.npy")
    table.to_csv(tmp_path / "t.csv", index=False)
    rc, _, err = icpcv("prepare", tmp_path / "t.csv", "--raw", raw, "--out", tmp_path / "prepared",
                       "--shape", "6x6x16", "--quiet")
    assert rc == EXIT_SKIPPED and "Traceback" not in err, err
    assert "skipped row 4 (scan s00003): wrong_shape: " in err and "axes look swapped" in err
    q = pd.read_csv(tmp_path / "prepared" / "quality.csv", dtype=str, keep_default_na=False).set_index("scan_id")
    assert q.at["s00003", "status"] == "skipped" and q.at["s00003", "raw_shape"] == "32x12x12"
    assert (q.drop(index="s00003")["status"] == "converted").all()
    assert "s00003" not in set(pd.read_csv(tmp_path / "prepared" / "table.csv", dtype=str)["scan_id"])
