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
    x = np.linspace(-1, 1, nx, dtype=np.float32)[:, None, None] - scan["dx"]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None] - scan["dy"]
    z = (np.arange(nz, dtype=np.float32)[None, None, :] + 0.5) / nz - scan["dz"]
    r2 = x**2 + y**2
    tilt = scan["tilt_x"] * x + scan["tilt_y"] * y
    bm = monkey["bm_depth"] + tilt
    R = monkey["bmo_radius"]
    inside = r2 < R**2
    ilm = bm - 0.22 + monkey["cup_depth"] * np.exp(-r2 / (2 * monkey["cup_width"] ** 2))
    lamina = bm + scan["lamina_depth"] + monkey["curvature"] * (1 - r2 / R**2)
    return dict(z=z, bm=bm, inside=inside, ilm=ilm, lamina=lamina)


def render(shape, monkey: dict, scan: dict, rng: np.random.Generator, *, marker: tuple | None = None) -> np.ndarray:
    """Render one uint8 volume (X, Y, Z).

    ``marker = (box, intensity)`` adds the planted shortcut (:class:`ShortcutMarker`): ``intensity``
    over the voxels of ``box`` (three slices), after the monkey's brightness and before the speckle,
    so it is speckled like tissue but not scaled with the monkey. It draws nothing from ``rng``.
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
                out=None, shortcut: ShortcutMarker | None = None):
    """Generate a synthetic cohort.

    Returns ``(scans, volumes, truth)``: the scan table (``scan_id, subject, iop, icp``), a uint8
    array ``(n, X, Y, Z)`` (or, with ``out`` a folder, ``None`` and one ``<scan_id>.npy`` per scan
    written there, for the seed's scale) and the generating parameters.

    ``shortcut`` plants a :class:`ShortcutMarker`; the scan table then has the columns ``marker``
    (its added intensity) and ``marker_informative``, and ``truth["shortcut"]`` its settings. Its
    random numbers come from a stream of their own, so the pressures, anatomy, speckle and noise
    are those of the same cohort without it. Without it the volumes are those of every earlier
    version. Label volumes of the anatomy: :func:`phantom_labels`.
    """
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
    volumes = None if out is not None else np.empty((n,) + shape, dtype=np.uint8)
    for i, rec in enumerate(scans.to_dict("records")):
        vol_rng = np.random.default_rng([seed, i])
        marker = None if shortcut is None else (shortcut.box(shape), rec["marker"])
        vol = render(shape, mp.loc[rec["subject"]].to_dict(), rec, vol_rng, marker=marker)
        if out is None:
            volumes[i] = vol
        else:
            buf = io.BytesIO()
            np.save(buf, vol)
            atomic_write_bytes(f"{out}/{rec['scan_id']}.npy", buf.getvalue())
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
    return scans, volumes, truth


#: the spawn key of the shortcut's random stream (independent of the cohort's)
SHORTCUT_STREAM = 1


def _marker_intensity(scans: pd.DataFrame, shortcut: ShortcutMarker, seed: int) -> tuple[np.ndarray, np.ndarray]:
    informative = scans["subject"].isin(shortcut.informative_subjects(scans["subject"].unique())).to_numpy()
    lo, hi = min(ICP_LEVELS), max(ICP_LEVELS)
    tracking = np.clip((scans["icp"].to_numpy() - lo) / (hi - lo), 0.0, 1.0)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SHORTCUT_STREAM,)))
    decoy = rng.uniform(0.0, 1.0, len(scans))
    return shortcut.strength * np.where(informative, tracking, decoy), informative


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
    out = np.empty((len(scans),) + shape, dtype=np.uint8)
    for i, rec in enumerate(scans.to_dict("records")):
        out[i] = render_labels(shape, monkeys[str(rec["subject"])], rec, lamina_half_width=lamina_half_width,
                               marker_box=marker_box)
    return out


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
