"""Bad input and faults: each names the file and what to do, and leaves the run directory consistent.

Cases: unreadable / truncated volumes, NaN or infinite voxels, a 2-D or 5-D array, a missing
file, data changed under a running study, a full disk (a real 1-page-granular tmpfs where this
runs as root and may mount, and a simulated ENOSPC from fsync everywhere), a corrupt epoch
checkpoint and a corrupt run record.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from orch_support import assert_same_predictions, cli_args, config, file_cohort, predictions, reference
from icpcv.commands import main
from icpcv.config import RunConfig
from icpcv.errors import DiskFullError, FoldsFailed, InputError, RunDirError
from icpcv.run.executors import execute
from icpcv.run.fold import run_fold
from icpcv.run.pipeline import prepare
from icpcv.progress import Progress
from rundir_support import make_config, fold_complete, fold_dir, read_run_record
from icpcv.util import read_json


def _file_config(table: Path, **over) -> RunConfig:
    return make_config(manifest=str(table), models=("mean", "ols_iop", "cnn"), folds=3, epochs=2, n_boot=200,
                     shape=(12, 12, 32), **over)


def _break(table: Path) -> dict[str, str]:
    """Spoil some volumes of the file cohort; returns scan id -> what is wrong."""
    vol = table.parent / "vol"
    good = np.load(vol / "s00010.npy")
    (vol / "s00001.npy").write_bytes((vol / "s00001.npy").read_bytes()[:100])  # truncated
    (vol / "s00002.npy").write_bytes(b"this is not an array")  # unreadable
    nan = good.astype(np.float32)
    nan[3, 3, 3] = np.nan
    np.save(vol / "s00003.npy", nan)
    inf = good.astype(np.float32)
    inf[0, 0, :2] = np.inf
    np.save(vol / "s00004.npy", inf)
    np.save(vol / "s00005.npy", good[:, :, 0])  # 2-D
    np.save(vol / "s00006.npy", np.stack([good[None], good[None]]))  # 5-D
    np.save(vol / "s00007.npy", np.random.default_rng(7).integers(0, 200, (14, 10, 40), np.uint8))  # another 3-D shape: fine
    np.save(vol / "s00008.npy", good[None])  # (1, X, Y, Z): fine
    rows = pd.read_csv(table, dtype=str)
    rows.loc[rows["scan_id"] == "s00009", "path"] = "vol/s00009.pt"  # a .pt that is not a tensor file
    (vol / "s00009.pt").write_bytes(b"\x80\x02garbage")
    rows.to_csv(table, index=False)
    (vol / "s00011.npy").unlink()  # missing
    return {"s00001": "cannot read as .npy", "s00002": "cannot read as .npy", "s00003": "1 NaN or infinite voxels",
            "s00004": "2 NaN or infinite voxels", "s00005": "shape (12, 12); expected 3 axes",
            "s00006": "shape (2, 1, 12, 12, 32); expected 3 axes", "s00009": "cannot read as a tensor file"}


def test_bad_volumes_are_an_error_naming_each_file_or_recorded_skips(tmp_path, monkeypatch):
    table = file_cohort(tmp_path / "data")
    bad = _break(table)
    out = tmp_path / "run"
    with pytest.raises(InputError) as err:
        prepare(_file_config(table), out)
    msg = str(err.value)
    assert msg.startswith("7 unusable volume(s): ") and "and 2 more" in msg and "--skip-bad-scans" in msg
    for x in list(bad)[:5]:
        assert f"{table.parent / 'vol' / x}.npy: " in msg and f"scan {x})" in msg
    assert bad["s00003"] in msg and bad["s00005"] in msg
    assert not (out / "run.json").exists() and not (out / "data_quality.csv").exists()  # nothing looks started

    log = tmp_path / "log.txt"
    progress = Progress("quiet", log_file=log)
    rec = prepare(_file_config(table, skip_bad_scans=True), out, progress=progress)
    quality = pd.read_csv(out / "data_quality.csv", dtype=str, keep_default_na=False).set_index("scan_id")
    for x, what in bad.items():
        assert quality.at[x, "status"] == "dropped" and quality.at[x, "reason"] == "bad_volume"
        assert what in quality.at[x, "detail"] and quality.at[x, "value"].endswith(x + (".pt" if x == "s00009" else ".npy"))
    assert quality.at["s00011", "reason"] == "volume_file_missing"
    assert quality.at["s00007", "status"] == quality.at["s00008", "status"] == "kept"
    from icpcv.cohort.table import REASONS  # every code written has a meaning the report can show

    assert set(quality["reason"]) - {""} <= set(REASONS)
    scans = pd.read_csv(out / "cohort" / "scans.csv", dtype=str)
    assert not set(bad) & set(scans["scan_id"]) and {"s00007", "s00008"} <= set(scans["scan_id"])
    text = log.read_text()
    assert "7 unusable volume(s) skipped (--skip-bad-scans), recorded as dropped in data_quality.csv" in text
    assert "1 volume file(s) missing" in text and "s00011.npy" in text
    # folds never meet a bad scan: they read the validated, resampled cache
    run_fold(out, 0, device="cpu")
    assert fold_complete(out, 0, rec.key)
    # re-opening the run reuses the validation: no volume is read again
    import icpcv.cohort.volumes

    def no_reading(*a, **k):
        raise AssertionError("a volume was read again")

    monkeypatch.setattr(icpcv.cohort.volumes, "load_volume", no_reading)
    monkeypatch.setattr(icpcv.cohort.volumes, "read_volume", no_reading)
    assert prepare(_file_config(table, skip_bad_scans=True), out).key == rec.key


def test_data_changed_under_a_run_is_refused_naming_the_file_and_nothing_is_rewritten(tmp_path):
    table = file_cohort(tmp_path / "data")
    out = tmp_path / "run"
    cfg = _file_config(table)
    rec = prepare(cfg, out)
    before = {p: p.read_bytes() for p in (out / "run.json", out / "cohort" / "scans.csv", out / "cohort" / "volumes.npy")}
    vol = table.parent / "vol"
    np.save(vol / "s00012.npy", np.load(vol / "s00012.npy") // 2)  # modified
    (vol / "s00013.npy").unlink()  # gone
    with pytest.raises(RunDirError) as err:
        prepare(cfg, out)
    msg = str(err.value)
    assert "the data changed since this run started" in msg
    assert f"scan s00013 is no longer usable (volume_file_missing: {vol / 's00013.npy'})" in msg
    assert f"volume file {vol / 's00012.npy'} (scan s00012) was modified" in msg
    assert "restore the data, or rerun with --fresh" in msg
    assert {p: p.read_bytes() for p in before} == before
    assert read_run_record(out).key == rec.key


def _fill(folder: Path, leave: int) -> Path:
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def _consistent(out: Path) -> None:
    """No half-written file under a final name: every JSON parses, no temporary file is left."""
    assert not [p for p in out.rglob("*.tmp")], list(out.rglob("*.tmp"))
    for p in out.rglob("*.json"):
        json.loads(p.read_text())
    for p in out.rglob("*.csv"):
        pd.read_csv(p)


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the simulated ENOSPC test covers this case)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the simulated ENOSPC test covers this case")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_names_the_file_and_a_rerun_after_freeing_space_finishes(small_disk, capsys):
    out = small_disk / "run"
    cfg = config()
    prepare(cfg, out)
    filler = _fill(small_disk, leave=256 * 1024)
    rc = main(["run", *cli_args(cfg), "--threads", "1", "--device", "cpu", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    # the first large write after the disk filled up: the first epoch's checkpoint
    assert f"icpcv: error: {out}/folds/fold_00/cnn_checkpoint.pt: no space left on device while writing it" in err
    assert "free some space and rerun the same command to resume" in err
    key = read_run_record(out).key
    assert not any(fold_complete(out, k, key) for k in range(3))
    _consistent(out)
    filler.unlink()
    execute(out, [0, 1, 2], executor="local", device="cpu", threads=1)
    _consistent(out)
    assert_same_predictions(predictions(out), reference())


def test_a_simulated_enospc_leaves_no_half_written_file_and_the_fold_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    key = prepare(config(), out).key
    fd = fold_dir(out, 0)
    fd.mkdir(parents=True)
    (fd / ".predictions.csv.stale.tmp").write_text("left by a killed process")
    real_fsync = os.fsync

    def fsync(fileno):  # the disk fills up just as the fold's predictions are written
        if ".predictions.csv." in os.readlink(f"/proc/self/fd/{fileno}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fileno)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError) as err:
        execute(out, [0], device="cpu", threads=1)
    assert str(err.value).startswith(f"{fd / 'predictions.csv'}: no space left on device while writing it")
    assert not (fd / "predictions.csv").exists() and not (fd / "record.json").exists()
    assert (fd / "cnn_checkpoint.pt").exists() and not fold_complete(out, 0, key)
    _consistent(out)
    monkeypatch.setattr(os, "fsync", real_fsync)
    execute(out, [0], device="cpu", threads=1)  # resumes from the last epoch's checkpoint
    assert fold_complete(out, 0, key) and "resuming from the epoch checkpoint" in (fd / "fold.log").read_text()
    want = reference()
    got = pd.read_csv(fd / "predictions.csv", dtype={"subject": str, "scan_id": str})
    assert_same_predictions(got, want[want["fold"] == 0])


def test_a_corrupt_checkpoint_on_resume_names_the_file_and_what_to_do(tmp_path, capsys):
    cfg = config()
    out = tmp_path / "run"
    prepare(cfg, out)
    ck = fold_dir(out, 0) / "cnn_checkpoint.pt"
    ck.parent.mkdir(parents=True)
    torch.save(dict(model={"w": torch.zeros(1000)}, epoch=2), ck)
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])  # torn by a crash
    rc = main(["run", *cli_args(cfg), "--threads", "1", "--device", "cpu", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"icpcv: error: {ck}: corrupt epoch checkpoint (" in err
    assert "delete it to restart this fold from epoch 0, or rerun with --fresh" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert read_json(fold_dir(out, 0) / "error.json")["type"] == "RunDirError"
    _consistent(out)
    ck.unlink()
    execute(out, [0, 1, 2], device="cpu", threads=1)
    assert_same_predictions(predictions(out), reference())


def test_a_corrupt_run_record_and_stray_fold_results_are_refused(tmp_path):
    out = tmp_path / "run"
    prepare(config(models=("mean",)), out)
    (out / "run.json").write_text('{"config": ')
    with pytest.raises(RunDirError, match=r"run\.json: cannot read the run record .*rerun with --fresh"):
        prepare(config(models=("mean",)), out)
    (out / "run.json").unlink()
    (out / "folds").mkdir(exist_ok=True)
    with pytest.raises(RunDirError, match="holds fold results but no run.json"):
        prepare(config(models=("mean",)), out)
    assert prepare(config(models=("mean",)), out, fresh=True).n_folds == 3


def test_fresh_with_an_unusable_table_keeps_the_run_it_was_to_replace(tmp_path):
    out = tmp_path / "run"
    rec = prepare(config(models=("mean",)), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "typo.csv"
    bad.write_text("scan_id,subject,iop,icp,path\n")  # a header and no row
    with pytest.raises(InputError, match="typo.csv"):
        prepare(make_config(manifest=str(bad), models=("mean",)), out, fresh=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert read_run_record(out).key == rec.key


def test_failed_folds_exit_with_code_3_and_the_list(monkeypatch, capsys):
    import icpcv.run.pipeline as pipeline

    def run(*a, **k):
        raise FoldsFailed("1 of 3 folds failed:\n  fold 2/3 (held out 1): boom\n    log: /x/fold.log", [])

    monkeypatch.setattr(pipeline, "run", run)
    assert main(["run", "--phantom", "tiny", "--quiet", "--out", "/nonexistent/x"]) == 3
    assert "log: /x/fold.log" in capsys.readouterr().err
