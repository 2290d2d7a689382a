"""Scan geometry: one physical field of view for every prepared scan (docs/acquisition.md).

Volumes are (X, Y, Z = depth). A scan's field of view is ``(fov_x_mm, fov_y_mm)`` across X and Y
and ``depth_mm`` along Z. :func:`crop_to_fov` cuts the centred box of a target field of view out
of a volume, so that after resampling to the run's shape every voxel has the same size in
micrometres; a scan smaller than the target on an axis, or a line scan, is never stretched:
:func:`fov_problem` names the reason.

The acquisition columns every cohort table (``cohort/scans.csv``) may carry are
:data:`ACQ_COLUMNS`; an empty value / NaN means "not known".
"""
from __future__ import annotations

import math

import numpy as np

from icpcv.util import natural_sorted

#: acquisition columns of ``cohort/scans.csv`` (all optional; empty / NaN = unknown)
ACQ_COLUMNS = (
    "fov_x_mm", "fov_y_mm", "depth_mm",        # field of view in mm (X, Y, Z = depth)
    "eye",                                     # "OD" / "OS"
    "acquired_at",                             # ISO 8601 date and time of the scan
    "session",                                 # subject + acquisition date: one sitting
    "session_minutes",                         # minutes since the session's first scan
    "protocol",                                # free text, e.g. "7x7" (the table's scan area) or a name
    "device",                                  # free text: device / file format
    "spacing_x_mm", "spacing_y_mm", "spacing_z_mm",  # voxel spacing a reader gave (raw file), if any
)

#: a field of view whose smaller side is below this (mm), or whose sides differ by more than
#: LINE_SCAN_ASPECT, is a line scan (the seed's 7x0.1, 0.1x7 and 7x0.5 mm): never a volume
LINE_SCAN_MAX_MM = 1.0
LINE_SCAN_ASPECT = 5.0
#: a field of view within this relative margin of the target is not "too small" (rounding of mm)
FOV_TOLERANCE = 0.01

REASONS = {
    "line_scan": "a line scan (one side of the field of view under 1 mm, or sides more than 5 times apart): "
                 "not a volume, never stretched into one",
    "fov_too_small": "the scan's field of view is smaller than --fov-mm / --depth-mm on an axis: never stretched",
    "fov_unknown": "--fov-mm / --depth-mm needs the scan's field of view, and the table and file give none",
}


