"""``icpcv prepare``: raw OCT exports -> model-ready ``.npy`` volumes + a plain scan table.

What it writes into ``--out``:

* ``volumes/<scan id>.npy`` -- float32 (default), shape = the target (X, Y, Z=depth), C order;
* ``table.csv`` -- the plain format ``scan_id, subject, iop, icp, path`` (+ ``raw_path`` and the
  input's other columns, unchanged) that ``icpcv run --manifest`` reads; rows whose volume failed
  are left out of it (they are in ``quality.csv``);
* ``quality.csv`` -- one row per input row: status (converted, unchanged, skipped), reason, raw
  shape and type, intensity percentiles, saturated and empty fractions, outlier flags;
* ``prepare_manifest.json`` -- per output: the raw file's fingerprint and sha256, the target
  (shape, type, code version) and the quality numbers; a rerun converts only what changed.
"""
from __future__ import annotations

import os
import re
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from icpcv import __version__
from icpcv.cohort import geometry
from icpcv.cohort.acquisition import parse_acquisition
from icpcv.cohort.geometry import ACQ_COLUMNS
from icpcv.cohort.table import detect_format, read_scan_csv
from icpcv.cohort.volumes import escapes_folder, shape_problem, typical_shape
from icpcv.errors import InputError
from icpcv.prepare.layout import cropped_slabs, relabel
from icpcv.prepare.resample import ALGORITHM, RawStats, StreamResampler, saturation_value
from icpcv.prepare.sources import (REASONS, VolumeError, content_hash, fingerprint, not_found, open_source, raw_format,
                                   safe_name)
from icpcv.progress import Progress
from icpcv.rundir import RunLock
from icpcv.util import (atomic_write, atomic_write_json, atomic_write_text, canonical_hash, clip, has_control_character,
                        read_json, subject_label, visible_table)
from icpcv.writable import check_inputs_kept, check_output_dir

#: written into the manifest; a change reconverts everything
CODE_VERSION = f"icpcv {__version__}; {ALGORITHM}; prepare-1"
MANIFEST = "prepare_manifest.json"
OUTPUT_DTYPES = ("float32", "float16", "uint8")
SEED_PATH_COLUMNS = ("constructed_filepath", "path", "raw_path", "filepath", "file_path", "file")

#: outlier rules of the quality table
ROBUST_Z_MAX = 3.5
SATURATED_MAX = 0.01
EMPTY_MAX = 0.5

EXIT_SKIPPED = 3

QUALITY_COLUMNS = ["row", "scan_id", "subject", "source", "format", "status", "reason", "detail", "raw_shape",
                   "raw_dtype", "output", "p1", "p50", "p99", "percentile_basis", "saturation_value",
                   "frac_saturated", "frac_zero", "median_robust_z", "flag_median_outlier", "flag_saturated",
                   "flag_empty", "flag_shape_mismatch", "flags", "notes", "sha256"]
#: issue 19: each row's geometry (docs/acquisition.md), after the columns above
GEOMETRY_COLUMNS = ["fov_x_mm", "fov_y_mm", "depth_mm", "eye", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm",
                    "voxel_x_um", "voxel_y_um", "voxel_z_um", "mirrored", "warnings"]


@dataclass(frozen=True)
class PrepareOptions:
    shape: tuple[int, int, int]  # (X, Y, Z=depth)
    dtype: str = "float32"
    saturation: float | None = None  # None: the raw integer type's maximum; floats: not counted
    workers: int = 1
    force: bool = False  # reconvert everything
    verify: bool = False  # re-hash raw files even when size and mtime are unchanged
    # issue 19: geometry (icpcv.cohort.geometry; docs/acquisition.md)
    fov_mm: tuple[float, float] | None = None  # crop to this field of view (X, Y) in mm before resampling
    depth_mm: float | None = None  # ... and to this depth (Z) in mm
    mirror_os: bool = False  # flip left eyes along X into the right eye's orientation
    axes: str | None = None  # the raw layout when it is not X, Y, Z

    @property
    def geometry(self) -> dict | None:
        geo = dict(fov_mm=list(self.fov_mm) if self.fov_mm else None, depth_mm=self.depth_mm,
                   mirror_os=bool(self.mirror_os), axes=self.axes)
        return geo if any(geo.values()) else None

    def target(self) -> dict:
        """Everything that decides the bytes of an output (and its quality row); the geometry only
        when an option is on (so that earlier manifests hold)."""
        d = dict(shape=list(self.shape), dtype=self.dtype, saturation=self.saturation, code=CODE_VERSION)
        if self.geometry:
            d["geometry"] = self.geometry
        return d

    @property
    def target_key(self) -> str:
        return canonical_hash(self.target())


