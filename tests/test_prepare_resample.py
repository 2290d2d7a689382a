"""The streaming resampler and the raw statistics of ``icpcv prepare``, against torch and numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icpcv.cohort.volumes import resample
from icpcv.prepare.core import robust_z
from icpcv.prepare.resample import AxisOp, RawStats, StreamResampler, _transpose, percentile_from_hist


@pytest.mark.parametrize("n,m", [(8, 8), (12, 4), (13, 5), (7, 3), (5, 9), (4, 16), (1, 3), (9, 1)])
def test_axis_op_matches_torch(n, m):
    rng = np.random.default_rng(n * 100 + m)
    a = rng.normal(size=(3, n, 4)).astype(np.float32)
    t = torch.from_numpy(np.moveaxis(a, 1, -1).copy()).reshape(-1, 1, n)
    if m <= n:
        ref = F.adaptive_avg_pool1d(t, m)
    else:
        ref = F.interpolate(t, size=m, mode="linear", align_corners=False)
    ref = np.moveaxis(ref.reshape(3, 4, m).numpy(), -1, 1)
    op = AxisOp(n, m)
    np.testing.assert_allclose(op.apply(a, axis=1), ref, rtol=1e-5, atol=1e-6)
    # the dense operator used for the stream axis is the same map
    np.testing.assert_allclose(np.einsum("mn,anb->amb", op.matrix(), a), ref, rtol=1e-5, atol=1e-6)


def _stream(vol, target, native_axes, stream, step):
    """Feed ``vol`` (X, Y, Z) to a StreamResampler in the native layout, ``step`` samples per slab."""
    nat = np.transpose(vol, native_axes)  # slab axis i holds (X, Y, Z) axis native_axes[i]
    rs = StreamResampler(vol.shape, target, native_axes, stream)
    for s0 in range(0, nat.shape[stream], step):
        index = [slice(None)] * 3
        index[stream] = slice(s0, s0 + step)
        rs.add(s0, np.ascontiguousarray(nat[tuple(index)]))
    return rs.result()


LAYOUTS = [((0, 1, 2), 0), ((1, 2, 0), 0), ((0, 1, 2), 2), ((1, 0, 2), 0), ((2, 0, 1), 1)]


@pytest.mark.parametrize("native_axes,stream", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_stream_equals_whole_volume_resample_when_shrinking(native_axes, stream, dtype):
    rng = np.random.default_rng(1)
    vol = (rng.random((16, 12, 40)) * 250).astype(dtype)
    for target in [(4, 3, 10), (5, 4, 9), (16, 6, 40), (16, 12, 40)]:
        out = _stream(vol, target, native_axes, stream, step=3)
        assert out.shape == target and out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_allclose(out, resample(vol, target), rtol=2e-6, atol=2e-5, err_msg=str(target))


def test_identity_is_exact_and_growing_is_trilinear():
    rng = np.random.default_rng(2)
    vol = rng.integers(0, 65535, (6, 5, 7)).astype(np.uint16)
    np.testing.assert_array_equal(_stream(vol, vol.shape, (1, 2, 0), 0, 2), vol.astype(np.float32))
    grown = _stream(vol, (9, 10, 11), (1, 2, 0), 0, 2)
    ref = F.interpolate(torch.from_numpy(vol.astype(np.float32))[None, None], size=(9, 10, 11), mode="trilinear",
                        align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(grown, ref, rtol=1e-5)


def test_mixed_shrink_and_grow_is_area_averaged_on_the_shrinking_axis():
    # a fine stripe pattern along X (period 2) must average out, not alias, when X shrinks 4x while Z grows
    vol = np.zeros((16, 4, 4), dtype=np.float32)
    vol[::2] = 1.0
    out = _stream(vol, (4, 4, 8), (0, 1, 2), 0, 5)
    np.testing.assert_allclose(out, 0.5, atol=1e-6)


def test_bright_voxel_lands_in_its_output_cell():
    vol = np.zeros((32, 8, 64), dtype=np.uint8)
    vol[21, 5, 50] = 240
    out = _stream(vol, (8, 4, 16), (1, 2, 0), 0, 1)
    assert np.unravel_index(out.argmax(), out.shape) == (5, 2, 12)
    assert out.max() == pytest.approx(240 / (4 * 2 * 4))
    assert out.sum() == pytest.approx(240 / 32)  # area averaging keeps the mean


def test_stream_rejects_slabs_out_of_order():
    rs = StreamResampler((4, 4, 4), (2, 2, 2))
    with pytest.raises(ValueError, match="expected 0"):
        rs.add(2, np.zeros((2, 4, 4), np.uint8))
    rs.add(0, np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="saw 2 of 4"):
        rs.result()


@pytest.mark.parametrize("axes", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1), (1, 0, 2), (2, 1, 0)])
def test_blocked_transpose(axes):
    a = np.random.default_rng(3).random((70, 3, 130)).astype(np.float32)
    np.testing.assert_array_equal(_transpose(a, axes), np.transpose(a, axes))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64])
def test_raw_stats_match_numpy(dtype):
    rng = np.random.default_rng(4)
    if np.dtype(dtype).kind == "f":
        vol = rng.normal(50, 20, size=(9, 7, 13)).astype(dtype)
        vol[0, 0, :5] = 0
    else:
        info = np.iinfo(dtype)
        vol = rng.integers(max(int(info.min), -3000), min(int(info.max), 3000) + 1, size=(9, 7, 13)).astype(dtype)
        vol[1, 1, :7] = info.max
    stats = RawStats(dtype, vol.size, 100.0)
    for s0 in range(0, 9, 4):
        stats.update(np.ascontiguousarray(vol[s0:s0 + 4]))
    stats.finish()
    (p1, p50, p99), basis = stats.percentiles()
    np.testing.assert_allclose([p1, p50, p99], np.percentile(vol, [1, 50, 99]), rtol=1e-12)
    assert basis == "exact"
    assert stats.zeros == int((vol == 0).sum()) and stats.saturated == int((vol >= 100).sum())
    assert (stats.vmin, stats.vmax) == (float(vol.min()), float(vol.max()))


@pytest.mark.parametrize("dtype,target", [(np.float32, "SAMPLE_TARGET_FLOAT"), (np.uint8, "SAMPLE_TARGET")])
def test_raw_stats_sample_large_volumes(monkeypatch, dtype, target):
    import icpcv.prepare.resample as rmod

    monkeypatch.setattr(rmod, target, 1000)
    vol = (np.random.default_rng(5).random((20, 16, 32)) * 200).astype(dtype)  # 10240 voxels
    vol[3] = 0
    stats = RawStats(vol.dtype, vol.size, 150)
    for s0 in range(0, 20, 3):
        stats.update(np.ascontiguousarray(vol[s0:s0 + 3]))
    (p1, p50, p99), basis = stats.percentiles()
    assert stats.step == 11 and basis == "sample of 931 voxels (1 in 11)"  # a prime: not every 16th column
    # the sample is every 11th voxel in file order, across slab boundaries
    np.testing.assert_allclose([p1, p50, p99], np.percentile(vol.reshape(-1)[::11], [1, 50, 99]))
    # the counts stay exact
    assert stats.zeros == int((vol == 0).sum()) and stats.saturated == int((vol >= 150).sum())


def test_percentile_from_hist_equals_numpy():
    values = np.random.default_rng(6).integers(0, 20, 101)
    counts = np.bincount(values, minlength=20)
    for q in (0, 1, 25, 50, 73.3, 99, 100):
        assert percentile_from_hist(counts, q) == pytest.approx(np.percentile(values, q))


def test_robust_z():
    z = robust_z(np.array([10.0, 11, 9, 10, 10.5, 9.5, 40]))
    assert abs(z[-1]) > 3.5 and (np.abs(z[:-1]) < 3.5).all()
    assert np.isnan(robust_z(np.array([1.0, 2.0]))).all()
    z = robust_z(np.array([5.0, 5, 5, 5, 9]))  # MAD = 0: the mean absolute deviation stands in
    assert np.isfinite(z).all() and z[-1] > 3.5 and (z[:-1] == 0).all()
    assert (robust_z(np.array([3.0, 3, 3])) == 0).all()


def test_power_of_two_shrink_of_8bit_data_is_the_exact_block_mean():
    vol = np.random.default_rng(7).integers(0, 256, (64, 32, 128)).astype(np.uint8)
    out = _stream(vol, (16, 8, 32), (1, 2, 0), 0, 3)
    exact = vol.reshape(16, 4, 8, 4, 32, 4).astype(np.float64).mean(axis=(1, 3, 5))
    assert np.array_equal(out.astype(np.float64), exact)
