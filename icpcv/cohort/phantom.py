"""A synthetic OCT optic-nerve-head cohort with known truth.

Each volume is ``(X, Y, Z)`` with Z = depth (posterior is larger Z). Rendered structures:

* the retina from the inner limiting membrane (ILM), which dips into a cup of monkey-specific
  depth and width at the disc centre, down to Bruch's membrane (BM);
* Bruch's membrane / RPE, a bright layer that ends at Bruch's membrane opening (BMO);
* the lamina cribrosa, a bright band inside the BMO whose depth below the BMO plane is

      lamina_depth = base_m + curvature_m * (1 - (r / R_m)^2)
                     + k_m * (k_iop * (IOP - 20) - signal * k_icp * (ICP - 15))

  i.e. the translaminar pressure difference bows it backwards (IOP) and forwards (ICP);
  ``k_m`` is a monkey-specific compliance. ``signal`` scales how much the scan carries about
  ICP: ``signal = 0`` is the negative control (the lamina then moves with IOP only, which the
  model is given anyway);
* choroid and background, multiplicative speckle, additive noise, per-scan misregistration
  (shifts in X, Y and Z, and a small tilt) and per-monkey brightness.

The design imitates the real study: 14 monkeys, IOP at 4 set levels in 5-50 mmHg, ICP at
several set levels in 0-45 mmHg, set independently (factorial), repeated scans per step,
unequal numbers of scans per monkey. Everything is drawn from one seed; the generating
parameters are returned (and saved with the cohort) as ``truth``.

Because the truth is known, so is the anatomy: :func:`phantom_labels` gives each scan a label
volume (lamina band, prelaminar tissue, retina, Bruch's membrane and choroid, background) from the
same surfaces, against which attribution maps are scored (:mod:`icpcv.explain`). An optional
:class:`ShortcutMarker` plants an artefact that tracks ICP in some monkeys only, for checking that
the maps find a shortcut when a network takes one. Neither changes the default cohort's volumes.
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from icpcv.errors import InputError
from icpcv.util import atomic_write_bytes, natural_sorted

IOP_LEVELS = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0)
ICP_LEVELS = (2.0, 5.0, 8.0, 12.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0)


@dataclass(frozen=True)
class PhantomPreset:
    name: str
    shape: tuple[int, int, int]  # (X, Y, Z=depth)
    n_subjects: int
    icp_levels: tuple[int, int]  # min, max number of ICP levels per monkey
    repeats: tuple[int, int]  # min, max scans per pressure step


PRESETS = {
    # trains on a 2-core CPU in minutes: ~450 scans of 20x20x48
    "small": PhantomPreset("small", (20, 20, 48), 14, (3, 5), (1, 3)),
    # a few scans for tests
    "tiny": PhantomPreset("tiny", (12, 12, 32), 6, (2, 3), (1, 2)),
    # the seed's scale: ~1,500 scans of 128x128x512 (about 12 GB as uint8) for GPUs
    "seed": PhantomPreset("seed", (128, 128, 512), 14, (4, 6), (4, 9)),
}

K_IOP = 0.002  # lamina displacement per mmHg, as a fraction of the depth axis
K_ICP = 0.0025

LAYER_SIGMA_VOXELS = 1.2  # ILM and Bruch's membrane: Gaussian profiles this many voxels wide (sd)
LAMINA_SIGMA_VOXELS = 2.0  # the lamina band's sd in voxels
CHOROID_THICKNESS = 0.15  # fraction of the depth axis
LAMINA_HALF_WIDTH = 2.0  # the labelled lamina band: centre +- this many sd

#: codes of :func:`render_labels`: index = code
LABEL_NAMES = ("background", "retina", "bm_choroid", "prelaminar", "lamina", "marker")
BACKGROUND, RETINA, BM_CHOROID, PRELAMINAR, LAMINA, MARKER = range(len(LABEL_NAMES))


@dataclass(frozen=True)
class ShortcutMarker:
    """A planted shortcut: a box in the deep corner of the volume whose brightness tracks ICP in some monkeys.

    It imitates an acquisition artefact that happens to follow the pressure settings (a burned-in
    annotation, a display setting changed with the drain): nothing about the eye. The box sits at
    ``x, y = 0`` and the last voxels of Z, in the background below the choroid and the lamina of
    every monkey, and does not move with the scan's misregistration. Its added intensity is

        strength * (ICP - 2) / 43, clipped to [0, strength]   (2 and 45 mmHg: the ICP levels' range)

    in the first ``round(informative_share * G)`` monkeys (by number), and ``strength`` times a
    uniform random number, independent of ICP, in the others: a network that learns it does well on
    the first monkeys and badly on the rest, while the attribution maps point at the box.
    """
    strength: float = 1.0  # added intensity at the top of the ICP range, in the units of the lamina's 0.9
    size: float = 0.15  # box edge along each axis, as a fraction of the volume (at least 2 voxels)
    informative_share: float = 0.5

    def box(self, shape) -> tuple[slice, slice, slice]:
        """The box's voxels as three slices into an ``(X, Y, Z)`` volume."""
        sx, sy, sz = (max(2, int(round(self.size * n))) for n in shape)
        return slice(0, sx), slice(0, sy), slice(shape[2] - sz, shape[2])

    def informative_subjects(self, subjects) -> list[str]:
        """The monkeys in which the marker tracks ICP: the first ``round(share * G)`` in natural order."""
        ordered = natural_sorted(subjects)
        return ordered[:int(round(self.informative_share * len(ordered)))]


def design(preset: PhantomPreset, rng: np.random.Generator, n_subjects: int | None = None) -> pd.DataFrame:
    """The factorial pressure design: one row per scan (subject, iop_set, icp_set, repeat)."""
    rows = []
    n_subjects = n_subjects or preset.n_subjects
    for m in range(1, n_subjects + 1):
        iops = np.sort(rng.choice(IOP_LEVELS, size=4, replace=False))
        n_icp = int(rng.integers(preset.icp_levels[0], preset.icp_levels[1] + 1))
        icps = np.sort(rng.choice(ICP_LEVELS, size=n_icp, replace=False))
        for icp in icps:  # ICP set by lumbar drain, then IOP stepped by cannulation
            for iop in iops:
                reps = int(rng.integers(preset.repeats[0], preset.repeats[1] + 1))
                for r in range(reps):
                    rows.append(dict(subject=str(m), iop_set=float(iop), icp_set=float(icp), repeat=r))
    return pd.DataFrame(rows)


def _monkey_params(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame(dict(
        subject=[str(m) for m in range(1, n + 1)],
        base_depth=rng.normal(0.15, 0.010, n),  # lamina below BMO, fraction of Z
        curvature=rng.normal(0.025, 0.008, n),
        compliance=rng.normal(1.0, 0.10, n),
        cup_depth=rng.normal(0.12, 0.03, n),
        cup_width=rng.normal(0.30, 0.05, n),
        bmo_radius=rng.normal(0.45, 0.04, n),
        brightness=rng.normal(1.0, 0.15, n),
        bm_depth=rng.normal(0.40, 0.02, n),  # BM plane, fraction of Z
    ))


def _geometry(shape, monkey: dict, scan: dict) -> dict:
    """Coordinates and surfaces of one scan (depths as fractions of Z), shared by the volume and its labels."""
    nx, ny, nz = shape
    if "half_x" in scan:  # --acquisition realistic: the scan covers +-half_x, +-half_y of the default's half-width
        hx, hy = np.float32(scan["half_x"]), np.float32(scan["half_y"])
        x = np.linspace(-hx, hx, nx, dtype=np.float32)[:, None, None] - scan["dx"]
        y = np.linspace(-hy, hy, ny, dtype=np.float32)[None, :, None] - scan["dy"]
    else:
        x = np.linspace(-1, 1, nx, dtype=np.float32)[:, None, None] - scan["dx"]
        y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None] - scan["dy"]
    z0, span = np.float32(scan.get("z0", 0.0)), np.float32(scan.get("z_span", 1.0))  # a depth window (labels)
    z = z0 + span * (np.arange(nz, dtype=np.float32)[None, None, :] + 0.5) / nz - scan["dz"]
    r2 = x**2 + y**2
    tilt = scan["tilt_x"] * x + scan["tilt_y"] * y
    bm = monkey["bm_depth"] + tilt
    R = monkey["bmo_radius"]
    inside = r2 < R**2
    if "cup_dx" in scan:  # realistic acquisition: the cup sits temporally (+X in OD, -X in OS: mirror images)
        rc2 = (x - np.float32(scan["cup_dx"]))**2 + y**2
        ilm = bm - 0.22 + monkey["cup_depth"] * np.exp(-rc2 / (2 * monkey["cup_width"] ** 2))
    else:
        ilm = bm - 0.22 + monkey["cup_depth"] * np.exp(-r2 / (2 * monkey["cup_width"] ** 2))
    lamina = bm + scan["lamina_depth"] + monkey["curvature"] * (1 - r2 / R**2)
    return dict(z=z, bm=bm, inside=inside, ilm=ilm, lamina=lamina)


def render(shape, monkey: dict, scan: dict, rng: np.random.Generator, *, marker: tuple | None = None,
           offset: float | None = None) -> np.ndarray:
    """Render one uint8 volume (X, Y, Z).

    ``marker = (box, intensity)`` adds the planted shortcut (:class:`ShortcutMarker`): ``intensity``
    over the voxels of ``box`` (three slices), after the monkey's brightness and before the speckle,
    so it is speckled like tissue but not scaled with the monkey. It draws nothing from ``rng``.
    ``offset`` (``--confound brightness``) adds a global brightness to every voxel after the speckle
    and noise: the whole image brighter, the anatomy unchanged. It draws nothing from ``rng``.
    """
    nx, ny, nz = shape
    g = _geometry(shape, monkey, scan)
    z, bm, inside, ilm = g["z"], g["bm"], g["inside"], g["ilm"]
    sig = LAYER_SIGMA_VOXELS / nz  # thin layers: ~1.2 voxels
    vol = np.zeros((nx, ny, nz), dtype=np.float32)
    # retina between ILM and BM, with a bright ILM
    retina = (z > ilm) & (z < bm)
    vol += 0.35 * retina
    vol += 0.6 * np.exp(-((z - ilm) ** 2) / (2 * sig**2))
    # Bruch's membrane / RPE, absent inside the opening
    vol += 1.0 * np.exp(-((z - bm) ** 2) / (2 * sig**2)) * (~inside)
    # choroid below BM outside the disc
    vol += 0.3 * ((z > bm) & (z < bm + CHOROID_THICKNESS) & ~inside)
    # lamina cribrosa, inside the opening only
    lam = g["lamina"]
    lam_sig = LAMINA_SIGMA_VOXELS / nz
    vol += 0.9 * np.exp(-((z - lam) ** 2) / (2 * lam_sig**2)) * inside
    vol *= monkey["brightness"]
    if marker is not None:
        box, intensity = marker
        vol[box] += np.float32(intensity)
    speckle = rng.gamma(shape=4.0, scale=0.25, size=vol.shape).astype(np.float32)
    vol = vol * speckle + rng.normal(0.05, 0.04, vol.shape).astype(np.float32)
    if offset is not None:
        vol += np.float32(offset)
    return np.clip(vol * 160.0, 0, 255).astype(np.uint8)


def render_labels(shape, monkey: dict, scan: dict, *, lamina_half_width: float = LAMINA_HALF_WIDTH,
                  marker_box: tuple | None = None) -> np.ndarray:
    """The anatomy of one scan as a uint8 label volume (X, Y, Z), codes as in :data:`LABEL_NAMES`.

    Drawn from the same surfaces as :func:`render` (the scan's misregistration and tilt included),
    without noise; a voxel takes the first class that holds, in this order:

    * ``marker`` (5): the planted shortcut's box, when ``marker_box`` is given;
    * ``lamina`` (4): inside Bruch's membrane opening, within ``lamina_half_width`` standard
      deviations of the rendered lamina band's centre (2 sd: where the band is brighter than
      e^-2 = 14% of its peak);
    * ``prelaminar`` (3): inside the opening, from the ILM down to the lamina band (the neural
      tissue of the disc and, below the BM plane, the dark tissue above the lamina);
    * ``retina`` (1): outside the opening, from the ILM down to Bruch's membrane;
    * ``bm_choroid`` (2): outside the opening, from Bruch's membrane down through the choroid;
    * ``background`` (0): vitreous above the ILM and everything deeper than the choroid and lamina.
    """
    nx, ny, nz = shape
    g = _geometry(shape, monkey, scan)
    z, bm, inside, ilm, lam = g["z"], g["bm"], g["inside"], g["ilm"], g["lamina"]
    band = lamina_half_width * LAMINA_SIGMA_VOXELS / nz
    labels = np.full((nx, ny, nz), BACKGROUND, dtype=np.uint8)
    labels[np.broadcast_to((z >= bm) & (z < bm + CHOROID_THICKNESS) & ~inside, labels.shape)] = BM_CHOROID
    labels[np.broadcast_to((z > ilm) & (z < bm) & ~inside, labels.shape)] = RETINA
    labels[np.broadcast_to((z > ilm) & (z < lam - band) & inside, labels.shape)] = PRELAMINAR
    labels[np.broadcast_to((np.abs(z - lam) <= band) & inside, labels.shape)] = LAMINA
    if marker_box is not None:
        labels[marker_box] = MARKER
    return labels


def make_cohort(preset: str | PhantomPreset = "small", *, signal: float = 1.0, seed: int = 0,
                n_subjects: int | None = None, shape: tuple[int, int, int] | None = None,
                out=None, shortcut: ShortcutMarker | None = None, acquisition: str = "off",
                confound: str = "none", transform=None):
    """Generate a synthetic cohort.

    Returns ``(scans, volumes, truth)``: the scan table (``scan_id, subject, iop, icp``), a uint8
    array ``(n, X, Y, Z)`` (or, with ``out`` a folder, ``None`` and one ``<scan_id>.npy`` per scan
    written there, for the seed's scale) and the generating parameters.

    ``shortcut`` plants a :class:`ShortcutMarker`; the scan table then has the columns ``marker``
    (its added intensity) and ``marker_informative``, and ``truth["shortcut"]`` its settings. Its
    random numbers come from a stream of their own, so the pressures, anatomy, speckle and noise
    are those of the same cohort without it. Without it the volumes are those of every earlier
    version. Label volumes of the anatomy: :func:`phantom_labels`.

    ``acquisition="realistic"`` gives each scan the real study's acquisition
    (:func:`acquisition_design`: field of view, eye, grid, session time; columns of
    :data:`icpcv.cohort.geometry.ACQ_COLUMNS` plus ``grid``): the volume is rendered on its raw grid
    (:func:`raw_shape`) over its field of view (a 7x7 mm scan shows the anatomy 7/3 times smaller
    than a 3x3 mm scan on the same grid), the cup sits temporally and a left eye is the mirror image
    of a right one. ``transform(raw, rec)`` then makes each raw volume the run's: it returns the
    volume at ``shape``, or ``(None, reason, detail)`` to skip the scan (a line scan, a field of view
    too small); skipped scans leave the table and come back as ``truth["skipped"]``
    (scan_id -> [reason, detail, subject, protocol]). ``confound="brightness"`` adds :func:`confound_offset` to every
    voxel of each scan. Both draw from streams of their own; at "off" and "none" nothing changes.
    """
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"unknown acquisition {acquisition!r}; choose from {', '.join(ACQUISITIONS)}")
    if confound not in CONFOUNDS:
        raise ValueError(f"unknown confound {confound!r}; choose from {', '.join(CONFOUNDS)}")
    realistic = acquisition == "realistic"
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown phantom preset {preset!r}; choose from {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    shape = tuple(shape or preset.shape)
    rng = np.random.default_rng(seed)
    scans = design(preset, rng, n_subjects)
    monkeys = _monkey_params(rng, scans["subject"].nunique())
    mp = monkeys.set_index("subject")
    n = len(scans)
    # measured pressures scatter around the set levels
    scans["iop"] = np.round(scans["iop_set"] + np.clip(rng.normal(0, 1.0, n), -2, 2), 1)
    scans["icp"] = np.round(np.clip(scans["icp_set"] + np.clip(rng.normal(0, 1.0, n), -2, 2), 0.5, None), 1)
    comp = mp.loc[scans["subject"], "compliance"].to_numpy()
    disp = comp * (K_IOP * (scans["iop"] - 20.0) - signal * K_ICP * (scans["icp"] - 15.0))
    scans["lamina_depth"] = mp.loc[scans["subject"], "base_depth"].to_numpy() + disp
    scans["dx"] = rng.normal(0, 0.03, n)
    scans["dy"] = rng.normal(0, 0.03, n)
    scans["dz"] = rng.normal(0, 0.01, n)
    scans["tilt_x"] = rng.normal(0, 0.01, n)
    scans["tilt_y"] = rng.normal(0, 0.01, n)
    scans.insert(0, "scan_id", [f"s{i:05d}" for i in range(n)])
    if shortcut is not None:
        scans["marker"], scans["marker_informative"] = _marker_intensity(scans, shortcut, seed)
    if realistic:
        acq = acquisition_design(scans, seed)
        for c in acq.columns:
            scans[c] = acq[c]
        scans["half_x"] = scans["fov_x_mm"] / REF_FOV_MM
        scans["half_y"] = scans["fov_y_mm"] / REF_FOV_MM
        scans["cup_dx"] = np.where(scans["eye"] == "OS", -CUP_OFFSET, CUP_OFFSET)
    if confound == "brightness":
        scans["confound_offset"] = confound_offset(scans["icp_set"])
    volumes = None if out is not None else np.empty((n,) + shape, dtype=np.uint8)
    skipped: dict[str, tuple[str, str, str, str]] = {}
    for i, rec in enumerate(scans.to_dict("records")):
        vol_rng = np.random.default_rng([seed, i])
        marker = None if shortcut is None else (shortcut.box(shape), rec["marker"])
        offset = rec.get("confound_offset")
        if realistic:
            vol = render(raw_shape(shape, rec["grid"]), mp.loc[rec["subject"]].to_dict(), rec, vol_rng,
                         marker=None, offset=offset)
            if transform is not None:
                vol = transform(vol, rec)
                if isinstance(vol, tuple):
                    skipped[rec["scan_id"]] = (vol[1], vol[2], rec["subject"], rec["protocol"])
                    continue
            if tuple(vol.shape) != tuple(shape):
                raise ValueError(f"phantom scan {rec['scan_id']}: a realistic acquisition needs a transform to "
                                 f"the run's shape {shape}, got {vol.shape}")
        else:
            vol = render(shape, mp.loc[rec["subject"]].to_dict(), rec, vol_rng, marker=marker, offset=offset)
        if out is None:
            volumes[i] = vol
        else:
            buf = io.BytesIO()
            np.save(buf, vol)
            atomic_write_bytes(f"{out}/{rec['scan_id']}.npy", buf.getvalue())
    if skipped:  # scans the transform refused: out of the table and the volumes
        keep = ~scans["scan_id"].isin(list(skipped)).to_numpy()
        scans = scans[keep].reset_index(drop=True)
        if volumes is not None:
            volumes = volumes[keep]
    truth = dict(
        preset=asdict(preset) | {"shape": list(shape)}, signal=signal, seed=seed,
        k_iop=K_IOP, k_icp=K_ICP,
        model=("lamina_depth = base_depth_m + compliance_m * (k_iop*(IOP-20) - signal*k_icp*(ICP-15)), "
               "fractions of the depth axis, below Bruch's membrane opening"),
        monkeys=monkeys.to_dict("records"),
    )
    if shortcut is not None:  # only then: the default cohort's truth stays as it was
        truth["shortcut"] = asdict(shortcut) | {
            "box": [[b.start, b.stop] for b in shortcut.box(shape)],
            "informative_subjects": shortcut.informative_subjects(monkeys["subject"])}
    if realistic:  # only then, likewise
        truth["acquisition"] = dict(mode=acquisition, ref_fov_mm=REF_FOV_MM, depth_mm=DEPTH_MM,
                                    grids=GRIDS, cup_offset=CUP_OFFSET)
        truth["skipped"] = {k: list(v) for k, v in skipped.items()}
    if confound != "none":
        truth["confound"] = dict(kind=confound, offset_at_top=CONFOUND_OFFSET,
                                 rule="offset = offset_at_top * (icp_set - 2) / 43, clipped to [0, 1] x offset_at_top")
    return scans, volumes, truth


# --------------------------------------------------------------------------- the real study's acquisition

#: ``--acquisition`` values: "off" (one field of view, one grid, one eye: every earlier version's cohort)
#: or "realistic" (the seed table's mix of protocols, grids, eyes and session times)
ACQUISITIONS = ("off", "realistic")
#: ``--confound`` values: "none", or "brightness" (global brightness rises with the set ICP level)
CONFOUNDS = ("none", "brightness")
#: the default phantom's volume spans this field of view (mm) across X and Y: its Bruch's membrane
#: opening (radius 0.45 of the half-width) is then ~1.35 mm across, as in a monkey's optic nerve head
REF_FOV_MM = 3.0
#: depth of every phantom scan (mm), the Bioptigen's A-scan range
DEPTH_MM = 2.0
#: field-of-view protocols of the realistic phantom: square scans of 3, 5, 6 and 7 mm, and line scans
FOV_PROTOCOLS = ("3x3", "5x5", "6x6", "7x7", "line")
LINE_SCANS = ((7.0, 0.5), (7.0, 0.1), (0.1, 7.0))
#: per monkey (1-14) the share of scans of each protocol in FOV_PROTOCOLS' order, rounded from the seed's
#: label table (../shared/data/monkey_data.csv: counts of `scan area` per `monkey_id`; its few 12x12 and
#: 20x20 mm scans left out): monkeys 1-2 take 3 and 5 mm, 3-6 mostly 5 and 7 mm with the line scans
#: (7x0.1, 0.1x7, 7x0.5), 7-14 mostly 3 mm. Monkeys beyond 14 repeat the list.
FOV_SHARES = (
    (0.57, 0.43, 0.00, 0.00, 0.00), (0.46, 0.54, 0.00, 0.00, 0.00), (0.00, 0.52, 0.00, 0.48, 0.00),
    (0.00, 0.41, 0.00, 0.42, 0.17), (0.00, 0.24, 0.00, 0.43, 0.33), (0.00, 0.31, 0.00, 0.63, 0.06),
    (0.28, 0.25, 0.47, 0.00, 0.00), (0.73, 0.24, 0.03, 0.00, 0.00), (0.34, 0.31, 0.34, 0.00, 0.00),
    (0.87, 0.05, 0.08, 0.00, 0.00), (0.80, 0.07, 0.13, 0.00, 0.00), (1.00, 0.00, 0.00, 0.00, 0.00),
    (0.56, 0.41, 0.03, 0.00, 0.00), (0.68, 0.32, 0.00, 0.00, 0.00),
)
#: per monkey the share of left-eye (OS) scans, from the same table's `eyeball (od or os)`
OS_SHARES = (1.00, 0.00, 0.42, 0.00, 0.42, 0.48, 0.00, 0.00, 0.00, 0.10, 0.44, 0.10, 0.31, 0.00)
#: the two voxel grids, as lateral oversampling of the run's X and Y (the table's 512x512 A-scans of
#: monkeys 1-6 and 400x400 of monkeys 7-14; the line scans sit on the 512 grid like the 7x7 mm volumes)
GRIDS = {"512": 2.0, "400": 1.6}
#: the cup's centre sits this far temporally (fraction of the default half-width): +X in OD, -X in OS
CUP_OFFSET = 0.12
#: minutes between repeated scans, after an IOP step and after an ICP step (ICP is set by the lumbar
#: drain, then IOP stepped by cannulation: the pressures follow the session's clock)
MINUTES_SCAN, MINUTES_IOP, MINUTES_ICP = 1.5, 5.0, 20.0
#: ``--confound brightness``: the global brightness added at the top of the ICP range (grey levels / 160)
CONFOUND_OFFSET = 0.25
#: spawn key of the acquisition's random stream (independent of the cohort's and the shortcut's)
ACQUISITION_STREAM = 2


def acquisition_design(scans: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The realistic acquisition of each scan of a phantom design (``--acquisition realistic``).

    Columns: ``fov_x_mm, fov_y_mm, depth_mm, eye, protocol, grid, acquired_at, session,
    session_minutes`` (:data:`icpcv.cohort.geometry.ACQ_COLUMNS`). Protocols are drawn per scan with
    the monkey's shares (:data:`FOV_SHARES`), eyes likewise (:data:`OS_SHARES`); each monkey sits
    one session, on a day of its own, whose clock runs through the design's order (ICP levels
    ascending, IOP stepped within each): time in the session goes with the pressure order, as in the
    real study. Random numbers come from a stream of their own: the pressures, anatomy, speckle and
    noise are those of the same cohort without it.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ACQUISITION_STREAM,)))
    rows = []
    start = pd.Timestamp("2013-04-25 09:00")
    for m, g in scans.groupby("subject", sort=False):
        i = (int(m) - 1) % len(FOV_SHARES)
        shares = np.asarray(FOV_SHARES[i]) / sum(FOV_SHARES[i])
        protocols = rng.choice(len(FOV_PROTOCOLS), size=len(g), p=shares)
        os_ = rng.uniform(size=len(g)) < OS_SHARES[i]
        lines = rng.integers(0, len(LINE_SCANS), size=len(g))
        grid = "512" if i < 6 else "400"
        day = start + pd.Timedelta(days=7 * (int(m) - 1))
        minutes, prev = 0.0, None
        for j, rec in enumerate(g.to_dict("records")):
            if prev is not None:
                minutes += (MINUTES_ICP if rec["icp_set"] != prev["icp_set"] else
                            MINUTES_IOP if rec["iop_set"] != prev["iop_set"] else MINUTES_SCAN)
                minutes += float(rng.uniform(0, 1))
            prev = rec
            name = FOV_PROTOCOLS[protocols[j]]
            if name == "line":
                fx, fy = LINE_SCANS[lines[j]]
                name = f"{fx:g}x{fy:g}"
            else:
                fx = fy = float(name.split("x")[0])
            rows.append(dict(fov_x_mm=fx, fov_y_mm=fy, depth_mm=DEPTH_MM, eye="OS" if os_[j] else "OD",
                             protocol=name, grid="512" if fx != fy else grid,
                             device=f"phantom, {'512' if fx != fy else grid} A-scans per B-scan",
                             acquired_at=(day + pd.Timedelta(minutes=minutes)).isoformat(timespec="seconds"),
                             session=f"{m} {day.date().isoformat()}", session_minutes=round(minutes, 2)))
    return pd.DataFrame(rows, index=scans.index)


