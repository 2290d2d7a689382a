"""Cohorts: the scans of a run (validated table or synthetic phantom) and their volumes.

``materialise`` writes the cohort into the run directory once (``cohort/scans.csv``, and for
the phantom ``cohort/volumes.npy`` and ``cohort/truth.json``); fold jobs read it back with
``load`` and fetch volumes through a :class:`VolumeStore`, so any executor can run a fold from
the run directory alone.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from icpcv.cohort import geometry, intensity
from icpcv.cohort.geometry import ACQ_COLUMNS, REASONS as GEOMETRY_REASONS
from icpcv.cohort.phantom import PRESETS as PHANTOM_PRESETS, ShortcutMarker, make_cohort
from icpcv.cohort.table import REASONS, STEP_COLUMNS, read_scan_table
from icpcv.cohort import volumes as volume_io
from icpcv.config import RunConfig
from icpcv.errors import DiskFullError, InputError, RunDirError
from icpcv.rundir import CohortDir
from icpcv.util import atomic_write_bytes, atomic_write_json, atomic_write_text, clip, raise_if_disk_full, read_json

DEFAULT_FILE_SHAPE = (32, 32, 64)
#: version of the volume checks: a cache of volumes checked by other rules is checked again
VOLUME_CHECKS = "2: readable, finite, 3-D; shape; voxel values (issue 11)"


@dataclass
class Cohort:
    scans: pd.DataFrame  # scan_id, subject, iop, icp, path (may be empty)
    has_volumes: bool
    shape: tuple[int, int, int] | None
    folder: CohortDir  # the run directory's cohort folder


def volume_shape(cfg: RunConfig) -> tuple[int, int, int]:
    if cfg.shape:
        return tuple(cfg.shape)
    if cfg.synthetic:
        return PHANTOM_PRESETS[cfg.phantom].shape
    return DEFAULT_FILE_SHAPE


def materialise(cfg: RunConfig, folder: CohortDir, *, need_iop: bool, need_volumes: bool,
                expect_hash: str | None = None, progress=None, need_icp: bool = True):
    """Build the cohort into ``folder`` (a run directory's ``cohort/``); returns ``(Cohort, quality_table, data_hash)``.

    With ``expect_hash`` (re-opening a run), a different data hash raises a RunDirError saying
    what changed *before* anything in the run directory is rewritten. For a scan table with
    volumes that a model needs, every volume is read once here (readable, finite, 3-D),
    resampled to the run's shape and cached in ``cohort/volumes.npy``, so fold jobs never meet a
    bad scan: bad ones are an InputError listing them, or with ``cfg.skip_bad_scans`` rows
    dropped with reason ``bad_volume`` in the quality table.
    """
    problem = geometry.check_options(cfg.fov_mm, cfg.depth_mm, cfg.axes)  # a RunConfig not made by the CLI too
    if problem:
        raise InputError(problem)
    shape = volume_shape(cfg)
    warnings: list[str] = []  # cohort-level warnings: cohort.json, the log, stats.json's warnings
    if cfg.synthetic and expect_hash is not None:
        reused = _reuse_phantom(folder, expect_hash)
        if reused is not None:
            return reused
    if cfg.synthetic:
        big = np.prod(shape) * 1600 > 2**31  # seed scale: one file per scan
        vol_dir = folder.volumes_dir
        if big:
            vol_dir.mkdir(parents=True, exist_ok=True)
        realistic = cfg.acquisition == "realistic"
        scans, volumes, truth = make_cohort(cfg.phantom, signal=cfg.signal, seed=cfg.data_seed, shape=shape,
                                            out=vol_dir if big else None,
                                            shortcut=ShortcutMarker() if cfg.shortcut else None,
                                            acquisition=cfg.acquisition, confound=cfg.confound,
                                            transform=phantom_transform(cfg, shape) if realistic else None)
        if big:
            scans["path"] = [str(vol_dir / f"{x}.npy") for x in scans["scan_id"]]
        else:
            scans["path"] = ""
        skipped = truth.get("skipped", {})
        all_ids = list(scans["scan_id"]) + list(skipped)  # every drawn scan, in the phantom's numbering
        all_ids.sort()
        number = {x: i + 1 for i, x in enumerate(all_ids)}
        scans["row"] = [number[x] for x in scans["scan_id"]]
        quality = pd.DataFrame(dict(row=scans["row"], scan_id=scans["scan_id"], subject=scans["subject"],
                                    status="kept", reason="", column="", value="", all_reasons="", detail=""))
        if skipped:  # line scans and scans smaller than --fov-mm: recorded, never stretched
            quality = pd.concat([quality, pd.DataFrame(
                [dict(row=number[x], scan_id=x, subject=subj, status="dropped", reason=why,
                      column="scan area", value=protocol, all_reasons=why,
                      detail=f"{GEOMETRY_REASONS[why]} ({detail})")
                 for x, (why, detail, subj, protocol) in skipped.items()])]
            ).sort_values("row", kind="stable").reset_index(drop=True)
        # the set levels name each scan's pressure step (trending's change pairs); not hashed: no model reads them
        columns = ["scan_id", "subject", "iop", "icp", "path", "row", "iop_set", "icp_set"]
        if realistic:  # the acquisition columns of cohort/scans.csv (icpcv.cohort.geometry.ACQ_COLUMNS)
            columns += [c for c in ACQ_COLUMNS if c in scans.columns]
        table = scans[columns].rename(columns={"iop_set": STEP_COLUMNS[0], "icp_set": STEP_COLUMNS[1]})
        if realistic:  # each prepared voxel's size: the target field of view (or the scan's own) over the shape
            for axis, n, fov, target in (("x", shape[0], "fov_x_mm", cfg.fov_mm[0] if cfg.fov_mm else None),
                                         ("y", shape[1], "fov_y_mm", cfg.fov_mm[1] if cfg.fov_mm else None),
                                         ("z", shape[2], "depth_mm", cfg.depth_mm)):
                table[f"voxel_{axis}_um"] = 1000.0 * (table[fov] if target is None else target) / n
        mixed = geometry.mixed_fov_warning(table, cfg.fov_mm) if realistic else None
        if mixed:  # the realistic phantom without --fov-mm: the same loud warning as a table's
            warnings.append(mixed)
        source, has_volumes = (f"synthetic phantom ({cfg.phantom}, signal {cfg.signal}, seed {cfg.data_seed}"
                               + (", planted shortcut marker" if cfg.shortcut else "")
                               + (f", {cfg.acquisition} acquisition" if realistic else "")
                               + (f", confound {cfg.confound}" if cfg.confound != "none" else "") + ")"), True
        data_hash = hashlib.sha256(pd.util.hash_pandas_object(table[["scan_id", "subject", "iop", "icp"]])
                                   .to_numpy().tobytes() + (volumes.tobytes() if volumes is not None else b"")
                                   ).hexdigest()[:16]
        _check_unchanged(folder, expect_hash, data_hash, table, quality)
        folder.path.mkdir(parents=True, exist_ok=True)
        if realistic:  # what the run cut and flipped: the labels and the reference frame follow it (scan_window)
            truth["acquisition"]["run"] = dict(fov_mm=list(cfg.fov_mm) if cfg.fov_mm else None,
                                               depth_mm=cfg.depth_mm, mirror_os=bool(cfg.mirror_os))
        atomic_write_json(folder.truth_json, truth | {"scans": scans.to_dict("list")})
        # issue 19: each volume's global intensity statistics (the image_stats baseline, the acquisition section)
        stats = intensity.stats_of_volumes(volumes if volumes is not None else
                                           (np.load(p, allow_pickle=False) for p in table["path"]))
        table = pd.concat([table.reset_index(drop=True), stats], axis=1)
        if not big:
            buf = io.BytesIO()
            np.save(buf, volumes)
            atomic_write_bytes(folder.volumes_npy, buf.getvalue())
    else:
        st = read_scan_table(cfg.manifest, scans_dir=cfg.scans_dir, need_iop=need_iop, need_volumes=need_volumes,
                             need_icp=need_icp)
        table, quality, source, has_volumes = st.scans, st.quality, st.source, st.has_volumes
        h = hashlib.sha256(pd.util.hash_pandas_object(table[["scan_id", "subject", "iop", "icp", "path"]],
                                                      index=False).to_numpy().tobytes())
        geo_cols = [c for c in ("fov_x_mm", "fov_y_mm", "depth_mm", "eye", "mirrored") if c in table.columns]
        if geo_cols:  # they decide which volumes are line scans, the crop and the mirroring
            h.update(pd.util.hash_pandas_object(table[geo_cols].astype(str), index=False).to_numpy().tobytes())
        sigs = {}
        if has_volumes:
            for x, p in zip(table["scan_id"], table["path"]):
                sigs[x] = _file_sig(p)
                h.update(f"{p}:{sigs[x]}".encode())
        data_hash = h.hexdigest()[:16]
        _check_unchanged(folder, expect_hash, data_hash, table, quality, sigs)
        folder.path.mkdir(parents=True, exist_ok=True)
        if has_volumes and need_volumes:
            table, quality = _check_volumes(cfg, folder, table, quality, sigs, shape, data_hash, progress)
            mixed = geometry.mixed_fov_warning(table, cfg.fov_mm)
            if mixed:
                warnings.append(mixed)
            table = _with_volume_intensity(folder, table)
        else:  # issue 19: the table's own intensity summaries of each volume, when it has them
            from_table = intensity.table_stats(cfg.manifest, table["row"])
            if from_table is not None:
                table = pd.concat([table.reset_index(drop=True), from_table], axis=1)
        if "acquisition" in st.meta and progress:
            facts = st.meta["acquisition"]
            progress.message(f"cohort: acquisition fields read from {', '.join(facts['columns'].values())}; "
                             f"{facts['sessions']} sessions; {facts['times_read_as_afternoon']} times without AM/PM "
                             "read as afternoon (a 12-hour clock: docs/acquisition.md)")
        if "warnings" in quality.columns and progress:
            warned = quality[quality["warnings"] != ""]
            if len(warned):
                codes = pd.Series([w.split(" ")[0] for ws in warned["warnings"] for w in ws.split("; ")]).value_counts()
                progress.message(f"cohort: {len(warned)} row(s) with an acquisition warning, the field taken as "
                                 f"unknown ({', '.join(f'{k} {v}' for k, v in codes.items())}; "
                                 "data_quality.csv, column warnings; docs/acquisition.md)")
    for w in warnings:
        if progress:
            progress.message(f"WARNING: {w}")
    atomic_write_text(folder.scans_csv, table.to_csv(index=False))
    atomic_write_json(folder.meta_json, dict(source=source, has_volumes=has_volumes,
                                                 shape=list(shape) if has_volumes else None, data_hash=data_hash,
                                                 n_scans=len(table), n_subjects=int(table["subject"].nunique()),
                                                 **({"warnings": warnings} if warnings else {})))
    return Cohort(table, has_volumes, shape if has_volumes else None, folder), quality, data_hash


def phantom_transform(cfg: RunConfig, shape):
    """The realistic phantom's raw volume -> the run's (issue 19; docs/acquisition.md "Geometry").

    A line scan is skipped (``line_scan``); with ``--fov-mm`` / ``--depth-mm`` the volume is cut to
    that field of view around its centre (:func:`icpcv.cohort.geometry.crop_to_fov`) and a smaller
    scan is skipped (``fov_too_small``), never stretched; ``--mirror-os`` flips a left eye along X;
    then the volume is resampled to ``shape`` and rounded back to uint8 (the phantom's voxel type).
    """
    target = tuple(cfg.fov_mm) if cfg.fov_mm else None

    def transform(raw: np.ndarray, rec: dict):
        fov = (rec["fov_x_mm"], rec["fov_y_mm"])
        why = geometry.fov_problem(fov, target, rec["depth_mm"], cfg.depth_mm)
        if why is not None:
            return None, why[0], why[1]
        vol = geometry.crop_to_fov(raw, fov, target, rec["depth_mm"], cfg.depth_mm)
        if cfg.mirror_os and rec["eye"] == "OS":
            vol = geometry.mirror_os(vol)
        vol = volume_io.resample(vol, shape)
        return np.clip(np.rint(vol), 0, 255).astype(np.uint8)

    return transform


def _with_volume_intensity(folder: CohortDir, table: pd.DataFrame) -> pd.DataFrame:
    """The checked, resampled volumes' intensity statistics (issue 19) beside each kept scan."""
    index = {x: i for i, x in enumerate(read_json(folder.volumes_json)["scan_ids"])}
    arr = np.load(folder.volumes_npy, mmap_mode="r", allow_pickle=False)
    stats = intensity.stats_of_volumes(arr[index[str(x)]] for x in table["scan_id"])
    return pd.concat([table.reset_index(drop=True), stats], axis=1)


def _reuse_phantom(folder: CohortDir, data_hash: str):
    """Re-opening a synthetic run: the phantom is a function of the (unchanged) config, so the
    cohort already in the run directory is used as it is instead of being rendered again."""
    try:
        meta = folder.read_meta()
    except (OSError, ValueError):
        return None
    if meta.get("data_hash") != data_hash:
        return None
    coh = load(folder)
    if not (folder.volumes_npy.exists() or all(os.path.exists(p) for p in coh.scans["path"] if p)):
        return None
    quality = pd.DataFrame(dict(row=coh.scans["row"], scan_id=coh.scans["scan_id"], subject=coh.scans["subject"],
                                status="kept", reason="", column="", value="", all_reasons="", detail=""))
    return coh, quality, data_hash


def _file_sig(path) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _check_unchanged(folder: CohortDir, expect_hash, data_hash, table, quality, sigs=None) -> None:
    """Refuse changed data when re-opening a run, naming what changed (before anything is rewritten)."""
    if expect_hash is None or expect_hash == data_hash:
        return
    changes = []
    try:
        old = folder.read_scans().set_index("scan_id")
    except (OSError, ValueError):
        old = None
    if old is not None:
        new = table.set_index("scan_id")
        why = {str(r.scan_id): f"{r.reason}: {r.value}" if r.value else r.reason
               for r in quality.itertuples() if r.status == "dropped"}
        gone = [x for x in old.index if x not in new.index]
        changes += [f"scan {x} is no longer usable ({why.get(x, 'not in the table')})" for x in gone]
        changes += [f"scan {x} is new" for x in new.index if x not in old.index]
        for x in new.index.intersection(old.index):
            for col in ("subject", "iop", "icp", "path"):
                a, b = old.at[x, col], new.at[x, col]
                if not (a == b or (pd.isna(a) and pd.isna(b)) or str(a) == str(b)):
                    changes.append(f"scan {x}: {col} {a} -> {b}")
        try:
            old_sigs = read_json(folder.volumes_json).get("files", {}) if sigs else {}
        except (OSError, ValueError):
            old_sigs = {}
        for x, sig in (sigs or {}).items():
            if x in old_sigs and old_sigs[x] != sig:
                changes.append(f"volume file {new.at[x, 'path']} (scan {x}) was modified")
    detail = "; ".join(clip(c) for c in changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
    raise RunDirError(f"{folder.path.parent}: the data changed since this run started (hash {expect_hash} -> {data_hash})"
                      + (f": {detail}" if detail else "")
                      + "; restore the data, or rerun with --fresh (or another --out) to start over")


def _check_volumes(cfg: RunConfig, folder: CohortDir, table: pd.DataFrame, quality: pd.DataFrame, sigs: dict,
                   shape, data_hash: str, progress):
    """Read every volume once: validate, resample, cache; bad volumes are an error or recorded skips.

    Bad: unreadable, not 3-D, non-finite (reason ``bad_volume``); a raw shape that resampling
    should not absorb or with axes that look swapped (``bad_volume_shape``); implausible voxel
    values (``bad_volume_values``). The rules and their ranges: icpcv.plausible, docs/inputs.md.
    """
    meta_path, arr_path = folder.volumes_json, folder.volumes_npy
    ids = [str(x) for x in table["scan_id"]]
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        meta = None
    expected_bytes = len(ids) * int(np.prod(shape)) * 4
    geo = geometry_options(cfg)
    if not (meta and meta.get("data_hash") == data_hash and meta.get("shape") == list(shape)
            and meta.get("scan_ids") == ids and meta.get("checks") == VOLUME_CHECKS
            and meta.get("target") == (list(cfg.shape) if cfg.shape else None)
            and meta.get("geometry") == geo
            and arr_path.exists() and arr_path.stat().st_size >= expected_bytes):
        bad: dict[str, str] = {}
        codes: dict[str, str] = {}
        skips: dict[str, list] = {}  # geometry: line_scan, fov_too_small, fov_unknown (always recorded skips)
        warns: dict[str, str] = {}  # the file's spacing disagrees with the table's field of view
        per_scan: dict[str, dict] = {}  # spacing the file gives, voxel size, mirrored
        raw_shapes: dict[str, tuple] = {}
        summaries: dict[str, volume_io.VoxelSummary] = {}
        paths = dict(zip(ids, table["path"]))
        acq = _table_geometry(table)
        if progress:
            progress.message(f"cohort: checking {len(ids)} volumes once (readable, finite, 3-D, shape, voxel values) "
                             f"and caching them resampled to {'x'.join(map(str, shape))} in {arr_path} "
                             f"({expected_bytes / 2**20:.0f} MiB)")
        free = shutil.disk_usage(folder.path).free
        if expected_bytes > free:  # say so before reading a volume, not at the first write that fails
            raise DiskFullError(f"{arr_path}: the checked, resampled volumes need {expected_bytes / 2**30:.2f} GiB "
                                f"there and {free / 2**30:.2f} GiB are free; free some space, choose another "
                                "--out, or a smaller --shape")
        tmp = folder.path / f".volumes.npy.{os.getpid()}.tmp"
        t0 = time.monotonic()
        try:
            with open(tmp, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, dict(descr=np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                              fortran_order=False, shape=(len(ids),) + tuple(shape)))
                zeros = np.zeros(shape, "<f4").tobytes()
                for i, x in enumerate(ids):
                    p = paths[x]
                    fov, depth, eye = acq[x]
                    try:
                        if fov is not None and geometry.is_line_scan(*fov):  # never read as a volume
                            raise _GeometrySkip("line_scan", f"field of view {fov[0]:g}x{fov[1]:g} mm is a line scan")
                        raw = geometry.to_xyz(volume_io.read_volume(p), cfg.axes)
                        spacing = geometry.permute(volume_io.read_spacing(p), cfg.axes)
                        rec = per_scan[x] = {}
                        if spacing is not None:
                            rec.update({f"spacing_{a}_mm": v for a, v in zip("xyz", spacing) if v is not None})
                            clash = geometry.spacing_mismatch(spacing, raw.shape, fov, depth)
                            if clash:
                                warns[x] = clash
                            if fov is None and spacing[0] and spacing[1]:  # the file's own field of view
                                fov = (spacing[0] * raw.shape[0], spacing[1] * raw.shape[1])
                            if depth is None and spacing[2]:
                                depth = spacing[2] * raw.shape[2]
                        problem = geometry.fov_problem(fov, cfg.fov_mm, depth, cfg.depth_mm)
                        if problem:
                            raise _GeometrySkip(*problem)
                        why = volume_io.raw_value_problem(raw)
                        if why:  # before resampling: its arithmetic would overflow
                            codes[x] = "bad_volume_values"
                            raise InputError(f"{p}: {why}")
                        raw_shapes[x] = tuple(int(n) for n in raw.shape)
                        raw = geometry.crop_to_fov(raw, fov, cfg.fov_mm, depth, cfg.depth_mm)
                        if cfg.mirror_os and eye == "OS":
                            raw = geometry.mirror_os(raw)
                            rec["mirrored"] = "OS->OD"
                        rec.update(_voxel_columns(cfg, fov, depth, shape))
                        vol = volume_io.resample(raw, shape)
                        if min(vol.shape) < 1 or not np.isfinite(vol).all():
                            raise InputError(f"{p}: volume has non-finite values after resampling to {shape}")
                        summaries[x] = volume_io.VoxelSummary.of(vol)
                        fh.write(np.ascontiguousarray(vol, dtype="<f4").tobytes())
                    except _GeometrySkip as exc:
                        skips[x] = [exc.code, f"{p}: {exc.detail}"]
                        per_scan.pop(x, None)
                        fh.write(zeros)
                    except InputError as exc:
                        bad[x] = str(exc)
                        fh.write(zeros)
                    except (RuntimeError, ValueError) as exc:  # resampling a degenerate array
                        bad[x] = f"{p}: cannot resample to {'x'.join(map(str, shape))} ({exc})"
                        fh.write(zeros)
                    if progress and time.monotonic() - t0 > 2:
                        progress.update(f"checking volumes {i + 1}/{len(ids)}")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, arr_path)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise_if_disk_full(exc, arr_path)
            raise
        # the cohort-level rules need every volume seen once: the typical shape, the typical voxel
        typical = volume_io.typical_shape(raw_shapes.values()) if raw_shapes else None
        for x, raw_shape in raw_shapes.items():
            why = volume_io.shape_problem(raw_shape, typical, cfg.shape)
            if why and x not in bad:
                bad[x], codes[x] = f"{paths[x]}: {why}", "bad_volume_shape"
        for x, why in volume_io.voxel_problems({x: v for x, v in summaries.items() if x not in bad}).items():
            bad[x], codes[x] = f"{paths[x]}: {why}", "bad_volume_values"
        bad = {x: bad[x] for x in ids if x in bad}  # in table order
        meta = dict(data_hash=data_hash, shape=list(shape), scan_ids=ids, bad=bad,
                    reasons={x: codes.get(x, "bad_volume") for x in bad}, checks=VOLUME_CHECKS,
                    target=list(cfg.shape) if cfg.shape else None, typical_shape=list(typical) if typical else None,
                    files=sigs, geometry=geo, skips=skips, spacing_warnings=warns, per_scan=per_scan)
        atomic_write_json(meta_path, meta)
    table, quality = _apply_geometry(table, quality, meta)
    bad = meta["bad"]
    if not bad:
        return table, quality
    reasons = meta.get("reasons", {})
    rows = dict(zip(table["scan_id"].astype(str), table["row"]))
    if not cfg.skip_bad_scans:
        listed = "; ".join(f"{clip(msg)} (table row {rows[x]}, scan {clip(x)})" for x, msg in list(bad.items())[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise InputError(f"{len(bad)} unusable volume(s): {listed}{more}. Fix or remove these files, or rerun with "
                         "--skip-bad-scans to record them as dropped scans (reasons bad_volume, bad_volume_shape, "
                         "bad_volume_values) and go on")
    quality = quality.copy()
    for x, msg in bad.items():
        code = reasons.get(x, "bad_volume")
        i = quality.index[(quality["scan_id"].astype(str) == x) & (quality["status"] == "kept")]
        quality.loc[i, ["status", "reason", "column", "value", "all_reasons", "detail"]] = \
            ["dropped", code, "path", str(table.loc[table["scan_id"].astype(str) == x, "path"].iloc[0]), code, msg]
    table = table[~table["scan_id"].astype(str).isin(bad)].reset_index(drop=True)
    if table.empty:
        raise InputError(f"no usable volume is left after skipping {len(bad)} bad ones; first: {next(iter(bad.values()))}")
    return table, quality


class _GeometrySkip(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


def geometry_options(cfg: RunConfig) -> dict | None:
    """The run's geometry options (None when all are off: the volume cache of earlier runs holds)."""
    geo = dict(fov_mm=list(cfg.fov_mm) if cfg.fov_mm else None, depth_mm=cfg.depth_mm, mirror_os=bool(cfg.mirror_os),
               axes=geometry.parse_axes(cfg.axes) if cfg.axes else None)
    return geo if any(v for v in geo.values()) else None


def _table_geometry(table: pd.DataFrame) -> dict:
    """Per scan id: ``(fov_xy or None, depth_mm or None, eye)`` from the table's acquisition columns;
    a scan the table marks ``mirrored`` (prepare --mirror-os did it) counts as OD."""
    out = {}
    for rec in table.to_dict("records"):
        fx, fy, d = rec.get("fov_x_mm"), rec.get("fov_y_mm"), rec.get("depth_mm")
        fov = (float(fx), float(fy)) if geometry._known(fx) and geometry._known(fy) else None
        eye = str(rec.get("eye") or "")
        if str(rec.get("mirrored") or "").strip():
            eye = "OD"
        out[str(rec["scan_id"])] = (fov, float(d) if geometry._known(d) else None, eye)
    return out


def _voxel_columns(cfg: RunConfig, fov, depth, shape) -> dict:
    """Voxel size in micrometres after crop and resampling: the target's with --fov-mm / --depth-mm,
    else the scan's own field of view over the grid (unknown without one)."""
    tx, ty, tz = geometry.voxel_um(cfg.fov_mm or fov, cfg.depth_mm or depth, shape)
    return {k: v for k, v in (("voxel_x_um", tx), ("voxel_y_um", ty), ("voxel_z_um", tz)) if not np.isnan(v)}


def _apply_geometry(table: pd.DataFrame, quality: pd.DataFrame, meta: dict):
    """Geometry skips dropped with their reason (always: a line scan or a too small field of view is
    not a broken file), spacing disagreements as warnings, per-scan spacing and voxel size as columns."""
    skips, warns, per_scan = meta.get("skips") or {}, meta.get("spacing_warnings") or {}, meta.get("per_scan") or {}
    if not (skips or warns or any(per_scan.values())):  # a table without geometry: as before, byte for byte
        return table, quality
    quality = quality.copy()
    if warns and "warnings" not in quality.columns:
        quality["warnings"] = ""
    sid = quality["scan_id"].astype(str)
    for x, (code, msg) in skips.items():
        i = quality.index[(sid == x) & (quality["status"] == "kept")]
        value = table.loc[table["scan_id"].astype(str) == x, "protocol"].iloc[0] if "protocol" in table else ""
        quality.loc[i, ["status", "reason", "column", "value", "all_reasons", "detail"]] = \
            ["dropped", code, "fov_x_mm, fov_y_mm", str(value), code, f"{REASONS.get(code, code)}: {msg}"]
    for x, msg in warns.items():
        i = quality.index[(sid == x) & (quality["status"] == "kept")]
        entry = f"spacing_fov_mismatch (column path, value {msg!r})"
        for j in i:
            quality.at[j, "warnings"] = "; ".join(w for w in (quality.at[j, "warnings"], entry) if w)
    table = table.copy()
    for col in ("spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "voxel_x_um", "voxel_y_um", "voxel_z_um", "mirrored"):
        values = [per_scan.get(str(x), {}).get(col) for x in table["scan_id"]]
        if any(v is not None for v in values) or col in table.columns:
            blank = "" if col == "mirrored" else None
            old = table[col] if col in table.columns else pd.Series([blank] * len(table), index=table.index)
            table[col] = [v if v is not None else (blank if pd.isna(o) else o) for v, o in zip(values, old)]
    table = table[~table["scan_id"].astype(str).isin(skips)].reset_index(drop=True)
    if table.empty:
        first = next(iter(skips.values()))
        raise InputError(f"no volume is left after the geometry skips ({len(skips)}: "
                         f"{', '.join(sorted({c for c, _ in skips.values()}))}); first: {first[1]} "
                         "(docs/acquisition.md)")
    return table, quality


def read_steps(folder: CohortDir) -> pd.DataFrame | None:
    """Each scan's pressure step (``scan_id, iop_step, icp_step``, text; blank = NaN) when the cohort
    carries them (the phantom's set levels, or a scan table's own step columns), else None: trending
    then finds steps from the pressures (icpcv.stats.trending.change_pairs)."""
    if not folder.scans_csv.exists():
        return None
    scans = folder.read_scans()
    if not set(STEP_COLUMNS) <= set(scans.columns):
        return None
    steps = scans[["scan_id", *STEP_COLUMNS]].copy()
    for c in STEP_COLUMNS:
        steps[c] = steps[c].astype(str).str.strip().replace({"": np.nan, "nan": np.nan})
    return steps


def load(folder: CohortDir) -> Cohort:
    """The cohort a run directory holds (written by :func:`materialise`)."""
    meta = folder.read_meta()
    scans = folder.read_scans()
    shape = tuple(meta["shape"]) if meta.get("shape") else None
    return Cohort(scans, bool(meta["has_volumes"]), shape, folder)


class VolumeStore:
    """Volumes of a cohort by scan id, as float32 arrays of the configured shape.

    ``cohort/volumes.npy`` (the phantom's volumes, or the validated, resampled volumes of a scan
    table, indexed by ``cohort/volumes.json``) is memory-mapped; otherwise (the seed-scale
    phantom's per-scan files) volumes are read and resampled on first use and cached in this
    process.
    """

    def __init__(self, cohort: Cohort):
        self.cohort = cohort
        ids = list(cohort.scans["scan_id"])
        meta = cohort.folder.volumes_json
        if meta.exists():
            ids = read_json(meta)["scan_ids"]
        self.index = {x: i for i, x in enumerate(ids)}
        arr = cohort.folder.volumes_npy
        self.array = np.load(arr, mmap_mode="r", allow_pickle=False) if arr.exists() else None
        self.cache: dict[str, np.ndarray] = {}

    def get(self, scan_ids) -> np.ndarray:
        if not self.cohort.has_volumes:
            raise InputError("this cohort has no volumes")
        if self.array is not None:
            return np.asarray(self.array[[self.index[x] for x in scan_ids]], dtype=np.float32)
        out = np.empty((len(scan_ids),) + tuple(self.cohort.shape), dtype=np.float32)
        paths = dict(zip(self.cohort.scans["scan_id"], self.cohort.scans["path"]))
        for j, x in enumerate(scan_ids):
            if x not in self.cache:
                self.cache[x] = volume_io.load_volume(paths[x], self.cohort.shape)
            out[j] = self.cache[x]
        return out


class ScanSet:
    """Some scans of a cohort (a fold's training, inner-validation or held-out part) and their volumes.

    What every model's ``fit`` and ``predict`` take: ``frame`` has ``scan_id, subject, iop, icp``;
    ``volumes()`` reads the scans' volumes (float32, ``(n, X, Y, Z)``) through ``get_volumes``
    (e.g. :meth:`VolumeStore.get`) when the cohort has them.
    """

    def __init__(self, frame: pd.DataFrame, get_volumes=None):
        self.frame = frame
        self.get_volumes = get_volumes

    @classmethod
    def from_arrays(cls, frame: pd.DataFrame, volumes: np.ndarray | None = None) -> "ScanSet":
        """Scans held in memory: row i of ``frame`` has volume ``volumes[i]``."""
        if volumes is None:
            return cls(frame)
        volumes = np.asarray(volumes)
        position = {x: i for i, x in enumerate(frame["scan_id"])} if "scan_id" in frame else None

        def get(ids):
            rows = [position[x] for x in ids] if position is not None else list(ids)
            return volumes[rows]

        return cls(frame, get)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> list:
        return list(self.frame["scan_id"]) if "scan_id" in self.frame else list(range(len(self.frame)))

    @property
    def iop(self) -> np.ndarray:
        return self.frame["iop"].to_numpy(float)

    @property
    def icp(self) -> np.ndarray:
        return self.frame["icp"].to_numpy(float)

    @property
    def has_volumes(self) -> bool:
        return self.get_volumes is not None

    def volumes(self) -> np.ndarray:
        if self.get_volumes is None:
            raise InputError("these scans have no volumes")
        return self.get_volumes(self.ids)

    def __add__(self, other: "ScanSet") -> "ScanSet":
        """These scans, then ``other``'s (the same volume source)."""
        return ScanSet(pd.concat([self.frame, other.frame]), self.get_volumes)
