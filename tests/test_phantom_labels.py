"""The phantom's anatomy labels and planted shortcut: the default volumes stay as they were."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from icpcv.cohort.phantom import (LABEL_NAMES, LAMINA, MARKER, ShortcutMarker, make_cohort, phantom_labels)

#: sha256 of the default phantoms' volumes rendered by main at 880788c, before labels and the shortcut
#: existed (numpy 2.4, x86-64 with AVX-512); a mismatch means the default cohort changed
DEFAULT_SHA256 = {
    ("small", 1.0): "9630a4f203353ab013257b3b739e26598b621f174c7dfa005837f83a4efbbef0",
    ("tiny", 1.0): "97e7b2a344ac0cbd596135c05907d6dafeeb5ca08a9cd5c9355722d514f6495f",
}


@pytest.mark.parametrize("preset,signal", list(DEFAULT_SHA256))
def test_default_phantom_volumes_are_byte_identical_to_before(preset, signal):
    scans, vols, truth = make_cohort(preset, signal=signal, seed=0)
    assert hashlib.sha256(vols.tobytes()).hexdigest() == DEFAULT_SHA256[preset, signal], (
        "the default phantom's volumes changed (or numpy's float32 exp differs on this CPU)")
    assert "shortcut" not in truth and "marker" not in scans.columns
    phantom_labels(scans, truth)  # computing labels draws nothing: the volumes cannot depend on it
    _, again, _ = make_cohort(preset, signal=signal, seed=0)
    np.testing.assert_array_equal(vols, again)


def _centre_brightest_depth(vol, lo):
    """Depth of the brightest voxel of the central 2x2 column below ``lo``: a read of the image alone."""
    nx, ny, _ = vol.shape
    col = vol[nx // 2 - 1:nx // 2 + 1, ny // 2 - 1:ny // 2 + 1, :].astype(float).mean(axis=(0, 1))
    return int(np.argmax(col[lo:]) + lo)


def test_lamina_label_is_where_the_image_shows_the_lamina():
    scans, vols, truth = make_cohort("small", seed=1, n_subjects=3, shape=(32, 32, 128))
    labels = phantom_labels(scans, truth)
    assert labels.shape == vols.shape and labels.dtype == np.uint8
    hits = 0
    for vol, lab in zip(vols, labels):
        d = _centre_brightest_depth(vol, lo=int(0.45 * 128))
        hits += lab[15:17, 15:17, d].max() == LAMINA
    assert hits >= 0.9 * len(vols)
    # the labels partition the image the way it looks: lamina bright, vitreous/deep background dark
    v = vols.astype(float)
    mean = {name: v[labels == code].mean() for code, name in enumerate(LABEL_NAMES) if (labels == code).any()}
    assert mean["lamina"] > 4 * mean["background"]
    assert mean["retina"] > 4 * mean["background"]
    share = np.bincount(labels.ravel(), minlength=len(LABEL_NAMES)) / labels.size
    assert 0.005 < share[LAMINA] < 0.05 and share[MARKER] == 0


def test_labels_from_the_run_directorys_truth_json_equal_those_of_the_table():
    scans, _, truth = make_cohort("tiny", seed=3, shortcut=ShortcutMarker())
    stored = json.loads(json.dumps(truth | {"scans": scans.to_dict("list")}))  # as cohort/truth.json holds it
    rows = [4, 0, 17]
    from_json = phantom_labels({k: [v[i] for i in rows] for k, v in stored["scans"].items()}, stored)
    np.testing.assert_array_equal(from_json, phantom_labels(scans.iloc[rows], truth))
    with pytest.raises(ValueError, match="lamina_depth"):
        phantom_labels(scans[["scan_id", "subject"]], truth)


def test_shortcut_marker_tracks_icp_in_informative_monkeys_only_and_leaves_the_rest_alone():
    marker = ShortcutMarker(strength=1.0, size=0.15, informative_share=0.5)
    plain_scans, plain, _ = make_cohort("small", seed=2, signal=0.0)
    scans, vols, truth = make_cohort("small", seed=2, signal=0.0, shortcut=marker)
    box = marker.box(vols.shape[1:])
    # its own random stream: pressures and every voxel outside the box are those of the plain cohort
    np.testing.assert_array_equal(scans[["iop", "icp"]], plain_scans[["iop", "icp"]])
    outside = np.ones(vols.shape[1:], bool)
    outside[box] = False
    np.testing.assert_array_equal(vols[:, outside], plain[:, outside])
    assert truth["shortcut"]["informative_subjects"] == [str(m) for m in range(1, 8)]
    inf = scans["marker_informative"].to_numpy()
    assert inf.sum() == scans["subject"].isin(list("1234567")).sum()
    in_box = vols[(slice(None),) + box].reshape(len(vols), -1).astype(float).mean(axis=1)
    # the image (not just the table) carries ICP in the informative monkeys and not in the others
    assert np.corrcoef(in_box[inf], scans["icp"][inf])[0, 1] > 0.95
    assert abs(np.corrcoef(in_box[~inf], scans["icp"][~inf])[0, 1]) < 0.3
    labels = phantom_labels(scans.iloc[:3], truth)
    assert (labels[(slice(None),) + box] == MARKER).all() and (labels[:, outside] != MARKER).all()
