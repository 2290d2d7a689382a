"""Global intensity statistics of each scan: what a model can read without any spatial information.

Per scan, the mean, standard deviation and percentiles of its voxels (:data:`INTENSITY_COLUMNS`,
kept in ``cohort/scans.csv``), computed by icpcv from the prepared volume (after any crop, mirror
and resampling: the volume the models see), or, for a table without volumes, taken from the
seed table's per-volume summaries (``mean_pixel_intensity_y``, ``std_pixel_intensity_y``,
``min_``, ``25th_``, ``median_``, ``75th_``, ``max_pixel_intensity_y``: :data:`TABLE_COLUMNS`).
The nuisance baseline ``image_stats`` and the acquisition section read them (docs/acquisition.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: percentiles computed from a volume
PERCENTILES = (5, 25, 50, 75, 95)
#: the columns computed from volumes
VOLUME_COLUMNS = ("intensity_mean", "intensity_sd") + tuple(f"intensity_p{q:02d}" for q in PERCENTILES)
#: the seed table's summary columns and the names they get
TABLE_COLUMNS = {"mean_pixel_intensity_y": "intensity_mean", "std_pixel_intensity_y": "intensity_sd",
                 "min_pixel_intensity_y": "intensity_p00", "25th_pixel_intensity_y": "intensity_p25",
                 "median_pixel_intensity_y": "intensity_p50", "75th_pixel_intensity_y": "intensity_p75",
                 "max_pixel_intensity_y": "intensity_p100"}
#: volumes with more voxels than this are summarised on every second voxel along each axis
MAX_VOXELS = 2**20


def intensity_columns(columns) -> list[str]:
    """The intensity columns among ``columns``, in a fixed order (mean, sd, then by percentile)."""
    have = [c for c in columns if str(c).startswith("intensity_")]
    order = {c: i for i, c in enumerate(("intensity_mean", "intensity_sd"))}
    return sorted(have, key=lambda c: (order.get(c, 2), float(c[len("intensity_p"):]) if c not in order else 0))


def volume_stats(volume: np.ndarray) -> dict[str, float]:
    """Mean, SD (ddof 0) and the :data:`PERCENTILES` of one volume's voxels.

    >>> v = np.arange(100, dtype=np.float32).reshape(4, 5, 5)
    >>> s = volume_stats(v)
    >>> s["intensity_mean"], round(s["intensity_sd"], 3), s["intensity_p50"]
    (49.5, 28.866, 49.5)
    """
    v = np.asarray(volume)
    if v.size > MAX_VOXELS:
        v = v[::2, ::2, ::2]
    v = v.astype(np.float64, copy=False).ravel()
    qs = np.percentile(v, PERCENTILES)
    out = {"intensity_mean": float(v.mean()), "intensity_sd": float(v.std())}
    out.update({f"intensity_p{q:02d}": float(x) for q, x in zip(PERCENTILES, qs)})
    return out


def stats_of_volumes(volumes) -> pd.DataFrame:
    """:func:`volume_stats` of each volume of an iterable, one row each."""
    return pd.DataFrame([volume_stats(v) for v in volumes], columns=list(VOLUME_COLUMNS))


def table_stats(manifest, rows) -> pd.DataFrame | None:
    """The seed table's intensity summaries of the given data rows (1-based, as ``row`` in the cohort),
    renamed (:data:`TABLE_COLUMNS`), or None when the table has none of them. A cell that is not a
    number is NaN (the model then leaves that scan's column at the training mean; the acquisition
    section leaves the scan out of that covariate)."""
    raw = pd.read_csv(Path(manifest), dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    raw.columns = [str(c).strip() for c in raw.columns]
    have = [c for c in TABLE_COLUMNS if c in raw.columns]
    if not have:
        return None
    idx = np.asarray(rows, dtype=int) - 1
    out = pd.DataFrame({TABLE_COLUMNS[c]: pd.to_numeric(raw[c].str.strip(), errors="coerce").to_numpy()[idx]
                        for c in have})
    out = out.replace([np.inf, -np.inf], np.nan)
    return out if out.notna().any().any() else None
