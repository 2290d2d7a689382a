"""Heidelberg Spectralis exports (``.vol``, XML export folders) through eyepy, on real device files
in ``../shared/data/vendor/`` (skipped when absent): the geometry they give, the scans that are not
volumes and are refused, the optional extra, and no personal metadata in any output.

The raster ``.vol`` tests use a volume built here (in ``tmp_path``) from the real line scan's bytes:
its header (with the file's own date of birth and exam dates), its localizer and B-scan header,
repeated as a raster of B-scans whose voxels mark their own position, so that the expected output
is known without eyepy.
"""
from __future__ import annotations

import re
import struct
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from icpcv.cohort.table import read_scan_table
from icpcv.commands import main
from icpcv.prepare import PrepareOptions, VolumeError, open_source, prepare
from tests.conftest import SHARED

VENDOR = SHARED / "data" / "vendor"
LINE = VENDOR / "spectralis" / "Willis_B_716_0.vol"
CIRCLE = VENDOR / "spectralis" / "Willis_B_716_2.vol"
EMPTY = VENDOR / "spectralis" / "invalid.vol"
XML_DIR = VENDOR / "heyex_xml" / "test_volume"
XML = XML_DIR / "test_dummy.xml"
#: what the vendor README says eyepy 0.21.0 returns for the XML export: (B-scans, depth, A-scans) and scales
XML_SPACING = (0.011819, 0.031444, 0.003872)  # (X, Y, Z) = (scale_x, scale_z, scale_y) in mm

# .vol layout (Heidelberg's HSF-OCT-103 specification, as eyepy's reader parses it)
HEADER = 2048
MARK_DEPTH = slice(100, 110)


@pytest.fixture(scope="module")
def vendor():
    if not VENDOR.exists():
        pytest.skip(f"real device files not found at {VENDOR}")
    return VENDOR


@pytest.fixture(scope="module")
def eyepy(vendor):
    return pytest.importorskip("eyepy", reason="eyepy is not installed: pip install 'icpcv[heyex]'")


def raster_vol(path: Path, n=5, step=0.4, starts_y=None, tilt_deg=None) -> Path:
    """A raster ``.vol`` of ``n`` B-scans made from the real line scan's bytes: B-scan i is black but for
    A-scans 10 i .. 10 i + 4 at depths 100..109, set to the raw maximum 1.0 (Heyex display 255)."""
    raw = LINE.read_bytes()
    size_x, _, size_y = struct.unpack_from("<3I", raw, 12)
    slo = int(np.prod(struct.unpack_from("<2I", raw, 48)))
    bscan_hdr = struct.unpack_from("<I", raw, 100)[0]
    first = HEADER + slo
    block = bscan_hdr + size_x * size_y * 4
    header = bytearray(raw[:first])
    struct.pack_into("<I", header, 16, n)  # n_bscans
    struct.pack_into("<d", header, 32, step)  # distance between B-scans (mm)
    struct.pack_into("<i", header, 96, 3)  # scan pattern 3: a volume
    x0, y0, x1, _ = struct.unpack_from("<4d", raw, first + 16)
    starts_y = starts_y if starts_y is not None else [y0 + i * step for i in range(n)]
    out = [bytes(header)]
    for i in range(n):
        head = bytearray(raw[first:first + bscan_hdr])
        end_x, end_y = x1, starts_y[i]
        if tilt_deg is not None:  # a radial pattern: each B-scan turned about its start
            a = np.radians(tilt_deg * i)
            end_x, end_y = x0 + (x1 - x0) * np.cos(a), starts_y[i] + (x1 - x0) * np.sin(a)
        struct.pack_into("<4d", head, 16, x0, starts_y[i], end_x, end_y)
        data = np.zeros((size_y, size_x), np.float32)
        data[MARK_DEPTH, 10 * i:10 * i + 5] = 1.0
        out += [bytes(head), data.tobytes()]
    out.append(raw[first + block:])  # what follows the B-scans (thickness data), unchanged
    path.write_bytes(b"".join(out))
    return path