def raw_shape(shape, grid: str) -> tuple[int, int, int]:
    """The raw volume's shape of a realistic scan on ``grid`` for a run of ``shape`` (X and Y oversampled)."""
    f = GRIDS[grid]
    return int(round(f * shape[0])), int(round(f * shape[1])), int(shape[2])


def confound_offset(icp_set) -> np.ndarray:
    """``--confound brightness``: the brightness added to a scan, rising linearly with the set ICP level
    over the levels' range (2 to 45 mmHg): within a monkey it follows the ICP order (and, ICP being set in
    ascending order, the session's clock), with no change in the anatomy."""
    lo, hi = min(ICP_LEVELS), max(ICP_LEVELS)
    return CONFOUND_OFFSET * np.clip((np.asarray(icp_set, float) - lo) / (hi - lo), 0.0, 1.0)


#: the spawn key of the shortcut's random stream (independent of the cohort's)
SHORTCUT_STREAM = 1


def _marker_intensity(scans: pd.DataFrame, shortcut: ShortcutMarker, seed: int) -> tuple[np.ndarray, np.ndarray]:
    informative = scans["subject"].isin(shortcut.informative_subjects(scans["subject"].unique())).to_numpy()
    lo, hi = min(ICP_LEVELS), max(ICP_LEVELS)
    tracking = np.clip((scans["icp"].to_numpy() - lo) / (hi - lo), 0.0, 1.0)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SHORTCUT_STREAM,)))
    decoy = rng.uniform(0.0, 1.0, len(scans))
    return shortcut.strength * np.where(informative, tracking, decoy), informative


