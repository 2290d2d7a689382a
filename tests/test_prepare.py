"""``icpcv prepare``: every raw format, orientation, bad files, incremental reruns, the quality
table, and a cross-validation run on what it writes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

import icpcv.prepare.sources as sources
from icpcv.commands import main
from icpcv.cohort.volumes import read_volume, resample
from icpcv.prepare import PrepareOptions, prepare
from icpcv.util import parse_shape
from icpcv.util import read_json

REPO = Path(__file__).resolve().parents[1]

RAW = (64, 8, 32)  # (X, Y, Z=depth): different sizes so that no axis can be mistaken for another
TARGET = (16, 4, 8)
BRIGHT = (41, 5, 18)  # a bright voxel in the raw volume ...
BRIGHT_OUT = (10, 2, 4)  # ... lands here: (41 // 4, 5 // 2, 18 // 4)


@pytest.fixture(autouse=True)
def small_slabs(monkeypatch):
    # tiny volumes would fit one slab: force several so the streaming paths are exercised
    monkeypatch.setattr(sources, "SLAB_BYTES", 3000)


def volume(seed=0, dtype=np.uint8, shape=RAW, level=60):
    rng = np.random.default_rng(seed)
    vol = rng.integers(level - 20, level + 20, size=shape).astype(dtype)
    vol[BRIGHT] = 250
    return vol


def write_raw(path: Path, vol: np.ndarray) -> Path:
    """Write (X, Y, Z) ``vol`` in the format that ``path``'s name says, in that format's layout."""
    import nibabel as nib

    name = path.name
    if name.endswith((".tif", ".tiff")):
        tifffile.imwrite(path, np.transpose(vol, (1, 2, 0)))  # pages = B-scans (Z rows, X columns) along Y
    elif name.endswith("_fortran.npy"):
        np.save(path, np.asfortranarray(vol))  # slabs along Z
    elif name.endswith(".npy"):
        np.save(path, vol)
    elif name.endswith(".pt"):
        torch.save(torch.from_numpy(np.ascontiguousarray(vol)), path)
    elif name.endswith((".nii", ".nii.gz")):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    elif name.endswith(".OCT"):  # the stub reader below: (B-scans, A-scans, depth) = (Y, X, Z)
        np.save(path.with_suffix(".payload.npy"), np.transpose(vol, (1, 0, 2))[None])
        path.write_bytes(b"stub")
    else:  # a folder of single-page TIFFs, one B-scan per file
        path.mkdir()
        for y in range(vol.shape[1]):
            tifffile.imwrite(path / f"bscan_{y + 1}.tif", vol[:, y, :].T)
    return path


def plain_table(path: Path, rows) -> Path:
    """rows: (scan_id, subject, iop, icp, raw path)"""
    df = pd.DataFrame(rows, columns=["scan_id", "subject", "iop", "icp", "path"])
    df.to_csv(path, index=False)
    return path


def run_prepare(table, raw, out, *extra, shape="16x4x8"):
    return main(["prepare", str(table), "--raw", str(raw), "--out", str(out), "--shape", *shape.split(), "--quiet",
                 *extra])


def quality(out) -> pd.DataFrame:
    return pd.read_csv(Path(out) / "quality.csv", dtype={"scan_id": str, "subject": str}, keep_default_na=False)


@pytest.fixture
def oct_stub(tmp_path, monkeypatch):
    """A stand-in for the optional oct-converter package: BOCT reads the payload written beside the file."""
    pkg = tmp_path / "stub" / "oct_converter"
    (pkg / "readers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "readers" / "__init__.py").write_text(
        "import numpy as np\n"
        "class _Vol:\n"
        "    def __init__(self, a): self.volume = a\n"
        "class BOCT:\n"
        "    def __init__(self, path): self.path = path\n"
        "    def read_oct_volume(self):\n"
        "        data = np.load(self.path[:-4] + '.payload.npy')\n"
        "        return [_Vol(v) for v in data]\n")
    monkeypatch.syspath_prepend(str(tmp_path / "stub"))
    for name in [m for m in sys.modules if m.startswith("oct_converter")]:
        monkeypatch.delitem(sys.modules, name)


FORMATS = ["a.tif", "b_folder", "c.npy", "c_fortran.npy", "d.pt", "e.nii", "f.nii.gz", "g.OCT"]


def test_every_format_lands_in_the_same_orientation(tmp_path, oct_stub, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    vol = volume()
    rows = []
    for i, name in enumerate(FORMATS):
        write_raw(raw / name, vol)
        rows.append((f"s{i}", f"m{i % 3}", "15", "8.5", name))
    table = plain_table(tmp_path / "scans.csv", rows)
    out = tmp_path / "out"
    assert run_prepare(table, raw, out) == 0
    assert "prepared 8 of 8 volumes (8 converted, 0 unchanged, 0 skipped)" in capsys.readouterr().out
    expected = resample(vol, TARGET)  # the project's whole-volume area average
    prepared = pd.read_csv(out / "table.csv", dtype=str)
    assert list(prepared.columns[:6]) == ["scan_id", "subject", "iop", "icp", "path", "raw_path"]
    for rec in prepared.to_dict("records"):
        arr = np.load(out / rec["path"])
        assert arr.shape == TARGET and arr.dtype == np.float32, rec
        assert np.unravel_index(arr.argmax(), arr.shape) == BRIGHT_OUT, rec["raw_path"]
        np.testing.assert_allclose(arr, expected, rtol=1e-6, err_msg=rec["raw_path"])
    q = quality(out)
    assert set(q["format"]) == {"tiff", "tiff-folder", "npy", "pt", "nifti", "oct"}
    assert (q["raw_shape"] == "64x8x32").all() and (q["status"] == "converted").all()
    np.testing.assert_allclose(q["p50"].astype(float), np.percentile(vol, 50))
    np.testing.assert_allclose(q["p99"].astype(float), np.percentile(vol, 99))


def test_wide_multipage_tiff_512_columns(tmp_path):
    """512 columns x 64 rows x 8 pages: a realistic B-scan width; a bright depth plane and a bright
    B-scan land where they should."""
    vol = volume(shape=(512, 8, 64))
    vol[:, :, 40:44] = 200  # a bright layer at depth 40..43 -> output depth 10
    vol[:, 6, :] = 255  # a bright B-scan (page 7) -> output Y 3 (pages 6, 7)
    raw = write_raw(tmp_path / "wide.tif", vol)
    assert len(tifffile.TiffFile(raw).pages) == 8 and tifffile.TiffFile(raw).pages[0].shape == (64, 512)
    table = plain_table(tmp_path / "t.csv", [("w", "1", "10", "5", "wide.tif")])
    out = tmp_path / "out"
    assert run_prepare(table, tmp_path, out, shape="128 4 16") == 0
    arr = np.load(out / "volumes" / "w.npy")
    assert arr.shape == (128, 4, 16)
    np.testing.assert_allclose(arr, resample(read_volume(raw), (128, 4, 16)), rtol=1e-6)
    depth_profile = arr[:, :3].mean(axis=(0, 1))
    assert depth_profile.argmax() == 10 and depth_profile[10] == pytest.approx(200)
    assert arr.mean(axis=(0, 2)).argmax() == 3


def test_seed_format_labels_carried_unchanged_and_bad_rows_reported(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "monkey_1" / "15mmHg").mkdir(parents=True)
    good = write_raw(raw / "monkey_1" / "15mmHg" / "1.tif", volume(1))
    write_raw(raw / "monkey_1" / "15mmHg" / "2.npy", volume(2))
    truncated = write_raw(raw / "monkey_1" / "15mmHg" / "3.tif", volume(3))
    data = truncated.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    nan = volume(4).astype(np.float32)
    nan[0, 0, 0] = np.nan
    np.save(raw / "nan.npy", nan)
    np.save(raw / "flat.npy", np.zeros((8, 8), np.uint8))
    np.save(raw / "complex.npy", np.zeros((4, 4, 4), np.complex64))
    (raw / "junk.pt").write_bytes(b"not a tensor file")
    (raw / "junk.tif").write_bytes(b"II*\0garbage")
    seed = pd.DataFrame({
        "id": ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"],
        "monkey_id": ["1", "1", "1", "2", "2", "", "3", "3", "3", "4", "4"],
        "iop": ["15", "15", "", "20", "20", "20", "25", "25", "25", "30", "30"],
        "icp": ["8.50", "0-2", "5", "-1", "5", "5", "5", "5", "5", "5", "5"],
        "torch_present": ["TRUE"] * 11,
        "scan_shape": ["[64, 8, 32]", "[64, 8, 33]"] + [""] * 9,
        "constructed_filepath": ["monkey_1/15mmHg/1.tif", "monkey_1/15mmHg/2.npy", "monkey_1/15mmHg/3.tif",
                                 "nan.npy", "flat.npy", "monkey_1/15mmHg/1.tif", "", "missing.tif",
                                 "complex.npy", "junk.pt", "junk.tif"],
        "scan notes": ["good image", "", "", "", "", "", "", "", "", "", "x, y"],
    })
    seed.to_csv(tmp_path / "monkey_data.csv", index=False)
    out = tmp_path / "out"
    rc = run_prepare(tmp_path / "monkey_data.csv", raw, out)
    captured = capsys.readouterr()
    assert rc == 3
    assert "prepared 3 of 11 volumes (3 converted, 0 unchanged, 8 skipped" in captured.out
    q = quality(out).set_index("scan_id")
    expect = {"3": "truncated", "4": "non_finite", "5": "wrong_axes", "7": "no_path", "8": "missing",
              "9": "wrong_dtype", "10": "unreadable", "11": "unreadable"}
    for sid, reason in expect.items():
        assert q.loc[sid, "status"] == "skipped" and q.loc[sid, "reason"] == reason, (sid, q.loc[sid, "detail"])
        assert f"skipped row {sid} (scan {sid}): {reason}" in captured.err
    assert str(truncated) in captured.err and "truncated" in q.loc["3", "detail"]
    # label problems are not prepare's business: rows 2 (ICP '0-2'), 3 (no IOP) and 6 (no monkey) go through
    prepared = pd.read_csv(out / "table.csv", dtype=str, keep_default_na=False)
    assert list(prepared["scan_id"]) == ["1", "2", "6"]
    assert list(prepared["icp"]) == ["8.50", "0-2", "5"] and list(prepared["subject"]) == ["1", "1", ""]
    assert list(prepared["raw_path"]) == ["monkey_1/15mmHg/1.tif", "monkey_1/15mmHg/2.npy", "monkey_1/15mmHg/1.tif"]
    assert prepared.loc[0, "scan notes"] == "good image" and "torch_present" in prepared.columns
    assert list(q.loc[["1", "2"], "flag_shape_mismatch"]) == [False, True]
    # the run's own validation then drops the label problems, with its reasons
    from icpcv.cohort.table import read_scan_table

    st = read_scan_table(out / "table.csv", need_iop=True, need_volumes=True)
    assert list(st.scans["scan_id"]) == ["1"]
    assert set(st.quality["reason"]) == {"", "icp_range", "subject_missing"}


def test_an_unexpected_error_is_reported_without_a_traceback_and_the_rest_converts(tmp_path, monkeypatch, capsys):
    """Issue 22: the terminal never shows a traceback for a row; quality.csv keeps where it happened."""
    from icpcv.prepare.resample import StreamResampler

    real_add = StreamResampler.add

    def buggy_add(self, start, slab):
        if self.raw_shape[0] == 33:
            raise RuntimeError("a bug")
        return real_add(self, start, slab)

    monkeypatch.setattr(StreamResampler, "add", buggy_add)
    write_raw(tmp_path / "odd.npy", np.zeros((33, 8, 32), np.uint8))
    write_raw(tmp_path / "ok.npy", volume())
    table = plain_table(tmp_path / "t.csv", [("odd", "1", "1", "1", "odd.npy"), ("ok", "1", "1", "1", "ok.npy"),
                                             ("gone", "1", "1", "1", "gone_folder"), ("loop", "1", "1", "1", "a.npy"),
                                             ("dangling", "1", "1", "1", "d.npy")])
    (tmp_path / "a.npy").symlink_to(tmp_path / "b.npy")
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    (tmp_path / "d.npy").symlink_to(tmp_path / "deleted.npy")
    assert run_prepare(table, tmp_path, tmp_path / "out") == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError: a bug" in err
    q = quality(tmp_path / "out").set_index("scan_id")
    assert q.loc["odd", "reason"] == "internal_error" and q.loc["ok", "status"] == "converted"
    assert "RuntimeError: a bug (at test_prepare.py:" in q.loc["odd", "detail"]
    assert q.loc["gone", "reason"] == "missing"
    # a symbolic link that loops, or whose target is gone, is said as such (not as a missing file)
    assert q.loc["loop", "reason"] == q.loc["dangling", "reason"] == "broken_link"
    assert "a symbolic link that loops (row" in q.loc["loop", "detail"]
    assert "deleted.npy, which does not exist" in q.loc["dangling", "detail"]


def test_missing_oct_extra_is_a_skip_with_the_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "oct_converter", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "oct_converter.readers", None)
    write_raw(tmp_path / "a.OCT", volume())
    write_raw(tmp_path / "b.npy", volume())
    table = plain_table(tmp_path / "t.csv", [("a", "1", "1", "1", "a.OCT"), ("b", "1", "1", "1", "b.npy")])
    assert run_prepare(table, tmp_path, tmp_path / "out") == 3
    q = quality(tmp_path / "out").set_index("scan_id")
    assert q.loc["a", "reason"] == "oct_extra_missing" and "install icpcv[oct]" in q.loc["a", "detail"]
    assert q.loc["b", "status"] == "converted"
    assert "install icpcv[oct]" in capsys.readouterr().err


def test_oct_repeated_volumes_are_averaged_and_noted(tmp_path, oct_stub):
    a, b = volume(1), volume(2)
    np.save(tmp_path / "r.payload.npy", np.stack([np.transpose(v, (1, 0, 2)) for v in (a, b)]))
    (tmp_path / "r.OCT").write_bytes(b"stub")
    table = plain_table(tmp_path / "t.csv", [("r", "1", "1", "1", "r.OCT")])
    assert run_prepare(table, tmp_path, tmp_path / "out") == 0
    np.testing.assert_allclose(np.load(tmp_path / "out" / "volumes" / "r.npy"),
                               resample((a.astype(np.float64) + b) / 2, TARGET), rtol=1e-6)
    assert quality(tmp_path / "out")["notes"][0] == "mean of 2 repeated volumes"


def _mtimes(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "volumes").iterdir()}


def test_rerun_converts_only_new_or_changed_inputs(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, name in enumerate(["a.tif", "b.npy", "c_folder"]):
        write_raw(raw / name, volume(i))
    rows = [("a", "1", "10", "5", "a.tif"), ("b", "2", "10", "5", "b.npy"), ("c", "3", "10", "5", "c_folder")]
    table = plain_table(tmp_path / "t.csv", rows)
    out = tmp_path / "out"
    assert run_prepare(table, raw, out) == 0
    first = _mtimes(out)
    manifest = read_json(out / "prepare_manifest.json")
    assert set(manifest["entries"]) == {"volumes/a.npy", "volumes/b.npy", "volumes/c_folder.npy"} or \
        set(manifest["entries"]) == {"volumes/a.npy", "volumes/b.npy", "volumes/c.npy"}
    entry = manifest["entries"]["volumes/a.npy"]
    assert len(entry["sha256"]) == 64 and entry["target"]["shape"] == list(TARGET) and "code" in entry["target"]
    capsys.readouterr()

    assert run_prepare(table, raw, out) == 0  # nothing changed: nothing converted, nothing rewritten
    assert "(0 converted, 3 unchanged, 0 skipped)" in capsys.readouterr().out
    assert _mtimes(out) == first

    os.utime(raw / "a.tif", ns=(1, 1))  # touched, same content: re-hashed, not reconverted
    assert run_prepare(table, raw, out) == 0
    assert "(0 converted, 3 unchanged" in capsys.readouterr().out and _mtimes(out) == first

    write_raw(raw / "b.npy", volume(7))  # changed content
    tifffile.imwrite(raw / "c_folder" / "bscan_3.tif", volume(8)[:, 2, :].T)  # one B-scan of the folder
    plain_table(table, rows + [("d", "4", "10", "5", "a.tif")])  # and a new row
    assert run_prepare(table, raw, out) == 0
    assert "(3 converted, 1 unchanged" in capsys.readouterr().out
    after = _mtimes(out)
    assert after["a.npy"] == first["a.npy"] and after["b.npy"] != first["b.npy"]
    np.testing.assert_allclose(np.load(out / "volumes" / "b.npy"), resample(volume(7), TARGET), rtol=1e-6)

    moved = tmp_path / "moved"
    raw.rename(moved)  # the raw folder moved: re-hashed, not reconverted
    assert run_prepare(table, moved, out) == 0
    assert "(0 converted, 4 unchanged" in capsys.readouterr().out and _mtimes(out) == after
    raw = moved

    assert run_prepare(table, raw, out, shape="8x4x8") == 0  # another target: everything again
    assert "(4 converted, 0 unchanged" in capsys.readouterr().out
    assert np.load(out / "volumes" / "a.npy").shape == (8, 4, 8)
    assert run_prepare(table, raw, out, "--force", shape="8x4x8") == 0
    assert "(4 converted, 0 unchanged" in capsys.readouterr().out


def test_interrupted_run_leaves_no_half_written_output(tmp_path, monkeypatch):
    import icpcv.prepare.core as core

    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a.npy", "b.npy", "c.npy"):
        write_raw(raw / name, volume())
    table = plain_table(tmp_path / "t.csv", [(n[0], "1", "1", "1", n) for n in ("a.npy", "b.npy", "c.npy")])
    out = tmp_path / "out"
    real_save = np.save
    calls = []

    def dying_save(fh, arr, **kw):
        calls.append(1)
        if len(calls) == 2:  # the second volume: half its bytes reach the disk, then the process "dies"
            fh.write(b"\x93NUMPY partial")
            raise KeyboardInterrupt
        return real_save(fh, arr, **kw)

    monkeypatch.setattr(core.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        prepare(table, raw, out, PrepareOptions(shape=TARGET))
    monkeypatch.setattr(core.np, "save", real_save)
    assert sorted(p.name for p in (out / "volumes").iterdir()) == ["a.npy"]  # no b.npy, no temporary file
    assert set(read_json(out / "prepare_manifest.json")["entries"]) == {"volumes/a.npy"}
    # a temporary file left by a killed process is cleaned up by the next run
    (out / "volumes" / ".c.npy.abc123.tmp").write_bytes(b"junk")
    summary = prepare(table, raw, out, PrepareOptions(shape=TARGET))
    assert (summary.converted, summary.unchanged) == (2, 1)
    assert sorted(p.name for p in (out / "volumes").iterdir()) == ["a.npy", "b.npy", "c.npy"]


def test_quality_flags(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = []
    for i in range(6):
        write_raw(raw / f"n{i}.npy", volume(i, level=60 + i))
        rows.append((f"n{i}", str(i % 3), "1", "1", f"n{i}.npy"))
    bright = volume(10, level=200)
    np.save(raw / "bright.npy", bright)
    sat = volume(11)
    sat[:, :2] = 255  # 25% saturated
    np.save(raw / "sat.npy", sat)
    empty = volume(12)
    empty[:40] = 0
    np.save(raw / "empty.npy", empty)
    rows += [("bright", "1", "1", "1", "bright.npy"), ("sat", "1", "1", "1", "sat.npy"),
             ("empty", "1", "1", "1", "empty.npy")]
    out = tmp_path / "out"
    summary = prepare(plain_table(tmp_path / "t.csv", rows), raw, out, PrepareOptions(shape=TARGET))
    assert summary.exit_code == 0 and summary.flagged == 3
    q = quality(out).set_index("scan_id")
    assert q.loc["bright", "flags"] == "median_outlier" and q.loc["bright", "median_robust_z"] > 3.5
    assert q.loc["sat", "flags"] == "saturated" and q.loc["sat", "frac_saturated"] == pytest.approx(0.25, abs=0.01)
    # more than half zeros: empty, and its median (0) is an outlier too
    assert q.loc["empty", "flags"] == "median_outlier,empty"
    assert q.loc["empty", "frac_zero"] == pytest.approx(40 / 64, abs=1e-6)
    assert (q.loc[[f"n{i}" for i in range(6)], "flags"] == "").all()
    assert q.loc["n0", "saturation_value"] == 255 and q.loc["n0", "percentile_basis"] == "exact"
    assert q.loc["n0", "raw_dtype"] == "uint8"


def test_parallel_workers_and_output_dtypes(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = []
    for i in range(3):
        write_raw(raw / f"v{i}.tif", volume(i))
        rows.append((f"v{i}", "1", "1", "1", f"v{i}.tif"))
    (raw / "bad.tif").write_bytes(b"II*\0nothing")
    rows.append(("bad", "1", "1", "1", "bad.tif"))
    table = plain_table(tmp_path / "t.csv", rows)
    summary = prepare(table, raw, tmp_path / "par", PrepareOptions(shape=TARGET, workers=2))
    assert (summary.converted, summary.skipped, summary.exit_code) == (3, 1, 3)
    for i in range(3):
        np.testing.assert_allclose(np.load(tmp_path / "par" / "volumes" / f"v{i}.npy"),
                                   resample(volume(i), TARGET), rtol=1e-6)
    for dtype in ("float16", "uint8"):
        prepare(table, raw, tmp_path / dtype, PrepareOptions(shape=TARGET, dtype=dtype))
        arr = np.load(tmp_path / dtype / "volumes" / "v0.npy")
        assert arr.dtype == np.dtype(dtype)
        np.testing.assert_allclose(arr.astype(np.float32), resample(volume(0), TARGET), atol=0.5)
    big = volume(0, dtype=np.uint16) * 300
    np.save(raw / "big.npy", big)
    s = prepare(plain_table(tmp_path / "u.csv", [("big", "1", "1", "1", "big.npy")]), raw, tmp_path / "u8",
                PrepareOptions(shape=TARGET, dtype="uint8"))
    assert s.reasons == {"out_of_range": 1}


def test_streaming_never_reads_a_whole_tiff(tmp_path, monkeypatch):
    """Slabs stay small and the whole-stack readers are never used."""
    from icpcv.prepare.resample import StreamResampler

    def forbidden(*a, **k):
        raise AssertionError("whole-volume read")

    monkeypatch.setattr(tifffile, "imread", forbidden)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", forbidden)
    sizes = []
    real_add = StreamResampler.add
    monkeypatch.setattr(StreamResampler, "add", lambda self, s, slab: (sizes.append(slab.nbytes),
                                                                      real_add(self, s, slab))[1])
    vol = volume(shape=(512, 8, 64))
    write_raw(tmp_path / "w.tif", vol)
    s = prepare(plain_table(tmp_path / "t.csv", [("w", "1", "1", "1", "w.tif")]), tmp_path, tmp_path / "out",
                PrepareOptions(shape=(128, 4, 16)))
    assert s.converted == 1
    assert len(sizes) == 8 and max(sizes) == 512 * 64  # one B-scan per slab under the 3000-byte budget


def test_shape_option_forms_and_usage_errors(tmp_path, capsys):
    assert parse_shape(["128", "128", "512"]) == parse_shape(["128x128x512"]) == (128, 128, 512)
    write_raw(tmp_path / "a.npy", volume())
    table = plain_table(tmp_path / "t.csv", [("a", "1", "1", "1", "a.npy")])
    assert run_prepare(table, tmp_path, tmp_path / "o", shape="12x12") == 2
    assert "need three positive sizes" in capsys.readouterr().err
    assert run_prepare(tmp_path / "nope.csv", tmp_path, tmp_path / "o") == 2
    assert "nope.csv: scan table not found" in capsys.readouterr().err
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    assert run_prepare(tmp_path / "bad.csv", tmp_path, tmp_path / "o") == 2
    assert "cannot tell the table's format" in capsys.readouterr().err
    pd.DataFrame({"id": [1], "monkey_id": [1], "iop": [1], "icp": [1]}).to_csv(tmp_path / "s.csv", index=False)
    assert run_prepare(tmp_path / "s.csv", tmp_path, tmp_path / "o") == 2
    assert "--path-column" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "icpcv", "prepare", "--help"], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0 and "Z(depth)" in proc.stdout and "--workers" in proc.stdout


def test_cross_validation_runs_on_the_prepared_table(tmp_path):
    """Raw TIFFs -> prepare -> icpcv run --manifest (mean, ols_iop, cnn) -> stats and report."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for m in range(4):
        for k in range(3):
            name = f"m{m}_{k}.tif"
            write_raw(raw / name, volume(m * 10 + k))
            rows.append((f"m{m}s{k}", str(m + 1), f"{rng.uniform(10, 30):.1f}", f"{rng.uniform(2, 30):.1f}", name))
    out = tmp_path / "prepared"
    assert run_prepare(plain_table(tmp_path / "t.csv", rows), raw, out) == 0
    run_dir = tmp_path / "run"
    rc = main(["run", "--manifest", str(out / "table.csv"), "--models", "mean,ols_iop,cnn", "--epochs", "2",
               "--n-boot", "200", "--shape", "16x4x8", "--out", str(run_dir), "--quiet"])
    assert rc == 0 and (run_dir / "stats.json").exists() and (run_dir / "index.html").exists()
    assert read_json(run_dir / "cohort" / "cohort.json")["shape"] == list(TARGET)
    quality_run = pd.read_csv(run_dir / "data_quality.csv", dtype=str)
    assert (quality_run["status"] == "kept").all() and len(quality_run) == 12
    preds = pd.read_csv(run_dir / "predictions.csv", dtype={"scan_id": str})
    assert set(preds["model"]) == {"mean", "ols_iop", "cnn"}
    assert preds.groupby("model").size().to_dict() == {"mean": 12, "ols_iop": 12, "cnn": 12}