def expected_raster(n=5) -> np.ndarray:
    """The raster's volume in (X, Y, Z), from how it was built (not from eyepy)."""
    raw = LINE.read_bytes()
    size_x, _, size_y = struct.unpack_from("<3I", raw, 12)
    vol = np.zeros((size_x, n, size_y), np.float32)
    for i in range(n):
        vol[10 * i:10 * i + 5, i, MARK_DEPTH] = 255
    return vol


def xml_bscans() -> list[str]:
    """The B-scan image names the XML export lists (its OCT images), in order."""
    text = XML.read_text(encoding="utf-8", errors="replace")
    names = re.findall(r"<ExamURL>[^<]*\\([^\\<]+)</ExamURL>", text)
    return [n for n in names if not n.startswith("NIR")]


# --- what is read, with its geometry -----------------------------------------------------------

def test_xml_export_reads_to_50x10x40_with_its_three_spacings(eyepy):
    for path in (XML_DIR, XML):  # the folder or the .xml itself
        src = open_source(path)
        assert src.fmt == "heyex-xml"
        assert src.shape == (50, 10, 40)  # (X, Y, Z) from eyepy's (B-scans, depth, A-scans) = (10, 40, 50)
        np.testing.assert_allclose(src.spacing_mm, XML_SPACING, rtol=1e-4)
        assert src.eye == "OD" and src.device == "Heidelberg Spectralis XML export"
        assert XML in src.files and XML_DIR / "B1.tif" in src.files
        # B-scan y of the volume is the y-th image the XML names, its columns X and its rows depth Z
        vol = np.concatenate([s for _, s in src.slabs()])  # native (Y, Z, X)
        src.close()
        for y, name in enumerate(xml_bscans()):
            np.testing.assert_array_equal(vol[y], tifffile.imread(XML_DIR / name))


def test_raster_vol_axes_spacing_and_eye(eyepy, tmp_path):
    src = open_source(raster_vol(tmp_path / "raster.vol"))
    raw = LINE.read_bytes()
    scale_x, _, scale_y = struct.unpack_from("<3d", raw, 24)
    assert src.fmt == "heyex-vol" and src.shape == (768, 5, 496)
    assert src.spacing_mm == pytest.approx((scale_x, 0.4, scale_y))  # (A-scan, B-scan distance, depth)
    assert src.eye == "OD" and src.device == "Heidelberg Spectralis .vol"
    native = np.concatenate([s for _, s in src.slabs()])  # (Y, Z, X)
    np.testing.assert_array_equal(np.transpose(native, (2, 0, 1)), expected_raster())


# --- what is refused -------------------------------------------------------------------------

def refusal(path) -> VolumeError:
    with pytest.raises(VolumeError) as err:
        open_source(path)
    return err.value


def test_real_line_scan_is_refused_as_a_line_scan(eyepy):
    err = refusal(LINE)
    assert err.reason == "line_scan"
    assert "one B-scan" in err.detail and "9.08 mm" in err.detail and "scan pattern 1" in err.detail


def test_real_circle_scan_is_not_a_volume_naming_its_pattern(eyepy):
    err = refusal(CIRCLE)
    assert err.reason == "not_a_volume"
    assert "scan pattern 2" in err.detail and "circle scan" in err.detail


def test_real_empty_vol_is_unreadable(vendor):
    err = refusal(EMPTY)
    assert err.reason == "unreadable" and "empty" in err.detail


