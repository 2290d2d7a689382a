"""Reading and validating scan tables.

Two formats are understood:

* **seed**: the original study's label table (``id, monkey_id, iop, icp, torch_present, ...``),
  volumes at ``<scans>/<id>.pt``. Its eligibility rule is the seed's: a volume present,
  numeric ICP > 0, IOP present and a monkey id.
* **plain**: ``scan_id, subject, iop, icp, path`` with ``path`` relative to the table's folder
  (or absolute). Empty ``path`` everywhere means a labels-only table.

Either format may carry ``iop_step`` and ``icp_step`` (both or neither): each scan's pressure step
(set levels or any labels), kept in the cohort for trending's change pairs; a blank step leaves
that scan out of trending only.

Every row of the input ends up in the data-quality table as ``kept`` or ``dropped`` with a
reason code, the column it concerns and the offending value: nothing is dropped silently.
Rows are numbered as data rows, 1-based (row 1 is the line after the header).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from icpcv.cohort import acquisition as acq
from icpcv.cohort.geometry import REASONS as GEOMETRY_REASONS
from icpcv.cohort.volumes import escapes_folder, volume_file_problem
from icpcv.errors import InputError
from icpcv.plausible import (ICP_MMHG, IOP_MMHG, SHAPE_FACTOR_MAX, VOXEL_ABS_MAX, VOXEL_Z_MAX, describe, in_range,
                             is_missing)
from icpcv.util import clip, has_control_character, natural_sorted, parse_decimal, subject_label

SEED_COLUMNS = ("id", "monkey_id", "iop", "icp", "torch_present")
PLAIN_COLUMNS = ("scan_id", "subject", "iop", "icp", "path")
#: optional, in either format: each scan's pressure step (set levels or any labels), for trending's change pairs
STEP_COLUMNS = ("iop_step", "icp_step")

#: reason code -> one-line explanation shown in the report
REASONS = {
    "scan_id_missing": "no scan id (an empty cell, or NA, NaN, None, null: a missing value)",
    "duplicate_scan_id": "the scan id appears on an earlier row",
    "subject_missing": "no subject (monkey) id (an empty cell, or NA, NaN, None, null: a missing value)",
    "control_character": "the scan id, subject or path holds a control character (a NUL byte, a line break or tab "
                         "inside the cell): no lab writes one, and a NUL is lost in arrays and refused in file names",
    "icp_missing": "ICP cell is empty (or NA, NaN, None, null: a missing value)",
    "icp_range": "ICP written as a range (e.g. '0-2'), not a single value",
    "icp_not_numeric": "ICP is not a plain decimal number (e.g. 12.5 or 1.25e1; digit separators such as 2_0 or "
                       "1,5, non-ASCII digits and text are not read as numbers)",
    "icp_out_of_range": f"ICP outside the plausible {describe(ICP_MMHG)} (a typo, another unit or a broken export)",
    "icp_not_positive": "ICP <= 0 (the seed's rule keeps ICP > 0)",
    "iop_missing": "IOP cell is empty (or NA, NaN, None, null) and a selected model needs IOP",
    "iop_not_numeric": "IOP is not a plain decimal number (e.g. 12.5 or 1.25e1; digit separators such as 2_0 or "
                       "1,5, non-ASCII digits and text are not read as numbers)",
    "iop_out_of_range": f"IOP outside the plausible {describe(IOP_MMHG)} (a typo, another unit or a broken export)",
    "torch_present_invalid": "torch_present is neither true nor false (TRUE/FALSE, 1/0, yes/no)",
    "no_volume": "the table says no model-ready volume exists (torch_present is FALSE)",
    "path_outside": "the scan id (seed format: its <id>.pt under --scans) or the relative path (plain format: "
                    "relative to the table's folder) climbs out of its folder ('../'); give a path inside it, or "
                    "an absolute path (plain format)",
    "volume_file_missing": "the volume file does not exist (value says where it was looked for; a broken "
                           "symbolic link says so)",
    "volume_file_unreadable": "the volume file cannot be opened (a symbolic link loop, a folder, no read "
                              "permission; value says which)",
    "bad_volume": "the volume could not be used (unreadable, truncated, non-finite voxels or not 3-D; "
                  "skipped with --skip-bad-scans, detail says which)",
    "bad_volume_shape": f"the volume's shape is not the cohort's: more than a factor {SHAPE_FACTOR_MAX:g} off its "
                        "typical size along an axis, axes that look swapped, or an axis of one voxel "
                        "(skipped with --skip-bad-scans, detail says which)",
    "bad_volume_values": f"implausible voxel values: beyond ±{VOXEL_ABS_MAX:g}, more than {VOXEL_Z_MAX:g} of the "
                         "cohort's voxel standard deviations from its typical voxel, or one value everywhere "
                         "(skipped with --skip-bad-scans, detail says which)",
    **GEOMETRY_REASONS,  # a volume that cannot be one field of view (docs/acquisition.md)
}
#: warning code -> meaning: an unreadable acquisition field (data_quality.csv's warnings column; the scan is kept)
WARNINGS = acq.WARNINGS

_RANGE = re.compile(r"^\s*-?\d+(\.\d+)?\s*-\s*\d+(\.\d+)?\s*$")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


@dataclass
class ScanTable:
    """Validated scans plus the data-quality table accounting for every input row."""

    scans: pd.DataFrame  # scan_id, subject, iop, icp, path, row
    quality: pd.DataFrame  # row, scan_id, subject, status, reason, column, value, detail
    source: str
    fmt: str
    has_volumes: bool
    meta: dict = field(default_factory=dict)

    @property
    def subjects(self) -> list[str]:
        return natural_sorted(self.scans["subject"].unique())


def detect_format(columns: Iterable[str], source: str = "table") -> str:
    cols = set(columns)
    if set(PLAIN_COLUMNS[:4]) <= cols:
        return "plain"
    if set(SEED_COLUMNS[:4]) <= cols:
        return "seed"
    raise InputError(
        f"{source}: cannot tell the table's format from its header: expected the seed's columns "
        f"({', '.join(SEED_COLUMNS)}) or the plain columns ({', '.join(PLAIN_COLUMNS)}); "
        f"found {', '.join(sorted(cols)) or 'none'}"
    )


def read_scan_csv(path: Path) -> pd.DataFrame:
    """A scan table as text cells (nothing coerced, so a bad cell can be quoted back), header stripped.

    UTF-8 text (a byte-order mark is dropped); anything else is an InputError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: scan table not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a scan table (a CSV file)")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                         "save the table as UTF-8 CSV") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty (no header)") from None
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read as CSV ({str(exc).strip()})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw


