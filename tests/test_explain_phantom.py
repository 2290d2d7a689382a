"""Maps of a CNN trained on the tiny phantom (CPU, seconds): the planted shortcut is found, randomised
weights change the maps (Adebayo et al. 2018), the phantom frame lines scans up, the figures draw."""
from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest
import torch

import icpcv.explain.sanity as sanity
from icpcv.cohort.phantom import BM_CHOROID, LAMINA, ShortcutMarker, make_cohort, phantom_labels, render_labels
from icpcv.explain.align import align, mean_abs_map, phantom_offsets, region_probability
from icpcv.explain.attribution import AttributionMaps, attribute_scans
from icpcv.explain.sanity import randomisation_check, randomised_copy, rank_correlations, weighted_layers
from icpcv.explain.scoring import region_table
from icpcv.cohort import ScanSet
from icpcv.explain.study import fit_cnn
from icpcv.run.attribution_study import phantom_attribution_study
from icpcv.folds import make_plan
from icpcv.report.attribution_figures import orthogonal_slices_figure, scan_maps_figure, slice_centre
from icpcv.report.figures import style, to_png


@pytest.fixture(scope="module")
def shortcut_fold():
    """A light CNN trained on one leave-one-monkey-out fold of the tiny phantom with no ICP in the anatomy
    (signal 0) and the marker tracking ICP in every monkey: the marker is the only thing to learn."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: threads cost more than they give on a shared CPU
    scans, volumes, truth = make_cohort("tiny", signal=0.0, seed=0,
                                        shortcut=ShortcutMarker(strength=1.0, informative_share=1.0))
    fold = make_plan(scans, seed=0).folds[0]
    index = {s: i for i, s in enumerate(scans["scan_id"])}

    def part(ids):
        rows = [index[x] for x in ids]
        return ScanSet.from_arrays(scans.iloc[rows][["scan_id", "subject", "iop", "icp"]], volumes[rows])

    fitted = fit_cnn("cnn", volumes.shape[1:], part(fold.train_scans), part(fold.val_scans), seed=0, epochs=6,
                     batch_size=8, augment=False)
    rows = [index[x] for x in fold.test_scans]
    test = (volumes[rows], scans["iop"].to_numpy(float)[rows], scans["icp"].to_numpy(float)[rows])
    yield dict(net=fitted.network_, std=fitted.standardiser_, test=test, prediction=fitted.predict(part(fold.test_scans)),
               ids=list(fold.test_scans), rows=rows, scans=scans, truth=truth,
               labels=phantom_labels(scans.iloc[rows], truth), subjects=scans["subject"].to_numpy()[rows])
    torch.set_num_threads(threads)  # leave the session's setting as it was


def test_maps_find_the_planted_shortcut(shortcut_fold):
    f = shortcut_fold
    vol, iop, icp = f["test"]
    assert np.corrcoef(f["prediction"], icp)[0, 1] > 0.8  # the network took the shortcut: ICP from a scan without it
    maps = attribute_scans(f["net"], vol, iop, f["std"], scan_ids=f["ids"], subjects=f["subjects"],
                           methods=("integrated_gradients", "occlusion"))
    for method, times in (("integrated_gradients", 5), ("occlusion", 5)):
        t = region_table(maps.maps[method], f["labels"], scan_ids=f["ids"], subjects=f["subjects"])
        marker = t[t.region == "marker"]
        attribution_share = (marker.attribution / marker.attribution_total).mean()
        volume_share = (marker.voxels / marker.voxels_total).mean()
        assert attribution_share > times * volume_share, (method, attribution_share, volume_share)
        lamina = t[t.region == "lamina"]  # signal 0: nothing to find there
        assert (lamina.attribution / lamina.attribution_total).mean() < 2 * (lamina.voxels / lamina.voxels_total).mean()


def test_randomised_weights_change_the_maps(shortcut_fold):
    f = shortcut_fold
    std = f["std"]
    vol = (f["test"][0][:8].astype(np.float32) - std.vol_mean) / std.vol_std
    iop = (f["test"][1][:8].astype(np.float32) - std.iop_mean) / std.iop_std
    before = {k: v.clone() for k, v in f["net"].state_dict().items()}
    assert weighted_layers(f["net"]) == ["features.0", "features.3", "features.6", "embed.1", "head"]
    twin = randomised_copy(f["net"], weighted_layers(f["net"]), seed=0)
    assert all(torch.equal(before[k], v) for k, v in f["net"].state_dict().items())  # the original is untouched
    assert not torch.equal(twin.head.weight, f["net"].head.weight)
    checks = {}
    for method in ("gradient", "integrated_gradients", "occlusion"):
        check = randomisation_check(f["net"], vol, iop, method=method, seed=0)
        checks[method] = check
        assert list(check.steps["layer"]) == ["head", "embed.1", "features.6", "features.3", "features.0"]
        # signed maps of a random network are unrelated to the trained one's
        assert abs(check.final_rho_signed) < 0.2, check.summary()
        # and the absolute maps less alike than when only the head is random
        assert check.steps["rho_abs"].iloc[-1] < check.steps["rho_abs"].iloc[0], check.summary()
    # methods that do not multiply by the input decorrelate clearly (the paper's finding)
    assert checks["gradient"].final_rho_abs < 0.5 and checks["occlusion"].final_rho_abs < 0.5
    assert checks["gradient"].passed and "Spearman" in checks["gradient"].summary()
    # control: the same network's maps correlate perfectly with themselves
    from icpcv.explain.attribution import gradient
    m = gradient(f["net"], vol, iop)
    rho_abs, rho_signed = rank_correlations(m, m)
    np.testing.assert_allclose(rho_abs, 1.0) and np.testing.assert_allclose(rho_signed, 1.0)
    assert checks["occlusion"].to_dict()["steps"][0]["layer"] == "head"


def test_sanity_docstring_example_runs():
    assert doctest.testmod(sanity).failed == 0


def test_phantom_offsets_undo_the_known_misregistration():
    monkey = dict(bm_depth=0.40, bmo_radius=0.45, cup_depth=0.12, cup_width=0.3, curvature=0.02)
    shape = (21, 21, 50)  # (X - 1)/2 = 10 voxels per unit: dx = 0.2 is 2 voxels; dz = 0.04 is 2 voxels of 50
    still = dict(lamina_depth=0.15, dx=0.0, dy=0.0, dz=0.0, tilt_x=0.0, tilt_y=0.0)
    moved = still | dict(dx=0.2, dy=-0.1, dz=0.04)
    truth = dict(preset=dict(shape=list(shape)), monkeys=[dict(subject="1", **monkey)])
    scans = pd.DataFrame([dict(subject="1", **still), dict(subject="1", **moved)])
    offsets = phantom_offsets(scans, truth)
    np.testing.assert_allclose(offsets, [[0, 0, 0], [-2, 1, -2]], atol=1e-9)
    ref, shifted = render_labels(shape, monkey, still), render_labels(shape, monkey, moved)
    back = align(shifted[None], offsets[1:], order=0)[0]
    inner = (slice(3, -3), slice(3, -3), slice(3, -3))  # away from the edges the shift moved out
    # voxels labelled differently from the unshifted scan: the alignment removes all but float ties on boundaries
    assert (back[inner] != ref[inner]).sum() < 0.1 * (shifted[inner] != ref[inner]).sum()


def test_alignment_puts_bruchs_membrane_of_every_scan_at_one_depth():
    scans, _, truth = make_cohort("small", seed=0, n_subjects=4, shape=(32, 32, 128))
    labels = phantom_labels(scans, truth)
    offsets = phantom_offsets(scans, truth)
    column = (16, 3)  # lateral centre in X, near the edge in Y: outside Bruch's membrane opening

    def bm_depths(lab):  # the first voxel of Bruch's membrane / choroid down the column, per scan
        return np.array([np.argmax(v[column[0], column[1]] == BM_CHOROID) for v in lab])

    raw, aligned = bm_depths(labels), bm_depths(align(labels, offsets, order=0))
    assert raw.std() > 2.0  # monkeys' BM depth (sd 0.02 of Z) and misregistration (0.01): ~3 voxels
    assert aligned.std() < 0.5 * raw.std()  # what is left: the small tilt and whole-voxel rounding
    maps = np.random.default_rng(0).normal(size=labels.shape).astype(np.float32)
    mean = mean_abs_map(maps, offsets)
    assert mean.shape == labels.shape[1:] and np.isfinite(mean).all()
    assert mean_abs_map(np.zeros_like(maps)).sum() == 0


def _realistic_cohort(tmp_path, **geometry):
    """A tiny realistic-acquisition phantom materialised as a run makes it (geometry options applied)."""
    from icpcv.cohort import VolumeStore, materialise
    from icpcv.explain.fold import read_truth
    from icpcv.rundir import RunDir
    from rundir_support import make_config

    run = RunDir(tmp_path / "run")
    coh, _, _ = materialise(make_config(phantom="tiny", acquisition="realistic", **geometry), run.cohort,
                            need_iop=True, need_volumes=True)
    truth = read_truth(run.cohort)
    rows = pd.DataFrame(truth["scans"]).astype({"scan_id": str}).set_index("scan_id", drop=False)
    return coh, truth, rows.loc[list(coh.scans["scan_id"].astype(str))]


def _disc(labels):  # en face: the columns inside Bruch's membrane opening
    from icpcv.cohort.phantom import PRELAMINAR

    return np.isin(labels, [PRELAMINAR, LAMINA]).any(axis=-1)


def test_labels_of_a_realistic_scan_follow_the_runs_crop_and_mirror(tmp_path):
    """`--acquisition realistic --fov-mm 3 3 --mirror-os`: the volume is the centred 3 mm of each scan,
    resampled, a left eye flipped along X. Its labels (what `--saliency` scores attribution against)
    were drawn over the whole scan, unflipped: a 7 mm scan's optic disc was labelled at a fifth of its
    size. They now follow the same window: compared with labels drawn at the raw resolution and put
    through the run's own crop, flip and (nearest-neighbour) resampling, the disc agrees."""
    from icpcv.cohort import geometry
    from icpcv.cohort.phantom import raw_shape

    coh, truth, rows = _realistic_cohort(tmp_path, fov_mm=(3.0, 3.0), mirror_os=True)
    monkeys = {str(m["subject"]): m for m in truth["monkeys"]}
    shape = tuple(truth["preset"]["shape"])
    labels = phantom_labels(rows, truth)
    old = phantom_labels(rows, truth | {"acquisition": {k: v for k, v in truth["acquisition"].items() if k != "run"}})
    ious, old_ious = {}, {}
    for i, rec in enumerate(rows.to_dict("records")):
        raw = render_labels(raw_shape(shape, rec["grid"]), monkeys[str(rec["subject"])], rec)
        raw = geometry.crop_to_fov(raw, (rec["fov_x_mm"], rec["fov_y_mm"]), (3.0, 3.0), rec["depth_mm"], None)
        raw = raw[::-1] if rec["eye"] == "OS" else raw
        idx = [np.minimum(((np.arange(n) + 0.5) * raw.shape[a] / n).astype(int), raw.shape[a] - 1)
               for a, n in enumerate(shape)]
        want = _disc(raw[np.ix_(*idx)])
        for got, acc in ((_disc(labels[i]), ious), (_disc(old[i]), old_ious)):
            acc.setdefault((rec["fov_x_mm"], rec["eye"]), []).append((want & got).sum() / (want | got).sum())
    assert {k[0] for k in ious} >= {3.0, 7.0} and {k[1] for k in ious} == {"OD", "OS"}
    # as close as the labels of an uncut scan are to the same reference (0.6-0.9 at this tiny grid: sub-voxel
    # differences between drawing at the run's grid and resampling the raw one), and the old labels far off
    for key, values in ious.items():
        assert np.mean(values) > 0.55, (key, np.mean(values))
    assert np.mean(old_ious[(7.0, "OD")]) < 0.4 and np.mean(old_ious[(7.0, "OS")]) < 0.4


