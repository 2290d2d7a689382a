"""Raw volume sources that yield slabs without reading the whole volume at once.

Every source describes its volume in the project's axis convention, (X, Y, Z=depth), and yields
slabs in its *native* layout (whatever is contiguous on disk) with ``native_axes`` saying which
(X, Y, Z) axis each slab axis holds:

=====================  ====================================  ============================
format                 native slab layout                    stream (slabs follow along)
=====================  ====================================  ============================
multi-page TIFF        pages (Y) x rows (Z) x columns (X)    Y: one B-scan per page
folder of TIFFs        files (Y) x rows (Z) x columns (X)    Y: one B-scan per file
``.npy`` (C order)     X x Y x Z                             X
``.npy`` (Fortran)     X x Y x Z                             Z
``.pt``                X x Y x Z                             X
NIfTI                  X x Y x Z (array axes i, j, k)        Z (contiguous on disk)
Bioptigen ``.OCT``     B-scans (Y) x A-scans (X) x depth (Z) Y
Spectralis ``.vol``    B-scans (Y) x depth (Z) x A-scans (X) Y
Heidelberg XML export  B-scans (Y) x depth (Z) x A-scans (X) Y
=====================  ====================================  ============================

TIFF pages are B-scans with rows = depth (Z) and columns = X, stacked along Y, as in
:mod:`icpcv.cohort.volumes`. ``.npy``/``.pt``/NIfTI arrays are taken as (X, Y, Z) already, with
a leading channel axis of 1 and trailing axes of 1 dropped (the run's rule, for every format).

Problems raise :class:`VolumeError` with a reason code from :data:`REASONS`.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from icpcv.cohort.geometry import REASONS as GEOMETRY_REASONS
from icpcv.cohort.volumes import nifti_spacing, plain_tensor, real_dtype_problem, tensor_problem, tiff_spacing, volume_axes
from icpcv.prepare import heyex
from icpcv.util import natural_key

#: reason code -> what it means (quality.csv ``reason`` column)
REASONS = {
    "no_path": "the table names no raw file for this row",
    "missing": "the raw file or folder does not exist",
    "broken_link": "the raw path is a symbolic link that leads nowhere (its target is gone, or links loop)",
    "control_character": "the raw path holds a control character (a NUL byte, a line break or tab inside the "
                         "cell): no file name holds one",
    "path_outside": "a relative raw path that climbs out of --raw (or the table's folder) with '../'; give a path "
                    "inside it, or an absolute path",
    "unknown_format": "the file's suffix is not a supported raw format",
    "oct_extra_missing": "reading vendor .OCT files needs the optional extra: install icpcv[oct]",
    "heyex_extra_missing": "reading Heidelberg .vol files and XML exports needs the optional extra: install "
                           "icpcv[heyex]",
    "not_a_volume": "a circle or radial scan, or B-scans not parallel and equally spaced: not a raster volume, "
                    "never resampled into one",
    "unreadable": "the file cannot be parsed as its format",
    "truncated": "the file is shorter than its own header says",
    "wrong_axes": "the data is not a 3-D volume (X, Y, Z)",
    "too_small": "an axis of the raw volume has fewer than 2 samples",
    "wrong_dtype": "the voxel type is not a real number type",
    "not_dense": "a tensor saved in another layout than its values (sparse, quantized, nested): save it dense",
    "inconsistent_pages": "the B-scans do not all share one shape and type",
    "non_finite": "the volume holds NaN or infinite voxels",
    "wrong_shape": "the raw shape is not the cohort's: more than a factor 2 off its typical shape along an axis, "
                   "or axes that look swapped (icpcv run's rule; docs/inputs.md)",
    "out_of_range": "the resampled values do not fit the chosen output type",
    "internal_error": "an unexpected error (a bug: please report it with the detail)",
    **GEOMETRY_REASONS,  # --fov-mm / --depth-mm, line scans (docs/acquisition.md)
}

TIFF_SUFFIXES = (".tif", ".tiff")
SLAB_BYTES = 8 << 20  # raw bytes per slab: small against the volume, large enough to be fast


class VolumeError(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


#: vendor formats refused by name, and why (docs/prepare.md, "Device files")
REFUSED_SUFFIXES = {
    ".e2e": "a Heidelberg .e2e file: its readers (eyepy, oct-converter) give no reliable A-scan spacing or B-scan "
            "positions; export the scan from Heyex as .vol or XML",
    ".sdb": "a Heidelberg .sdb database: export the scan from Heyex as .vol or XML",
    ".fda": "a Topcon .fda file: its reader assumes the scan geometry instead of reading it; export the volume "
            "with its spacing (e.g. NIfTI) or as TIFFs with the spacing in the table",
    ".fds": "a Topcon .fds file: its reader assumes the scan geometry instead of reading it; export the volume "
            "with its spacing (e.g. NIfTI) or as TIFFs with the spacing in the table",
}


def raw_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        try:
            return "heyex-xml" if heyex.heyex_xml_in(path) is not None else "tiff-folder"
        except heyex.Refusal as exc:
            raise VolumeError(exc.reason, exc.detail) from None
    for suffix, fmt in ((".nii.gz", "nifti"), (".nii", "nifti"), (".npy", "npy"), (".pt", "pt"),
                        (".tiff", "tiff"), (".tif", "tiff"), (".oct", "oct"), (".vol", "heyex-vol"),
                        (".xml", "heyex-xml")):
        if name.endswith(suffix):
            return fmt
    if path.suffix.lower() in REFUSED_SUFFIXES:
        raise VolumeError("unknown_format", f"{path}: not supported: {REFUSED_SUFFIXES[path.suffix.lower()]}")
    raise VolumeError("unknown_format", f"{path}: unknown raw format (expected a folder of TIFFs, "
                                        ".tif/.tiff, .nii/.nii.gz, .npy, .pt, .OCT, .vol or a Heidelberg XML "
                                        "export)")


def _check_dtype(path: Path, dtype) -> np.dtype:
    bad = real_dtype_problem(dtype)  # the run's rule (icpcv.cohort.volumes)
    if bad:
        raise VolumeError("wrong_dtype", f"{path}: {bad}")
    return np.dtype(dtype)


def _squeeze(path: Path, shape: tuple) -> tuple[tuple, int]:
    """The stored shape as (X, Y, Z) by the run's rule (icpcv.cohort.volumes.volume_axes: a leading
    channel axis of 1 and trailing axes of 1 dropped, any format); returns (shape, leading dropped)."""
    shape = tuple(int(s) for s in shape)
    shape3 = volume_axes(shape)
    if shape3 is None:
        raise VolumeError("wrong_axes", f"{path}: data has shape {shape} ({len(shape)} axes); "
                                        "expected 3 axes (X, Y, Z=depth)")
    if min(shape3) < 2:
        raise VolumeError("too_small", f"{path}: volume shape {shape3} has an axis shorter than 2")
    return shape3, int(len(shape) > 3 and shape[0] == 1)


@dataclass
class Source:
    """A raw volume: its (X, Y, Z) shape, voxel type, files, and a slab iterator."""

    path: Path
    fmt: str
    shape: tuple  # (X, Y, Z)
    dtype: np.dtype
    native_axes: tuple  # slab axis i holds (X, Y, Z) axis native_axes[i]
    stream: int  # slab axis along which slabs follow each other
    files: list  # the file(s) whose content defines the volume
    notes: list = field(default_factory=list)
    #: physical geometry the file itself gives (None = it gives none): voxel spacing in mm along
    #: (X, Y, Z), the eye ("OD"/"OS") and the device or format; the acquisition record
    #: (icpcv.cohort.geometry.ACQ_COLUMNS) takes them, and a disagreement with the table is a warning
    spacing_mm: tuple | None = None
    eye: str | None = None
    device: str | None = None

    def slabs(self) -> Iterator[tuple[int, np.ndarray]]:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        pass

    def slab_starts(self, rows: int, row_bytes: int) -> tuple[int, range]:
        """``(per, starts)``: slabs of ``per`` rows (at most SLAB_BYTES each) along an axis of ``rows``."""
        per = max(1, SLAB_BYTES // row_bytes)
        return per, range(0, rows, per)


def _tiffs(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES
             and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def _heyex_xml(path: Path) -> Path | None:
    """The XML of a Heidelberg XML export named by ``path`` (the .xml or its folder), else None."""
    if path.is_dir():
        try:
            return heyex.heyex_xml_in(path)
        except heyex.Refusal:
            return None
    return path if path.suffix.lower() == ".xml" else None


def file_list(path: Path) -> list[Path]:
    """The files that make up a raw volume (a folder: its TIFFs in natural order; a Heidelberg XML
    export: the XML, then the TIFFs of its folder)."""
    xml = _heyex_xml(path)
    if xml is not None:
        return [xml] + _tiffs(xml.parent)
    if path.is_dir():
        return _tiffs(path)
    return [path]


def fingerprint(path: Path) -> list:
    """Cheap identity of the raw input: (name, size, mtime_ns) per file."""
    out = []
    for f in file_list(path):
        st = f.stat()
        out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def content_hash(path: Path, chunk: int = 8 << 20) -> str:
    """sha256 over the raw file(s): for a folder, each TIFF's name and bytes in natural order."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    files = file_list(path)
    for f in files:
        if path.is_dir() or len(files) > 1:
            h.update(f.name.encode() + b"\0")
        with open(f, "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
    return h.hexdigest()


# --- TIFF ------------------------------------------------------------------------------------

class _TiffLog(logging.Handler):
    """tifffile logs broken IFD chains instead of raising; collect those messages."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _tiff_logger():
    return logging.getLogger("tifffile")


class _TiffCapture:
    def __enter__(self):
        self.handler = _TiffLog()
        self.logger = _tiff_logger()
        self.propagate = self.logger.propagate
        self.logger.addHandler(self.handler)
        self.logger.propagate = False
        return self.handler

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.propagate = self.propagate
        return False


def _tiff_pages(path: Path, tif, size: int, *, single: bool):
    """Validate a TIFF's pages; return the list of 2-D pages."""
    pages = list(tif.pages)
    if not pages:
        raise VolumeError("unreadable", f"{path}: TIFF has no pages")
    for i, page in enumerate(pages):
        ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts)]
        if not ends or max(ends) > size:
            raise VolumeError("truncated", f"{path}: TIFF page {i + 1} of {len(pages)} ends past the end of the "
                                           f"file ({size} bytes): the file is truncated")
    try:  # tifffile's own description of the stack (e.g. {"shape": [8, 64, 512]}) says how many pages
        expected = int(np.prod(tif.series[0].shape)) // max(1, int(np.prod(pages[0].shape)))
    except Exception:
        expected = None
    if expected is not None and expected > len(pages):
        raise VolumeError("truncated", f"{path}: TIFF describes {expected} pages but only {len(pages)} can be read: "
                                       "the file is truncated")
    first = pages[0]
    if single and len(pages) != 1:
        raise VolumeError("wrong_axes", f"{path}: holds {len(pages)} pages; a folder of TIFFs needs one B-scan "
                                        "per file")
    for i, page in enumerate(pages):
        if len(page.shape) != 2:
            raise VolumeError("wrong_axes", f"{path}: TIFF page {i + 1} has shape {tuple(page.shape)}; expected "
                                            "2-D B-scans (rows = depth Z, columns = X), one sample per pixel")
        if page.shape != first.shape or page.dtype != first.dtype:
            raise VolumeError("inconsistent_pages", f"{path}: TIFF page {i + 1} is {tuple(page.shape)} "
                                                    f"{page.dtype}, page 1 is {tuple(first.shape)} {first.dtype}")
    _check_dtype(path, first.dtype)
    return pages