def table_has_volumes(path, scans_dir=None) -> bool:
    """Whether a scan table names volumes (the default --models depend on it): the seed's format with
    a --scans folder, or a plain table with a filled path column. InputError for an unreadable table."""
    raw = read_scan_csv(Path(path))
    if detect_format(raw.columns, str(path)) == "seed":
        return scans_dir is not None
    return "path" in raw.columns and any(_clean(v) for v in raw["path"])


def _clean(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _parse_number(text: str) -> float | None:
    """A cell as a float: plain decimal numbers only (icpcv.util.parse_decimal); infinities are numbers
    (out of every range), NaN, text, '2_0' and full-width digits are not."""
    return parse_decimal(text)


def _pressure_problem(name: str, text: str, value: float | None, bounds) -> tuple[str, str, str] | None:
    """The reason a pressure cell is unusable, or None: not a number, or outside its plausible range."""
    if value is None:
        code = f"{name}_range" if name == "icp" and _RANGE.match(text) else f"{name}_not_numeric"
        return code, name, text
    if not in_range(value, bounds):
        return f"{name}_out_of_range", name, text
    return None


def read_scan_table(
    path: str | Path,
    *,
    scans_dir: str | Path | None = None,
    need_iop: bool = True,
    need_volumes: bool = False,
    fmt: str | None = None,
    need_icp: bool = True,
) -> ScanTable:
    """Read and validate a scan table (seed or plain format) into a :class:`ScanTable`.

    ``need_iop``: rows with missing IOP are dropped (reason ``iop_missing``) only when a selected
    model needs IOP, or always for the seed format (its eligibility rule requires IOP).
    ``need_volumes``: a model needs volumes, so a table without any is an error.
    ``need_icp=False`` (``icpcv predict``: labels are optional): a missing ICP is no reason to drop a
    row (its ``icp`` is NaN); an ICP given is checked as always.
    """
    path = Path(path)
    raw = read_scan_csv(path)
    fmt = fmt or detect_format(raw.columns, str(path))
    if fmt == "seed":
        id_col, subj_col = "id", "monkey_id"
        if "torch_present" not in raw.columns:
            raise InputError(f"{path}: seed-format table lacks the column torch_present")
    else:
        id_col, subj_col = "scan_id", "subject"
    scans_dir = Path(scans_dir) if scans_dir is not None else None
    if fmt == "seed" and scans_dir is not None and not scans_dir.is_dir():  # not one volume_file_missing per row
        raise InputError(f"{scans_dir}: --scans folder not found (it should hold the volumes <id>.pt)")
    base = path.parent

    if fmt == "seed":
        has_volumes = scans_dir is not None
    else:
        has_volumes = "path" in raw.columns and any(_clean(v) for v in raw["path"])
    if need_volumes and not has_volumes:
        hint = "pass --scans DIR holding <id>.pt" if fmt == "seed" else "fill the path column"
        raise InputError(f"{path}: a selected model needs volumes, but the table has none ({hint})")
    require_iop = need_iop or fmt == "seed"
    given_steps = [c for c in STEP_COLUMNS if c in raw.columns]
    if len(given_steps) == 1:
        other = next(c for c in STEP_COLUMNS if c not in given_steps)
        raise InputError(f"{path}: has the column {given_steps[0]} but not {other}; give both pressure-step columns "
                         f"(trending pairs ICP steps within an IOP step) or neither (steps then come from the "
                         f"pressures)")

    records = raw.to_dict("records")
    subjects = [subject_label(_clean(rec.get(subj_col))) for rec in records]  # '5', '5.0', '05': one monkey
    with_acq = acq.has_acquisition(raw.columns) or any(acq.column_of(raw.columns, f) for f in ("scan_shape", "notes"))
    if with_acq:  # every row's fields (sessions span kept and dropped rows); a bad value is a warning
        acq_fields, acq_warnings, acq_facts = acq.parse_acquisition(raw, subjects)
    quality_rows = []
    kept = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(records, start=1):
        scan_id = _clean(rec.get(id_col))
        subject = subjects[i - 1]
        problems: list[tuple[str, str, str]] = []  # (reason, column, value)
        if is_missing(scan_id):
            problems.append(("scan_id_missing", id_col, scan_id))
        elif has_control_character(scan_id):
            problems.append(("control_character", id_col, repr(scan_id)))
        elif scan_id in seen:
            problems.append(("duplicate_scan_id", id_col, f"{scan_id} (first on row {seen[scan_id]})"))
        else:
            seen[scan_id] = i
        if is_missing(subject):
            problems.append(("subject_missing", subj_col, subject))
        elif has_control_character(subject):
            problems.append(("control_character", subj_col, repr(subject)))
        icp_txt = _clean(rec.get("icp"))
        icp = _parse_number(icp_txt)
        if is_missing(icp_txt) and not need_icp:  # issue 20: a new scan to predict may have no ICP
            bad_icp, icp = None, np.nan
        else:
            bad_icp = ("icp_missing", "icp", icp_txt) if is_missing(icp_txt) else \
                _pressure_problem("icp", icp_txt, icp, ICP_MMHG)
        if bad_icp:
            problems.append(bad_icp)
        elif fmt == "seed" and icp is not None and icp <= 0:  # the seed's eligibility rule, on top of the plausible range
            problems.append(("icp_not_positive", "icp", icp_txt))
        iop_txt = _clean(rec.get("iop"))
        iop = None if is_missing(iop_txt) else _parse_number(iop_txt)
        if not is_missing(iop_txt):  # an IOP given is checked even when no model needs it: it is shown and analysed
            bad_iop = _pressure_problem("iop", iop_txt, iop, IOP_MMHG)
            if bad_iop:
                problems.append(bad_iop)
        elif require_iop:
            problems.append(("iop_missing", "iop", iop_txt))
        vol_path = None
        if fmt == "seed":
            present = _clean(rec.get("torch_present")).lower()
            if present not in _TRUE | _FALSE:
                problems.append(("torch_present_invalid", "torch_present", present))
            elif present in _FALSE:
                problems.append(("no_volume", "torch_present", present or "(empty)"))
            elif has_control_character(scan_id):
                pass  # control_character above: no file name holds one
            elif scans_dir is not None and scan_id and escapes_folder(scans_dir, f"{scan_id}.pt"):
                problems.append(("path_outside", "id", f"{scan_id} ({scans_dir / scan_id}.pt is outside --scans "
                                                       f"{scans_dir})"))
            elif scans_dir is not None and scan_id:
                vol_path = scans_dir / f"{scan_id}.pt"
                bad_file = volume_file_problem(vol_path)
                if bad_file:
                    problems.append((bad_file[0], "id", bad_file[1]))
        elif has_volumes:
            p = _clean(rec.get("path"))
            if not p:
                problems.append(("volume_file_missing", "path", "(empty)"))
            elif has_control_character(p):
                problems.append(("control_character", "path", repr(p)))
            elif not Path(p).is_absolute() and escapes_folder(base, p):
                problems.append(("path_outside", "path", f"{p} (outside the table's folder {base})"))
            else:
                vol_path = Path(p) if Path(p).is_absolute() else base / p
                bad_file = volume_file_problem(vol_path)
                if bad_file:
                    problems.append((bad_file[0], "path", bad_file[1]))
        warned = acq_warnings[i - 1] if with_acq else []
        extra = dict(warnings="; ".join(f"{r} (column {c}, value {v!r})" for r, c, v in warned)) if with_acq else {}
        if problems:
            problems = [(r, c, clip(v)) for r, c, v in problems]  # a 20 MB cell is named, not copied
            reason, column, value = problems[0]
            quality_rows.append(dict(row=i, scan_id=clip(scan_id), subject=clip(subject), status="dropped",
                                     reason=reason, column=column, value=value,
                                     all_reasons=",".join(r for r, _, _ in problems), detail=_describe(problems),
                                     **extra))
        else:  # kept: an unreadable acquisition field is a warning (column warnings), never a reason to drop
            quality_rows.append(dict(row=i, scan_id=scan_id, subject=subject, status="kept", reason="",
                                     column="", value="", all_reasons="", detail="", **extra))
        if not problems:
            kept.append(dict(scan_id=scan_id, subject=subject, iop=iop if iop is not None else np.nan,
                             icp=icp, path=str(vol_path) if vol_path is not None else "", row=i,
                             **{c: _clean(rec.get(c)) for c in given_steps},  # a blank step: left out of trending
                             **(acq_fields.iloc[i - 1].to_dict() if with_acq else {})))
    quality = pd.DataFrame(quality_rows, columns=["row", "scan_id", "subject", "status", "reason", "column",
                                                  "value", "all_reasons", "detail", *(["warnings"] if with_acq else [])])
    scans = pd.DataFrame(kept, columns=["scan_id", "subject", "iop", "icp", "path", "row", *given_steps,
                                        *(acq.OUT_COLUMNS if with_acq else ())])
    if scans.empty:
        counts = ", ".join(f"{code} ({n})" for code, n in quality["reason"].value_counts().items())
        raise InputError(f"{path}: no row is usable (reasons: {counts}; docs/inputs.md says what each code means)")
    meta = {"scans_dir": str(scans_dir) if scans_dir else None}
    if with_acq:
        meta["acquisition"] = acq_facts
    return ScanTable(scans=scans.reset_index(drop=True), quality=quality, source=str(path), fmt=fmt,
                     has_volumes=has_volumes, meta=meta)


def _describe(problems) -> str:
    """``reason meaning (column c, value 'v'); ...`` of a row's problems."""
    return "; ".join(f"{REASONS.get(r, r)} (column {c}{', value ' + repr(v) if v else ''})" for r, c, v in problems)