@dataclass
class Row:
    row: int  # 1-based data row of the input table
    scan_id: str
    subject: str
    raw: str  # as written in the table
    path: Path | None  # resolved
    out: str  # output path relative to --out
    record: dict  # the input row, all columns, as strings
    scan_shape: str = ""
    # issue 19: the table's field of view (X, Y) and depth in mm, eye, and acquisition warnings
    fov: tuple | None = None
    depth: float | None = None
    eye: str = ""
    warnings: list = None

    @property
    def geo(self) -> tuple:
        return (list(self.fov) if self.fov else None, self.depth, self.eye)


# --- the input table -------------------------------------------------------------------------

def read_table(table: Path, raw_dir: Path, path_column: str | None = None):
    """Rows of a seed- or plain-format table with their raw paths resolved against ``raw_dir``."""
    df = read_scan_csv(table)
    cols = set(df.columns)
    fmt = detect_format(df.columns, str(table))
    id_col, subj_col = ("scan_id", "subject") if fmt == "plain" else ("id", "monkey_id")
    if path_column:
        if path_column not in cols:
            raise InputError(f"{table}: --path-column {path_column!r} is not a column (columns: "
                             f"{', '.join(df.columns)})")
        path_col = path_column
    elif fmt == "plain":
        if "path" not in cols:
            raise InputError(f"{table}: plain-format table lacks the column path (raw files relative to --raw)")
        path_col = "path"
    else:
        found = [c for c in SEED_PATH_COLUMNS if c in cols]
        if not found:
            raise InputError(f"{table}: no column names the raw files (looked for {', '.join(SEED_PATH_COLUMNS)}); "
                             "name it with --path-column")
        path_col = found[0]
    if df.empty:
        raise InputError(f"{table}: no data rows (only a header); nothing to prepare")
    rows, used = [], {}
    fields, warned, _ = parse_acquisition(df, [subject_label(str(v).strip()) for v in df[subj_col]])
    for i, rec in enumerate(df.to_dict("records"), start=1):
        scan_id = rec[id_col].strip()
        raw = rec[path_col].strip()
        path = None
        if raw:
            path = Path(raw) if Path(raw).is_absolute() else raw_dir / raw
        stem = safe_name(scan_id) or f"row{i}"
        if stem.lower() in used:  # a duplicate or clashing id: keep both volumes apart
            stem = f"{stem}__row{i}"
        used[stem.lower()] = i
        f = fields.iloc[i - 1]
        fov = (float(f["fov_x_mm"]), float(f["fov_y_mm"])) if pd.notna(f["fov_x_mm"]) else None
        rows.append(Row(row=i, scan_id=scan_id, subject=rec[subj_col].strip(), raw=raw, path=path,
                        out=f"volumes/{stem}.npy", record=rec, scan_shape=rec.get("scan_shape", ""),
                        fov=fov, depth=float(f["depth_mm"]) if pd.notna(f["depth_mm"]) else None,
                        eye=str(f["eye"] or ""), warnings=warned[i - 1]))
    extras = [c for c in df.columns if c not in {id_col, subj_col, "iop", "icp", path_col, "scan_id", "subject",
                                                 "path", "raw_path"}]
    return rows, dict(fmt=fmt, id_col=id_col, subject_col=subj_col, path_col=path_col, extras=extras,
                      n_rows=len(df))


# --- one volume --------------------------------------------------------------------------------

def atomic_save_npy(path: Path, arr: np.ndarray) -> int:
    """np.save through :func:`icpcv.util.atomic_write` (temporary file, fsync, rename); returns the size."""
    atomic_write(path, lambda fh: np.save(fh, arr, allow_pickle=False))
    return path.stat().st_size


