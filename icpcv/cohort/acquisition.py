"""Acquisition fields of a scan table: field of view, eye, time, protocol, device (docs/acquisition.md).

Both table formats may carry them, under these column names (either format may use either name):

* field of view in mm: the seed's ``scan area`` (``WxH``, e.g. ``7x7``, ``3x3``, ``7x0.1``) or
  ``fov_x_mm`` + ``fov_y_mm``; optional ``depth_mm``;
* the eye: ``eyeball (od or os)`` or ``eye`` (``OD`` / ``OS``, any case);
* when: the seed's ``scan date`` (US month/day/year) + ``scan time`` (``h:mm`` or ``h:mm:ss``,
  optional AM/PM) or ``acquired_at`` (ISO 8601);
* free text: ``protocol``, ``device``, ``scan notes`` / ``notes``; the voxel grid ``scan_shape``.

Every value is parsed and checked. A value that cannot be read is a *warning* in
``data_quality.csv`` (code, column and value), and the scan is kept with that field unknown: an
acquisition field never decides whether a scan has a usable label. An empty cell (or NA, NULL,
...) is simply unknown. :func:`parse_acquisition` returns the columns of
:data:`icpcv.cohort.geometry.ACQ_COLUMNS` for every row (plus ``scan_shape`` and ``notes``) with
``session`` (subject + date) and ``session_minutes`` (minutes since the session's first timed
scan, over every row of the table, kept or not) computed.
"""
from __future__ import annotations

import math
import re
from datetime import date, datetime

import numpy as np
import pandas as pd

from icpcv.cohort.geometry import ACQ_COLUMNS
from icpcv.plausible import is_missing

#: the largest field of view (mm, X or Y) and depth (mm, Z) taken as an OCT scan's; beyond is a typo
FOV_MAX_MM = 40.0
DEPTH_MAX_MM = 20.0
#: rows in a one-day-per-row date series that make it a spreadsheet's fill series (monkey 7 of the seed)
FILL_SERIES_MIN = 5
#: years an OCT acquisition date may have (the technique is from 1991)
YEARS = (1990, 2100)

#: where each field is read from: (field, column names in order of preference)
COLUMNS = {
    "scan_area": ("scan area", "scan_area"),
    "fov_x_mm": ("fov_x_mm",),
    "fov_y_mm": ("fov_y_mm",),
    "depth_mm": ("depth_mm",),
    "eye": ("eye", "eyeball (od or os)"),
    "acquired_at": ("acquired_at",),
    "scan_date": ("scan date", "scan_date"),
    "scan_time": ("scan time", "scan_time"),
    "protocol": ("protocol",),
    "device": ("device",),
    "notes": ("notes", "scan notes"),
    "scan_shape": ("scan_shape",),
}
#: columns that make a table carry acquisition fields (notes and scan_shape alone do not)
_TRIGGERS = ("scan_area", "fov_x_mm", "fov_y_mm", "depth_mm", "eye", "acquired_at", "scan_date", "scan_time",
             "protocol", "device")

#: warning code -> one-line explanation (the scan is kept, the field unknown)
WARNINGS = {
    "scan_area_invalid": f"the scan area is not W x H in mm with both sides above 0 and at most {FOV_MAX_MM:g} "
                         "(e.g. 7x7, 3x3, 7x0.1): the scan is kept with its field of view unknown",
    "fov_invalid": f"fov_x_mm / fov_y_mm is not a number above 0 and at most {FOV_MAX_MM:g} mm, or only one of "
                   "them is given: the scan is kept with its field of view unknown",
    "depth_invalid": f"depth_mm is not a number above 0 and at most {DEPTH_MAX_MM:g} mm: the scan is kept with its "
                     "depth unknown",
    "eye_invalid": "the eye is neither OD (right) nor OS (left): the scan is kept with its eye unknown",
    "date_invalid": f"the scan date is not a month/day/year date (e.g. 3/30/15, 04/25/2013) in {YEARS[0]} to "
                    f"{YEARS[1]}: the scan is kept with its time unknown",
    "time_invalid": "the scan time is not a clock time h:mm or h:mm:ss (optional AM/PM; 0-23 h, 0-59 min): the "
                    "scan is kept with its time of day unknown",
    "acquired_at_invalid": f"acquired_at is not an ISO 8601 date or date and time (e.g. 2015-03-30T14:05) in "
                           f"{YEARS[0]} to {YEARS[1]}: the scan is kept with its time unknown",
    "date_fill_series": f"the scan dates rise by exactly one day per row over {FILL_SERIES_MIN} or more rows of "
                        "one subject (a spreadsheet's fill series, not days of acquisition): the scan is kept "
                        "with its date unknown (the series' first row keeps its date)",
    "scan_shape_invalid": "scan_shape is not three positive whole numbers (e.g. [512, 512, 2048] or 512x512x2048): "
                          "the scan is kept with its voxel grid unknown",
    "spacing_fov_mismatch": "the voxel spacing the file gives, times its voxels, disagrees with the table's field "
                            "of view by more than 5%: the table's is used (see the detail)",
}

