"""The GPU data path, exact resume through it, a CPU end-to-end fold with a ResNet, and the bench.

Everything here runs on the CPU with tiny shapes; tests marked ``gpu`` need CUDA (the device
machine) and are skipped without it.
"""
import json

import numpy as np
import pytest
import torch

from icpcv.commands import make_parser
from icpcv.commands.run import build_config
from icpcv.config import TrainConfig
from icpcv.models.resnet3d import ResNet3D
from icpcv.train import datapath as dp
from icpcv.train import loop
from icpcv.train.augment import AugmentConfig
from icpcv.train.loop import Standardiser, predict

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the device machine)")


# ---------------------------------------------------------------- storage and sources

def test_compact_dtype_is_the_smallest_exact_one():
    assert dp.compact_dtype(np.array([0, 17, 255], np.float32)) == np.uint8
    assert dp.compact_dtype(np.array([0, 17, 256], np.float32)) == np.float16  # integers to 2048 are exact in fp16
    assert dp.compact_dtype(np.array([-1.5, 0.25], np.float32)) == np.float16
    assert dp.compact_dtype(np.array([0.1], np.float32)) == np.float32
    assert dp.compact_dtype(np.array([3, 4], np.int64)) == np.uint8
    assert dp.compact_dtype(np.array([1.5], np.float64)) == np.float16


def test_load_compact_widens_exactly_across_chunks():
    data = {f"s{i}": np.full((2, 3, 4), i, np.float32) for i in range(5)}
    data["s4"] = data["s4"] + 0.5  # the last chunk is not integer
    ids = list(data)

    def get(batch):
        return np.stack([data[i] for i in batch])

    assert dp.load_compact(get, ids[:4], chunk=2).dtype == np.uint8
    out = dp.load_compact(get, ids, chunk=2)
    assert out.dtype == np.float16
    assert np.array_equal(out.astype(np.float32), get(ids))


def test_standardiser_in_chunks_matches_numpy():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, (37, 5, 6, 7)).astype(np.uint8)
    s = Standardiser.fit(v, np.arange(37.0), np.arange(37.0), chunk=5)
    assert s.vol_mean == pytest.approx(v.astype(np.float64).mean(), rel=1e-12)
    assert s.vol_std == pytest.approx(v.astype(np.float64).std(), rel=1e-12)
    assert (s.vol_min, s.vol_max) == (float(v.min()), float(v.max()))


def test_resident_and_streamed_batches_are_identical():
    rng = np.random.default_rng(1)
    v = rng.integers(0, 256, (10, 4, 5, 6)).astype(np.uint8)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    res = list(dp.VolumeSource(v, 100.0, 50.0, torch.device("cpu"), "resident").batches(order, 4, min_size=2))
    stream = list(dp.VolumeSource(v, 100.0, 50.0, torch.device("cpu"), "stream").batches(order, 4, min_size=2))
    assert len(res) == len(stream) == 3  # 4 + 4 + 2
    for (i1, x1), (i2, x2) in zip(res, stream):
        assert torch.equal(i1, i2) and torch.equal(x1, x2)
        expected = (v[i1.numpy()].astype(np.float32) - 100.0) / 50.0
        assert np.array_equal(x1[:, 0].numpy(), expected)
    src = dp.VolumeSource(v[:9], 100.0, 50.0, torch.device("cpu"), "stream")
    assert [len(i) for i, _ in src.batches(torch.arange(9), 4, min_size=2)] == [4, 4]  # a last batch of 1 is skipped
    assert dp.choose_mode(10**12, torch.device("cpu"))[0] == "resident"
    assert dp.choose_mode(10, torch.device("cpu"), "stream")[0] == "stream"


# ---------------------------------------------------------------- fit: exact resume through the data path

def _toy_fold(n_train=8, n_val=4, shape=(10, 10, 20), seed=0):
    rng = np.random.default_rng(seed)

    def part(n):
        y = rng.uniform(0, 30, n)
        v = rng.integers(0, 60, (n,) + shape).astype(np.uint8)
        depth = (4 + y / 3).astype(int)
        for i in range(n):
            v[i, :, :, depth[i]] = 250  # a layer whose depth carries the target
        return v, rng.uniform(10, 40, n), y

    return part(n_train), part(n_val)


def _model():
    torch.manual_seed(0)
    return ResNet3D(10, base_width=4, iop_repeat=4)


def _cfg(epochs, **kw):
    return TrainConfig(epochs=epochs, batch_size=4, lr=3e-3, patience=10, augment=True, **kw)


def fit(*args, **kw):
    """The training loop with these tests' seed."""
    return loop.fit(*args, seed=7, **kw)


