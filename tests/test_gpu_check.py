"""The prepared GPU check (`icpcv bench gpu-check`), rehearsed on the CPU at tiny shapes, and the
issue-15 wiring that can be shown without a GPU: the shortcut option reaches the network, and on
CUDA the residency decision uses the step's counted memory."""
import json

import pytest
import torch

from icpcv.bench import gpu_check
from icpcv.commands import make_parser
from icpcv.commands.run import build_config
from icpcv.models.resnet3d import ZeroPadShortcut
from icpcv.models.zoo import make_cnn
from icpcv.train import datapath as dp

GiB = 2**30


def test_gpu_check_rehearsal_on_the_cpu_writes_one_json(tmp_path):
    result = gpu_check.check(tmp_path, cpu=True, tests=["tests/test_precision.py"],
                             steps=["environment", "gpu_tests", "bench_train_fast", "memory_plan_fast",
                                    "attribution_cost", "run_fast"])
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert on_disk["steps"].keys() == result["steps"].keys() == {"environment", "gpu_tests", "bench_train_fast",
                                                                 "memory_plan_fast", "attribution_cost", "run_fast"}
    steps = on_disk["steps"]
    assert steps["environment"]["device"] == "cpu" and steps["environment"]["torch"] == torch.__version__
    assert steps["gpu_tests"]["ok"] and "deselected" in steps["gpu_tests"]["counts"]  # no CUDA: nothing selected runs
    b = steps["bench_train_fast"]
    assert b["model"] == "resnet18" and b["step_only_samples_per_s"] > 0 and b["end_to_end_samples_per_s"] > 0
    assert b["end_to_end_over_step_only"] == pytest.approx(b["end_to_end_samples_per_s"] / b["step_only_samples_per_s"])
    assert steps["memory_plan_fast"]["ok"] is None and "skipped" in steps["memory_plan_fast"]
    cost = steps["attribution_cost"]
    assert cost["ok"] and {r["method"] for r in cost["rows"]} >= {"integrated_gradients", "occlusion"}
    assert all(r["seconds_per_scan"] > 0 and r["device"] == "cpu" for r in cost["rows"])
    run = steps["run_fast"]
    assert run["ok"] and run["returncode"] == 0 and [f["fold"] for f in run["folds"]] == [0, 1]
    assert set(run["mae"]) == {"mean", "ols_iop", "cnn"} and run["verdict"]
    assert (tmp_path / "run_fast" / "index.html").exists()
    assert set(run["attribution_seconds_per_scan"]) == {"cnn"}  # the run's maps (--saliency 1) and their cost


def test_gpu_check_refuses_a_machine_without_cuda_unless_rehearsing(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_check.main(["--steps", "environment"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err


def test_shortcut_grad_option_reaches_the_network():
    cfg = build_config(make_parser().parse_args(["run", "--models", "mean,resnet18", "--shortcut-grad",
                                                 "medicalnet"]))
    assert cfg.shortcut_grad == "medicalnet"
    assert build_config(make_parser().parse_args(["run", "--models", "resnet18"])).shortcut_grad == "standard"
    for option, detached in (("medicalnet", True), ("standard", False)):
        with torch.device("meta"):
            net = make_cnn("resnet18", (16, 16, 32), shortcut_grad=option)
        shortcuts = [m for m in net.modules() if isinstance(m, ZeroPadShortcut)]
        assert shortcuts and all(m.detach is detached for m in shortcuts)


def test_residency_on_cuda_uses_the_counted_step(monkeypatch):
    """The seed preset's step (~46 GiB counted) beside 35 GiB of volumes on an 80 GB card (79 GiB
    free): half of the free memory would keep them resident and run out of memory in epoch 1;
    with the counted step they are streamed. (CUDA's free memory is stood in for: no GPU here.)"""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (79 * GiB, 80 * GiB))
    cuda = torch.device("cuda")
    assert dp.choose_mode(35 * GiB, cuda)[0] == "resident"  # without a count: the old rule, and it says so
    assert "not counted" in dp.choose_mode(35 * GiB, cuda)[1]
    mode, why = dp.choose_mode(35 * GiB, cuda, peak_bytes=46 * GiB)
    assert mode == "stream" and "35.00 GiB volumes + 46.00 GiB step" in why
    assert dp.choose_mode(20 * GiB, cuda, peak_bytes=46 * GiB)[0] == "resident"