def test_a_raw_path_with_a_control_character_is_a_skip_not_a_traceback(tmp_path, capsys):
    """A NUL byte in the path cell made `prepare` end in 'ValueError: embedded null byte' (found by the fuzz
    test once its '\\x00' cell reached the table): the row is skipped with its reason, the rest converts."""
    raw = tmp_path / "raw"
    raw.mkdir()
    np.save(raw / "a.npy", volume(1))
    table = tmp_path / "t.csv"
    # and a control character in the scan id or the monkey: `run` drops such a row, so prepare skips it too
    pd.DataFrame({"scan_id": ["a", "b", "c\x00", "d"], "subject": ["1", "1", "1", "1\x01"], "iop": ["15"] * 4,
                  "icp": ["5", "6", "7", "8"], "path": ["a.npy", "b\x00.npy", "a.npy", "a.npy"]}).to_csv(table, index=False)
    out = tmp_path / "out"
    rc = main(["prepare", str(table), "--raw", str(raw), "--out", str(out), "--shape", "8x8x16", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err, err
    q = pd.read_csv(out / "quality.csv", dtype=str, keep_default_na=False).set_index("row")
    assert q["status"].tolist() == ["converted", "skipped", "skipped", "skipped"]
    assert q["reason"].tolist()[1:] == ["control_character"] * 3
    assert "column scan_id" in q["detail"].iloc[2] and "column subject" in q["detail"].iloc[3]
    assert pd.read_csv(out / "table.csv", dtype=str)["scan_id"].tolist() == ["a"]
    assert b"\x00" not in (out / "quality.csv").read_bytes() and q.loc["3", "scan_id"] == "c\\x00"  # shown escaped
