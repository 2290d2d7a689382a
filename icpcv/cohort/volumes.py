"""Volume readers and resampling.

Axis convention: a volume is a 3-D array ``(X, Y, Z)`` where **Z is depth** (the A-scan axis),
as in the seed's ``128 x 128 x 512`` tensors. Files holding a 4-D array with a leading channel
axis of 1 are accepted. Readers never unpickle: ``.pt`` files are loaded with
``torch.load(weights_only=True)`` and must hold a tensor; ``.npy`` with ``allow_pickle=False``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from icpcv.errors import InputError

SUFFIXES = (".pt", ".npy", ".nii", ".nii.gz", ".tif", ".tiff")


def volume_format(path: str | Path) -> str:
    name = str(path).lower()
    for suffix in (".nii.gz", ".nii", ".pt", ".npy", ".tiff", ".tif"):
        if name.endswith(suffix):
            return suffix.lstrip(".")
    raise InputError(f"{path}: unknown volume format (expected one of {', '.join(SUFFIXES)})")


def _read_pt(path: Path) -> np.ndarray:
    import torch  # lazy: torch is heavy; only .pt files and resampling need it

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or non-tensor files
        raise InputError(f"{path}: cannot read as a tensor file ({type(exc).__name__}: {exc}); "
                         "re-export it with torch.save(tensor)") from None
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor):
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a tensor")
    if obj.dtype == torch.bfloat16:
        obj = obj.float()
    return obj.numpy()


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


_READERS = {"pt": _read_pt, "npy": _read_npy, "nii": _read_nifti, "nii.gz": _read_nifti,
            "tif": _read_tiff, "tiff": _read_tiff}


def read_volume(path: str | Path) -> np.ndarray:
    """Read one volume as a 3-D array (X, Y, Z=depth); raises InputError naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: volume file not found")
    arr = _READERS[volume_format(path)](path)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise InputError(f"{path}: volume has shape {tuple(arr.shape)}; expected 3 axes (X, Y, Z=depth)")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{path}: volume dtype {arr.dtype} is not a real number type")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise InputError(f"{path}: volume has {bad} NaN or infinite voxels; fix or exclude the scan")
    return arr


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
