"""Volume readers: each format, the axis convention, no unpickling, clear errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from icpcv.cohort.volumes import read_volume, resample
from icpcv.errors import InputError


@pytest.fixture
def vol():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(6, 5, 8), dtype=np.uint8)


def test_pt_npy_nifti_roundtrip(tmp_path, vol):
    import nibabel as nib

    torch.save(torch.from_numpy(vol), tmp_path / "a.pt")
    torch.save(torch.from_numpy(vol)[None], tmp_path / "c.pt")  # leading channel axis
    np.save(tmp_path / "a.npy", vol)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "a.nii")
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "a.nii.gz")
    for name in ("a.pt", "c.pt", "a.npy", "a.nii", "a.nii.gz"):
        np.testing.assert_array_equal(read_volume(tmp_path / name), vol, err_msg=name)


def test_multipage_tiff_pages_are_bscans(tmp_path, vol):
    import tifffile

    # pages stacked along Y; each page is a B-scan with rows = depth Z and columns = X
    pages = np.transpose(vol, (1, 2, 0))  # (Y, Z, X)
    tifffile.imwrite(tmp_path / "a.tif", pages)
    np.testing.assert_array_equal(read_volume(tmp_path / "a.tif"), vol)


def test_pickled_payload_is_not_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("unpickled!",))

    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"x": Boom()}, fh)
    with pytest.raises(InputError, match="evil.pt"):
        read_volume(tmp_path / "evil.pt")
    torch.save({"a": torch.zeros(2), "b": 3}, tmp_path / "dict.pt")
    with pytest.raises(InputError, match="dict.pt: holds a dict"):
        read_volume(tmp_path / "dict.pt")


def test_bad_volumes_named(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    with pytest.raises(InputError, match=r"flat.npy: volume has shape \(4, 4\)"):
        read_volume(tmp_path / "flat.npy")
    bad = np.zeros((3, 3, 3), np.float32)
    bad[1, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match="nan.npy: volume has 1 NaN"):
        read_volume(tmp_path / "nan.npy")
    (tmp_path / "trunc.npy").write_bytes(open(tmp_path / "flat.npy", "rb").read()[:40])
    with pytest.raises(InputError, match="trunc.npy"):
        read_volume(tmp_path / "trunc.npy")
    with pytest.raises(InputError, match="unknown volume format"):
        read_volume(tmp_path / "flat.npy.bak") if (tmp_path / "flat.npy.bak").write_bytes(b"x") else None
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "missing.npy")


def test_resample_area_average_and_upsampling():
    v = np.arange(4 * 4 * 8, dtype=np.float32).reshape(4, 4, 8)
    out = resample(v, (2, 2, 4))
    # independent: mean over 2x2x2 blocks
    blocks = v.reshape(2, 2, 2, 2, 4, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(out, blocks, rtol=1e-6)
    up = resample(np.ones((2, 2, 2), np.float32) * 7, (4, 4, 4))
    np.testing.assert_allclose(up, 7.0)
