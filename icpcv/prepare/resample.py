"""Streaming, separable resampling of a volume that arrives slab by slab.

Every axis is resampled by a 1-D linear operator:

* shrinking: **area averaging** over the bins of ``torch.nn.functional.adaptive_avg_pool1d``
  (bin ``i`` covers ``[floor(i*n/m), ceil((i+1)*n/m))``), i.e. an anti-aliasing box filter;
* growing: **linear interpolation** with ``align_corners=False`` (torch's ``linear``);
* same size: identity (values copied exactly).

The 3-D operator is the product of the three 1-D ones, so for a volume that shrinks on every
axis the result equals :func:`icpcv.cohort.volumes.resample` (``adaptive_avg_pool3d``), and for
one that grows on every axis it equals trilinear interpolation. Unlike that function, an axis
that shrinks is always area-averaged, even when another axis grows.

The raw volume is never held whole: slabs along one "stream" axis (B-scans of a TIFF, rows of a
``.npy``) are reduced on the two in-plane axes first and then accumulated into the output with
the stream axis's weights. Peak memory is the output plus a few slabs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: bump when the numbers written by ``prepare`` change for the same input and options
ALGORITHM = "separable-area-linear-v1"


@dataclass(frozen=True)
class AxisOp:
    """Resample one axis from ``n`` to ``m`` samples."""

    n: int
    m: int

    @property
    def kind(self) -> str:
        if self.m == self.n:
            return "identity"
        if self.m < self.n:
            return "box" if self.n % self.m == 0 else "area"
        return "linear"

    def bins(self) -> tuple[np.ndarray, np.ndarray]:
        i = np.arange(self.m)
        start = (i * self.n) // self.m
        end = -((-(i + 1) * self.n) // self.m)  # ceil
        return start, end

    def linear(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = self.n / self.m
        src = np.maximum((np.arange(self.m) + 0.5) * scale - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), self.n - 1)
        i1 = np.minimum(i0 + 1, self.n - 1)
        return i0, i1, src - i0

    def matrix(self) -> np.ndarray:
        """The dense ``(m, n)`` operator (float64); used for the stream axis and in tests."""
        w = np.zeros((self.m, self.n))
        if self.kind == "identity":
            np.fill_diagonal(w, 1.0)
        elif self.kind in ("box", "area"):
            start, end = self.bins()
            for i, (s, e) in enumerate(zip(start, end)):
                w[i, s:e] = 1.0 / (e - s)
        else:
            i0, i1, lam = self.linear()
            rows = np.arange(self.m)
            np.add.at(w, (rows, i0), 1.0 - lam)
            np.add.at(w, (rows, i1), lam)
        return w

    def apply(self, a: np.ndarray, axis: int) -> np.ndarray:
        """Resample ``a`` along ``axis``; returns float32 (any real input dtype)."""
        kind = self.kind
        if kind == "identity":
            return np.asarray(a, dtype=np.float32)
        if kind == "box":
            f = self.n // self.m
            return (box_sum(a, axis, f, np.float64) / f).astype(np.float32)
        if kind == "area":
            start, end = self.bins()
            c = np.cumsum(np.asarray(a, dtype=np.float64), axis=axis)
            zero = np.zeros_like(np.take(c, [0], axis=axis))
            c = np.concatenate([zero, c], axis=axis)
            sums = np.take(c, end, axis=axis) - np.take(c, start, axis=axis)
            count_shape = [1] * a.ndim
            count_shape[axis] = self.m
            return (sums / (end - start).reshape(count_shape)).astype(np.float32)
        i0, i1, lam = self.linear()
        shape = [1] * a.ndim
        shape[axis] = self.m
        lam = lam.astype(np.float32).reshape(shape)
        a0 = np.take(a, i0, axis=axis).astype(np.float32)
        a1 = np.take(a, i1, axis=axis).astype(np.float32)
        return a0 * (1.0 - lam) + a1 * lam


def box_sum(a: np.ndarray, axis: int, f: int, dtype) -> np.ndarray:
    """Sums over consecutive groups of ``f`` samples along ``axis``, accumulated in ``dtype``."""
    if axis == a.ndim - 1 and f <= 16:  # along the contiguous axis strided adds beat a reduction
        index = [slice(None)] * a.ndim
        index[axis] = slice(0, None, f)
        s = a[tuple(index)].astype(dtype)
        for k in range(1, f):
            index[axis] = slice(k, None, f)
            s += a[tuple(index)]
        return s
    shape = a.shape[:axis] + (a.shape[axis] // f, f) + a.shape[axis + 1:]
    return np.ascontiguousarray(a).reshape(shape).sum(axis=axis + 1, dtype=dtype)


def _transpose2d(src: np.ndarray, tile: int = 64) -> np.ndarray:
    """A contiguous copy of ``src.T``, tile by tile (a plain transposing copy of a large array is
    a few times slower: cache misses)."""
    n, m = src.shape
    out = np.empty((m, n), dtype=src.dtype)
    for i in range(0, n, tile):
        for j in range(0, m, tile):
            out[j:j + tile, i:i + tile] = src[i:i + tile, j:j + tile].T
    return out


def _transpose(a: np.ndarray, axes: tuple) -> np.ndarray:
    """``np.ascontiguousarray(np.transpose(a, axes))``; the two cyclic cases are 2-D transposes."""
    axes = tuple(int(i) for i in axes)
    A0, A1, A2 = a.shape
    if axes == (2, 0, 1):
        return _transpose2d(a.reshape(A0 * A1, A2)).reshape(A2, A0, A1)
    if axes == (1, 2, 0):
        return _transpose2d(a.reshape(A0, A1 * A2)).reshape(A1, A2, A0)
    return np.ascontiguousarray(np.transpose(a, axes))


def _int_sum_dtype(unsigned: bool, bound: int):
    if unsigned and bound < 2**16:
        return np.uint16
    if bound < 2**31:
        return np.int32
    return np.int64


class StreamResampler:
    """Accumulate slabs of a ``raw_shape`` volume into a ``target`` volume, both (X, Y, Z).

    ``native_axes[i]`` names the (X, Y, Z) axis that axis ``i`` of each incoming slab holds (a
    TIFF B-scan stack arrives as (Y, Z, X): ``native_axes = (1, 2, 0)``); ``stream`` is the
    native axis along which consecutive slabs follow each other.
    """

    def __init__(self, raw_shape, target, native_axes=(0, 1, 2), stream: int = 0):
        self.raw_shape = tuple(int(s) for s in raw_shape)
        self.target = tuple(int(s) for s in target)
        self.native_axes = tuple(native_axes)
        if sorted(self.native_axes) != [0, 1, 2]:
            raise ValueError(f"native_axes {native_axes} is not a permutation of (0, 1, 2)")
        self.stream = stream
        self.ops = [AxisOp(self.raw_shape[a], self.target[a]) for a in range(3)]
        s = self.native_axes[stream]
        self.stream_matrix = self.ops[s].matrix().astype(np.float32)
        rest = [i for i in range(3) if i != stream]
        # accumulate with the stream axis first, the others in native order: contiguous updates
        self._acc_axes = [s] + [self.native_axes[i] for i in rest]
        self.acc = np.zeros([self.target[a] for a in self._acc_axes], dtype=np.float32)
        self.seen = 0
        # shrink the longest in-plane axis first: the later ops then touch less data
        self._inplane = sorted(rest, key=lambda i: -self.raw_shape[self.native_axes[i]])

    def reduce_inplane(self, slab: np.ndarray) -> np.ndarray:
        """Resample a slab on its two in-plane axes; float32.

        8- and 16-bit integer slabs are box-summed in integers (exact) and divided once.
        """
        b = slab
        ops = [(i, self.ops[self.native_axes[i]]) for i in self._inplane]
        divisor = 1
        if b.dtype.kind in "ui" and b.dtype.itemsize <= 2:
            info = np.iinfo(b.dtype)
            bound = max(abs(int(info.min)), int(info.max))
            while ops and ops[0][1].kind in ("box", "identity"):
                i, op = ops.pop(0)
                if op.kind == "box":
                    f = op.n // op.m
                    bound *= f
                    b = box_sum(b, i, f, _int_sum_dtype(b.dtype.kind == "u", bound))
                    divisor *= f
            if divisor > 1:
                if bound < 2**24:  # the sums are exact in float32, so one rounding in the division
                    b = np.divide(b, divisor, dtype=np.float32)
                else:
                    b = (b / divisor).astype(np.float32)
        for i, op in ops:
            b = op.apply(b, axis=i)
        return np.asarray(b, dtype=np.float32)

    def add(self, start: int, slab: np.ndarray) -> None:
        if slab.ndim != 3:
            raise ValueError(f"slab has {slab.ndim} axes")
        if start != self.seen:
            raise ValueError(f"slab starts at {start}, expected {self.seen}")
        k = slab.shape[self.stream]
        b = self.reduce_inplane(slab)
        w = self.stream_matrix[:, start:start + k]
        rows = np.flatnonzero(np.any(w != 0, axis=1))
        if rows.size:
            j0, j1 = int(rows[0]), int(rows[-1]) + 1
            b = np.moveaxis(b, self.stream, 0).reshape(k, -1)
            self.acc[j0:j1] += (w[j0:j1] @ b).reshape((j1 - j0,) + self.acc.shape[1:])
        self.seen += k

    def result(self) -> np.ndarray:
        """The resampled volume, (X, Y, Z) float32, C order."""
        n = self.raw_shape[self.native_axes[self.stream]]
        if self.seen != n:
            raise ValueError(f"saw {self.seen} of {n} slabs")
        out = _transpose(self.acc, tuple(np.argsort(self._acc_axes)))
        self.acc = None
        return out


# --- intensity statistics, gathered on the raw voxels while they stream past ----------------

_HIST_DTYPES = {np.dtype(np.uint8): 0, np.dtype(np.int8): 128, np.dtype(np.uint16): 0, np.dtype(np.int16): 32768}
#: voxels that the percentiles are computed from: all of them up to this many, else a regular sample
SAMPLE_TARGET = 8_000_000  # 8/16-bit types: counted in a histogram, costs no memory
SAMPLE_TARGET_FLOAT = 2_000_000  # other types: kept as float64 (16 MB)


def _prime_at_least(n: int) -> int:
    n = max(2, int(n))
    while any(n % p == 0 for p in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


@dataclass
class RawStats:
    """Counts of zero, saturated and non-finite voxels, minimum and maximum: exact, over every voxel.

    Percentiles: exact (numpy's linear method) when the volume has at most ``SAMPLE_TARGET`` voxels
    (``SAMPLE_TARGET_FLOAT`` for types other than 8/16-bit integers), else from every k-th voxel in
    file order, k a prime (so that the sample does not keep hitting the same columns of a
    power-of-two-wide B-scan); ``percentile_basis`` says which.
    """

    dtype: np.dtype
    n_total: int
    saturation: float | None
    n: int = 0
    zeros: int = 0
    saturated: int = 0
    nonfinite: int = 0
    vmin: float = math.inf
    vmax: float = -math.inf
    hist: np.ndarray | None = None
    samples: list = field(default_factory=list)

    def __post_init__(self):
        self.dtype = np.dtype(self.dtype)
        target = SAMPLE_TARGET_FLOAT
        if self.dtype in _HIST_DTYPES:
            self.hist = np.zeros(256 if self.dtype.itemsize == 1 else 65536, dtype=np.int64)
            target = SAMPLE_TARGET
        self.step = 1 if self.n_total <= target else _prime_at_least(math.ceil(self.n_total / target))
        self._phase = 0
        self.n_sampled = 0

    def update(self, slab: np.ndarray) -> None:
        flat = np.ascontiguousarray(slab).reshape(-1)
        self.n += flat.size
        if not flat.size:
            return
        if np.issubdtype(flat.dtype, np.floating):
            bad = flat.size - int(np.count_nonzero(np.isfinite(flat)))
            if bad:
                self.nonfinite += bad
                return
        self.zeros += flat.size - int(np.count_nonzero(flat))
        if self.saturation is not None:
            self.saturated += int(np.count_nonzero(flat >= self.saturation))
        self.vmin = min(self.vmin, float(flat.min()))
        self.vmax = max(self.vmax, float(flat.max()))
        sample = flat[self._phase::self.step]
        self._phase = (self._phase - flat.size) % self.step
        self.n_sampled += sample.size
        if self.hist is not None:
            off = _HIST_DTYPES[self.dtype]
            if off:
                sample = sample.astype(np.int32) + off
            self.hist += np.bincount(sample, minlength=self.hist.size)
        else:
            self.samples.append(np.asarray(sample, dtype=np.float64))

    def finish(self) -> None:
        """Kept for callers; every count is final after the last update."""

    def percentiles(self, qs=(1, 50, 99)) -> tuple[list[float], str]:
        basis = "exact" if self.step == 1 else f"sample of {self.n_sampled} voxels (1 in {self.step})"
        if self.n_sampled == 0:
            return [math.nan] * len(qs), "none"
        if self.hist is not None:
            off = _HIST_DTYPES[self.dtype]
            return [percentile_from_hist(self.hist, q) - off for q in qs], basis
        return [float(v) for v in np.percentile(np.concatenate(self.samples), qs)], basis


def percentile_from_hist(counts: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear method) from ``counts[v]`` = how often value v occurs."""
    n = int(counts.sum())
    if n == 0:
        return math.nan
    pos = q / 100.0 * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    cum = np.cumsum(counts)
    v_lo = int(np.searchsorted(cum, lo, side="right"))
    v_hi = int(np.searchsorted(cum, hi, side="right"))
    return float(v_lo + (v_hi - v_lo) * (pos - lo))


def saturation_value(dtype: np.dtype, override: float | None) -> float | None:
    """The value at which a voxel counts as saturated: ``override``, else the integer type's maximum."""
    if override is not None:
        return float(override)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return None