def test_a_realistic_cohort_shares_a_frame_only_with_one_field_of_view(tmp_path):
    """Shifts put scans in one reference frame only when they cover the same field of view: a realistic
    cohort of 3, 5 and 7 mm scans keeps its maps in scan coordinates; with --fov-mm every kept scan covers
    3 mm. The offsets then centre each disc, in a scan's own half-width and a mirrored left eye's included."""
    from icpcv.explain.align import shared_frame

    _, truth, rows = _realistic_cohort(tmp_path / "mixed")
    assert not shared_frame(rows, truth)
    _, truth, rows = _realistic_cohort(tmp_path / "cut", fov_mm=(3.0, 3.0), mirror_os=True)
    assert shared_frame(rows, truth)
    # misregistered on purpose (dx = 0.2 of the half-width: 2 voxels at 21), a 7 and a 5 mm scan, both eyes
    monkey = dict(bm_depth=0.40, bmo_radius=0.45, cup_depth=0.12, cup_width=0.3, curvature=0.02)
    scan = dict(subject="1", lamina_depth=0.15, dx=0.2, dy=-0.1, dz=0.0, tilt_x=0.0, tilt_y=0.0, depth_mm=2.0)
    scans = pd.DataFrame([scan | dict(fov_x_mm=f, fov_y_mm=f, half_x=f / 3, half_y=f / 3, eye=e,
                                      cup_dx=0.12 if e == "OD" else -0.12) for f in (7.0, 5.0) for e in ("OD", "OS")])
    truth = dict(preset=dict(shape=[21, 21, 50]), monkeys=[dict(subject="1", **monkey)],
                 acquisition=dict(run=dict(fov_mm=[3.0, 3.0], depth_mm=None, mirror_os=True)))
    labels = phantom_labels(scans, truth)
    offsets = phantom_offsets(scans, truth)
    np.testing.assert_allclose(offsets[:, 0], [-2, 2, -2, 2], atol=1e-9)  # dx / (7/3 * 3/7) * 10, sign flipped in OS
    for lab, moved in ((labels, False), (align(labels, offsets, order=0), True)):
        centres = np.array([np.argwhere(_disc(v)).mean(axis=0) for v in lab])
        off = np.abs(centres - 10.0).max(axis=0)  # voxels from the lateral centre, X and Y
        assert (off < 0.6).all() if moved else (off > 0.9).all(), (moved, off)


