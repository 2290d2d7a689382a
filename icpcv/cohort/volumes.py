"""Volume readers and resampling.

Axis convention: a volume is a 3-D array ``(X, Y, Z)`` where **Z is depth** (the A-scan axis),
as in the seed's ``128 x 128 x 512`` tensors. A leading channel axis of 1 and trailing axes of 1 are
dropped (:func:`volume_axes`, the rule of run and prepare alike). Readers never unpickle: ``.pt`` files are loaded with
``torch.load(weights_only=True)`` and must hold a tensor; ``.npy`` with ``allow_pickle=False``.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import numpy as np

from icpcv.errors import InputError
from icpcv.plausible import MIN_AXIS_VOXELS, SHAPE_FACTOR_MAX, SWAP_GAIN, VOXEL_ABS_MAX, VOXEL_Z_MAX, show

SUFFIXES = (".pt", ".npy", ".nii", ".nii.gz", ".tif", ".tiff")
#: raw device files that `icpcv prepare` reads and `icpcv run` does not
RAW_DEVICE_SUFFIXES = (".oct", ".vol", ".xml", ".e2e")


def volume_format(path: str | Path) -> str:
    name = str(path).lower()
    for suffix in (".nii.gz", ".nii", ".pt", ".npy", ".tiff", ".tif"):
        if name.endswith(suffix):
            return suffix.lstrip(".")
    if name.endswith(RAW_DEVICE_SUFFIXES) or os.path.isdir(path):
        raise InputError(f"{path}: unknown volume format (expected one of {', '.join(SUFFIXES)}): a raw device "
                         "export (a .OCT, .vol or Heidelberg XML export) is read by `icpcv prepare`, which writes the "
                         "volumes and the table that `icpcv run --manifest` reads (docs/prepare.md)")
    raise InputError(f"{path}: unknown volume format (expected one of {', '.join(SUFFIXES)})")


def real_dtype_problem(dtype) -> str | None:
    """Why a voxel type is not a real number type (booleans, complex numbers, dates and time spans,
    text, records, Python objects), or None. The one rule of every volume reader (run and prepare)."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return f"voxel type {dtype} is not a real number type"
    if dtype.kind in "uif" and not dtype.fields and not dtype.hasobject:
        return None
    what = {"M": " (dates)", "m": " (time spans)", "U": " (text)", "S": " (bytes)", "O": " (Python objects)",
            "b": " (true/false)", "c": " (complex numbers)", "V": " (records)"}.get(dtype.kind, "")
    return f"voxel type {dtype}{what} is not a real number type"


def tensor_problem(obj) -> tuple[str, str] | None:
    """Why what a ``.pt`` file holds is not a plain volume tensor: ``(reason, why)`` with reason
    ``unreadable`` (not a tensor, or one without data), ``not_dense`` (sparse, quantized or nested:
    saved in another layout than its values) or ``wrong_dtype``; None for a dense real tensor.
    Harmless differences are not problems: a tensor saved with ``requires_grad`` (see
    :func:`plain_tensor`), bfloat16 and float8 (read as float32), a non-contiguous layout."""
    import torch  # lazy: torch is heavy; only .pt files and resampling need it

    if not isinstance(obj, torch.Tensor):
        return "unreadable", f"holds a {type(obj).__name__}, not a tensor"
    if getattr(obj, "is_nested", False):
        return "not_dense", "holds a nested tensor (a list of tensors), not one volume"
    if obj.is_quantized:
        return "not_dense", (f"holds a quantized tensor ({obj.dtype}); save its values with "
                             "torch.save(tensor.dequantize())")
    if obj.layout != torch.strided:
        return "not_dense", (f"holds a sparse tensor (layout {obj.layout}); save the volume dense with "
                             "torch.save(tensor.to_dense())")
    if obj.device.type == "meta":
        return "unreadable", "holds a tensor without data (on the meta device)"
    if obj.is_complex() or obj.dtype == torch.bool:
        return "wrong_dtype", f"tensor type {obj.dtype} is not a real number type"
    if not obj.is_floating_point() and str(obj.dtype) not in _TORCH_INTEGERS:
        return "wrong_dtype", f"tensor type {obj.dtype} is not a real number type"
    return None


