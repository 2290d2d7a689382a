"""Heidelberg Spectralis exports through eyepy (``pip install 'icpcv[heyex]'``): raw ``.vol`` files
and XML export folders (the XML and its B-scan TIFFs), with the geometry the file gives.

eyepy returns ``(B-scans, depth, A-scans)``; in icpcv's (X, Y, Z = depth) that is
``np.transpose(a, (2, 0, 1))`` with spacing (X, Y, Z) = (eyepy's ``scale_x``, ``scale_z``,
``scale_y``): the A-scan spacing, the B-scan distance and the depth of a pixel, in mm.

Only a raster of parallel, equally spaced B-scans is a volume. A line scan, a circle scan, a
radial (star) scan or B-scans at uneven distances are refused with their reason and never
stretched into a volume (:class:`Refusal`). Nothing of the file's personal metadata (names,
patient id, date of birth, exam and visit dates) leaves this module: :class:`HeyexScan` carries
the voxels, the spacing, the eye, the device and notes, and no refusal's text quotes a header
field beyond the scan's geometry.

This module knows nothing of icpcv's sources; :mod:`icpcv.prepare.sources` wraps it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: eyepy's own words for the Spectralis scan patterns (the ``.vol`` header's ``scan_pattern``)
SCAN_PATTERNS = {0: "unknown pattern", 1: "a single line scan", 2: "a circle scan, one circular B-scan",
                 3: "a volume scan in ART mode", 4: "a fast volume scan", 5: "a radial (star) scan"}
#: B-scans whose spacing differs by more than this (relative) from their mean are not a raster
#: (eyepy warns at the same 4 %)
SPACING_RTOL = 0.04
#: B-scans whose direction differs by more than this (degrees) are not parallel
PARALLEL_DEG = 1.0
DEVICE_VOL = "Heidelberg Spectralis .vol"
DEVICE_XML = "Heidelberg Spectralis XML export"
INSTALL_HINT = "install icpcv[heyex] (pip install 'icpcv[heyex]')"
EYES = {"OD": "OD", "OS": "OS"}


class Refusal(Exception):
    """Not a volume icpcv can use: ``reason`` is a code of icpcv.prepare.sources.REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class HeyexScan:
    """A Spectralis raster as icpcv needs it: no personal metadata."""

    data: np.ndarray  # (B-scans, depth, A-scans) = (Y, Z, X), uint8, as eyepy returns it
    spacing_mm: tuple  # (X, Y, Z)
    eye: str | None
    device: str
    notes: list = field(default_factory=list)

    @property
    def shape_xyz(self) -> tuple:
        y, z, x = self.data.shape
        return (x, y, z)


def _eyepy(path: Path):
    try:
        import eyepy.io.he as he  # lazy: an optional dependency (pip install 'icpcv[heyex]')
    except ImportError:
        raise Refusal("heyex_extra_missing", f"{path}: Heidelberg .vol and XML exports need the optional package "
                                             f"eyepy: {INSTALL_HINT}") from None
    return he


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1][:160]}" if text else type(exc).__name__