def test_figures_draw_slices_with_the_lamina_outline():
    scans, volumes, truth = make_cohort("tiny", seed=0)
    labels = phantom_labels(scans.iloc[:10], truth)
    offsets = phantom_offsets(scans.iloc[:10], truth)
    outline = region_probability(labels, offsets)
    fake = (labels == LAMINA) + 0.05  # a "map" on the lamina
    centre = slice_centre(outline.shape, outline)
    assert outline[centre] > 0.5  # the en-face slice goes through the lamina
    with style():
        fig = orthogonal_slices_figure(mean_abs_map(fake, offsets), outline=outline, title="test")
        assert len(fig.axes) == 4  # three views and the colour bar
        assert all(ax.collections for ax in fig.axes[:3])  # each view has its outline contour
        assert to_png(fig)[:4] == b"\x89PNG"
        corner = np.zeros(outline.shape)
        corner[:2, :2, -5:] = 1.0  # off the slices through the centre: only the projections show it
        slices = orthogonal_slices_figure(corner, outline=outline)
        projected = orthogonal_slices_figure(corner, outline=outline, projection=True)
        assert all(im.get_array().max() == 0 for ax in slices.axes[:3] for im in ax.get_images())
        assert all(im.get_array().max() > 0 for ax in projected.axes[:3] for im in ax.get_images())
        assert projected.axes[2].get_title() == "en-face view, mean over depth"
        fig2 = scan_maps_figure(volumes[:2], fake[:2], labels=labels[:2], outline_code=LAMINA, scan_names=["a", "b"])
        assert len(fig2.axes) == 6 and to_png(fig2)[:4] == b"\x89PNG"
    assert orthogonal_slices_figure(np.full((4, 4, 4), np.nan)) is None
    with pytest.raises(ValueError, match="shape"):
        orthogonal_slices_figure(np.ones((4, 4, 4)), outline=np.ones((4, 4, 5)))