def test_exact_resume_with_the_new_data_path(tmp_path):
    train, val = _toy_fold()
    cpu = torch.device("cpu")
    ck_a, ck_b = tmp_path / "a.pt", tmp_path / "b.pt"
    model_a, _, hist_a = fit(_model(), train, val, _cfg(3), cpu, checkpoint=ck_a)
    # interrupted after epoch 2 (streaming, which must not change the numbers), resumed to epoch 3
    fit(_model(), train, val, _cfg(2, data_mode="stream"), cpu, checkpoint=ck_b)
    assert torch.load(ck_b, weights_only=True)["epoch"] == 2
    details = {}
    model_b, _, hist_b = fit(_model(), train, val, _cfg(3), cpu, checkpoint=ck_b, details=details)
    assert details["data_mode"] == "resident" and details["storage_dtype"] == "uint8"
    for k, v in model_a.state_dict().items():
        assert torch.equal(v, model_b.state_dict()[k]), k
    last_a, last_b = (torch.load(p, weights_only=True) for p in (ck_a, ck_b))
    assert last_a["epoch"] == last_b["epoch"] == 3
    for k, v in last_a["model"].items():  # the last epoch's weights too, not only the restored best
        assert torch.equal(v, last_b["model"][k]), k
    assert torch.equal(last_a["generator"], last_b["generator"])
    assert [h["val_loss"] for h in hist_a] == [h["val_loss"] for h in hist_b]
    assert [h["train_loss"] for h in hist_a[1:]] == [h["train_loss"] for h in hist_b[1:]]


def test_fit_restores_the_best_epoch_and_predicts(tmp_path):
    train, val = _toy_fold()
    lines = []
    model, std, hist = fit(_model(), train, val, _cfg(2, optimizer="adamax"), torch.device("cpu"), log=lines.append)
    assert hist[0]["epoch"] == 0 and sum(h["best"] for h in hist) == 1
    assert "resident" in lines[0] and "uint8" in lines[0] and "adamax" in lines[0]
    pred = predict(model, val[0], val[1], std, torch.device("cpu"), batch_size=3)
    assert pred.shape == (4,) and np.isfinite(pred).all()
    if next(h for h in hist if h["best"])["epoch"] == 0:  # untrained: the training mean
        assert np.allclose(pred, np.mean(train[2]), atol=1e-4)


# ---------------------------------------------------------------- the fold and the command line

def _args(*argv):
    return make_parser().parse_args(["run", *argv])


def test_presets_fill_defaults_and_explicit_options_win(tmp_path):
    cfg = build_config(_args("--preset", "seed"))
    # the preset's network takes the light CNN's place; the nuisance baseline image_stats follows it (issue 19)
    assert cfg.models[-2:] == ("resnet50", "image_stats") and "cnn" not in cfg.models
    assert (cfg.shape, cfg.train.batch_size, cfg.train.lr, cfg.train.optimizer, cfg.train.precision,
            cfg.train.weight_decay) == \
        ((128, 128, 512), 8, 3e-4, "adamax", "fp32", 0.0)
    assert cfg.phantom == "seed" and cfg.preset == "seed"
    fast = build_config(_args("--preset", "fast", "--batch-size", "4", "--models", "mean,resnet18_nodil"))
    assert fast.models == ("mean", "resnet18_nodil") and fast.train.batch_size == 4 and fast.train.precision == "bf16"
    assert fast.shape == (64, 64, 256)
    plain = build_config(_args())
    assert (plain.train.epochs, plain.train.batch_size, plain.train.lr, plain.train.optimizer, plain.phantom) == \
        (30, 32, 3e-3, "adamw", "small")


def test_pretrained_option_is_checked(tmp_path):
    from icpcv.errors import InputError

    with pytest.raises(InputError, match="not found"):
        build_config(_args("--pretrained", str(tmp_path / "none.pth"), "--models", "resnet10"))
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(InputError, match="none is in --models"):
        build_config(_args("--pretrained", str(tmp_path / "w.pth"), "--models", "mean,cnn"))
    # a checkpoint of another network is refused before any fold runs
    torch.save({"state_dict": {f"module.{k}": v for k, v in ResNet3D(18, base_width=4).state_dict().items()}},
               tmp_path / "small18.pth")
    with pytest.raises(InputError, match=r"small18\.pth.*backbone tensors of resnet10"):
        build_config(_args("--pretrained", str(tmp_path / "small18.pth"), "--models", "mean,resnet10"))