def test_truncated_vol_and_non_raster_patterns_are_refused(eyepy, tmp_path):
    full = raster_vol(tmp_path / "full.vol").read_bytes()
    (tmp_path / "cut.vol").write_bytes(full[:len(full) // 2])
    assert refusal(tmp_path / "cut.vol").reason == "truncated"
    radial = refusal(raster_vol(tmp_path / "radial.vol", tilt_deg=30))
    assert radial.reason == "not_a_volume" and "not parallel" in radial.detail
    y0 = 4.5
    uneven = refusal(raster_vol(tmp_path / "uneven.vol", starts_y=[y0, y0 + 0.4, y0 + 0.8, y0 + 1.6, y0 + 2.0]))
    assert uneven.reason == "not_a_volume" and "not equally spaced" in uneven.detail


def edited_export(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A copy of the XML export (in tmp_path) with one XML element's text changed."""
    import shutil

    folder = tmp_path / name
    shutil.copytree(XML_DIR, folder)
    xml = folder / XML.name
    text = xml.read_text(encoding="utf-8")
    assert old in text
    xml.chmod(0o644)
    xml.write_text(text.replace(old, new, 1), encoding="utf-8")
    return folder


def test_xml_laterality_and_series_type_are_read_by_icpcv(eyepy, tmp_path):
    assert open_source(edited_export(tmp_path, "left", "<Laterality>R<", "<Laterality>L<")).eye == "OS"
    # eyepy would call this OS: an unknown laterality stays unknown
    assert open_source(edited_export(tmp_path, "unknown", "<Laterality>R<", "<Laterality>U<")).eye is None
    err = refusal(edited_export(tmp_path, "circle", "<Type>Volume</Type>", "<Type>Circle</Type>"))
    assert err.reason == "not_a_volume" and "Circle scan" in err.detail


def test_e2e_and_topcon_files_are_refused_with_why(tmp_path):
    for name, words in (("a.E2E", "no reliable A-scan spacing"), ("b.fda", "assumes the scan geometry")):
        (tmp_path / name).write_bytes(b"x")
        err = refusal(tmp_path / name)
        assert err.reason == "unknown_format" and words in err.detail


def test_run_points_a_raw_device_file_to_prepare(tmp_path):
    from icpcv.cohort.volumes import read_volume
    from icpcv.errors import InputError

    (tmp_path / "scan.vol").write_bytes(b"HSF-OCT-103")
    with pytest.raises(InputError, match="is read by `icpcv prepare`"):
        read_volume(tmp_path / "scan.vol")


def test_without_eyepy_heyex_rows_are_skipped_with_the_install_hint(vendor, tmp_path, monkeypatch, capsys):
    for name in ("eyepy", "eyepy.io", "eyepy.io.he"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    np.save(tmp_path / "ok.npy", np.ones((8, 4, 6), np.uint8))
    table = tmp_path / "t.csv"
    pd.DataFrame([("vol", "1", "1", "1", str(CIRCLE)), ("xml", "1", "1", "1", str(XML_DIR)),
                  ("ok", "1", "1", "1", "ok.npy")], columns=["scan_id", "subject", "iop", "icp", "path"]).to_csv(
        table, index=False)
    rc = main(["prepare", str(table), "--out", str(tmp_path / "out"), "--shape", "4x2x3", "--quiet"])
    assert rc == 3
    q = pd.read_csv(tmp_path / "out" / "quality.csv", keep_default_na=False).set_index("scan_id")
    for scan in ("vol", "xml"):
        assert q.loc[scan, "reason"] == "heyex_extra_missing"
        assert "pip install 'icpcv[heyex]'" in q.loc[scan, "detail"]
    assert q.loc["ok", "status"] == "converted"
    assert "install icpcv[heyex]" in capsys.readouterr().err


# --- through the prepare CLI, and no personal metadata in any output ---------------------------

def personal_strings(eyepy, raster: Path) -> set[str]:
    """The date of birth, exam and visit dates eyepy reports for the .vol header (the raster keeps the
    real line scan's) and the XML export's patient fields, in the ways a date is commonly written."""
    from eyepy.io.he import HeVolReader, HeXmlReader

    head = HeVolReader(str(raster)).parsed_file
    xml = HeXmlReader(str(XML)).parsed_values
    dates = {str(v) for v in (head.dob, head.exam_time, head.visit_date, xml["dob"], xml["exam_time"],
                               xml["visit_date"])}
    out = set()
    for text in dates:
        d = datetime.fromisoformat(text) if not isinstance(text, datetime) else text
        out |= {d.strftime(f) for f in ("%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y", "%d/%m/%Y", "%Y%m%d")}
    out |= {str(xml[k]) for k in ("firstnames", "lastname", "patient_id") if xml[k]}
    assert len(out) >= 8  # the dates were found and are not all one
    return out


def scaled_export(tmp_path: Path, name: str = "scaled_export", laterality: str = "R") -> Path:
    """A copy of the XML export (in tmp_path) with a realistic field of view: ScaleX such that 50 A-scans
    span the B-scans' own 6.05 mm, and the B-scans 10 times further apart (0.314 mm): 6.2 x 3.1 mm.
    The vendor export as it is spans 0.59 x 0.31 mm, a line scan by icpcv's acquisition rule."""
    import shutil

    folder = tmp_path / name
    shutil.copytree(XML_DIR, folder)
    xml = folder / XML.name
    text = xml.read_text(encoding="utf-8").replace("<ScaleX>0.011819</ScaleX>", "<ScaleX>0.1235</ScaleX>")
    text = re.sub(r"(<Coord>\s*<X>[^<]*</X>\s*<Y>)([^<]*)(</Y>)",
                  lambda m: f"{m.group(1)}{float(m.group(2)) * 10:.4f}{m.group(3)}", text)
    text = text.replace("<Laterality>R<", f"<Laterality>{laterality}<")
    xml.chmod(0o644)
    xml.write_text(text, encoding="utf-8")
    return folder


def test_prepare_cli_on_the_device_files(eyepy, tmp_path, capsys):
    """Two runs (the raster .vol and the XML export differ too much in shape for one cohort: the shape
    rule would skip one as ``wrong_shape``): the .vol files with the raster, then the XML exports."""
    raster = raster_vol(tmp_path / "raster.vol")
    cols = ["scan_id", "subject", "iop", "icp", "path"]
    pd.DataFrame([("line", "m1", "15", "8", str(LINE)), ("circle", "m1", "15", "8", str(CIRCLE)),
                  ("empty", "m2", "15", "8", str(EMPTY)), ("raster", "m3", "15", "8", "raster.vol")],
                 columns=cols).to_csv(tmp_path / "vol.csv", index=False)
    pd.DataFrame([("thin", "m2", "15", "8", str(XML_DIR)), ("xml", "m2", "15", "8", str(scaled_export(tmp_path)))],
                 columns=cols).to_csv(tmp_path / "xml.csv", index=False)
    assert main(["prepare", str(tmp_path / "vol.csv"), "--out", str(tmp_path / "vol"), "--shape", "768x5x496",
                 "--quiet"]) == 3
    assert main(["prepare", str(tmp_path / "xml.csv"), "--out", str(tmp_path / "xml"), "--shape", "50x10x40",
                 "--quiet"]) == 3
    err = capsys.readouterr().err
    q = pd.concat([pd.read_csv(tmp_path / run / "quality.csv", keep_default_na=False, dtype=str)
                   for run in ("vol", "xml")]).set_index("scan_id")
    assert q["reason"].to_dict() == {"line": "line_scan", "circle": "not_a_volume", "empty": "unreadable",
                                     "raster": "", "thin": "line_scan", "xml": ""}
    assert "field of view 0.59095x0.314444 mm is a line scan" in q.loc["thin", "detail"]
    assert q.loc["raster", "format"] == "heyex-vol" and q.loc["raster", "raw_shape"] == "768x5x496"
    assert q.loc["xml", "format"] == "heyex-xml" and q.loc["xml", "raw_shape"] == "50x10x40"
    assert "skipped row 2 (scan circle): not_a_volume" in err
    # the acquisition record: spacing, field of view, eye and device per converted scan
    t = pd.concat([pd.read_csv(tmp_path / run / "table.csv", dtype={"scan_id": str}) for run in ("vol", "xml")])
    t = t.set_index("scan_id")
    assert list(t.index) == ["raster", "xml"]
    assert t.loc["raster", "device"] == "Heidelberg Spectralis .vol"
    assert t.loc["xml", "device"] == "Heidelberg Spectralis XML export"
    assert (t["eye"] == "OD").all()
    scale_x, _, scale_y = struct.unpack_from("<3d", LINE.read_bytes(), 24)
    np.testing.assert_allclose(t.loc["raster", ["spacing_x_mm", "spacing_y_mm", "spacing_z_mm"]].to_numpy(float),
                               (scale_x, 0.4, scale_y), rtol=1e-6)
    np.testing.assert_allclose(t.loc["raster", ["fov_x_mm", "fov_y_mm", "depth_mm"]].to_numpy(float),
                               (768 * scale_x, 2.0, 496 * scale_y), rtol=1e-6)
    np.testing.assert_allclose(t.loc["xml", ["spacing_x_mm", "spacing_y_mm", "spacing_z_mm"]].to_numpy(float),
                               (0.1235, 10 * XML_SPACING[1], XML_SPACING[2]), rtol=1e-3)
    # ... which `icpcv run --manifest` reads into the scans' acquisition record (cohort/scans.csv)
    scans = read_scan_table(tmp_path / "vol" / "table.csv").scans.set_index("scan_id")
    assert scans.loc["raster", "device"] == "Heidelberg Spectralis .vol" and scans.loc["raster", "eye"] == "OD"
    assert scans.loc["raster", ["fov_x_mm", "fov_y_mm"]].to_list() == pytest.approx([768 * scale_x, 2.0])
    # the volumes, at their own size: the raster as built, the XML's B-scan images, in (X, Y, Z)
    np.testing.assert_array_equal(np.load(tmp_path / "vol" / t.loc["raster", "path"]), expected_raster())
    xml_vol = np.stack([tifffile.imread(XML_DIR / n) for n in xml_bscans()])  # (Y, Z, X)
    np.testing.assert_array_equal(np.load(tmp_path / "xml" / t.loc["xml", "path"]), np.transpose(xml_vol, (2, 0, 1)))
    # a rerun reuses the volume (no eyepy read) and still writes the file's geometry
    before = (tmp_path / "xml" / "table.csv").read_bytes()
    assert main(["prepare", str(tmp_path / "xml.csv"), "--out", str(tmp_path / "xml"), "--shape", "50x10x40",
                 "--quiet"]) == 3
    assert "0 converted, 1 unchanged, 1 skipped" in capsys.readouterr().out
    assert (tmp_path / "xml" / "table.csv").read_bytes() == before
    # nothing personal in any file the runs wrote (text or binary), nor on stderr
    secrets = personal_strings(eyepy, raster)
    files = [p for run in ("vol", "xml") for p in (tmp_path / run).rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"table.csv", "quality.csv", "prepare_manifest.json", "raster.npy", "xml.npy"}
    leaks = [(p.name, s) for p in files for s in secrets if s.encode() in p.read_bytes()]
    assert leaks == []
    assert not [s for s in secrets if s in err]


def test_table_values_win_over_the_file_with_a_warning(eyepy, tmp_path):
    table = tmp_path / "scans.csv"
    # the seed's eye column (either column name works in either format), lower case as in the seed
    pd.DataFrame([("xml", "m2", "15", "8", str(scaled_export(tmp_path)), "os", "")],
                 columns=["scan_id", "subject", "iop", "icp", "path", "eyeball (od or os)", "device"]).to_csv(
        table, index=False)
    prepare(table, tmp_path, tmp_path / "out", PrepareOptions(shape=(5, 2, 4)))
    t = pd.read_csv(tmp_path / "out" / "table.csv", keep_default_na=False).set_index("scan_id")
    assert t.loc["xml", "eye"] == "OS"  # the table's value kept ...
    assert t.loc["xml", "device"] == "Heidelberg Spectralis XML export"  # ... an empty cell filled from the file
    q = pd.read_csv(tmp_path / "out" / "quality.csv", keep_default_na=False).set_index("scan_id")
    assert "eye_mismatch (column eye, value 'OS'; the file says 'OD'" in q.loc["xml", "warnings"]
    assert q.loc["xml", "eye"] == "OS"


def test_the_files_eye_drives_mirror_os_when_the_table_has_none(eyepy, tmp_path):
    """A left eye known only from the file is flipped along X by --mirror-os, as a table's OS would be."""
    scaled = scaled_export(tmp_path, "left", laterality="L")
    table = tmp_path / "scans.csv"
    pd.DataFrame([("left", "m1", "15", "8", str(scaled))], columns=["scan_id", "subject", "iop", "icp", "path"]).to_csv(
        table, index=False)
    prepare(table, tmp_path, tmp_path / "out", PrepareOptions(shape=(50, 10, 40), mirror_os=True))
    t = pd.read_csv(tmp_path / "out" / "table.csv", keep_default_na=False).set_index("scan_id")
    assert t.loc["left", "eye"] == "OS" and t.loc["left", "mirrored"] == "OS->OD"
    xml_vol = np.stack([tifffile.imread(XML_DIR / n) for n in xml_bscans()])  # (Y, Z, X)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / t.loc["left", "path"]),
                                  np.transpose(xml_vol, (2, 0, 1))[::-1])
