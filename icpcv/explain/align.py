"""Maps of many scans in one frame: the phantom's reference frame, and averages over scans.

Each phantom scan is misregistered by a known shift (``dx, dy`` in the lateral coordinates
[-1, 1], ``dz`` as a fraction of depth) and each monkey's Bruch's membrane lies at its own depth.
The reference frame puts the centre of Bruch's membrane opening at the volume's lateral centre
and the BM plane at one depth (by default the monkeys' mean), the plane from which lamina depth is
measured in OCT studies. The scan's small tilt (about 0.01 of depth per unit of lateral position,
under half a voxel at the small phantom) is not undone.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from icpcv.cohort.phantom import LAMINA, scan_window


def phantom_offsets(scans, truth: dict, *, shape=None, reference_bm_depth: float | None = None) -> np.ndarray:
    """Voxel shifts ``(n, 3)`` that move each scan into the reference frame (add them to a voxel's index).

    ``scans`` has ``subject, dx, dy, dz`` (the cohort's table or rows of ``truth["scans"]``). In the
    phantom a structure at lateral coordinate 0 appears at index ``(dx + 1)(X - 1)/2`` and the BM plane
    at depth index ``(bm_depth + dz) Z - 1/2``, so the shifts are ``-dx (X - 1)/2``, ``-dy (Y - 1)/2``
    and ``-(bm_depth + dz - reference_bm_depth) Z``.
    """
    scans = pd.DataFrame(scans)
    nx, ny, nz = (int(s) for s in (shape or truth["preset"]["shape"]))
    bm = {str(m["subject"]): float(m["bm_depth"]) for m in truth["monkeys"]}
    ref = float(np.mean(list(bm.values()))) if reference_bm_depth is None else float(reference_bm_depth)
    bm_of_scan = scans["subject"].astype(str).map(bm).to_numpy(float)
    w = windows(scans, truth)
    # a realistic scan covers +-half_x (a shift dx is dx / half_x of its half-width); a mirrored one shifts back
    sign = np.where(w["mirrored"], -1.0, 1.0)
    return np.column_stack([-sign * scans["dx"].to_numpy(float) / w["half_x"] * (nx - 1) / 2,
                            -scans["dy"].to_numpy(float) / w["half_y"] * (ny - 1) / 2,
                            -(bm_of_scan + scans["dz"].to_numpy(float) - ref) / w["z_span"] * nz])


def windows(scans, truth: dict) -> pd.DataFrame:
    """:func:`icpcv.cohort.phantom.scan_window` of each scan (the default acquisition's: +-1, the whole depth)."""
    run = (truth.get("acquisition") or {}).get("run")
    rows = [scan_window(r, run) for r in pd.DataFrame(scans).to_dict("records")]
    return pd.DataFrame(rows, columns=["half_x", "half_y", "z0", "z_span", "mirrored"])


def shared_frame(scans, truth: dict) -> bool:
    """Whether shifts alone bring these scans into one frame: every scan covers the same field of view
    and depth window. A realistic cohort of mixed fields of view without ``--fov-mm`` does not (a 3 mm
    and a 7 mm scan draw the optic nerve head at different sizes): its maps stay in scan coordinates."""
    w = windows(scans, truth)
    return bool(len(w) == 0 or all(np.allclose(w[c], w[c].iloc[0]) for c in ("half_x", "half_y", "z0", "z_span")))


def align(volumes: np.ndarray, offsets: np.ndarray, *, order: int = 1) -> np.ndarray:
    """Each volume shifted by its offset (linear interpolation; ``order=0`` for labels); outside is 0."""
    volumes = np.asarray(volumes)
    out = np.empty(volumes.shape, dtype=np.float32 if order else volumes.dtype)
    for i, (v, o) in enumerate(zip(volumes, np.asarray(offsets, dtype=float))):
        out[i] = ndimage.shift(v.astype(np.float32) if order else v, o, order=order, mode="constant", cval=0)
    return out


def mean_abs_map(maps: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Mean over scans of ``|map|``, each scan's map first scaled to sum 1 (every scan counts once),
    after moving it into the reference frame when ``offsets`` are given. Maps that are zero
    everywhere are left out."""
    a = np.abs(np.asarray(maps, dtype=np.float32))
    total = a.reshape(len(a), -1).sum(axis=1)
    keep = total > 0
    if not keep.any():
        return np.zeros(a.shape[1:], np.float32)
    a = a[keep] / total[keep].reshape(-1, 1, 1, 1)
    if offsets is not None:
        a = align(a, np.asarray(offsets)[keep])
    return a.mean(axis=0)


def region_probability(labels: np.ndarray, offsets: np.ndarray | None = None, code: int = LAMINA) -> np.ndarray:
    """Share of scans in which each voxel (of the reference frame, with ``offsets``) carries label ``code``.
    Labels are moved by whole voxels (nearest neighbour): interpolating a mask would blur it."""
    labels = np.asarray(labels)
    if offsets is not None:
        labels = align(labels, offsets, order=0)
    return (labels == code).mean(axis=0, dtype=np.float64).astype(np.float32)
