"""Issue 14 wired into the run: `icpcv run --saliency N` maps held-out scans per fold, scores them
(attribution.json), draws them (the report's "Where the CNN looks"); resume treats the maps like the
predictions; `--saliency 0` changes nothing."""
from __future__ import annotations

import shutil
from argparse import Namespace

import numpy as np
import pytest

from icpcv.config import SALIENCY_METHODS, RunConfig
from icpcv.explain.attribution import DEFAULT_METHODS, AttributionMaps
from icpcv.run.executors import execute
from icpcv.run.pipeline import finish, prepare
from icpcv.rundir import RunDir, Unit
from icpcv.util import read_json
from rundir_support import make_config
from test_report_support import make_run, shared_run


@pytest.fixture(scope="module")
def saliency_run(tmp_path_factory):
    return shared_run("tiny_saliency", tmp_path_factory.getbasetemp() / "report_runs")


def test_saliency_run_writes_maps_scores_and_the_report_section(saliency_run):
    run = RunDir(saliency_run)
    rec = run.read_record()
    assert rec.config.saliency == 2 and rec.config.to_dict()["saliency"] == 2
    for k in range(rec.n_folds):
        fold = run.fold(k)
        assert not (fold.path / "saliency_ols_iop.npz").exists()  # only networks are mapped
        maps = AttributionMaps.load(fold.saliency("cnn"))
        assert len(maps.scan_ids) == 2 and set(maps.maps) == set(SALIENCY_METHODS)
        assert maps.maps["occlusion"].shape == (2, 12, 12, 32)
        assert set(maps.regions["model"]) == {"cnn", "cnn_randomised"}  # the randomised copy's table too
        assert {c["method"] for c in maps.extra["sanity"]} == set(SALIENCY_METHODS)
        entry = fold.read_record()["saliency"]["cnn"]
        assert entry["n_scans"] == 2 and entry["file"] == "saliency_cnn.npz"
        with np.load(fold.saliency("cnn")) as z:
            assert z["map_integrated_gradients"].dtype == np.float16  # compact
    data = read_json(run.attribution_json)
    assert data["run_key"] == rec.key and data["scoring_available"] and data["regions"] == ["lamina"]
    lamina = [r for r in data["scores"]["results"] if r["model"] == "cnn" and r["region"] == "lamina"]
    assert {r["method"] for r in lamina} == set(SALIENCY_METHODS)
    for r in lamina:
        lo, hi = r["enrichment"]["ci"]
        assert r["n_subjects"] >= 1 and (lo is None or lo <= r["enrichment"]["estimate"] <= hi)
        assert 0 < r["volume_share"] < 0.2
    assert len(data["scores"]["against_randomised"]) == len(SALIENCY_METHODS)
    cnn = data["models"][0]
    assert cnn["model"] == "cnn" and cnn["n_scans"] == 2 * rec.n_folds
    assert set(cnn["cost"]["seconds_per_scan"]) == set(SALIENCY_METHODS)
    assert all(s["folds"] == rec.n_folds for s in cnn["sanity"])
    with np.load(run.attribution_maps_npz) as z:
        assert z["mean__cnn__occlusion"].shape == (12, 12, 32) and "outline__lamina" in z.files
    html = run.index_html.read_text()
    assert '<section id="attribution">' in html and "Where the CNN looks" in html
    assert "Spearman" in html and "seconds per scan" in html
    for method in SALIENCY_METHODS:
        assert run.figure_png(f"attribution_cnn_{method}").exists()
    assert run.figure_png("attribution_scans_cnn").exists()


