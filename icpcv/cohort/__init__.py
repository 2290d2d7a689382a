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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from icpcv.config import RunConfig
from icpcv.errors import InputError
from icpcv.util import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

DEFAULT_FILE_SHAPE = (32, 32, 64)


@dataclass
class Cohort:
    scans: pd.DataFrame  # scan_id, subject, iop, icp, path (may be empty)
    has_volumes: bool
    shape: tuple[int, int, int] | None
    root: Path  # the run directory's cohort folder


def volume_shape(cfg: RunConfig) -> tuple[int, int, int]:
    if cfg.shape:
        return tuple(cfg.shape)
    if cfg.synthetic:
        from icpcv.cohort.phantom import PRESETS

        return PRESETS[cfg.phantom].shape
    return DEFAULT_FILE_SHAPE


def materialise(cfg: RunConfig, run_dir: Path, *, need_iop: bool, need_volumes: bool):
    """Build the cohort into ``run_dir/cohort``; returns ``(Cohort, quality_table, data_hash)``."""
    root = Path(run_dir) / "cohort"
    root.mkdir(parents=True, exist_ok=True)
    shape = volume_shape(cfg)
    if cfg.synthetic:
        from icpcv.cohort.phantom import make_cohort

        big = np.prod(shape) * 1600 > 2**31  # seed scale: one file per scan
        vol_dir = root / "volumes"
        if big:
            vol_dir.mkdir(exist_ok=True)
        scans, volumes, truth = make_cohort(cfg.phantom, signal=cfg.signal, seed=cfg.data_seed, shape=shape,
                                            out=vol_dir if big else None)
        atomic_write_json(root / "truth.json", truth | {"scans": scans.to_dict("list")})
        if big:
            scans["path"] = [str(vol_dir / f"{x}.npy") for x in scans["scan_id"]]
        else:
            buf = io.BytesIO()
            np.save(buf, volumes)
            atomic_write_bytes(root / "volumes.npy", buf.getvalue())
            scans["path"] = ""
        scans["row"] = np.arange(1, len(scans) + 1)
        quality = pd.DataFrame(dict(row=scans["row"], scan_id=scans["scan_id"], subject=scans["subject"],
                                    status="kept", reason="", column="", value="", all_reasons="", detail=""))
        table = scans[["scan_id", "subject", "iop", "icp", "path", "row"]].copy()
        source, has_volumes = f"synthetic phantom ({cfg.phantom}, signal {cfg.signal}, seed {cfg.data_seed})", True
        data_hash = hashlib.sha256(pd.util.hash_pandas_object(table[["scan_id", "subject", "iop", "icp"]])
                                   .to_numpy().tobytes() + (volumes.tobytes() if volumes is not None else b"")
                                   ).hexdigest()[:16]
    else:
        from icpcv.cohort.table import read_scan_table

        st = read_scan_table(cfg.manifest, scans_dir=cfg.scans_dir, need_iop=need_iop, need_volumes=need_volumes)
        table, quality, source, has_volumes = st.scans, st.quality, st.source, st.has_volumes
        h = hashlib.sha256(pd.util.hash_pandas_object(table[["scan_id", "subject", "iop", "icp", "path"]],
                                                      index=False).to_numpy().tobytes())
        if has_volumes:
            for p in table["path"]:
                stt = os.stat(p)
                h.update(f"{p}:{stt.st_size}:{stt.st_mtime_ns}".encode())
        data_hash = h.hexdigest()[:16]
    atomic_write_text(root / "scans.csv", table.to_csv(index=False))
    atomic_write_json(root / "cohort.json", dict(source=source, has_volumes=has_volumes,
                                                 shape=list(shape) if has_volumes else None, data_hash=data_hash,
                                                 n_scans=len(table), n_subjects=int(table["subject"].nunique())))
    return Cohort(table, has_volumes, shape if has_volumes else None, root), quality, data_hash


def load(run_dir: Path) -> Cohort:
    root = Path(run_dir) / "cohort"
    meta = read_json(root / "cohort.json")
    scans = pd.read_csv(root / "scans.csv", dtype={"scan_id": str, "subject": str, "path": str},
                        keep_default_na=False, na_values={"iop": [""], "icp": [""]})
    shape = tuple(meta["shape"]) if meta.get("shape") else None
    return Cohort(scans, bool(meta["has_volumes"]), shape, root)


class VolumeStore:
    """Volumes of a cohort by scan id, as float32 arrays of the configured shape.

    The phantom's volumes are one memory-mapped array; file volumes are read and resampled on
    first use and cached in this process.
    """

    def __init__(self, cohort: Cohort):
        self.cohort = cohort
        self.index = {x: i for i, x in enumerate(cohort.scans["scan_id"])}
        arr = cohort.root / "volumes.npy"
        self.array = np.load(arr, mmap_mode="r", allow_pickle=False) if arr.exists() else None
        self.cache: dict[str, np.ndarray] = {}

    def get(self, scan_ids) -> np.ndarray:
        if not self.cohort.has_volumes:
            raise InputError("this cohort has no volumes")
        if self.array is not None:
            return np.asarray(self.array[[self.index[x] for x in scan_ids]], dtype=np.float32)
        from icpcv.cohort.volumes import load_volume

        out = np.empty((len(scan_ids),) + tuple(self.cohort.shape), dtype=np.float32)
        paths = self.cohort.scans["path"].to_numpy()
        for j, x in enumerate(scan_ids):
            if x not in self.cache:
                self.cache[x] = load_volume(paths[self.index[x]], self.cohort.shape)
            out[j] = self.cache[x]
        return out
