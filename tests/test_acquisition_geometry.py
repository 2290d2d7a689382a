"""Scan geometry (issue 19, part 2): one field of view, line scans refused, OS mirrored, a declared layout,
the readers' spacing; in run's cohort and in prepare. Expected volumes are computed independently
(numpy slicing of the raw array, then the documented resampling)."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import tifffile

from cli_support import assert_clean_refusal, icpcv, write_csv
from icpcv.cohort import materialise
from icpcv.cohort.volumes import read_spacing, resample
from icpcv.config import RunConfig
from icpcv.errors import InputError
from icpcv.prepare.core import PrepareOptions, prepare
from icpcv.prepare.sources import bioptigen_spacing
from icpcv.rundir import CohortDir

SHAPE = (6, 6, 8)


def _gradient(nx, ny, nz, seed=0):
    """X ramp plus noise: a mirror or a crop shows in the values."""
    rng = np.random.default_rng(seed)
    return (np.arange(nx)[:, None, None] * 10.0 + rng.normal(size=(nx, ny, nz))).astype(np.float32)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    """Four monkeys: 7x7 mm (70 voxels), 3x3 mm (40 voxels), a line scan, a 2x2 mm scan; monkey m1 left eyes."""
    d = tmp_path_factory.mktemp("geo")
    rows, raws = [], {}
    for m in range(4):
        for k, (area, n) in enumerate((("7x7", 70), ("3x3", 40), ("7x0.1", 70), ("2x2", 40), ("7x7", 70))):
            sid = f"m{m}_{k}"
            raw = _gradient(n, 2 if area == "7x0.1" else n, 16, seed=10 * m + k)
            np.save(d / f"{sid}.npy", raw)
            raws[sid] = raw
            w, h = area.split("x")
            rows.append((sid, f"m{m}", 10 + k, 5 + k + m, f"{sid}.npy", w, h, "OS" if m == 1 else "od"))
    write_csv(d / "t.csv", ["scan_id", "subject", "iop", "icp", "path", "fov_x_mm", "fov_y_mm", "eye"], rows)
    return d, raws


def _materialise(d, name, **geo):
    cfg = RunConfig(manifest=str(d / "t.csv"), shape=SHAPE, models=("ridge_scan",), **geo)
    folder = CohortDir(d / name)
    coh, quality, _ = materialise(cfg, folder, need_iop=True, need_volumes=True)
    vols = np.load(folder.volumes_npy)
    index = {x: i for i, x in enumerate(json.loads(folder.volumes_json.read_text())["scan_ids"])}
    return coh, quality.set_index("scan_id"), (lambda x: vols[index[x]]), folder


def test_fov_crop_mirror_and_skips_in_run(cohort_dir):
    d, raws = cohort_dir
    coh, q, vol, folder = _materialise(d, "crop", fov_mm=(3.0, 3.0), mirror_os=True)
    # the 7x7 mm scan: its centred 30 x 30 voxels (3 of 7 mm), then the documented resampling
    np.testing.assert_allclose(vol("m0_0"), resample(raws["m0_0"][20:50, 20:50], SHAPE), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vol("m0_1"), resample(raws["m0_1"], SHAPE), rtol=1e-5, atol=1e-5)  # already 3x3
    # a left eye is flipped along X (its X ramp now falls)
    np.testing.assert_allclose(vol("m1_0"), resample(raws["m1_0"][20:50, 20:50][::-1], SHAPE), rtol=1e-5, atol=1e-5)
    assert vol("m1_0")[0].mean() > vol("m1_0")[-1].mean()
    # line scans and too small fields of view are recorded skips, never stretched
    assert {x: q.loc[x, "reason"] for x in q.index if q.loc[x, "status"] == "dropped"} == \
        {**{f"m{m}_2": "line_scan" for m in range(4)}, **{f"m{m}_3": "fov_too_small" for m in range(4)}}
    assert q.loc["m0_3", "value"] == "2x2" and "smaller than the target 3x3 mm" in q.loc["m0_3", "detail"]
    s = coh.scans.set_index("scan_id")
    assert set(s.index) == {f"m{m}_{k}" for m in range(4) for k in (0, 1, 4)}
    assert (s["voxel_x_um"] == 500.0).all() and (s["voxel_y_um"] == 500.0).all()  # 3 mm / 6 voxels
    assert s.loc["m1_0", "mirrored"] == "OS->OD" and not s.loc["m0_0", "mirrored"]
    assert "warnings" not in (folder.read_meta())  # one field of view: no mixed warning


def test_without_fov_line_scans_are_still_refused_and_mixed_fields_warn(cohort_dir):
    d, raws = cohort_dir
    coh, q, vol, folder = _materialise(d, "plain")
    assert sorted(q.index[q["reason"] == "line_scan"]) == [f"m{m}_2" for m in range(4)]
    assert (q.loc[[f"m{m}_3" for m in range(4)], "status"] == "kept").all()
    np.testing.assert_allclose(vol("m1_0"), resample(raws["m1_0"], SHAPE), rtol=1e-5, atol=1e-5)  # no mirroring
    s = coh.scans.set_index("scan_id")
    assert s.loc["m0_0", "voxel_x_um"] == pytest.approx(7000 / 6) and s.loc["m0_1", "voxel_x_um"] == 500
    (warning,) = folder.read_meta()["warnings"]
    assert "3 fields of view (7x7 mm: 8, 3x3 mm: 4, 2x2 mm: 4)" in warning
    assert "monkey m0: 7x7 mm 2, 3x3 mm 1, 2x2 mm 1" in warning and "--fov-mm" in warning


def test_axes_declares_a_raw_layout(tmp_path):
    rows = []
    for m in range(3):
        for k in range(2):
            raw = _gradient(24, 12, 48, seed=m * 2 + k)
            np.save(tmp_path / f"s{m}{k}.npy", np.ascontiguousarray(np.transpose(raw, (2, 1, 0))))  # stored (Z, Y, X)
            np.save(tmp_path / f"ref{m}{k}.npy", raw)
            rows.append((f"s{m}{k}", f"m{m}", 10, 5 + k, f"s{m}{k}.npy"))
    write_csv(tmp_path / "t.csv", ["scan_id", "subject", "iop", "icp", "path"], rows)
    cfg = RunConfig(manifest=str(tmp_path / "t.csv"), shape=(6, 3, 12), models=("ridge_scan",), axes="ZYX")
    folder = CohortDir(tmp_path / "c")
    materialise(cfg, folder, need_iop=True, need_volumes=True)
    np.testing.assert_allclose(np.load(folder.volumes_npy)[0], resample(np.load(tmp_path / "ref00.npy"), (6, 3, 12)),
                               rtol=1e-5, atol=1e-5)
    # --fov-mm on scans whose size neither the table nor the .npy files give: every one fov_unknown
    with pytest.raises(InputError, match=r"no volume is left after the geometry skips \(6: fov_unknown\)"):
        materialise(RunConfig(manifest=str(tmp_path / "t.csv"), shape=(6, 3, 12), models=("ridge_scan",), axes="ZYX",
                              fov_mm=(3.0, 3.0)), CohortDir(tmp_path / "c3"), need_iop=True, need_volumes=True)
    # without --axes the cohort is refused scan by scan as swapped against --shape's proportions
    with pytest.raises(InputError, match="axes look swapped"):
        materialise(RunConfig(manifest=str(tmp_path / "t.csv"), shape=(6, 3, 12), models=("ridge_scan",)),
                    CohortDir(tmp_path / "c2"), need_iop=True, need_volumes=True)


def test_nifti_spacing_gives_the_field_of_view_and_a_disagreement_is_a_warning(tmp_path):
    rows = []
    for m in range(3):
        for k in range(2):
            img = nib.Nifti1Image(_gradient(40, 40, 16, seed=m + k), np.diag([0.1, 0.1, 0.05, 1.0]))  # 4 x 4 mm
            img.header.set_xyzt_units("mm")
            nib.save(img, tmp_path / f"n{m}{k}.nii.gz")
            rows.append((f"n{m}{k}", f"m{m}", 10, 5 + k, f"n{m}{k}.nii.gz", "", ""))
    rows[0] = rows[0][:5] + ("7", "7")  # the table says 7x7 mm, the file 40 x 0.1 mm
    write_csv(tmp_path / "t.csv", ["scan_id", "subject", "iop", "icp", "path", "fov_x_mm", "fov_y_mm"], rows)
    assert read_spacing(tmp_path / "n00.nii.gz") == pytest.approx((0.1, 0.1, 0.05))
    cfg = RunConfig(manifest=str(tmp_path / "t.csv"), shape=SHAPE, models=("ridge_scan",), fov_mm=(3.0, 3.0))
    coh, quality, _ = materialise(cfg, CohortDir(tmp_path / "c"), need_iop=True, need_volumes=True)
    q = quality.set_index("scan_id")
    assert q.loc["n00", "reason"] == "" and q.loc["n00", "status"] == "kept"
    assert "X: the file gives 40 x 0.1 mm = 4 mm, the table 7 mm" in q.loc["n00", "warnings"]
    s = coh.scans.set_index("scan_id")
    assert s.loc["n11", "spacing_x_mm"] == pytest.approx(0.1) and s.loc["n11", "spacing_z_mm"] == pytest.approx(0.05)
    assert (s["voxel_x_um"] == 500).all()  # every scan cut to 3 mm, from the file's own 4 mm where the table is blank


def test_tiff_resolution_tags_and_editor_defaults():
    import io

    def spacing(**kw):
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.zeros((3, 8, 5), np.uint8), photometric="minisblack", **kw)
        buf.seek(0)
        with tifffile.TiffFile(buf) as tif:
            from icpcv.cohort.volumes import tiff_spacing

            return tiff_spacing(tif)

    # 100 pixels per cm along the columns (X) = 0.1 mm; 50 per cm along the rows (Z) = 0.2 mm; Y unknown
    assert spacing(resolution=(100, 50), resolutionunit="CENTIMETER") == pytest.approx((0.1, None, 0.2))
    assert spacing(resolution=(72, 72), resolutionunit="INCH") is None  # an image editor's default
    assert spacing() is None


def test_bioptigen_header_fields_map_to_axes():
    h = SimpleNamespace(azscanlength=SimpleNamespace(value=3.0), scanlength=SimpleNamespace(value=3.0),
                        elscanlength=SimpleNamespace(value=2.0), scandepth=SimpleNamespace(value=1.6))
    assert bioptigen_spacing(h, (300, 100, 800)) == pytest.approx((0.01, 0.02, 0.002))
    h.azscanlength = SimpleNamespace(value=0.0)  # fallback: the B-scan's length
    assert bioptigen_spacing(h, (300, 100, 800))[0] == pytest.approx(0.01)


def test_prepare_crops_mirrors_and_records(tmp_path):
    rows = []
    raws = {}
    for sid, area, n, eye in (("a", "7x7", 70, "OD"), ("b", "7x7", 70, "OS"), ("c", "0.1x7", 70, "OD"),
                              ("d", "2x2", 20, "OD")):
        raws[sid] = _gradient(n, n, 16, seed=ord(sid))
        np.save(tmp_path / f"{sid}.npy", raws[sid])
        rows.append((sid, "m1", 10, 5, f"{sid}.npy", area, eye))
    table = write_csv(tmp_path / "t.csv", ["scan_id", "subject", "iop", "icp", "path", "scan area", "eye"], rows)
    err = []
    summary = prepare(table, tmp_path, tmp_path / "out", PrepareOptions(shape=SHAPE, fov_mm=(3.0, 3.0), mirror_os=True),
                      err=SimpleNamespace(write=err.append))
    assert summary.skipped == 2
    q = pd.read_csv(tmp_path / "out" / "quality.csv", keep_default_na=False).set_index("scan_id")
    assert q.loc["c", "reason"] == "line_scan" and q.loc["d", "reason"] == "fov_too_small"
    got = np.load(tmp_path / "out" / "volumes" / "a.npy")
    np.testing.assert_allclose(got, resample(raws["a"][20:50, 20:50], SHAPE), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "volumes" / "b.npy"),
                               resample(raws["b"][20:50, 20:50][::-1], SHAPE), rtol=1e-5, atol=1e-4)
    assert float(q.loc["a", "voxel_x_um"]) == 500 and q.loc["b", "mirrored"] == "OS->OD"
    t = pd.read_csv(tmp_path / "out" / "table.csv", keep_default_na=False).set_index("scan_id")
    assert float(t.loc["a", "fov_x_mm"]) == 3.0 and t.loc["b", "mirrored"] == "OS->OD"  # what run then reads
    assert not any("WARNING" in e for e in err)  # --fov-mm given: no mixed-field warning


def test_geometry_options_are_checked_on_the_command_line(tmp_path):
    (tmp_path / "t.csv").write_text("scan_id,subject,iop,icp,path\na,m1,10,5,\n")
    for command in ("run", "prepare"):
        for args, text in ((["--fov-mm", "0", "3"], "--fov-mm 0 3: each side must be a number from 0.1 to 40 mm"),
                           (["--fov-mm", "7", "0.5"], "a line scan's field of view"),
                           (["--depth-mm", "-1"], "--depth-mm -1: must be a number from 0.1 to 20 mm"),
                           (["--axes", "XXZ"], "--axes 'XXZ': name each of X, Y, Z once")):
            argv = (["run", "--manifest", tmp_path / "t.csv"] if command == "run" else
                    ["prepare", tmp_path / "t.csv", "--shape", "4x4x4"])
            rc, _, err = icpcv(*argv, "--out", tmp_path / "o", *args)
            assert_clean_refusal(rc, err, text)
            assert not (tmp_path / "o").exists()
    # a RunConfig made without the command line is checked when its cohort is built
    with pytest.raises(InputError, match="--depth-mm 99: must be a number from 0.1 to 20 mm"):
        materialise(RunConfig(manifest=str(tmp_path / "t.csv"), depth_mm=99.0), CohortDir(tmp_path / "c"),
                    need_iop=True, need_volumes=False)


def _bioptigen_file(path, vol, lengths_mm):
    """A minimal Bioptigen .OCT file as oct-converter's BOCT parses it: one rectangular volume of
    ``vol`` (X, Y, Z) uint16, B-scan y = frame y, each frame A-scan by A-scan; header lengths in mm
    (``scanlength`` = ``azscanlength`` = X, ``elscanlength`` = Y, ``scandepth`` = Z)."""
    import struct

    X, Y, Z = vol.shape

    def key(k, n):
        return struct.pack("<I", len(k)) + k.encode() + struct.pack("<I", n)

    def i32(k, v):
        return key(k, 4) + struct.pack("<I", v)

    def f64(k, v):
        return key(k, 8) + struct.pack("<d", v)

    def text(k, v):
        return key(k, len(v)) + v.encode()

    x_mm, y_mm, z_mm = lengths_mm
    head = struct.pack("<IH", 0x8950, 0) + key("FRAMEHEADER", 0) + i32("FRAMECOUNT", Y) + i32("LINECOUNT", X) + \
        i32("LINELENGTH", Z) + i32("SAMPLEFORMAT", 2) + text("DESCRIPTION", "t") + f64("XMIN", 0) + \
        f64("XMAX", x_mm) + text("XCAPTION", "x") + f64("YMIN", 0) + f64("YMAX", z_mm) + text("YCAPTION", "z") + \
        i32("SCANTYPE", 1) + f64("SCANDEPTH", z_mm) + f64("SCANLENGTH", x_mm) + f64("AZSCANLENGTH", x_mm) + \
        f64("ELSCANLENGTH", y_mm) + f64("OBJECTDISTANCE", 0) + f64("SCANANGLE", 0) + i32("SCANS", Y) + \
        i32("FRAMES", 1) + i32("DOPPLERFLAG", 0) + key("CONFIG", 4) + b"\0" * 4 + struct.pack("<I", 0)
    frames = b""
    for y in range(Y):
        frames += key("FRAMEDATA", 0) + key("FRAMEDATETIME", 16) + struct.pack("<8H", 2015, 3, 1, 30, 14, 5, 0, 0) + \
            f64("FRAMETIMESTAMP", 0) + i32("FRAMELINES", X) + key("FRAMESAMPLES", 2 * X * Z) + \
            np.ascontiguousarray(vol[:, y, :], dtype="<u2").tobytes() + struct.pack("<I", 0)
    path.write_bytes(head + frames)


def test_bioptigen_file_through_oct_converter(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("oct_converter")]:  # not test_prepare.py's stand-in
        monkeypatch.delitem(sys.modules, name)
    pytest.importorskip("oct_converter.readers", reason="the oct extra (oct-converter) is not installed")
    rng = np.random.default_rng(3)
    vol = rng.integers(0, 4000, size=(12, 8, 20)).astype(np.uint16)
    _bioptigen_file(tmp_path / "a.OCT", vol, (3.0, 2.0, 1.6))
    _bioptigen_file(tmp_path / "b.OCT", vol, (3.0, 2.0, 1.6))
    table = write_csv(tmp_path / "t.csv", ["scan_id", "subject", "iop", "icp", "path", "scan area"],
                   [("a", "m1", 10, 5, "a.OCT", "3x2"), ("b", "m1", 10, 6, "b.OCT", "7x7")])
    summary = prepare(table, tmp_path, tmp_path / "out", PrepareOptions(shape=(6, 4, 10)))
    assert summary.skipped == 0
    # oct-converter's (B-scans, A-scans, depth) lands as (X, Y, Z)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "volumes" / "a.npy"), resample(vol, (6, 4, 10)), rtol=1e-5)
    q = pd.read_csv(tmp_path / "out" / "quality.csv", keep_default_na=False).set_index("scan_id")
    assert [float(q.loc["a", f"spacing_{a}_mm"]) for a in "xyz"] == pytest.approx([0.25, 0.25, 0.08])
    assert q.loc["a", "warnings"] == ""
    assert q.loc["b", "warnings"].startswith("spacing_fov_mismatch") and "X: the file gives 12 x 0.25 mm = 3 mm, " \
        "the table 7 mm" in q.loc["b", "warnings"]