def is_heyex_xml(path: Path) -> bool:
    """Whether ``path`` is a Heidelberg XML export (its root element is ``HEDX``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b"<HEDX" in head


def heyex_xml_in(folder: Path) -> Path | None:
    """The Heidelberg XML export of a folder (None: it holds none); two are ambiguous."""
    found = sorted(p for p in folder.glob("*.xml") if p.is_file() and not p.name.startswith(".") and is_heyex_xml(p))
    if len(found) > 1:
        raise Refusal("unreadable", f"{folder}: holds {len(found)} Heidelberg XML exports "
                                    f"({', '.join(p.name for p in found)}); name one .xml file in the table")
    return found[0] if found else None


def _eye(value) -> str | None:
    text = str(value or "").strip().strip("\0").upper()
    return EYES.get(text)


def _raster_spacing(path: Path, starts, ends, header_mm: float | None) -> tuple[float, list[str]]:
    """The B-scan distance (mm) of a raster from the B-scans' start and end points; refuses B-scans that
    are not parallel or not equally spaced (a radial scan, a custom pattern)."""
    starts, ends = np.asarray(starts, float), np.asarray(ends, float)
    notes = []
    if not (np.isfinite(starts).all() and np.isfinite(ends).all()):
        if header_mm and header_mm > 0:
            return float(header_mm), ["B-scan positions missing: the header's B-scan distance used"]
        raise Refusal("not_a_volume", f"{path}: neither B-scan positions nor a B-scan distance: the spacing across "
                                      "B-scans is unknown")
    direction = ends - starts
    angles = np.degrees(np.arctan2(direction[:, 1], direction[:, 0]))
    spread = float(np.max(np.abs(((angles - angles[0]) + 180) % 360 - 180)))
    if spread > PARALLEL_DEG:
        raise Refusal("not_a_volume", f"{path}: the B-scans are not parallel (their directions differ by up to "
                                      f"{spread:.1f} degrees): a radial or custom scan pattern, not a raster volume")
    steps = np.concatenate([np.hypot(*np.diff(starts, axis=0).T), np.hypot(*np.diff(ends, axis=0).T)])
    mean = float(np.mean(steps))
    if not mean > 0 or np.max(np.abs(steps - mean)) > SPACING_RTOL * mean:
        raise Refusal("not_a_volume", f"{path}: the B-scans are not equally spaced ({steps.min():.4g} to "
                                      f"{steps.max():.4g} mm apart): not a raster volume")
    if abs(direction[0, 0]) < abs(direction[0, 1]):
        notes.append("vertical raster: X runs along the vertical B-scans")
    if header_mm and header_mm > 0 and abs(header_mm - mean) > SPACING_RTOL * mean:
        notes.append(f"header B-scan distance {header_mm:.5g} mm, positions {mean:.5g} mm apart: the header's used")
        return float(header_mm), notes
    return (float(header_mm) if header_mm and header_mm > 0 else mean), notes


def _refuse_single(path: Path, n_bscans: int, length_mm: float, what: str):
    """One B-scan is a line scan (icpcv.cohort.geometry's ``line_scan``): never a volume. Whether a
    raster's field of view is too thin to be a volume is the acquisition step's rule
    (:func:`icpcv.cohort.geometry.fov_problem`), applied to the field of view recorded for the scan."""
    if n_bscans < 2:
        raise Refusal("line_scan", f"{path}: {what}: one B-scan ({length_mm:.2f} mm long), a line scan, not a "
                                   "volume; never stretched into one")


def _length_note(starts, ends, n_ascans: int, scale_x: float) -> list[str]:
    """A note when the B-scans' length from their positions disagrees with A-scans x spacing (> 5 %)."""
    length = float(np.mean(np.hypot(*(np.asarray(ends, float) - np.asarray(starts, float)).T)))
    spanned = (n_ascans - 1) * scale_x
    if np.isfinite(length) and spanned > 0 and abs(length - spanned) > 0.05 * spanned:
        return [f"B-scan length from the positions {length:.3g} mm, from A-scans x spacing {spanned:.3g} mm"]
    return []


def read_vol(path: str | Path) -> HeyexScan:
    """A Spectralis raw ``.vol`` file (``HSF-OCT-1xx``)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise Refusal("unreadable", f"{path}: the file is empty (0 bytes), not a Heidelberg .vol file")
    with open(path, "rb") as fh:
        magic = fh.read(12)
    if not magic.startswith(b"HSF-OCT"):
        raise Refusal("unreadable", f"{path}: not a Heidelberg .vol file (it does not start with HSF-OCT)")
    he = _eyepy(path)
    try:
        reader = he.HeVolReader(str(path))
    except Exception as exc:  # construct raises StreamError for a file shorter than its header says
        reason = "truncated" if "stream" in type(exc).__name__.lower() else "unreadable"
        raise Refusal(reason, f"{path}: eyepy cannot parse it as a Heidelberg .vol file ({_first_line(exc)})"
                      + ("; the file ends before the B-scans its header announces" if reason == "truncated" else "")) \
            from None
    head = reader.parsed_file
    pattern = int(head.scan_pattern)
    if pattern in (2, 5):
        raise Refusal("not_a_volume", f"{path}: scan pattern {pattern}, {SCAN_PATTERNS[pattern]}: not a raster "
                                      "volume; never resampled into one")
    n = int(head.n_bscans)
    scale_x, scale_y, distance = float(head.scale_x), float(head.scale_y), float(head.distance)
    shape_xyz = (int(head.size_x), n, int(head.size_y))
    if pattern == 1 or n < 2:
        _refuse_single(path, 1, shape_xyz[0] * scale_x,
                       f"scan pattern {pattern}, {SCAN_PATTERNS.get(pattern, 'unknown')}")
    for name, value in (("A-scan spacing", scale_x), ("depth spacing", scale_y)):
        if not (math.isfinite(value) and value > 0):
            raise Refusal("unreadable", f"{path}: the header's {name} is {value!r}, not a length in mm")
    starts, ends = [(b.start_x, b.start_y) for b in head.bscans], [(b.end_x, b.end_y) for b in head.bscans]
    dy, notes = _raster_spacing(path, starts, ends, distance)
    notes += _length_note(starts, ends, shape_xyz[0], scale_x)
    spacing = (scale_x, dy, scale_y)
    try:
        data = np.asarray(reader.volume.data)  # eyepy's 'vol' intensity transform: Heyex's display scale, uint8
    except Exception as exc:
        raise Refusal("unreadable", f"{path}: eyepy cannot read its B-scans ({_first_line(exc)})") from None
    if data.shape != (n, shape_xyz[2], shape_xyz[0]):
        raise Refusal("unreadable", f"{path}: eyepy returned B-scans of shape {data.shape}, the header says "
                                    f"{(n, shape_xyz[2], shape_xyz[0])}")
    version = str(head.version).strip().strip("\0")
    notes = [f"{version}, scan pattern {pattern} ({SCAN_PATTERNS.get(pattern, 'unknown')})",
             "intensity: eyepy's Heyex display transform of the raw reflectivity (uint8)"] + notes
    return HeyexScan(data=data, spacing_mm=spacing, eye=_eye(head.scan_position), device=DEVICE_VOL, notes=notes)


_SERIES_TYPE = re.compile(r"<Series>.*?<Type>\s*([^<]*?)\s*</Type>", re.S)
_LATERALITY = re.compile(r"<Series>.*?<Laterality>\s*([^<]*?)\s*</Laterality>", re.S)


def read_xml(path: str | Path) -> HeyexScan:
    """A Heidelberg XML export: the ``.xml`` file, or the folder holding it and its B-scan images."""
    path = Path(path)
    xml = path if path.is_file() else heyex_xml_in(path)
    if xml is None:
        raise Refusal("unreadable", f"{path}: no Heidelberg XML export (an .xml file whose root is HEDX) in the folder")
    if not is_heyex_xml(xml):
        raise Refusal("unreadable", f"{xml}: not a Heidelberg XML export (its root element is not HEDX)")
    he = _eyepy(xml)
    try:
        reader = he.HeXmlReader(str(xml))
        meta = reader.bscan_meta
        scale_x, scale_y = reader.parsed_values["scale_x"], reader.parsed_values["scale_y"]
        size_x, size_y = reader.parsed_values["size_x"], reader.parsed_values["size_y"]
    except Exception as exc:
        raise Refusal("unreadable", f"{xml}: eyepy cannot parse it as a Heidelberg XML export "
                                    f"({_first_line(exc)})") from None
    text = xml.read_text(encoding="utf-8", errors="replace")
    series = _SERIES_TYPE.search(text)
    kind = series.group(1) if series else ""
    # eyepy maps every laterality but R to OS; icpcv takes R -> OD, L -> OS and leaves anything else unknown
    side = _LATERALITY.search(text)
    eye = {"R": "OD", "L": "OS"}.get(side.group(1).upper() if side else "")
    if re.search(r"circle|radial|star", kind, re.I):
        raise Refusal("not_a_volume", f"{xml}: the series is a {kind} scan, not a raster volume; never resampled "
                                      "into one")
    n = len(meta)
    for name, value in (("A-scan spacing (ScaleX)", scale_x), ("depth spacing (ScaleY)", scale_y)):
        if value is None or not (math.isfinite(value) and value > 0):
            raise Refusal("unreadable", f"{xml}: the export's {name} is {value!r}, not a length in mm")
    shape_xyz = (int(size_x or 0), n, int(size_y or 0))
    _refuse_single(xml, n, shape_xyz[0] * scale_x, f"the export (series type {kind or 'not given'})")
    starts, ends = [b["start_pos"] for b in meta], [b["end_pos"] for b in meta]
    dy, notes = _raster_spacing(xml, starts, ends, None)
    notes += _length_note(starts, ends, shape_xyz[0], scale_x)
    spacing = (float(scale_x), dy, float(scale_y))
    try:
        data = np.asarray(reader.volume.data)
    except FileNotFoundError as exc:
        raise Refusal("missing", f"{xml}: a B-scan image the export names is not in its folder "
                                 f"({Path(exc.filename or '?').name})") from None
    except Exception as exc:
        raise Refusal("unreadable", f"{xml}: eyepy cannot read its B-scan images ({_first_line(exc)})") from None
    if data.ndim != 3 or data.shape[0] != n:
        raise Refusal("unreadable", f"{xml}: eyepy returned B-scans of shape {data.shape} for {n} B-scans")
    notes = ["B-scan distance from the B-scan positions (the export gives none)"] + notes
    return HeyexScan(data=data, spacing_mm=spacing, eye=eye, device=DEVICE_XML, notes=notes)