def _known(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def is_line_scan(fov_x_mm: float, fov_y_mm: float) -> bool:
    small, big = sorted((float(fov_x_mm), float(fov_y_mm)))
    return small < LINE_SCAN_MAX_MM or big > LINE_SCAN_ASPECT * small


def fov_problem(fov_xy, target_xy=None, depth_mm=None, target_depth_mm=None) -> tuple[str, str] | None:
    """``(reason, detail)`` when the scan cannot be cut to the target field of view, else None.

    >>> fov_problem((7, 0.1), (3, 3))[0]
    'line_scan'
    >>> fov_problem((3, 3), (5, 5))[0]
    'fov_too_small'
    >>> fov_problem((7, 7), (3, 3)) is None
    True
    """
    fx, fy = (fov_xy if fov_xy is not None else (None, None))
    if _known(fx) and _known(fy) and is_line_scan(fx, fy):
        return "line_scan", f"field of view {fx:g}x{fy:g} mm is a line scan"
    if target_xy is not None:
        if not (_known(fx) and _known(fy)):
            return "fov_unknown", "no field of view in the table or the file"
        for axis, have, want in (("X", fx, target_xy[0]), ("Y", fy, target_xy[1])):
            if have < want * (1 - FOV_TOLERANCE):
                return "fov_too_small", f"field of view {fx:g}x{fy:g} mm is smaller than the target " \
                                        f"{target_xy[0]:g}x{target_xy[1]:g} mm along {axis}"
    if target_depth_mm is not None:
        if not _known(depth_mm):
            return "fov_unknown", "no depth in mm in the table or the file"
        if depth_mm < target_depth_mm * (1 - FOV_TOLERANCE):
            return "fov_too_small", f"depth {depth_mm:g} mm is smaller than the target {target_depth_mm:g} mm"
    return None


def crop_box(shape, fov_xy, target_xy=None, depth_mm=None, target_depth_mm=None) -> tuple[slice, slice, slice]:
    """The centred index box of the target field of view in a volume of ``shape`` (X, Y, Z).

    An axis without a target is kept whole. At least one voxel is kept on each axis.

    >>> crop_box((70, 70, 100), (7, 7), (3, 3))
    (slice(20, 50, None), slice(20, 50, None), slice(0, 100, None))
    """
    box = []
    wants = [None, None, None]
    haves = [None, None, depth_mm]
    if target_xy is not None:
        wants[0], wants[1] = target_xy
        haves[0], haves[1] = fov_xy
    wants[2] = target_depth_mm
    for n, have, want in zip(shape, haves, wants):
        n = int(n)
        if want is None or not _known(have) or want >= have:
            box.append(slice(0, n))
            continue
        keep = max(1, int(round(n * float(want) / float(have))))
        start = (n - keep) // 2
        box.append(slice(start, start + keep))
    return tuple(box)


def crop_to_fov(volume: np.ndarray, fov_xy, target_xy=None, depth_mm=None, target_depth_mm=None) -> np.ndarray:
    """The centred target field of view of ``volume`` (a view; resample it afterwards)."""
    return volume[crop_box(volume.shape, fov_xy, target_xy, depth_mm, target_depth_mm)]


def mirror_os(volume: np.ndarray) -> np.ndarray:
    """A left eye (OS) in the right eye's (OD) orientation: flip X, the horizontal (nasal-temporal)
    axis of a horizontal raster; right and left optic nerve heads are mirror images about the
    vertical midline, so Y (superior-inferior) and Z (depth) are kept."""
    return volume[::-1]


def voxel_um(target_xy, target_depth_mm, shape) -> tuple[float, float, float]:
    """Voxel size in micrometres after cropping to the target and resampling to ``shape``
    (NaN on an axis with no target)."""
    sizes = []
    for want, n in zip((*(target_xy or (None, None)), target_depth_mm), shape):
        sizes.append(float("nan") if want is None else 1000.0 * float(want) / int(n))
    return tuple(sizes)


# --------------------------------------------------------------------------- options and layout

#: accepted ranges of --fov-mm (each side) and --depth-mm, in mm
FOV_RANGE_MM = (0.1, 40.0)
DEPTH_RANGE_MM = (0.1, 20.0)
#: a file's spacing x voxels that differs from the table's field of view by more than this (relative) is a warning
SPACING_TOLERANCE = 0.05


def check_options(fov_mm=None, depth_mm=None, axes=None) -> str | None:
    """The problem with ``--fov-mm``, ``--depth-mm`` or ``--axes``, as a message, or None.

    >>> check_options((3, 3), 2.0, "XZY") is None
    True
    >>> check_options((0, 3))
    '--fov-mm 0 3: each side must be a number from 0.1 to 40 mm (e.g. --fov-mm 3 3)'
    >>> check_options(axes="XXZ")
    "--axes 'XXZ': name each of X, Y, Z once, in the order the file's axes hold them (e.g. XZY, ZXY); X and Y are the scan's width and height, Z is depth"
    """
    if fov_mm is not None:
        if len(fov_mm) != 2 or not all(_known(v) and FOV_RANGE_MM[0] <= float(v) <= FOV_RANGE_MM[1] for v in fov_mm):
            return (f"--fov-mm {' '.join(f'{float(v):g}' for v in fov_mm)}: each side must be a number from "
                    f"{FOV_RANGE_MM[0]:g} to {FOV_RANGE_MM[1]:g} mm (e.g. --fov-mm 3 3)")
        if is_line_scan(*fov_mm):
            return (f"--fov-mm {fov_mm[0]:g} {fov_mm[1]:g}: a line scan's field of view; a volume needs both sides "
                    f"of at least {LINE_SCAN_MAX_MM:g} mm and at most {LINE_SCAN_ASPECT:g} times apart")
    if depth_mm is not None and not (_known(depth_mm) and DEPTH_RANGE_MM[0] <= float(depth_mm) <= DEPTH_RANGE_MM[1]):
        return f"--depth-mm {depth_mm:g}: must be a number from {DEPTH_RANGE_MM[0]:g} to {DEPTH_RANGE_MM[1]:g} mm"
    if axes is not None and parse_axes(axes) is None:
        return (f"--axes {axes!r}: name each of X, Y, Z once, in the order the file's axes hold them (e.g. XZY, "
                "ZXY); X and Y are the scan's width and height, Z is depth")
    return None


def parse_axes(text) -> str | None:
    """``'xzy'`` -> ``'XZY'``: a permutation of X, Y, Z, else None."""
    t = str(text).strip().upper().replace(",", "").replace(" ", "")
    return t if sorted(t) == ["X", "Y", "Z"] else None


def axes_order(axes: str | None) -> tuple[int, int, int]:
    """The transpose that turns an array stored as ``axes`` into (X, Y, Z).

    >>> axes_order("ZXY")
    (1, 2, 0)
    """
    a = parse_axes(axes) if axes else "XYZ"
    return tuple(a.index(c) for c in "XYZ")


def to_xyz(volume: np.ndarray, axes: str | None) -> np.ndarray:
    """A volume stored with ``axes`` (e.g. ``'ZYX'``) as icpcv's (X, Y, Z = depth)."""
    order = axes_order(axes)
    return volume if order == (0, 1, 2) else np.transpose(volume, order)


def permute(values, axes: str | None):
    """Per-axis values (shape, spacing) of an array stored as ``axes``, in (X, Y, Z) order."""
    if values is None:
        return None
    return tuple(values[i] for i in axes_order(axes))


def spacing_mismatch(spacing_mm, shape, fov_xy, depth_mm=None) -> str | None:
    """Where a file's spacing x voxels disagrees with the table's field of view (X, Y; Z with a
    depth) by more than SPACING_TOLERANCE, as a sentence, else None.

    >>> spacing_mismatch((0.006, 0.006, 0.002), (500, 500, 1000), (3, 3))
    >>> spacing_mismatch((0.014, 0.006, 0.002), (500, 500, 1000), (3, 3))
    'X: the file gives 500 x 0.014 mm = 7 mm, the table 3 mm'
    """
    wants = [*(fov_xy if fov_xy is not None else (None, None)), depth_mm]
    out = []
    for axis, s, n, want in zip("XYZ", spacing_mm or (None,) * 3, shape, wants):
        if not (_known(s) and _known(want)):
            continue
        have = float(s) * int(n)
        if abs(have - float(want)) > SPACING_TOLERANCE * float(want):
            out.append(f"{axis}: the file gives {int(n)} x {float(s):g} mm = {have:.3g} mm, the table {float(want):g} mm")
    return "; ".join(out) or None


def mixed_fov_warning(scans, fov_mm=None) -> str | None:
    """The loud warning of a cohort whose volumes have more than one field of view and no
    ``--fov-mm``: the protocols (fields of view) and their scans per monkey; None otherwise."""
    if fov_mm is not None or "fov_x_mm" not in getattr(scans, "columns", ()):
        return None
    known = scans[scans["fov_x_mm"].notna() & scans["fov_y_mm"].notna()]
    if known.empty:
        return None
    labels = known["fov_x_mm"].map("{:g}".format) + "x" + known["fov_y_mm"].map("{:g}".format)
    if labels.nunique() < 2:
        return None
    per = {}
    for subject, lab in zip(known["subject"].astype(str), labels):
        per.setdefault(subject, {}).setdefault(lab, 0)
        per[subject][lab] += 1
    parts = [f"monkey {s}: " + ", ".join(f"{lab} mm {n}" for lab, n in sorted(per[s].items(), key=lambda kv: -kv[1]))
             for s in natural_sorted(per)]
    counts = labels.value_counts()
    return (f"the volumes have {labels.nunique()} fields of view ({', '.join(f'{k} mm: {v}' for k, v in counts.items())}) "
            "and are resampled to one grid without --fov-mm, so a voxel is a different size in micrometres from one "
            "protocol to the next and a model can tell protocols (and so monkeys) apart; crop every volume to one "
            "field of view with --fov-mm X Y (docs/acquisition.md). Per monkey: " + "; ".join(parts))
