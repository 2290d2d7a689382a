"""The synthetic OCT cohort: design, determinism, and the signal knob."""
from __future__ import annotations

import numpy as np

from icpcv.cohort.phantom import K_ICP, make_cohort


def test_design_and_determinism():
    scans, vols, truth = make_cohort("small", seed=4, n_subjects=14, shape=(8, 8, 16))
    assert scans["subject"].nunique() == 14
    per_monkey_iop = scans.groupby("subject")["iop_set"].nunique()
    assert (per_monkey_iop == 4).all()
    assert scans["iop"].between(3, 53).all() and scans["icp"].between(0, 47).all()
    assert scans.groupby("subject").size().nunique() > 3  # unequal numbers of scans
    assert abs(np.corrcoef(scans["iop"], scans["icp"])[0, 1]) < 0.3  # set independently
    again, vols2, _ = make_cohort("small", seed=4, n_subjects=14, shape=(8, 8, 16))
    np.testing.assert_array_equal(vols, vols2)
    other, vols3, _ = make_cohort("small", seed=5, n_subjects=14, shape=(8, 8, 16))
    assert len(other) != len(scans) or not np.array_equal(vols[:5], vols3[:5])
    assert len(truth["monkeys"]) == 14 and truth["signal"] == 1.0


def _lamina_centre_depth(vol):
    """Depth (voxel) of the brightest central structure below Bruch's membrane: an independent read."""
    nx, ny, nz = vol.shape
    c = vol[nx // 2 - 1:nx // 2 + 1, ny // 2 - 1:ny // 2 + 1, :].astype(float).mean(axis=(0, 1))
    return float(np.argmax(c[int(0.45 * nz):]) + int(0.45 * nz))


def test_signal_knob_moves_the_lamina_with_icp_and_zero_means_none():
    kw = dict(seed=0, n_subjects=3, shape=(32, 32, 128))
    scans1, vols1, t1 = make_cohort("small", signal=1.0, **kw)
    scans0, vols0, t0 = make_cohort("small", signal=0.0, **kw)
    # truth: at signal 0 the lamina depth does not depend on ICP given IOP and monkey
    for scans, signal in ((scans1, 1.0), (scans0, 0.0)):
        comp = {m["subject"]: m["compliance"] for m in t1["monkeys"]}
        resid = scans["lamina_depth"] - scans["subject"].map({m["subject"]: m["base_depth"] for m in t1["monkeys"]})
        expected_icp_part = -signal * K_ICP * (scans["icp"] - 15) * scans["subject"].map(comp)
        iop_part = resid - expected_icp_part
        assert np.corrcoef(iop_part, scans["icp"])[0, 1] ** 2 < 0.2
    # read the rendered volumes: with signal the lamina is shallower at high ICP, without it is not
    for scans, vols, expect in ((scans1, vols1, True), (scans0, vols0, False)):
        depth = np.array([_lamina_centre_depth(v) for v in vols])
        X = np.column_stack([np.ones(len(scans)), scans["iop"], scans["icp"],
                             *(scans["subject"] == s for s in sorted(scans["subject"].unique())[1:])])
        coef = np.linalg.lstsq(X, depth, rcond=None)[0]
        if expect:
            assert coef[2] < -0.2  # voxels per mmHg: ~ -K_ICP * 128 = -0.32
        else:
            assert abs(coef[2]) < 0.1