_TORCH_INTEGERS = ("torch.uint8", "torch.int8", "torch.int16", "torch.int32", "torch.int64", "torch.uint16",
                   "torch.uint32", "torch.uint64")


def plain_tensor(t):
    """A checked tensor (:func:`tensor_problem`) as numpy can take it: detached from autograd,
    floating types numpy lacks (bfloat16, float8) as float32."""
    import torch  # lazy: torch is heavy; only .pt files and resampling need it

    t = t.detach()
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.float()
    return t


def _read_pt(path: Path) -> np.ndarray:
    import torch  # lazy: torch is heavy; only .pt files and resampling need it

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or non-tensor files
        raise InputError(f"{path}: cannot read as a tensor file ({type(exc).__name__}: {exc}); "
                         "re-export it with torch.save(tensor)") from None
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    bad = tensor_problem(obj)
    if bad:
        raise InputError(f"{path}: {bad[1]}")
    return plain_tensor(obj).numpy()


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode=None)
    except Exception as exc:
        raise InputError(f"{path}: cannot read as .npy ({type(exc).__name__}: {exc})") from None


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib  # lazy: only the reader of the file's format is loaded

    try:
        return np.asarray(nib.load(str(path)).dataobj)
    except Exception as exc:
        raise InputError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc})") from None


def _read_tiff(path: Path) -> np.ndarray:
    """Multi-page TIFF: pages are B-scans (rows = depth Z, columns = X); pages stack along Y.

    Returned as (X, Y, Z).
    """
    import tifffile  # lazy: only the reader of the file's format is loaded

    try:
        stack = tifffile.imread(str(path))
    except Exception as exc:
        raise InputError(f"{path}: cannot read as TIFF ({type(exc).__name__}: {exc})") from None
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise InputError(f"{path}: TIFF has shape {stack.shape}; expected pages of 2-D B-scans")
    # (pages=Y, rows=Z, cols=X) -> (X, Y, Z)
    return np.ascontiguousarray(np.transpose(stack, (2, 0, 1)))