def _cast(arr: np.ndarray, dtype: str, path: Path) -> np.ndarray:
    if dtype == "float32":
        return arr
    lo, hi = float(arr.min()), float(arr.max())
    if dtype == "float16":
        if max(abs(lo), abs(hi)) > float(np.finfo(np.float16).max):
            raise VolumeError("out_of_range", f"{path}: resampled values span {lo:g}..{hi:g}, beyond float16's "
                                              "range; use --dtype float32")
        return arr.astype(np.float16)
    if lo < -0.5 or hi >= 255.5:
        raise VolumeError("out_of_range", f"{path}: resampled values span {lo:g}..{hi:g}, outside uint8's 0..255; "
                                          "use --dtype float32")
    return np.rint(arr).astype(np.uint8)


def peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def convert_volume(raw: str | Path, out: str | Path, options: PrepareOptions, geo=None) -> dict:
    """Stream one raw volume into ``out`` (atomically); returns its quality numbers.

    ``geo``: the table's ``(field of view (X, Y) mm or None, depth mm or None, eye)`` of this scan.
    With ``options.fov_mm`` / ``depth_mm`` the centred box of that field of view is cut out before
    resampling (the file's own spacing stands in where the table gives no field of view); with
    ``options.mirror_os`` a left eye is flipped along X. Raises :class:`VolumeError` for a bad
    file, a line scan, or a field of view smaller than the target (never stretched).
    """
    raw, out = Path(raw), Path(out)
    fov, depth, eye = geo or (None, None, "")
    fov = tuple(fov) if fov else None
    if fov is not None and geometry.is_line_scan(*fov):  # the table says so: the file is not even opened
        raise VolumeError("line_scan", f"{raw}: the table's field of view {fov[0]:g}x{fov[1]:g} mm is a line scan")
    src = open_source(raw)
    extra = {}
    try:
        view = relabel(src, options.axes)
        spacing = view.spacing_mm
        if spacing is not None:
            extra.update({f"spacing_{a}_mm": v for a, v in zip("xyz", spacing) if v is not None})
            clash = geometry.spacing_mismatch(spacing, view.shape, fov, depth)
            if clash:
                extra["warnings"] = f"spacing_fov_mismatch (column path, value {clash!r})"
            if fov is None and spacing[0] and spacing[1]:
                fov = (spacing[0] * view.shape[0], spacing[1] * view.shape[1])
            if depth is None and spacing[2]:
                depth = spacing[2] * view.shape[2]
        if src.device:
            extra["device"] = src.device
        if src.eye:  # the file's eye stands in where the table gives none; a disagreement is a warning
            extra["file_eye"] = src.eye
            if eye and eye != src.eye:
                clash = f"eye_mismatch (column eye, value {eye!r}; the file says {src.eye!r}: the table's kept)"
                extra["warnings"] = "; ".join(w for w in (extra.get("warnings"), clash) if w)
            eye = eye or src.eye
            extra["eye"] = eye
        problem = geometry.fov_problem(fov, options.fov_mm, depth, options.depth_mm)
        if problem:
            raise VolumeError(problem[0], f"{raw}: {problem[1]}")
        box = geometry.crop_box(view.shape, fov, options.fov_mm, depth, options.depth_mm)
        if all(b.start == 0 and b.stop == n for b, n in zip(box, view.shape)):
            shape, slabs = view.shape, view.slabs()
        else:
            shape, slabs = cropped_slabs(view, box)
            src.notes.append(f"cropped to {'x'.join(str(n) for n in shape)} voxels (--fov-mm/--depth-mm)")
        tx, ty, tz = geometry.voxel_um(options.fov_mm or fov, options.depth_mm or depth, options.shape)
        extra.update({k: v for k, v in (("voxel_x_um", tx), ("voxel_y_um", ty), ("voxel_z_um", tz))
                      if not np.isnan(v)})
        if fov is not None:
            extra.update(fov_x_mm=fov[0], fov_y_mm=fov[1])
        if depth is not None:
            extra["depth_mm"] = depth
        sat = saturation_value(src.dtype, options.saturation)
        stats = RawStats(src.dtype, int(np.prod(shape)), sat)
        resampler = StreamResampler(shape, options.shape, view.native_axes, view.stream)
        for start, slab in slabs:
            stats.update(slab)
            if stats.nonfinite:
                raise VolumeError("non_finite", f"{raw}: holds NaN or infinite voxels ({stats.nonfinite} in the "
                                                f"slab starting at {'XYZ'[view.native_axes[view.stream]]}={start}); "
                                                "fix or exclude the scan")
            resampler.add(start, slab)
        volume = resampler.result()
    finally:
        src.close()
    if stats.n != int(np.prod(shape)):
        raise VolumeError("truncated", f"{raw}: read {stats.n} of {int(np.prod(shape))} voxels")
    stats.finish()
    if options.mirror_os and eye == "OS":  # after resampling: its operators are mirror-symmetric along X
        volume = np.ascontiguousarray(volume[::-1])
        extra["mirrored"] = "OS->OD"
    volume = _cast(volume, options.dtype, raw)
    size = atomic_save_npy(out, volume)
    (p1, p50, p99), basis = stats.percentiles()
    n = max(stats.n, 1)
    return dict(format=src.fmt, raw_shape="x".join(str(s) for s in view.shape), raw_dtype=str(src.dtype),
                p1=p1, p50=p50, p99=p99, percentile_basis=basis, saturation_value=sat,
                frac_saturated=(stats.saturated / n) if sat is not None else None, frac_zero=stats.zeros / n,
                notes="; ".join(src.notes), out_size=size, **extra)