#: the columns :func:`parse_acquisition` returns, in order
OUT_COLUMNS = (*ACQ_COLUMNS, "scan_shape", "notes")

_AREA = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(?:mm)?\s*[x×X*]\s*([0-9]*\.?[0-9]+)\s*(?:mm)?\s*$")
_DATE = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})\s*$")
_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*([AaPp])?\.?\s*(?:[Mm]\.?)?\s*$")
_SHAPE = re.compile(r"^\s*[\[(]?\s*(\d+)\s*[,x×X]\s*(\d+)\s*[,x×X]\s*(\d+)\s*[\])]?\s*$")


def has_acquisition(columns) -> bool:
    """Whether a table's header names any acquisition field (else the table is read as before)."""
    cols = set(columns)
    return any(c in cols for f in _TRIGGERS for c in COLUMNS[f])


def column_of(columns, field: str) -> str | None:
    return next((c for c in COLUMNS[field] if c in columns), None)


def parse_scan_area(text: str) -> tuple[float, float] | None:
    """``'7x0.1'`` -> ``(7.0, 0.1)`` (mm, X then Y); None when it is not a valid field of view.

    >>> parse_scan_area("7x7"), parse_scan_area(" 3 x 3 mm"), parse_scan_area("0.1x7")
    ((7.0, 7.0), (3.0, 3.0), (0.1, 7.0))
    >>> [parse_scan_area(t) for t in ("abc", "0x5", "7x", "-3x3", "7x7x7", "50x50")]
    [None, None, None, None, None, None]
    """
    m = _AREA.match(text)
    if not m:
        return None
    w, h = float(m.group(1)), float(m.group(2))
    return (w, h) if _fov_ok(w) and _fov_ok(h) else None


def _fov_ok(x: float, hi: float = FOV_MAX_MM) -> bool:
    return math.isfinite(x) and 0 < x <= hi


def parse_mm(text: str, hi: float) -> float | None:
    """A length in mm above 0 and at most ``hi``, else None.

    >>> parse_mm("7", 40), parse_mm("2.5mm", 20), parse_mm("-3", 40), parse_mm("inf", 40), parse_mm("0", 40)
    (7.0, 2.5, None, None, None)
    """
    t = text.strip()
    if t.lower().endswith("mm"):
        t = t[:-2].strip()
    try:
        x = float(t)
    except ValueError:
        return None
    return x if _fov_ok(x, hi) else None


def parse_eye(text: str) -> str | None:
    """``'od'`` -> ``'OD'``; None for anything but OD or OS.

    >>> parse_eye(" od"), parse_eye("OS"), parse_eye("left"), parse_eye("OU")
    ('OD', 'OS', None, None)
    """
    t = text.strip().upper().replace(".", "")
    return t if t in ("OD", "OS") else None


def parse_us_date(text: str) -> date | None:
    """The seed's month/day/year (two- or four-digit year) as a date, else None.

    >>> parse_us_date("3/30/15"), parse_us_date("04/25/2013")
    (datetime.date(2015, 3, 30), datetime.date(2013, 4, 25))
    >>> parse_us_date("13/45/2016"), parse_us_date("2015-03-30"), parse_us_date("2/30/16")
    (None, None, None)
    """
    m = _DATE.match(text)
    if not m:
        return None
    mo, d, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if len(m.group(3)) == 2:
        y += 2000  # the seed's two-digit years are 2013-2018
    try:
        out = date(y, mo, d)
    except ValueError:
        return None
    return out if YEARS[0] <= out.year <= YEARS[1] else None