def scan_window(rec: dict, run: dict | None = None) -> dict:
    """Where a scan's run volume lies in the phantom's coordinates, for its labels and its reference frame.

    The default acquisition's volume covers lateral coordinates -1 to 1 and the whole depth. A realistic
    scan (``half_x``, ``half_y``: its field of view over the reference one) covers its own half-widths;
    the run's geometry options (``run``: ``fov_mm``, ``depth_mm``, ``mirror_os``, as
    ``truth["acquisition"]["run"]`` records them) cut it to the centred target field of view and depth
    (:func:`icpcv.cohort.geometry.crop_box`: an axis already inside its target is kept whole) and flip
    a left eye along X, before the volume is resampled to the run's shape. Returns ``half_x``,
    ``half_y``, ``z0`` and ``z_span`` (the depth window, fractions of the depth axis) and ``mirrored``.

    >>> w = scan_window({"half_x": 1.4, "half_y": 1.4, "fov_x_mm": 7.0, "fov_y_mm": 7.0, "depth_mm": 2.0,
    ...                  "eye": "OS"}, {"fov_mm": [3.0, 5.0], "depth_mm": 1.0, "mirror_os": True})
    >>> [round(w[k], 3) for k in ("half_x", "half_y", "z0", "z_span")], w["mirrored"]
    ([0.6, 1.0, 0.25, 0.5], True)
    """
    run = run or {}
    hx, hy = float(rec.get("half_x", 1.0)), float(rec.get("half_y", 1.0))
    z0, span = 0.0, 1.0
    fov = run.get("fov_mm")
    if fov and "fov_x_mm" in rec:
        hx *= min(1.0, float(fov[0]) / float(rec["fov_x_mm"]))
        hy *= min(1.0, float(fov[1]) / float(rec["fov_y_mm"]))
    depth = run.get("depth_mm")
    if depth and "depth_mm" in rec and float(depth) < float(rec["depth_mm"]):
        span = float(depth) / float(rec["depth_mm"])
        z0 = (1.0 - span) / 2
    return dict(half_x=hx, half_y=hy, z0=z0, z_span=span,
                mirrored=bool(run.get("mirror_os")) and str(rec.get("eye", "")).upper() == "OS")