def test_the_study_runs_through_icpcv_run(tmp_path):
    """run.attribution_study is a thin driver of `icpcv run --saliency N` (no CNN fitting of its own)."""
    from icpcv.run.attribution_study import summary

    data = phantom_attribution_study(tmp_path / "run", device="cpu", preset="tiny", signal=1.0, n_scans=3, epochs=2,
                                     n_boot=200, shortcut=True, methods=("gradient", "occlusion"))
    assert {r["region"] for r in data["scores"]["results"]} == {"lamina", "marker"}
    assert {r["model"] for r in data["scores"]["results"]} == {"cnn", "cnn_randomised"}
    assert len(data["mae_by_subject"]) == 6 and sum(r["marker_tracks_icp"] for r in data["mae_by_subject"]) == 3
    back = AttributionMaps.load(tmp_path / "run" / "folds" / "fold_00" / "saliency_cnn.npz")
    assert len(back.scan_ids) == 3 and back.maps["occlusion"].shape == (3, 12, 12, 32)
    for name in ("attribution.json", "attribution_maps.npz", "index.html", "figures/attribution_cnn_occlusion.png"):
        assert (tmp_path / "run" / name).exists(), name
    text = summary(data)
    assert "monkeys whose marker tracks ICP" in text and "Cost per scan" in text


def test_randomisation_check_of_a_network_that_ignores_the_scan_is_not_applicable():
    import warnings

    from icpcv.models.cnn import LightCNN3D

    torch.manual_seed(0)
    untrained = LightCNN3D((8, 8, 16))  # zero head: the restored epoch-0 network, every map is zero
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no constant-input or empty-mean warnings either
        check = randomisation_check(untrained, torch.randn(2, 8, 8, 16), torch.zeros(2), method="gradient")
    assert not check.applicable and check.passed is None
    assert "not applicable" in check.sentence() and check.to_dict()["passed"] is None