def parse_clock(text: str) -> tuple[int, int, int, str | None] | None:
    """``(hour, minute, second, 'A'/'P'/None)`` of a clock time, else None.

    >>> parse_clock("1:06:00"), parse_clock("3:05 PM"), parse_clock("13:46")
    ((1, 6, 0, None), (3, 5, 0, 'P'), (13, 46, 0, None))
    >>> parse_clock("25:99"), parse_clock("13:00 pm"), parse_clock("noon")
    (None, None, None)
    """
    m = _TIME.match(text)
    if not m:
        return None
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    ampm = m.group(4).upper() if m.group(4) else None
    if mi > 59 or s > 59 or h > 23 or (ampm and not 1 <= h <= 12):
        return None
    return h, mi, s, ampm


def parse_iso(text: str) -> datetime | date | None:
    """An ISO 8601 date or date-time (a time-zone offset is accepted and dropped: the wall-clock
    time is kept), else None.

    >>> parse_iso("2015-03-30T14:05"), parse_iso("2015-03-30")
    (datetime.datetime(2015, 3, 30, 14, 5), datetime.date(2015, 3, 30))
    >>> parse_iso("2015-13-01"), parse_iso("yesterday")
    (None, None)
    """
    t = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
            out = date.fromisoformat(t)
        else:
            out = datetime.fromisoformat(t.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return None
    return out if YEARS[0] <= out.year <= YEARS[1] else None


def parse_scan_shape(text: str) -> tuple[int, int, int] | None:
    """``'[512, 512, 2048]'`` or ``'512x512x2048'`` -> ``(512, 512, 2048)``, else None.

    >>> parse_scan_shape("[512, 512, 2048]"), parse_scan_shape("400x400x1024"), parse_scan_shape("[0, 5, 5]")
    ((512, 512, 2048), (400, 400, 1024), None)
    """
    m = _SHAPE.match(text)
    if not m:
        return None
    shape = tuple(int(g) for g in m.groups())
    return shape if min(shape) > 0 else None


def _clean(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def parse_acquisition(raw: pd.DataFrame, subjects: list[str]):
    """Acquisition fields of every row of ``raw`` (text cells, as read by ``read_scan_csv``).

    ``subjects``: each row's parsed subject (a session is a subject and a date). Returns
    ``(fields, warnings, notes)``: ``fields`` a DataFrame with :data:`OUT_COLUMNS`, one row per
    input row (NaN / empty = unknown); ``warnings`` a list per row of ``(code, column, value)``;
    ``notes`` a dict of facts for the log (e.g. how many times were read as afternoon).
    """
    cols = list(raw.columns)
    col = {f: column_of(cols, f) for f in COLUMNS}
    n = len(raw)
    records = raw.to_dict("records")
    warnings: list[list[tuple[str, str, str]]] = [[] for _ in range(n)]
    out = {c: [np.nan] * n for c in ("fov_x_mm", "fov_y_mm", "depth_mm", "session_minutes",
                                     "spacing_x_mm", "spacing_y_mm", "spacing_z_mm")}
    for c in ("eye", "acquired_at", "session", "protocol", "device", "scan_shape", "notes"):
        out[c] = [""] * n
    dates: list[date | None] = [None] * n
    clocks: list[tuple | None] = [None] * n
    stamps: list[datetime | None] = [None] * n

    def cell(rec, field):
        return _clean(rec.get(col[field])) if col[field] else ""

    def take(rec, field, parse, code, w):
        """``field``'s cell parsed; None when empty, or when unreadable (then the warning ``code``)."""
        text = cell(rec, field)
        if is_missing(text):
            return None
        value = parse(text)
        if value is None:
            w.append((code, col[field], text))
        return value

    for i, rec in enumerate(records):
        w = warnings[i]
        # field of view: fov_x_mm + fov_y_mm, else the scan area
        fx_t, fy_t = cell(rec, "fov_x_mm"), cell(rec, "fov_y_mm")
        if col["fov_x_mm"] or col["fov_y_mm"]:
            if not (is_missing(fx_t) and is_missing(fy_t)):
                fx, fy = parse_mm(fx_t, FOV_MAX_MM), parse_mm(fy_t, FOV_MAX_MM)
                if fx is not None and fy is not None:
                    out["fov_x_mm"][i], out["fov_y_mm"][i] = fx, fy
                else:
                    bad_col, bad_val = ((col["fov_x_mm"] or "fov_x_mm", fx_t) if fx is None
                                        else (col["fov_y_mm"] or "fov_y_mm", fy_t))
                    w.append(("fov_invalid", bad_col, bad_val or "(empty)"))
        if np.isnan(out["fov_x_mm"][i]):
            area = take(rec, "scan_area", parse_scan_area, "scan_area_invalid", w)
            if area is not None:
                out["fov_x_mm"][i], out["fov_y_mm"][i] = area
        depth = take(rec, "depth_mm", lambda t: parse_mm(t, DEPTH_MAX_MM), "depth_invalid", w)
        if depth is not None:
            out["depth_mm"][i] = depth
        eye = take(rec, "eye", parse_eye, "eye_invalid", w)
        if eye is not None:
            out["eye"][i] = eye
        # when: acquired_at (ISO), else scan date + scan time
        at = take(rec, "acquired_at", parse_iso, "acquired_at_invalid", w)
        if isinstance(at, datetime):
            stamps[i], dates[i] = at, at.date()
        elif at is not None:
            dates[i] = at
        if dates[i] is None and stamps[i] is None:
            dates[i] = take(rec, "scan_date", parse_us_date, "date_invalid", w)
            clocks[i] = take(rec, "scan_time", parse_clock, "time_invalid", w)
        for f in ("protocol", "device", "notes"):
            t = cell(rec, f)
            out[f][i] = "" if is_missing(t) else " ".join(t.split())  # one line: no control characters
        shape = take(rec, "scan_shape", parse_scan_shape, "scan_shape_invalid", w)
        if shape is not None:
            out["scan_shape"][i] = "x".join(map(str, shape))
        if not out["protocol"][i] and not np.isnan(out["fov_x_mm"][i]):  # the field of view names the protocol
            out["protocol"][i] = f"{out['fov_x_mm'][i]:g}x{out['fov_y_mm'][i]:g}"

    # a fill series: a subject's dated rows (in table order) one day apart over FILL_SERIES_MIN rows
    by_subject: dict[str, list[int]] = {}
    for i in range(n):
        if dates[i] is not None and subjects[i]:
            by_subject.setdefault(subjects[i], []).append(i)
    for rows in by_subject.values():
        start = 0
        for k in range(1, len(rows) + 1):
            if k < len(rows) and (dates[rows[k]] - dates[rows[k - 1]]).days == 1:
                continue
            if k - start >= FILL_SERIES_MIN:
                for i in rows[start + 1:k]:
                    warnings[i].append(("date_fill_series", col["scan_date"] or col["acquired_at"],
                                        cell(records[i], "scan_date") or cell(records[i], "acquired_at")))
                    dates[i], stamps[i] = None, None
            start = k

    # sessions: a subject and a date. A seed time without AM/PM is on a 12-hour clock when the
    # session has no hour above 12 (or 0): its hours 1 to 7 are then the afternoon's (13 to 19)
    afternoon = 0
    by_session: dict[str, list[int]] = {}
    for i in range(n):
        if dates[i] is not None and subjects[i]:
            out["session"][i] = f"{subjects[i]} {dates[i].isoformat()}"
            by_session.setdefault(out["session"][i], []).append(i)
    for rows in by_session.values():
        timed = [i for i in rows if clocks[i] is not None]
        twelve = bool(timed) and not any(clocks[i][3] or clocks[i][0] > 12 or clocks[i][0] == 0 for i in timed)
        for i in timed:
            h, mi, s, ampm = clocks[i]
            if ampm == "P" and h < 12:
                h += 12
            elif ampm == "A" and h == 12:
                h = 0
            elif twelve and 1 <= h <= 7:
                h += 12
                afternoon += 1
            stamps[i] = datetime(dates[i].year, dates[i].month, dates[i].day, h, mi, s)
        first = min((stamps[i] for i in rows if stamps[i] is not None), default=None)
        for i in rows:
            if stamps[i] is not None:
                out["session_minutes"][i] = (stamps[i] - first).total_seconds() / 60.0
    for i in range(n):
        if stamps[i] is not None:
            out["acquired_at"][i] = stamps[i].isoformat()
        elif dates[i] is not None:
            out["acquired_at"][i] = dates[i].isoformat()
    fields = pd.DataFrame({c: out[c] for c in OUT_COLUMNS})
    facts = dict(times_read_as_afternoon=afternoon, sessions=len(by_session),
                 columns={f: c for f, c in col.items() if c})
    return fields, warnings, facts