def phantom_labels(scans, truth: dict, *, shape=None, lamina_half_width: float = LAMINA_HALF_WIDTH) -> np.ndarray:
    """Label volumes ``(n, X, Y, Z)`` uint8 of phantom scans, from the cohort's generating parameters.

    ``scans`` holds, per scan, ``subject`` and the scan parameters that :func:`make_cohort` drew
    (``lamina_depth, dx, dy, dz, tilt_x, tilt_y``): the table it returns, or rows of
    ``truth["scans"]`` as the run directory's ``cohort/truth.json`` stores them. ``truth`` gives the
    monkeys' anatomy, the shape (unless ``shape`` is given) and the shortcut, if one was planted.
    Nothing is random here: the labels of a scan are the same however many are asked for.
    See :func:`render_labels` for the classes.
    """
    scans = pd.DataFrame(scans)
    shape = tuple(int(s) for s in (shape or truth["preset"]["shape"]))
    monkeys = {str(m["subject"]): m for m in truth["monkeys"]}
    need = ["subject", "lamina_depth", "dx", "dy", "dz", "tilt_x", "tilt_y"]
    missing = [c for c in need if c not in scans.columns]
    if missing:
        raise ValueError(f"phantom_labels needs the phantom's scan parameters; missing column(s) {', '.join(missing)}")
    unknown = sorted(set(scans["subject"].astype(str)) - set(monkeys))
    if unknown:
        raise ValueError(f"phantom_labels: monkey(s) {', '.join(unknown)} are not in truth['monkeys']")
    marker_box = None
    if truth.get("shortcut"):
        marker_box = tuple(slice(a, b) for a, b in truth["shortcut"]["box"])
    run = (truth.get("acquisition") or {}).get("run")  # a realistic cohort's geometry options (cropped, mirrored)
    out = np.empty((len(scans),) + shape, dtype=np.uint8)
    for i, rec in enumerate(scans.to_dict("records")):
        window = scan_window(rec, run) if "half_x" in rec else None  # a realistic scan: the part the run kept
        if window is not None:
            rec = rec | {k: window[k] for k in ("half_x", "half_y", "z0", "z_span")}
        labels = render_labels(shape, monkeys[str(rec["subject"])], rec, lamina_half_width=lamina_half_width,
                               marker_box=None)
        if window is not None and window["mirrored"]:
            labels = labels[::-1]
        if marker_box is not None:  # the marker sits in the volume's own corner, mirrored or not
            labels[marker_box] = MARKER
        out[i] = labels
    return out