def volume_axes(shape) -> tuple[int, int, int] | None:
    """The one rule of every volume reader (run and prepare, every format) for the axes of a stored
    array: a leading channel axis of 1 and trailing axes of 1 (NIfTI's time or vector dimension, e.g.
    ``(X, Y, Z, 1)``) are dropped; what is left must be 3 axes (X, Y, Z=depth). None otherwise.

    >>> volume_axes((1, 4, 5, 6)), volume_axes((4, 5, 6, 1, 1)), volume_axes((1, 4, 5, 6, 1)), volume_axes((4, 5))
    ((4, 5, 6), (4, 5, 6), (4, 5, 6), None)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape if len(shape) == 3 else None


def volume_file_problem(path: Path) -> tuple[str, str] | None:
    """Why a volume path cannot be used as a file: ``(reason code, what)``, or None when it can.

    Tells a missing file from a broken symbolic link, a symbolic link loop, a folder and an
    unreadable file (os.path.exists says False for all but the last two).
    """
    try:
        st = os.stat(path)
    except ValueError:  # a NUL byte in the name
        return "volume_file_unreadable", f"{str(path)!r} (not a valid file name)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "volume_file_unreadable", f"{path} (symbolic link loop)"
        if os.path.islink(path):
            return "volume_file_missing", f"{path} (broken symbolic link to {os.readlink(path)})"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "volume_file_missing", str(path)
        return "volume_file_unreadable", f"{path} ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "volume_file_unreadable", f"{path} (a folder, not a file)"
    if not stat.S_ISREG(st.st_mode):  # a pipe or a device would be read forever
        return "volume_file_unreadable", f"{path} (not a regular file)"
    if not os.access(path, os.R_OK):
        return "volume_file_unreadable", f"{path} (no read permission)"
    return None


def escapes_folder(folder, relative: str) -> bool:
    """Whether ``folder / relative`` lies outside ``folder`` (``../outside``, ``a/../../b``), compared
    lexically: a symbolic link inside the folder may point anywhere (it was put there on purpose),
    but a name in a table must not climb out of the folder it is relative to."""
    root = os.path.abspath(folder)
    target = os.path.abspath(os.path.join(root, relative))
    return target != root and not target.startswith(root.rstrip(os.sep) + os.sep)


_READERS = {"pt": _read_pt, "npy": _read_npy, "nii": _read_nifti, "nii.gz": _read_nifti,
            "tif": _read_tiff, "tiff": _read_tiff}


def read_volume(path: str | Path) -> np.ndarray:
    """Read one volume as a 3-D array (X, Y, Z=depth); raises InputError naming the file."""
    path = Path(path)
    bad = volume_file_problem(path)
    if bad is not None:
        code, what = bad
        raise InputError(f"{what}: " + ("volume file not found" if code == "volume_file_missing"
                                        else "cannot open the volume file"))
    arr = _READERS[volume_format(path)](path)
    shape3 = volume_axes(arr.shape)
    if shape3 is None:
        raise InputError(f"{path}: volume has shape {tuple(arr.shape)}; expected 3 axes (X, Y, Z=depth)")
    arr = arr.reshape(shape3)
    bad_type = real_dtype_problem(arr.dtype)
    if bad_type:
        raise InputError(f"{path}: volume {bad_type}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise InputError(f"{path}: volume has {bad} NaN or infinite voxels; fix or exclude the scan")
    return arr


# --------------------------------------------------------------------------- physical spacing (docs/acquisition.md)

#: unit -> mm
_MM = {"mm": 1.0, "millimeter": 1.0, "micron": 1e-3, "um": 1e-3, "\u00b5m": 1e-3, "\u03bcm": 1e-3, "meter": 1e3,
       "m": 1e3, "cm": 10.0, "centimeter": 10.0, "inch": 25.4, "in": 25.4}
#: dots per inch that image editors write by default: not a measurement
_EDITOR_DPI = (72.0, 96.0, 300.0)


def nifti_spacing(header) -> tuple | None:
    """(X, Y, Z) voxel spacing in mm from a NIfTI header's pixdim (``get_zooms``) and its spatial unit.

    An unknown unit is read as mm (the NIfTI convention most readers follow), except for the
    default pixdim 1, 1, 1 with no unit: that says nothing. None when nothing is known.
    """
    try:
        zooms = [float(z) for z in header.get_zooms()[:3]]
        unit = header.get_xyzt_units()[0]
    except Exception:
        return None
    if len(zooms) < 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        return None
    if unit == "unknown":
        if zooms == [1.0, 1.0, 1.0]:
            return None
        unit = "mm"
    return tuple(z * _MM[unit] for z in zooms) if unit in _MM else None


def tiff_spacing(tif) -> tuple | None:
    """(X, Y, Z) spacing in mm of a B-scan TIFF stack (columns X, pages Y, rows Z), from the first
    page's XResolution (columns) and YResolution (rows) with ResolutionUnit (inch, cm), or an
    ImageJ description's ``unit`` (micron, mm) and ``spacing`` (between pages, Y). None (or None
    on an axis) where the file says nothing; 72, 96 or 300 dots per inch are an image editor's
    default, not a measurement, and are ignored."""
    try:
        page = tif.pages[0]
        tags = page.tags
        ij = getattr(tif, "imagej_metadata", None) or {}

        def res(name):
            t = tags.get(name)
            if t is None:
                return None
            num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
            return float(num) / float(den) if den else None

        xr, yr = res("XResolution"), res("YResolution")
        unit_tag = tags.get("ResolutionUnit")
        unit_code = int(unit_tag.value) if unit_tag is not None else 2
        ij_unit = str(ij.get("unit", "")).strip().lower()
        if ij_unit in _MM:
            per = _MM[ij_unit]
        elif unit_code == 3:
            per = 10.0
        elif unit_code == 2:
            if (xr in _EDITOR_DPI or xr is None) and (yr in _EDITOR_DPI or yr is None):
                return None
            per = 25.4
        else:
            return None
        sx = per / xr if xr and xr > 0 else None
        sz = per / yr if yr and yr > 0 else None
        sy = float(ij["spacing"]) * per if ij_unit in _MM and ij.get("spacing") else None
    except Exception:
        return None
    if sx is None and sy is None and sz is None:
        return None
    if sx == sz == 1.0 * per and sy is None:  # resolution 1 per unit: the writer's placeholder
        return None
    return (sx, sy, sz)


def read_spacing(path: str | Path) -> tuple | None:
    """The (X, Y, Z) voxel spacing in mm a volume file states (NIfTI, TIFF), None for formats that
    carry none (.pt, .npy) or a file that states none. Reads the header only."""
    fmt = volume_format(path)
    try:
        if fmt in ("nii", "nii.gz"):
            import nibabel as nib  # lazy: only the reader of the file's format is loaded

            return nifti_spacing(nib.load(str(path)).header)
        if fmt in ("tif", "tiff"):
            import tifffile  # lazy: only the reader of the file's format is loaded

            with tifffile.TiffFile(str(path)) as tif:
                return tiff_spacing(tif)
    except Exception:
        return None
    return None


def resample(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resample a 3-D volume to ``shape`` (float32), area-averaging when shrinking (anti-aliased).

    Uses torch's trilinear interpolation with ``antialias`` where available, else adaptive
    average pooling for integer shrink factors and trilinear otherwise.
    """
    import torch  # lazy: torch is heavy; only .pt files and resampling need it
    import torch.nn.functional as F  # lazy: torch is heavy; only .pt files and resampling need it

    shape = tuple(int(s) for s in shape)
    if tuple(volume.shape) == shape:
        return np.asarray(volume, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    shrink = all(s <= v for s, v in zip(shape, volume.shape))
    if shrink:
        # area averaging: the mean over each output cell's footprint, no aliasing
        out = F.adaptive_avg_pool3d(t, shape)
    else:
        out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return out[0, 0].numpy()


def load_volume(path: str | Path, shape: tuple[int, int, int] | None) -> np.ndarray:
    arr = read_volume(path)
    if shape is None:
        return np.asarray(arr, dtype=np.float32)
    return resample(arr, shape)


# --------------------------------------------------------------------------- plausibility (docs/inputs.md)

def _fmt_shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _misfit(shape, reference) -> float:
    """The largest per-axis size factor between two shapes, in octaves (1 = a factor 2)."""
    return float(np.max(np.abs(np.log2(np.asarray(shape, float) / np.asarray(reference, float)))))


def _proportions(shape) -> np.ndarray:
    """log2 sizes with the overall scale removed: what a uniform resampling leaves unchanged."""
    logs = np.log2(np.asarray(shape, float))
    return logs - logs.mean()


def _best_reordering(shape, fit) -> tuple[tuple[int, ...], float]:
    """The reordering of ``shape``'s axes (not the identity) that ``fit`` scores lowest."""
    others = [p for p in permutations(range(3)) if p != (0, 1, 2)]
    scored = [(fit(tuple(shape[i] for i in p)), tuple(shape[i] for i in p)) for p in others]
    score, best = min(scored)
    return best, score


def shape_problem(shape, typical, target=None) -> str | None:
    """Why a volume's raw ``shape`` is not for this cohort, or None; ``typical`` is the cohort's typical
    raw shape (the per-axis median), ``target`` the ``--shape`` asked for (None: not given).

    * an axis of fewer than MIN_AXIS_VOXELS voxels is not a volume;
    * axes look swapped when a reordering fits ``typical`` (or the proportions of ``target``) at
      least SWAP_GAIN times better than the stored order, and within SHAPE_FACTOR_MAX;
    * more than SHAPE_FACTOR_MAX off ``typical`` along any axis is another scan, not a sampling
      difference that resampling should absorb. Against ``target`` only the order of axes counts:
      resampling the whole cohort to any ``--shape`` is what it is for.
    """
    shape = tuple(int(s) for s in shape)
    typical = tuple(int(s) for s in typical)
    tol, gain = np.log2(SHAPE_FACTOR_MAX), np.log2(SWAP_GAIN)
    convention = "(icpcv reads volumes as X, Y, Z=depth)"
    if min(shape) < MIN_AXIS_VOXELS:
        return (f"shape {shape} has an axis of {min(shape)} voxel{'' if min(shape) == 1 else 's'}: not a volume "
                f"(the cohort's typical shape is {typical})")
    misfit = _misfit(shape, typical)
    best, best_misfit = _best_reordering(shape, lambda s: _misfit(s, typical))
    if best_misfit <= tol and best_misfit + gain <= misfit:
        return f"axes look swapped: shape {shape} matches the cohort's typical {typical} only reordered {convention}"
    if misfit > tol:
        axis = "XYZ"[int(np.argmax(np.abs(np.log2(np.asarray(shape, float) / np.asarray(typical, float)))))]
        return (f"shape {shape} is more than a factor {SHAPE_FACTOR_MAX:g} off the cohort's typical shape "
                f"{typical} along {axis}: another scan protocol or a wrong file, not a sampling difference that "
                "resampling should absorb")
    if target is not None:  # a volume like the others, but the cohort may be swapped against --shape
        target = tuple(int(s) for s in target)

        def distortion(s):
            return float(np.max(np.abs(_proportions(s) - _proportions(target))))

        best, best_distortion = _best_reordering(shape, distortion)
        if best_distortion <= tol and best_distortion + gain <= distortion(shape):
            return (f"axes look swapped: shape {shape} has the proportions of --shape {_fmt_shape(target)} only "
                    f"reordered as {best} {convention}")
    return None


def typical_shape(shapes) -> tuple[int, int, int]:
    """The cohort's typical raw shape: the per-axis median (the majority shape when there is one)."""
    return tuple(int(round(float(v))) for v in np.median(np.asarray(list(shapes), float), axis=0))


@dataclass(frozen=True)
class VoxelSummary:
    """What the plausibility checks need of one (resampled) volume; float64 statistics."""
    mean: float
    std: float
    lo: float
    hi: float

    @classmethod
    def of(cls, volume: np.ndarray) -> "VoxelSummary":
        return cls(float(np.mean(volume, dtype=np.float64)), float(np.std(volume, dtype=np.float64)),
                   float(np.min(volume)), float(np.max(volume)))


def raw_value_problem(volume: np.ndarray) -> str | None:
    """An absolute check on a raw volume before any arithmetic on it: magnitudes beyond VOXEL_ABS_MAX."""
    if volume.size == 0:
        return "the volume has no voxels"
    peak = max(abs(float(np.min(volume))), abs(float(np.max(volume))))
    if peak > VOXEL_ABS_MAX:
        return (f"voxel values up to {show(peak)} exceed ±{VOXEL_ABS_MAX:g}, beyond any OCT export; standardising "
                "them would overflow (another unit, or a corrupt file)")
    return None


def voxel_problems(summaries: dict[str, VoxelSummary]) -> dict[str, str]:
    """Volumes whose voxel values are implausible for the cohort: ``{scan id: why}``.

    One value everywhere is an empty export. A voxel more than VOXEL_Z_MAX of the cohort's typical
    voxel standard deviations (the median over volumes) from its typical mean (likewise) would,
    standardised, dominate every feature: another intensity scale or a corrupt value. The cohort
    statistics are medians over volumes, so one bad volume cannot hide itself; they need 3.
    """
    bad = {x: f"every voxel is {show(s.lo)}: an empty or blank volume" for x, s in summaries.items() if s.hi == s.lo}
    rest = {x: s for x, s in summaries.items() if x not in bad}
    if len(rest) < 3:
        return bad
    center = float(np.median([s.mean for s in rest.values()]))
    scale = float(np.median([s.std for s in rest.values()]))
    if not scale > 0:
        return bad
    for x, s in rest.items():
        worst = s.hi if abs(s.hi - center) >= abs(s.lo - center) else s.lo
        z = abs(worst - center) / scale
        if z > VOXEL_Z_MAX:
            bad[x] = (f"voxel values up to {show(worst)} lie {z:.3g} cohort standard deviations from the cohort's "
                      f"typical voxel (mean {center:.4g}, standard deviation {scale:.4g}); more than "
                      f"{VOXEL_Z_MAX:g} after standardisation: another intensity scale or a corrupt value")
    return bad