def test_resume_recomputes_a_fold_whose_record_is_gone_and_checks_the_maps(saliency_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(saliency_run, copy)
    run = RunDir(copy)
    rec = run.read_record()
    assert run.incomplete_units(rec) == []
    before = {k: run.fold(k).saliency("cnn").read_bytes() for k in range(rec.n_folds)}
    run.fold(1).record_json.unlink()
    run.fold(2).saliency("cnn").unlink()  # a map file gone: the fold is not complete, like missing predictions
    assert run.incomplete_units(rec) == [Unit(1), Unit(2)]
    stamp = run.fold(0).record_json.stat().st_mtime_ns
    execute(copy, run.incomplete_units(rec), executor="local", workers=1, device="cpu", progress=None)
    assert run.incomplete_units(rec) == []
    assert run.fold(0).record_json.stat().st_mtime_ns == stamp  # complete folds are not rerun
    for k in (1, 2):
        again = AttributionMaps.load(run.fold(k).saliency("cnn"))
        assert len(again.scan_ids) == 2
        assert again.scan_ids == AttributionMaps.load(saliency_run / "folds" / f"fold_{k:02d}" / "saliency_cnn.npz").scan_ids
    assert run.fold(3).saliency("cnn").read_bytes() == before[3]
    finish(copy)
    assert read_json(run.attribution_json)["models"][0]["n_scans"] == 2 * rec.n_folds


def test_saliency_0_writes_nothing_new_and_mapping_changes_no_prediction(tmp_path, saliency_run):
    from dataclasses import replace

    from test_report_support import TINY_SALIENCY

    cfg = replace(TINY_SALIENCY, saliency=0)
    assert cfg.saliency == 0 and cfg.hash == RunConfig.from_dict(cfg.to_dict()).hash
    assert not {"saliency", "saliency_methods", "shortcut"} & set(cfg.to_dict())  # the config hash is as before
    run = RunDir(make_run(cfg, tmp_path / "run"))
    assert not list(run.path.glob("folds/*/saliency_*.npz"))
    assert not run.attribution_json.exists() and not run.attribution_maps_npz.exists()
    assert all("saliency" not in run.fold(k).read_record() for k in range(run.read_record().n_folds))
    assert '<section id="attribution">' not in run.index_html.read_text()
    # the maps are made after each network has predicted: the same run with them predicts the same bytes
    assert run.predictions_csv.read_bytes() == RunDir(saliency_run).predictions_csv.read_bytes()


def test_the_command_line_options():
    from icpcv.commands.run import build_config
    from icpcv.errors import InputError

    base = dict(manifest=None, scans_dir=None, phantom="tiny", signal=0.0, data_seed=0, shape=None,
                skip_bad_scans=False, models="ols_iop,cnn", folds=None, val_fraction=0.25, seed=0, preset=None,
                epochs=1, batch_size=None, lr=None, weight_decay=None, patience=None, optimizer=None,
                precision=None, pretrained=None, shortcut_grad="standard", no_augment=False, reference="ols_iop",
                n_boot=100, ci_level=0.95)
    cfg = build_config(Namespace(**base, saliency=8, saliency_methods="gradient,occlusion", shortcut=True))
    assert (cfg.saliency, cfg.saliency_methods, cfg.shortcut) == (8, ("gradient", "occlusion"), True)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert build_config(Namespace(**base, saliency=0, saliency_methods=",".join(DEFAULT_METHODS),
                                  shortcut=False)).to_dict() == build_config(Namespace(**base)).to_dict()
    with pytest.raises(InputError, match="saliency-methods"):
        build_config(Namespace(**base, saliency=2, saliency_methods="gradcam", shortcut=False))
    with pytest.raises(InputError, match="--saliency -1"):
        build_config(Namespace(**base, saliency=-1, saliency_methods="occlusion", shortcut=False))


def test_a_shortcut_run_scores_the_marker(tmp_path):
    """`--shortcut` plants the phantom's marker; the run then scores the marker beside the lamina."""
    cfg = make_config(phantom="tiny", signal=0.0, epochs=1, n_boot=100, models=("cnn",), saliency=1, shortcut=True,
                      saliency_methods=("gradient",))
    rec = prepare(cfg, tmp_path / "run")
    execute(tmp_path / "run", list(range(rec.n_folds)), executor="local", workers=1, device="cpu", progress=None)
    finish(tmp_path / "run")
    run = RunDir(tmp_path / "run")
    assert read_json(run.cohort.truth_json)["shortcut"]["informative_subjects"]
    data = read_json(run.attribution_json)
    assert data["regions"] == ["lamina", "marker"]
    assert {(r["model"], r["region"]) for r in data["scores"]["results"]} >= {("cnn", "lamina"), ("cnn", "marker")}
    with np.load(run.attribution_maps_npz) as z:
        assert "outline__marker" in z.files


def test_a_cohort_without_labels_keeps_the_maps_and_says_the_scoring_is_not_available(saliency_run, tmp_path):
    """A real cohort has no phantom truth: the maps are saved and drawn unaligned, nothing is scored."""
    from icpcv.explain.fold import attribute_fold
    from icpcv.explain.summary import write_attribution
    from icpcv.report import write_report

    copy = tmp_path / "run"
    shutil.copytree(saliency_run, copy)
    run = RunDir(copy)
    run.cohort.truth_json.unlink()
    data = write_attribution(copy)
    assert data["scores"] is None and not data["scoring_available"] and not data["aligned"]
    assert "cannot be scored" in data["note"] and data["models"][0]["n_scans"] == 2 * run.read_record().n_folds
    with np.load(run.attribution_maps_npz) as z:
        assert "mean__cnn__occlusion" in z.files and "outline__lamina" not in z.files
    html = write_report(copy).read_text()
    assert "cannot be scored" in html and "in scan coordinates" in html

    class Fitted:  # a fitted network model as the fold job holds it: the restored weights, the standardiser
        def __init__(self, net, std):
            self.network_, self.standardiser_ = net, std

    import torch

    from icpcv.cohort import ScanSet, VolumeStore, load
    from icpcv.models.cnn import LightCNN3D
    from icpcv.train.loop import Standardiser

    coh = load(run.cohort)
    test = ScanSet(coh.scans[coh.scans["subject"] == "1"].set_index("scan_id", drop=False), VolumeStore(coh).get)
    torch.manual_seed(0)
    net = LightCNN3D((12, 12, 32))
    torch.nn.init.normal_(net.head.weight)
    maps = attribute_fold(Fitted(net, Standardiser(40.0, 30.0, 20.0, 5.0, 15.0, 8.0)), test, 2, name="cnn", fold=0,
                          methods=("gradient",), truth=None, sanity_scans=1)
    assert maps.regions is None and len(maps.scan_ids) == 2 and maps.extra["labels"] is False
    assert maps.extra["sanity"][0]["method"] == "gradient"


def test_with_repeats_only_repeat_0_is_mapped(tmp_path):
    """`--repeats R --saliency N`: the maps are of the fold's repeat-0 network (the run trained once)."""
    cfg = make_config(phantom="tiny", epochs=1, n_boot=100, models=("cnn",), folds=2, repeats=2, saliency=1,
                      saliency_methods=("gradient",))
    run = RunDir(make_run(cfg, tmp_path / "run"))
    rec = run.read_record()
    for k in range(rec.n_folds):
        assert run.fold(k).saliency("cnn").exists() and "saliency" in run.fold(k).read_record()
        assert not run.fold(k, 1).saliency("cnn").exists() and "saliency" not in run.fold(k, 1).read_record()
    assert read_json(run.attribution_json)["models"][0]["n_scans"] == 6  # 1 scan of each of the 6 monkeys