#: the spawn key of the new monkeys' random stream (issue 20: icpcv predict --new-subjects)
NEW_SUBJECTS_STREAM = 2


def new_subjects(preset: str | PhantomPreset = "small", n: int = 3, *, signal: float = 1.0, data_seed: int = 0,
                 seed: int = 0, shape: tuple[int, int, int] | None = None, out=None, acquisition: str = "off",
                 confound: str = "none", transform=None):
    """``n`` new monkeys from the phantom's population, none of them in the cohort of ``data_seed``.

    Their anatomy, compliance, brightness, pressure design, speckle and noise are drawn from the same
    distributions as :func:`make_cohort`'s, from a stream of their own
    (``SeedSequence(data_seed, spawn_key=(NEW_SUBJECTS_STREAM, seed))``), so every ``seed`` gives other
    monkeys and none repeats a run's. They are named ``new<seed>_<m>`` (never a run monkey's name),
    their scans ``new<seed>_s<i>``. Returns ``(scans, volumes, truth)`` as :func:`make_cohort` does.
    ``acquisition``, ``confound`` and ``transform`` are the run's (:func:`make_cohort`): the new monkeys are
    scanned as the run's were.

    >>> scans, volumes, truth = new_subjects("tiny", 2, seed=1)
    >>> sorted(scans["subject"].unique()), volumes.shape[1:]
    (['new1_1', 'new1_2'], (12, 12, 32))
    """
    stream = np.random.SeedSequence(int(data_seed), spawn_key=(NEW_SUBJECTS_STREAM, int(seed)))
    cohort_seed = int(stream.generate_state(1)[0])
    scans, volumes, truth = make_cohort(preset, signal=signal, seed=cohort_seed, n_subjects=int(n), shape=shape,
                                        out=None, acquisition=acquisition, confound=confound, transform=transform)
    names = {s: f"new{int(seed)}_{s}" for s in scans["subject"].unique()}
    scans["subject"] = scans["subject"].map(names)
    scans["scan_id"] = [f"new{int(seed)}_s{i:05d}" for i in range(len(scans))]
    for m in truth["monkeys"]:
        m["subject"] = names[m["subject"]]
    truth["new_subjects"] = dict(data_seed=int(data_seed), seed=int(seed), stream=NEW_SUBJECTS_STREAM,
                                 cohort_seed=cohort_seed)
    if out is not None:
        for x, vol in zip(scans["scan_id"], volumes):
            buf = io.BytesIO()
            np.save(buf, vol)
            atomic_write_bytes(f"{out}/{x}.npy", buf.getvalue())
    return scans, volumes, truth