def test_end_to_end_fold_with_resnet10_and_a_warm_start(tmp_path):
    from icpcv.run.fold import run_fold
    from icpcv.run.pipeline import prepare
    from icpcv.util import read_json

    src = ResNet3D(10)  # full width: MedicalNet's resnet_10 layout
    state = {f"module.{k}": v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    state["module.conv_seg.0.weight"] = torch.zeros(512, 32, 2, 2, 2)
    torch.save({"state_dict": state}, tmp_path / "resnet_10.pth")
    del src, state
    cfg = build_config(_args("--phantom", "tiny", "--shape", "16x16x32", "--models", "mean,resnet10", "--folds", "2",
                             "--epochs", "1", "--batch-size", "16", "--pretrained", str(tmp_path / "resnet_10.pth")))
    run_dir = tmp_path / "run"
    prepare(cfg, run_dir)
    record = run_fold(run_dir, 0, device="cpu")
    info = record["models"]["resnet10"]
    ws = info["warm_start"]
    assert ws["fraction"] == 1.0 and ws["matched"] == ws["backbone_total"] and ws["shape_mismatched"] == 0
    assert ws["unexpected"] == 1 and ws["missing"] == 4
    assert info["data_path"]["storage_dtype"] == "uint8" and info["data_path"]["data_mode"] == "resident"
    assert read_json(run_dir / "folds" / "fold_00" / "record.json")["models"]["resnet10"]["warm_start"] == ws
    import pandas as pd

    preds = pd.read_csv(run_dir / "folds" / "fold_00" / "predictions.csv")
    assert set(preds["model"]) == {"mean", "resnet10"} and np.isfinite(preds["y_pred"]).all()
    curve = pd.read_csv(run_dir / "folds" / "fold_00" / "learning_curve.csv")
    assert list(curve["epoch"]) == [0, 1]


# ---------------------------------------------------------------- bench

def test_bench_runs_on_the_cpu(tmp_path, capsys):
    from icpcv.bench.train import main

    out = tmp_path / "bench.json"
    assert main(["--model", "resnet10", "--base-width", "4", "--shape", "12x12x24", "--steps", "1", "--warmup", "0",
                 "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for words in ("step only", "end to end", "seed-style", "samples/s", "TFLOP/s", "ratios", "end_to_end / step_only"):
        assert words in text
    r = json.loads(out.read_text())
    assert set(r["phases"]) == {"step_only", "end_to_end", "seed_style"}
    assert r["phases"]["seed_style"]["batch_size"] == 4 and r["train_flops_per_sample"] > 0
    assert r["phases"]["end_to_end"]["data_mode"] == "resident"


# ---------------------------------------------------------------- on the device (CUDA only)

@pytest.mark.gpu
@cuda
def test_cuda_data_path_bf16_channels_last_fused():
    train, val = _toy_fold()
    details = {}
    model, std, _ = fit(_model(), train, val, _cfg(1), torch.device("cuda"), details=details)
    assert details["data_mode"] == "resident" and details["storage_dtype"] == "uint8"
    assert "bf16" in details["precision"] and "channels-last" in details["precision"]
    assert "fused" in details["optimizer"]
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.gpu
@cuda
def test_no_host_sync_inside_the_training_steps():
    from icpcv.train.loop import _part, make_optimizer, train_epoch

    train, _ = _toy_fold(n_train=12)
    dev = torch.device("cuda")
    std = Standardiser.fit(*train)
    settings = dp.step_settings(dev, "auto")
    model = dp.prepare_model(_model(), dev, settings)
    opt = make_optimizer(model.parameters(), "adamw", 1e-3, 1e-4, dev)
    g = torch.Generator().manual_seed(0)
    for mode in ("resident", "stream"):
        part = _part(*train, std, dev, mode)
        train_epoch(model, opt, part, _cfg(1), g, settings, AugmentConfig(), std.intensity_range())  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            total = train_epoch(model, opt, part, _cfg(1), g, settings, AugmentConfig(), std.intensity_range())
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(total).item()


@pytest.mark.gpu
@cuda
def test_streamed_equals_resident_on_cuda_and_exact_resume(tmp_path):
    train, val = _toy_fold()
    dev = torch.device("cuda")
    a, _, _ = fit(_model(), train, val, _cfg(3, data_mode="resident"), dev, checkpoint=tmp_path / "a.pt")
    fit(_model(), train, val, _cfg(2, data_mode="stream"), dev, checkpoint=tmp_path / "b.pt")
    b, _, _ = fit(_model(), train, val, _cfg(3, data_mode="stream"), dev, checkpoint=tmp_path / "b.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


@pytest.mark.gpu
@cuda
def test_bench_on_cuda(capsys):
    from icpcv.bench.train import main

    assert main(["--model", "resnet10", "--shape", "32x32x64", "--steps", "3", "--warmup", "1"]) == 0
    text = capsys.readouterr().out
    assert "peak GiB" in text and "cuda" in text


@pytest.mark.gpu
@cuda
def test_a_cuda_fold_predicts_at_the_planned_batch_and_decides_residency_with_the_counted_step(tmp_path):
    from icpcv.run.fold import run_fold
    from icpcv.run.pipeline import prepare

    cfg = build_config(_args("--phantom", "tiny", "--shape", "16x16x32", "--models", "mean,resnet10", "--folds", "2",
                             "--epochs", "1", "--batch-size", "8"))
    prepare(cfg, tmp_path / "run")
    record = run_fold(tmp_path / "run", 0, device="cuda")
    info = record["models"]["resnet10"]
    assert 1 <= info["memory_plan"]["eval_batch"] <= 64 and info["memory_plan"]["train_peak_gib"] > 0
    assert "GiB step" in info["data_path"]["data_mode_reason"]  # decided with the counted step, not half the free
