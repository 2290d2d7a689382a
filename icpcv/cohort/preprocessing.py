"""What a new scan must repeat to be predicted by a run's models (issue 20), and whether it did.

A run records, in ``preprocessing.json``, how its volumes reached the models: the model input
shape (every volume resampled to it by :func:`icpcv.cohort.volumes.resample`: area-averaging
when shrinking, trilinear otherwise), the raw shape its volumes typically had, and the voxel scale
of its resampled volumes (per-scan mean and standard deviation). ``icpcv predict`` resamples new
volumes the same way and refuses, per scan, those that were clearly prepared otherwise:

* ``bad_volume_shape``: a raw shape the run's own checks would have refused against the run's
  typical raw shape (:func:`icpcv.cohort.volumes.shape_problem`: swapped axes, or more than a
  factor SHAPE_FACTOR_MAX off along an axis);
* ``bad_volume_values``: a voxel scale outside the run's. In units of the run's typical voxel
  standard deviation, a scan's mean voxel must lie within MEAN_MARGIN of the range of the run's
  scans' means, and its voxel standard deviation within a factor SD_FACTOR of the run's range:
  a volume rescaled to 0-1, or exported with another gain, fails both.
"""
from __future__ import annotations

import numpy as np

from icpcv.cohort import VOLUME_CHECKS, Cohort, VolumeStore
from icpcv.cohort import volumes as volume_io
from icpcv.util import read_json

#: a new scan's mean voxel may lie this many of the run's typical voxel sd beyond the run's scans' range
MEAN_MARGIN = 1.0
#: a new scan's voxel sd may lie this factor beyond the range of the run's scans' voxel sd
SD_FACTOR = 2.0
#: the run's voxel scale is taken from at most this many of its scans (evenly spread)
MAX_SCANS = 200
RESAMPLING = ("icpcv.cohort.volumes.resample: float32; area-averaging (adaptive average pooling) when every "
              "axis shrinks, trilinear (align_corners=False) otherwise; unchanged at the model shape")


def describe(coh: Cohort) -> dict:
    """The preprocessing record of a run's cohort (``preprocessing.json``); ``{"volumes": False}`` without volumes."""
    if not coh.has_volumes:
        return dict(volumes=False)
    shape = [int(s) for s in coh.shape]
    typical = shape  # the phantom renders at the model shape
    if coh.folder.volumes_json.exists():
        meta = read_json(coh.folder.volumes_json)
        typical = [int(s) for s in (meta.get("typical_shape") or shape)]
    ids = list(coh.scans["scan_id"])
    pick = [ids[int(i)] for i in np.unique(np.linspace(0, len(ids) - 1, min(MAX_SCANS, len(ids))).round())]
    store = VolumeStore(coh)
    summaries = [volume_io.VoxelSummary.of(store.get([x])[0]) for x in pick]
    means = np.array([s.mean for s in summaries])
    sds = np.array([s.std for s in summaries])
    return dict(volumes=True, shape=shape, typical_raw_shape=typical, resampling=RESAMPLING,
                dtype="float32", checks=VOLUME_CHECKS,
                voxel=dict(n_scans=len(pick), mean_median=float(np.median(means)), sd_median=float(np.median(sds)),
                           mean_min=float(means.min()), mean_max=float(means.max()),
                           sd_min=float(sds.min()), sd_max=float(sds.max())))


def scan_problem(record: dict, raw_shape, resampled: np.ndarray) -> tuple[str, str] | None:
    """``(reason code, why)`` when a new scan was not prepared like the run's volumes, else None."""
    why = volume_io.shape_problem(raw_shape, record["typical_raw_shape"])
    if why:
        return "bad_volume_shape", f"against the run's volumes: {why}"
    s = volume_io.VoxelSummary.of(resampled)
    v = record["voxel"]
    scale = v["sd_median"] or 1.0
    lo, hi = v["mean_min"] - MEAN_MARGIN * scale, v["mean_max"] + MEAN_MARGIN * scale
    if not lo <= s.mean <= hi or not v["sd_min"] / SD_FACTOR <= s.std <= v["sd_max"] * SD_FACTOR:
        return "bad_volume_values", (
            f"voxel mean {s.mean:.4g} and standard deviation {s.std:.4g} are outside the run's scans (means "
            f"{v['mean_min']:.4g} to {v['mean_max']:.4g}, standard deviations {v['sd_min']:.4g} to {v['sd_max']:.4g}): "
            "another intensity scale or preprocessing than the run's volumes (give the volumes as the run read them)")
    return None