#: quality-record keys that only a file's own geometry sets (a reader's Source.spacing_mm/eye/device)
FILE_GEOMETRY_KEYS = ("spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "device", "file_eye")
#: acquisition columns table.csv carries when some converted file gave geometry
TABLE_ACQ_COLUMNS = [c for c in ACQ_COLUMNS if c in ("fov_x_mm", "fov_y_mm", "depth_mm", "eye", "device",
                                                      "spacing_x_mm", "spacing_y_mm", "spacing_z_mm")]


def acquisition_columns(rows: list[Row], results: dict[int, dict]) -> dict:
    """Per acquisition column, the value of every converted row: the table's own where it gives one,
    else what the file gave (its spacing, the field of view and depth it spans, its eye and device),
    so that `icpcv run --manifest table.csv` records the file's geometry for each scan.

    Only when some converted file gave geometry: a prepare run on files without any writes the same
    table.csv as before. Disagreements between table and file are warnings of the quality row."""
    quality = {r.row: results[r.row].get("quality") or {} for r in rows}
    if not any(k in q for q in quality.values() for k in FILE_GEOMETRY_KEYS):
        return {}
    columns = {}
    for c in TABLE_ACQ_COLUMNS:
        values = []
        for r in rows:
            q = quality[r.row]
            if c in ("fov_x_mm", "fov_y_mm", "depth_mm"):  # convert_volume's: the table's, else the file's
                value = q.get(c)
            elif c == "eye":  # the table's parsed eye (`eye` or the seed's `eyeball (od or os)`), else the file's
                value = r.eye or q.get("eye")
            else:
                value = str(r.record.get(c, "") or "").strip() or q.get(c)
            values.append("" if value is None else value)
        columns[c] = values
    return columns


def _one_line(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _task(raw: str, out: str, options: PrepareOptions, previous: dict | None, geo=None) -> dict:
    """Worker entry point: never raises for a bad file; returns a result record."""
    t0 = time.perf_counter()
    rec = dict(raw=raw, out=out)
    try:
        fp = fingerprint(Path(raw))
        digest = content_hash(Path(raw))
        rec.update(fingerprint=fp, sha256=digest)
        if previous and previous.get("sha256") == digest and Path(out).exists() \
                and Path(out).stat().st_size == previous.get("out_size"):
            rec.update(status="unchanged", quality=previous["quality"])  # touched, not changed
        else:
            quality = convert_volume(raw, out, options, geo)
            rec.update(status="converted", quality=quality)
    except VolumeError as exc:
        rec.update(status="skipped", reason=exc.reason, detail=exc.detail)
    except FileNotFoundError as exc:
        rec.update(status="skipped", reason="missing", detail=f"{raw}: raw file not found ({exc})")
    except MemoryError:
        rec.update(status="skipped", reason="internal_error", detail=f"{raw}: out of memory while converting")
    except Exception as exc:  # a bug or an unforeseen file problem: keep going; where it happened goes to quality.csv
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        rec.update(status="skipped", reason="internal_error",
                   detail=f"{raw}: {type(exc).__name__}: {_one_line(exc)} (at {Path(frame.filename).name}:"
                          f"{frame.lineno} in {frame.name})")
    rec.update(seconds=time.perf_counter() - t0, peak_rss_mib=peak_rss_mib(), pid=os.getpid())
    return rec


# --- the manifest ------------------------------------------------------------------------------

def load_manifest(out: Path) -> dict:
    p = out / MANIFEST
    if p.exists():
        try:
            m = read_json(p)
            if isinstance(m, dict) and isinstance(m.get("entries"), dict):
                return m
        except (ValueError, OSError):
            pass
        print(f"icpcv prepare: warning: {p} is unreadable; converting everything again", file=sys.stderr)
    return dict(format="icpcv-prepare-manifest", version=1, entries={})


def _clean_temporaries(folder: Path) -> int:
    """Remove temporary files an interrupted run left (``.<name>.npy.<random>.tmp``)."""
    n = 0
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp") and ".npy." in p.name:
                p.unlink(missing_ok=True)
                n += 1
    return n


# --- the quality table -----------------------------------------------------------------------

def robust_z(values: np.ndarray) -> np.ndarray:
    """Modified z-score 0.6745 (x - median) / MAD (Iglewicz & Hoaglin); with MAD = 0 the mean absolute
    deviation (times 1.2533) stands in; NaN for fewer than 3 values."""
    x = np.asarray(values, dtype=float)
    z = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    if ok.sum() < 3:
        return z
    med = np.median(x[ok])
    mad = np.median(np.abs(x[ok] - med))
    if mad > 0:
        z[ok] = 0.6745 * (x[ok] - med) / mad
    else:
        mean_ad = np.mean(np.abs(x[ok] - med))
        z[ok] = (x[ok] - med) / (1.253314 * mean_ad) if mean_ad > 0 else 0.0
    return z


def _shape_mismatch(declared: str, raw_shape: str) -> bool:
    nums = [int(n) for n in re.findall(r"\d+", declared or "")]
    if len(nums) != 3 or not raw_shape:
        return False
    return sorted(nums) != sorted(int(s) for s in raw_shape.split("x"))


def skip_shape_outliers(rows: list[Row], results: dict[int, dict], target) -> None:
    """The run's shape rule (:func:`icpcv.cohort.volumes.shape_problem`) on the raw shapes of the
    volumes that converted: resampled to --shape, a transposed or truncated volume would look like
    the others to ``icpcv run``, so it is skipped here (reason ``wrong_shape``) while its raw
    shape is known. Its output file stays (reused if the cohort changes); table.csv leaves it out."""
    shapes = {}
    for r in rows:
        res = results[r.row]
        raw = (res.get("quality") or {}).get("raw_shape", "") if res["status"] != "skipped" else ""
        parts = raw.split("x")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            shapes[r.row] = tuple(int(p) for p in parts)
    if not shapes:
        return
    typical = typical_shape(shapes.values())
    by_row = {r.row: r for r in rows}
    for row, shape in shapes.items():
        why = shape_problem(shape, typical, target)
        if why:
            results[row] = dict(results[row], status="skipped", reason="wrong_shape", detail=f"{by_row[row].path}: {why}")


def quality_table(rows: list[Row], results: dict[int, dict]) -> pd.DataFrame:
    recs = []
    for r in rows:
        res = results[r.row]
        q = res.get("quality") or {}
        recs.append(dict(row=r.row, scan_id=r.scan_id, subject=r.subject, source=str(r.path) if r.path else "",
                         format=q.get("format", ""), status=res["status"], reason=res.get("reason", ""),
                         detail=res.get("detail", ""), raw_shape=q.get("raw_shape", ""),
                         raw_dtype=q.get("raw_dtype", ""),
                         output=r.out if res["status"] != "skipped" else "",
                         p1=q.get("p1"), p50=q.get("p50"), p99=q.get("p99"),
                         percentile_basis=q.get("percentile_basis", ""), saturation_value=q.get("saturation_value"),
                         frac_saturated=q.get("frac_saturated"), frac_zero=q.get("frac_zero"),
                         notes=q.get("notes", ""), sha256=res.get("sha256", ""),
                         flag_shape_mismatch=_shape_mismatch(r.scan_shape, q.get("raw_shape", "")),
                         **_geometry_cells(r, q)))
    df = pd.DataFrame(recs)
    ok = df["status"] != "skipped"
    z = np.full(len(df), np.nan)
    z[ok.to_numpy()] = robust_z(pd.to_numeric(df.loc[ok, "p50"], errors="coerce").to_numpy(dtype=float))
    df["median_robust_z"] = z
    df["flag_median_outlier"] = np.abs(z) > ROBUST_Z_MAX
    sat = pd.to_numeric(df["frac_saturated"], errors="coerce")
    df["flag_saturated"] = (sat > SATURATED_MAX).fillna(False).astype(bool)
    df["flag_empty"] = (pd.to_numeric(df["frac_zero"], errors="coerce") > EMPTY_MAX).fillna(False).astype(bool)
    for c in ("flag_median_outlier", "flag_saturated", "flag_empty", "flag_shape_mismatch"):
        df[c] = df[c].astype(bool) & ok
    names = {"flag_median_outlier": "median_outlier", "flag_saturated": "saturated", "flag_empty": "empty",
             "flag_shape_mismatch": "shape_mismatch"}
    df["flags"] = [",".join(v for k, v in names.items() if rec[k]) for rec in df.to_dict("records")]
    return df[QUALITY_COLUMNS + GEOMETRY_COLUMNS]


def _geometry_cells(r: Row, q: dict) -> dict:
    """A quality row's geometry: the converted volume's where known, else the table's; the
    table's acquisition warnings and the file's spacing disagreement."""
    fov = (q.get("fov_x_mm"), q.get("fov_y_mm")) if q.get("fov_x_mm") is not None else (r.fov or (None, None))
    warn = [f"{c} (column {col}, value {v!r})" for c, col, v in (r.warnings or [])] + \
        ([q["warnings"]] if q.get("warnings") else [])
    return dict(fov_x_mm=fov[0], fov_y_mm=fov[1], depth_mm=q.get("depth_mm", r.depth),
                eye=r.eye or q.get("eye", ""),
                spacing_x_mm=q.get("spacing_x_mm"), spacing_y_mm=q.get("spacing_y_mm"),
                spacing_z_mm=q.get("spacing_z_mm"), voxel_x_um=q.get("voxel_x_um"), voxel_y_um=q.get("voxel_y_um"),
                voxel_z_um=q.get("voxel_z_um"), mirrored=q.get("mirrored", ""), warnings="; ".join(warn))


# --- the whole run -----------------------------------------------------------------------------

@dataclass
class Summary:
    n_rows: int
    converted: int
    unchanged: int
    skipped: int
    reasons: dict
    flagged: int
    table: Path
    quality: Path
    seconds: float

    @property
    def exit_code(self) -> int:
        return 0 if self.skipped == 0 else EXIT_SKIPPED

    def line(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
        text = (f"prepared {self.converted + self.unchanged} of {self.n_rows} volumes ({self.converted} converted, "
                f"{self.unchanged} unchanged, {self.skipped} skipped{': ' + why if why else ''}); "
                f"{self.flagged} flagged in the quality table; {self.seconds:.1f} s")
        return text


def _iter_results(tasks, options: PrepareOptions):
    """Run conversion tasks, in this process (one worker) or in joblib's processes, yielding results."""
    if options.workers <= 1 or len(tasks) <= 1:
        for row, args in tasks:
            yield row, _task(*args)
        return

    par = Parallel(n_jobs=min(options.workers, len(tasks)), backend="loky", return_as="generator_unordered")
    rows_of = {}
    jobs = []
    for row, args in tasks:
        rows_of[(args[0], args[1])] = row
        jobs.append(delayed(_task)(*args))
    for rec in par(jobs):
        yield rows_of[(rec["raw"], rec["out"])], rec


def prepare(table: str | Path, raw_dir: str | Path | None, out: str | Path, options: PrepareOptions, *,
            path_column: str | None = None, progress=None, err=None) -> Summary:
    """Convert every row's raw volume; write volumes, ``table.csv``, ``quality.csv`` and the manifest."""
    t0 = time.perf_counter()
    err = err or sys.stderr
    progress = progress or Progress("quiet")
    table = Path(table)
    raw_dir = Path(raw_dir) if raw_dir is not None else table.parent
    if not raw_dir.is_dir():
        raise InputError(f"{raw_dir}: --raw folder not found")
    if options.dtype not in OUTPUT_DTYPES:
        raise InputError(f"--dtype {options.dtype!r}: use one of {', '.join(OUTPUT_DTYPES)}")
    if len(options.shape) != 3 or min(options.shape) < 1:
        raise InputError(f"--shape {options.shape}: need three positive sizes X Y Z(depth)")
    out = check_output_dir(out, what="prepared data set")
    rows, info = read_table(table, raw_dir, path_column)
    # nothing the user gave is overwritten: the table (prepare DIR/table.csv --out DIR) and raw files
    check_inputs_kept(out, [table] + [r.path for r in rows if r.path is not None and not has_control_character(r.raw)],  # noqa: E501
                      writes=("table.csv", "quality.csv", MANIFEST, ".lock") + tuple(r.out for r in rows))
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        _clean_temporaries(out / "volumes")
        manifest = load_manifest(out)
        entries = manifest["entries"]
        results: dict[int, dict] = {}
        tasks = []
        if not options.fov_mm:
            mixed = geometry.mixed_fov_warning(pd.DataFrame(dict(
                subject=[r.subject for r in rows if r.fov and not geometry.is_line_scan(*r.fov)],
                fov_x_mm=[r.fov[0] for r in rows if r.fov and not geometry.is_line_scan(*r.fov)],
                fov_y_mm=[r.fov[1] for r in rows if r.fov and not geometry.is_line_scan(*r.fov)])))
            if mixed:
                err.write(f"icpcv prepare: WARNING: {mixed}\n")
        for r in rows:
            # the geometry options make each row's own field of view and eye part of its output's key
            key = canonical_hash(options.target() | {"row_geometry": r.geo}) if options.geometry \
                else options.target_key
            if r.path is None:
                results[r.row] = dict(status="skipped", reason="no_path",
                                      detail=f"{table}: row {r.row}, column {info['path_col']}: empty; no raw file "
                                             "to convert")
                continue
            if has_control_character(r.raw):
                results[r.row] = dict(status="skipped", reason="control_character",
                                      detail=f"{table}: row {r.row}, column {info['path_col']}: {clip(repr(r.raw))} "
                                             "holds a control character; no file name holds one")
                continue
            label = next(((col, v) for col, v in ((info["id_col"], r.scan_id), (info["subject_col"], r.subject))
                          if has_control_character(v)), None)
            if label is not None:  # `run` would drop the row for the same reason: not converted for nothing
                results[r.row] = dict(status="skipped", reason="control_character",
                                      detail=f"{table}: row {r.row}, column {label[0]}: {clip(repr(label[1]))} holds "
                                             "a control character; a scan id or monkey does not")
                continue
            if not Path(r.raw).is_absolute() and escapes_folder(raw_dir, r.raw):
                results[r.row] = dict(status="skipped", reason="path_outside",
                                      detail=f"{table}: row {r.row}, column {info['path_col']}: {r.raw} lies outside "
                                             f"{raw_dir} (the folder raw paths are relative to)")
                continue
            try:
                if not r.path.exists():
                    raise not_found(r.path, f"row {r.row}, column {info['path_col']}")
                raw_format(r.path)
                fp = fingerprint(r.path)
            except VolumeError as exc:
                results[r.row] = dict(status="skipped", reason=exc.reason, detail=exc.detail)
                continue
            except OSError as exc:  # a link loop, no permission, a name the file system refuses
                results[r.row] = dict(status="skipped", reason="unreadable",
                                      detail=f"{r.path}: cannot open ({exc.strerror or type(exc).__name__}; row "
                                             f"{r.row}, column {info['path_col']})")
                continue
            entry = entries.get(r.out)
            same_target = bool(entry) and entry.get("target_key") == key and entry.get("source") == str(r.path)
            target_file = out / r.out
            if same_target and not options.force and not options.verify and entry.get("fingerprint") == fp \
                    and target_file.exists() and target_file.stat().st_size == entry.get("out_size"):
                results[r.row] = dict(status="unchanged", quality=entry["quality"], sha256=entry.get("sha256", ""))
                continue
            # same target, other fingerprint (or source path: the raw folder moved): the worker re-hashes
            # and keeps the output if the bytes are the same
            previous = entry if entry and entry.get("target_key") == key and not options.force else None
            tasks.append((r.row, (str(r.path), str(target_file), options, previous, r.geo)))
        by_row = {r.row: r for r in rows}
        if tasks:
            progress.message(f"prepare: {len(tasks)} of {len(rows)} volumes to convert with {options.workers} "
                             f"worker(s); {sum(1 for v in results.values() if v['status'] == 'unchanged')} "
                             "unchanged")
        last_save = time.monotonic()
        done = 0
        try:
            for row, rec in _iter_results(tasks, options):
                done += 1
                results[row] = rec
                r = by_row[row]
                if rec["status"] != "skipped":
                    key = canonical_hash(options.target() | {"row_geometry": r.geo}) if options.geometry \
                        else options.target_key
                    entries[r.out] = dict(scan_id=r.scan_id, source=str(r.path), fingerprint=rec["fingerprint"],
                                          sha256=rec["sha256"], target_key=key, target=options.target(),
                                          out_size=rec["quality"]["out_size"], quality=rec["quality"])
                    progress.message(f"[{done}/{len(tasks)}] {r.scan_id}: {rec['status']} "
                                     f"{rec['quality']['raw_shape']} {rec['quality']['raw_dtype']} in "
                                     f"{rec['seconds']:.1f} s")
                else:
                    entries.pop(r.out, None)
                    progress.message(f"[{done}/{len(tasks)}] {r.scan_id}: skipped ({rec['reason']})")
                if time.monotonic() - last_save > 5:
                    atomic_write_json(out / MANIFEST, manifest)
                    last_save = time.monotonic()
        finally:
            atomic_write_json(out / MANIFEST, manifest)

        skip_shape_outliers(rows, results, options.shape)
        quality = quality_table(rows, results)
        ok_rows = [r for r in rows if results[r.row]["status"] != "skipped"]
        prepared = pd.DataFrame(dict(scan_id=[r.record[info["id_col"]] for r in ok_rows],
                                     subject=[r.record[info["subject_col"]] for r in ok_rows],
                                     iop=[r.record["iop"] for r in ok_rows],
                                     icp=[r.record["icp"] for r in ok_rows],
                                     path=[r.out for r in ok_rows],
                                     raw_path=[r.raw for r in ok_rows]))
        for c in info["extras"]:
            prepared[c] = [r.record[c] for r in ok_rows]
        # the geometry the files give (Source.spacing_mm, eye, device: .vol, XML exports, ...) as acquisition
        # columns, which `icpcv run` reads into cohort/scans.csv; with a geometry option the prepared
        # volumes' own field of view (below) replaces the raw one
        for c, values in acquisition_columns(ok_rows, results).items():
            prepared[c] = values
        if options.geometry:  # the prepared volumes' own geometry: run reads it instead of the raw scan area
            qual = {r.row: results[r.row].get("quality") or {} for r in ok_rows}
            for c, default in (("fov_x_mm", None), ("fov_y_mm", None), ("depth_mm", None), ("voxel_x_um", None),
                               ("voxel_y_um", None), ("voxel_z_um", None), ("mirrored", "")):
                vals = [qual[r.row].get(c, default) for r in ok_rows]
                if c in ("fov_x_mm", "fov_y_mm") and options.fov_mm:
                    vals = [options.fov_mm[c == "fov_y_mm"]] * len(ok_rows)
                if c == "depth_mm" and options.depth_mm:
                    vals = [options.depth_mm] * len(ok_rows)
                prepared[c] = vals
        atomic_write_text(out / "table.csv", prepared.to_csv(index=False))
        atomic_write_text(out / "quality.csv", visible_table(quality).to_csv(index=False))

    skipped = quality[quality["status"] == "skipped"]
    for rec in skipped.to_dict("records"):
        err.write(f"icpcv prepare: skipped row {rec['row']} (scan {rec['scan_id'] or '?'}): "
                  f"{rec['reason']}: {rec['detail']}\n")
    counts = quality["status"].value_counts().to_dict()
    return Summary(n_rows=len(rows), converted=counts.get("converted", 0), unchanged=counts.get("unchanged", 0),
                   skipped=counts.get("skipped", 0), reasons=skipped["reason"].value_counts().to_dict(),
                   flagged=int((quality["flags"] != "").sum()), table=out / "table.csv",
                   quality=out / "quality.csv", seconds=time.perf_counter() - t0)


__all__ = ["PrepareOptions", "Summary", "prepare", "convert_volume", "read_table", "quality_table", "robust_z",
           "REASONS", "EXIT_SKIPPED", "CODE_VERSION"]