class TiffSource(Source):
    """A multi-page TIFF: page y is the B-scan at Y=y, rows = depth (Z), columns = X."""

    @classmethod
    def open(cls, path: Path) -> "TiffSource":
        import tifffile  # lazy: only the reader of the file's format is loaded (memory per worker)

        size = path.stat().st_size
        with _TiffCapture() as log:
            try:
                tif = tifffile.TiffFile(str(path))
            except Exception as exc:
                reason = "truncated" if "corrupted" in str(exc).lower() or size < 8 else "unreadable"
                raise VolumeError(reason, f"{path}: cannot read as TIFF ({type(exc).__name__}: {exc})") from None
            try:
                pages = _tiff_pages(path, tif, size, single=False)
            except Exception:
                tif.close()
                raise
        broken = [m for m in log.messages if "invalid" in m.lower() or "corrupt" in m.lower()]
        if broken:
            tif.close()
            raise VolumeError("truncated", f"{path}: TIFF page chain is broken after {len(pages)} pages "
                                           f"({broken[0]}): the file is truncated or corrupt")
        rows, cols = pages[0].shape
        src = cls(path=path, fmt="tiff", shape=(cols, len(pages), rows), dtype=np.dtype(pages[0].dtype),
                  native_axes=(1, 2, 0), stream=0, files=[path], spacing_mm=tiff_spacing(tif))
        src._tif, src._pages = tif, pages
        return src

    def slabs(self):
        pages = self._pages
        per = max(1, SLAB_BYTES // max(1, pages[0].size * self.dtype.itemsize))
        buf = np.empty((per,) + tuple(pages[0].shape), dtype=self.dtype)  # reused: the consumer is done with it
        for start in range(0, len(pages), per):
            group = pages[start:start + per]
            slab = buf[:len(group)]
            for i, page in enumerate(group):
                _read_page(self.path, page, start + i, out=slab[i])
            yield start, slab

    def close(self):
        self._tif.close()


def _read_page(path: Path, page, index: int, out: np.ndarray | None = None) -> np.ndarray:
    with _TiffCapture() as log:
        try:
            data = page.asarray(out=out)  # straight into the slab buffer when given
        except Exception as exc:
            raise VolumeError("truncated" if "read" in str(exc).lower() else "unreadable",
                              f"{path}: cannot read TIFF page {index + 1} ({type(exc).__name__}: {exc})") from None
    if log.messages:
        raise VolumeError("unreadable", f"{path}: TIFF page {index + 1}: {log.messages[0]}")
    return data


class TiffFolderSource(Source):
    """A folder of single-page TIFFs, one B-scan per file, in natural order of the file names."""

    @classmethod
    def open(cls, path: Path) -> "TiffFolderSource":
        import tifffile  # lazy: only the reader of the file's format is loaded (memory per worker)

        files = file_list(path)
        if not files:
            raise VolumeError("unreadable", f"{path}: folder holds no .tif/.tiff files")
        shape = dtype = spacing = None
        for f in files:
            with _TiffCapture() as log:
                try:
                    with tifffile.TiffFile(str(f)) as tif:
                        page = _tiff_pages(f, tif, f.stat().st_size, single=True)[0]
                        pshape, pdtype = tuple(page.shape), page.dtype
                except VolumeError:
                    raise
                except Exception as exc:
                    raise VolumeError("unreadable", f"{f}: cannot read as TIFF ({type(exc).__name__}: {exc})") \
                        from None
            if log.messages:
                raise VolumeError("truncated", f"{f}: {log.messages[0]}")
            if shape is None:
                shape, dtype = pshape, pdtype
                with tifffile.TiffFile(str(f)) as tif:
                    spacing = tiff_spacing(tif)  # the first B-scan's resolution tags (X, Z; Y unknown)
            elif (pshape, pdtype) != (shape, dtype):
                raise VolumeError("inconsistent_pages", f"{f}: B-scan is {pshape} {pdtype}, but {files[0].name} "
                                                        f"is {shape} {dtype}")
        rows, cols = shape
        if spacing is not None:
            spacing = (spacing[0], None, spacing[2])
        return cls(path=path, fmt="tiff-folder", shape=(cols, len(files), rows), dtype=np.dtype(dtype),
                   native_axes=(1, 2, 0), stream=0, files=files, spacing_mm=spacing)

    def slabs(self):
        import tifffile  # lazy: only the reader of the file's format is loaded (memory per worker)

        rows, cols = self.shape[2], self.shape[0]
        per = max(1, SLAB_BYTES // max(1, rows * cols * self.dtype.itemsize))
        for start in range(0, len(self.files), per):
            group = self.files[start:start + per]
            slab = np.empty((len(group), rows, cols), dtype=self.dtype)
            for i, f in enumerate(group):
                with tifffile.TiffFile(str(f)) as tif:
                    slab[i] = _read_page(f, tif.pages[0], 0)
            yield start, slab


# --- .npy --------------------------------------------------------------------------------------

class NpySource(Source):
    """A .npy array read in slabs with plain file reads (no memory map, no pickle)."""

    @classmethod
    def open(cls, path: Path) -> "NpySource":
        try:  # a memory map only to read the header: no voxel is touched through it
            m = np.load(path, mmap_mode="r", allow_pickle=False)
            shape, dtype, offset = m.shape, m.dtype, int(m.offset)
            fortran = bool(m.flags.f_contiguous and not m.flags.c_contiguous)
            del m
        except ValueError as exc:
            text = str(exc)
            if "greater than file size" in text or "cannot mmap" in text.lower():
                raise VolumeError("truncated", f"{path}: .npy holds fewer bytes than its header says: it is "
                                               "truncated") from None
            if "object" in text.lower():
                raise VolumeError("wrong_dtype", f"{path}: .npy holds Python objects, not numbers") from None
            raise VolumeError("unreadable", f"{path}: cannot read as .npy ({text})") from None
        except Exception as exc:
            raise VolumeError("unreadable", f"{path}: cannot read as .npy ({type(exc).__name__}: {exc})") from None
        if dtype.hasobject or dtype.fields:
            raise VolumeError("wrong_dtype", f"{path}: .npy holds {dtype}, not plain numbers")
        _check_dtype(path, dtype)
        shape3, _ = _squeeze(path, shape)
        need = offset + int(np.prod(shape3)) * dtype.itemsize
        size = path.stat().st_size
        if size < need:
            raise VolumeError("truncated", f"{path}: .npy header says {tuple(shape)} {dtype} ({need} bytes) but "
                                           f"the file has {size} bytes: it is truncated")
        src = cls(path=path, fmt="npy", shape=shape3, dtype=np.dtype(dtype), native_axes=(0, 1, 2),
                  stream=2 if fortran else 0, files=[path])
        src._offset, src._fortran = offset, fortran
        return src

    def slabs(self):
        X, Y, Z = self.shape
        item = self.dtype.itemsize
        plane = (Y * Z if not self._fortran else X * Y) * item
        n = Z if self._fortran else X
        per = max(1, SLAB_BYTES // plane)
        with open(self.path, "rb") as fh:
            for start in range(0, n, per):
                k = min(per, n - start)
                fh.seek(self._offset + start * plane)
                buf = fh.read(k * plane)
                if len(buf) != k * plane:
                    raise VolumeError("truncated", f"{self.path}: ended while reading; the file is truncated")
                arr = np.frombuffer(buf, dtype=self.dtype)
                if self._fortran:
                    yield start, arr.reshape((X, Y, k), order="F")
                else:
                    yield start, arr.reshape((k, Y, Z))


# --- .pt ---------------------------------------------------------------------------------------

class PtSource(Source):
    """A tensor saved with torch.save, loaded with ``weights_only=True`` (memory-mapped when the
    file is in the zip format), slabs along X."""

    @classmethod
    def open(cls, path: Path) -> "PtSource":
        import torch  # lazy: only the reader of the file's format is loaded (memory per worker)

        obj = None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                reason = "truncated" if _looks_truncated(exc) else "unreadable"
                raise VolumeError(reason, f"{path}: cannot read as a tensor file ({type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0] if str(exc) else ''}); "
                                          "re-export it with torch.save(tensor)") from None
        if isinstance(obj, dict) and len(obj) == 1:
            obj = next(iter(obj.values()))
        bad = tensor_problem(obj)  # the run's rule (icpcv.cohort.volumes): sparse, quantized, nested...
        if bad:
            raise VolumeError(bad[0], f"{path}: {bad[1]}")
        shape3, _ = _squeeze(path, tuple(obj.shape))
        t = obj.reshape(shape3)  # singleton axes only: a view
        dtype = plain_tensor(torch.empty(0, dtype=t.dtype)).numpy().dtype  # bfloat16, float8: read as float32
        src = cls(path=path, fmt="pt", shape=shape3, dtype=np.dtype(dtype), native_axes=(0, 1, 2), stream=0,
                  files=[path])
        src._t = t  # slabs along X, the tensor's first axis
        return src

    def slabs(self):
        import torch  # lazy: only the reader of the file's format is loaded (memory per worker)

        per, starts = self.slab_starts(self.shape[0], self.shape[1] * self.shape[2] * self.dtype.itemsize)
        for start in starts:
            yield start, plain_tensor(self._t[start:start + per]).contiguous().numpy()


def _looks_truncated(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("central directory", "unexpected eof", "truncat", "failed finding"))


# --- NIfTI -------------------------------------------------------------------------------------

class NiftiSource(Source):
    """A NIfTI image, array axes (i, j, k) = (X, Y, Z), read in slabs of k (contiguous on disk)."""

    @classmethod
    def open(cls, path: Path) -> "NiftiSource":
        import nibabel as nib  # lazy: only the reader of the file's format is loaded (memory per worker)

        try:
            img = nib.load(str(path), mmap=False, keep_file_open=True)
            proxy = img.dataobj
            shape = tuple(proxy.shape)
            raw_dtype = img.get_data_dtype()
        except Exception as exc:
            raise VolumeError("unreadable", f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc})") from None
        _check_dtype(path, raw_dtype)
        shape3, lead = _squeeze(path, shape)
        slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
        scaled = not (slope in (None, 1.0) or np.isnan(slope)) or not (inter in (None, 0.0) or np.isnan(inter))
        dtype = np.result_type(raw_dtype, np.float32) if scaled else np.dtype(raw_dtype)
        if not str(path).lower().endswith(".gz"):
            need = int(img.header.get_data_offset()) + int(np.prod(shape)) * np.dtype(raw_dtype).itemsize
            size = path.stat().st_size
            if size < need:
                raise VolumeError("truncated", f"{path}: NIfTI header says {shape} {raw_dtype} ({need} bytes) but "
                                               f"the file has {size} bytes: it is truncated")
        src = cls(path=path, fmt="nifti", shape=shape3, dtype=np.dtype(dtype), native_axes=(0, 1, 2), stream=2,
                  files=[path], spacing_mm=nifti_spacing(img.header))
        src._proxy, src._lead, src._nd = proxy, lead, len(shape)
        if scaled:
            src.notes.append(f"NIfTI scaling applied (slope {slope}, intercept {inter})")
        return src

    def slabs(self):
        X, Y, Z = self.shape
        per = max(1, SLAB_BYTES // (X * Y * max(1, self.dtype.itemsize)))
        for start in range(0, Z, per):
            k = min(per, Z - start)
            index = ((0,) if self._lead else ()) + (slice(None), slice(None), slice(start, start + k))
            index += (0,) * (self._nd - len(index))
            try:
                slab = np.asarray(self._proxy[index])
            except Exception as exc:
                reason = "truncated" if isinstance(exc, EOFError) or _looks_truncated(exc) else "unreadable"
                raise VolumeError(reason, f"{self.path}: cannot read depth slices {start}-{start + k - 1} "
                                          f"({type(exc).__name__}: {exc})") from None
            yield start, slab.reshape(X, Y, k).astype(self.dtype, copy=False)

    def close(self):
        fo = getattr(self._proxy, "_opener", None)
        try:
            if fo is not None:
                fo.close_if_mine()
        except Exception:
            pass


# --- vendor .OCT (optional extra) ------------------------------------------------------------

class OctSource(Source):
    """A Bioptigen ``.OCT`` file read by the ``oct-converter`` package (``pip install icpcv[oct]``).

    oct-converter's ``BOCT`` returns a list of volumes, each ``(B-scans, A-scans, depth)`` =
    (Y, X, Z) uint16. A file holding several volumes of one shape (repeated acquisitions) is
    averaged voxel-wise, and the quality table notes it. oct-converter reads the whole file into
    memory, so this format is not memory-bounded the way TIFF, .npy and NIfTI are.
    """

    @classmethod
    def open(cls, path: Path) -> "OctSource":
        try:
            from oct_converter.readers import BOCT  # lazy: an optional dependency (pip install 'icpcv[oct]')
        except ImportError:
            raise VolumeError("oct_extra_missing", f"{path}: vendor .OCT files need the optional package "
                                                   "oct-converter: install icpcv[oct] "
                                                   "(pip install 'icpcv[oct]')") from None
        try:
            vols = BOCT(str(path)).read_oct_volume()
            arrays = [np.asarray(v.volume) for v in vols]
        except Exception as exc:
            raise VolumeError("unreadable", f"{path}: oct-converter cannot read it as a Bioptigen .OCT file "
                                            f"({type(exc).__name__}: {exc})") from None
        if not arrays:
            raise VolumeError("unreadable", f"{path}: the .OCT file holds no volume")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise VolumeError("inconsistent_pages", f"{path}: holds volumes of different shapes {sorted(shapes)}")
        first = arrays[0]
        if first.ndim != 3:
            raise VolumeError("wrong_axes", f"{path}: oct-converter volume has shape {first.shape}; expected "
                                            "(B-scans, A-scans, depth)")
        _check_dtype(path, first.dtype)
        notes = []
        if len(arrays) > 1:
            data = np.mean(np.stack(arrays), axis=0, dtype=np.float64).astype(np.float32)
            notes.append(f"mean of {len(arrays)} repeated volumes")
        else:
            data = first
        del arrays, vols
        Y, X, Z = data.shape
        if min(data.shape) < 2:
            raise VolumeError("too_small", f"{path}: volume (Y, X, Z) = {data.shape} has an axis shorter than 2")
        src = cls(path=path, fmt="oct", shape=(X, Y, Z), dtype=np.dtype(data.dtype), native_axes=(1, 0, 2),
                  stream=0, files=[path], notes=notes, device="Bioptigen (.OCT)",
                  spacing_mm=_bioptigen_header_spacing(BOCT, path, (X, Y, Z)))
        src._data = data  # (Y, X, Z): slabs of B-scans
        return src

    def slabs(self):
        per, starts = self.slab_starts(self.shape[1], self.shape[0] * self.shape[2] * self.dtype.itemsize)
        for start in starts:
            yield start, np.ascontiguousarray(self._data[start:start + per])


# --- Heidelberg Spectralis .vol and XML exports (optional extra) ------------------------------

class HeyexSource(Source):
    """A Spectralis raster read by eyepy (``pip install icpcv[heyex]``) through :mod:`icpcv.prepare.heyex`,
    with its geometry: ``spacing_mm`` (X, Y, Z), the eye and the device. eyepy's ``(B-scans, depth,
    A-scans)`` is (Y, Z, X); eyepy reads the whole file into memory, as oct-converter does."""

    @classmethod
    def open(cls, path: Path) -> "HeyexSource":
        read = heyex.read_vol if raw_format(path) == "heyex-vol" else heyex.read_xml
        try:
            scan = read(path)
        except heyex.Refusal as exc:
            raise VolumeError(exc.reason, exc.detail) from None
        _check_dtype(path, scan.data.dtype)
        src = cls(path=path, fmt=raw_format(path), shape=scan.shape_xyz, dtype=np.dtype(scan.data.dtype),
                  native_axes=(1, 2, 0), stream=0, files=file_list(path), notes=list(scan.notes),
                  spacing_mm=tuple(float(s) for s in scan.spacing_mm), eye=scan.eye, device=scan.device)
        src._data = scan.data  # (Y, Z, X): slabs of B-scans
        return src

    def slabs(self):
        per, starts = self.slab_starts(self.shape[1], self.shape[0] * self.shape[2] * self.dtype.itemsize)
        for start in starts:
            yield start, np.ascontiguousarray(self._data[start:start + per])
def bioptigen_spacing(header, shape) -> tuple | None:
    """(X, Y, Z) spacing in mm from a Bioptigen header as oct-converter parses it: the lateral
    extent along a B-scan (X, the A-scans) is ``azscanlength`` (``scanlength`` when that is 0), the
    extent across B-scans (Y) ``elscanlength``, and depth (Z) ``scandepth``, each in mm over that
    axis's samples. Not checked against a device's own file (none is available to this project):
    a wrong assignment shows as ``spacing_fov_mismatch`` warnings against the table's scan area."""
    def value(name):
        try:
            v = float(getattr(header, name).value)
        except (AttributeError, TypeError, ValueError):
            return None
        return v if np.isfinite(v) and v > 0 else None

    x = value("azscanlength") or value("scanlength")
    y, z = value("elscanlength"), value("scandepth")
    if x is None and y is None and z is None:
        return None
    return tuple(None if v is None else v / int(n) for v, n in zip((x, y, z), shape))


def _bioptigen_header_spacing(reader, path: Path, shape) -> tuple | None:
    """The header's spacing (:func:`bioptigen_spacing`), None when oct-converter cannot parse the header."""
    try:
        return bioptigen_spacing(reader.header_structure.parse_file(str(path)), shape)
    except Exception:  # an older oct-converter, or a header it cannot parse: no spacing, the volume still reads
        return None


_SOURCES = {"tiff": TiffSource, "tiff-folder": TiffFolderSource, "npy": NpySource, "pt": PtSource,
            "nifti": NiftiSource, "oct": OctSource, "heyex-vol": HeyexSource, "heyex-xml": HeyexSource}


def open_source(path: str | os.PathLike) -> Source:
    """Open a raw volume; raises :class:`VolumeError` naming the file and the reason."""
    path = Path(path)
    if not path.exists():
        raise not_found(path)
    return _SOURCES[raw_format(path)].open(path)


def not_found(path: Path, where: str = "") -> VolumeError:
    """Why ``path`` (which does not exist as far as ``Path.exists`` can tell) cannot be read: a symbolic link
    that leads nowhere (a loop, or a target that is gone) is said as such, not as a missing file."""
    where = f" ({where})" if where else ""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 raises RuntimeError for a loop
            return VolumeError("broken_link", f"{path}: a symbolic link that loops{where}")
        except OSError as exc:
            why = ("loops" if exc.errno == errno.ELOOP
                   else f"leads to {os.readlink(path)}, which does not exist")
            return VolumeError("broken_link", f"{path}: a symbolic link that {why}{where}")
    return VolumeError("missing", f"{path}: raw file not found{where}")


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    return _SAFE.sub("_", text).strip("._")