def phantom_bytes(preset: str | PhantomPreset, shape) -> int:
    """The most bytes the phantom's uint8 volumes can take at ``shape``: every monkey at its preset's
    largest number of ICP levels and scans per step."""
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    n_max = preset.n_subjects * preset.icp_levels[1] * 4 * preset.repeats[1]
    return int(n_max) * int(np.prod(np.asarray(shape, dtype=np.int64)))


def check_phantom_fits(preset: str | PhantomPreset, shape, out) -> None:
    """Refuse a phantom whose volumes cannot be held: in memory (the cohort is drawn there, and a
    copy is cached) or, at the seed's scale (one file per scan), on the disk of ``out``."""
    need = phantom_bytes(preset, shape)
    name = preset if isinstance(preset, str) else preset.name
    big = int(np.prod(shape)) * 1600 > 2 ** 31  # icpcv.cohort.materialise: one file per scan
    if big:
        where = Path(out)
        while not where.exists() and where.parent != where:
            where = where.parent
        have, what = shutil.disk_usage(where).free, f"free on the disk of {where}"
    else:
        have, what = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "of memory on this machine"
    if need > have:
        raise InputError(f"--shape {'x'.join(map(str, shape))}: the {name} phantom's volumes at this shape need up "
                         f"to {need / 2 ** 30:.1f} GiB, and there are {have / 2 ** 30:.1f} GiB {what}; choose a "
                         "smaller --shape (or --phantom tiny)")
