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
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from icpcv.util import atomic_write_bytes

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


def render(shape, monkey: dict, scan: dict, rng: np.random.Generator) -> np.ndarray:
    """Render one uint8 volume (X, Y, Z)."""
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
    sig = 1.2 / nz  # thin layers: ~1.2 voxels
    vol = np.zeros((nx, ny, nz), dtype=np.float32)
    # retina between ILM and BM, with a bright ILM
    retina = (z > ilm) & (z < bm)
    vol += 0.35 * retina
    vol += 0.6 * np.exp(-((z - ilm) ** 2) / (2 * sig**2))
    # Bruch's membrane / RPE, absent inside the opening
    vol += 1.0 * np.exp(-((z - bm) ** 2) / (2 * sig**2)) * (~inside)
    # choroid below BM outside the disc
    vol += 0.3 * ((z > bm) & (z < bm + 0.15) & ~inside)
    # lamina cribrosa, inside the opening only
    lam = bm + scan["lamina_depth"] + monkey["curvature"] * (1 - r2 / R**2)
    lam_sig = 2.0 / nz
    vol += 0.9 * np.exp(-((z - lam) ** 2) / (2 * lam_sig**2)) * inside
    vol *= monkey["brightness"]
    speckle = rng.gamma(shape=4.0, scale=0.25, size=vol.shape).astype(np.float32)
    vol = vol * speckle + rng.normal(0.05, 0.04, vol.shape).astype(np.float32)
    return np.clip(vol * 160.0, 0, 255).astype(np.uint8)


def make_cohort(preset: str | PhantomPreset = "small", *, signal: float = 1.0, seed: int = 0,
                n_subjects: int | None = None, shape: tuple[int, int, int] | None = None,
                out=None):
    """Generate a synthetic cohort.

    Returns ``(scans, volumes, truth)``: the scan table (``scan_id, subject, iop, icp``), a uint8
    array ``(n, X, Y, Z)`` (or, with ``out`` a folder, ``None`` and one ``<scan_id>.npy`` per scan
    written there, for the seed's scale) and the generating parameters.
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
    volumes = None if out is not None else np.empty((n,) + shape, dtype=np.uint8)
    for i, rec in enumerate(scans.to_dict("records")):
        vol_rng = np.random.default_rng([seed, i])
        vol = render(shape, mp.loc[rec["subject"]].to_dict(), rec, vol_rng)
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
    return scans, volumes, truth
