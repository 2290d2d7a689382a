"""The analysis notebooks run top to bottom against small real runs, so they cannot rot."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_report_support import REPO, shared_run

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((REPO / "analysis").glob("*.ipynb"))


def test_notebooks_are_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_one_run.ipynb", "02_compare_runs.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: stored with outputs"


def execute(path: Path, env: dict, monkeypatch) -> "nbformat.NotebookNode":
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    # the kernel inherits this environment: icpcv from this checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_one_run_notebook(tmp_path_factory, monkeypatch):
    run = shared_run("tiny", tmp_path_factory.getbasetemp() / "report_runs")
    nb = execute(REPO / "analysis" / "01_one_run.ipynb", {"ICPCV_RUN": run, "ICPCV_NBOOT": 200, "ICPCV_NSIM": 200},
                 monkeypatch)
    text = outputs_text(nb)
    from icpcv.util import read_json

    stats = read_json(run / "stats.json")
    assert stats["verdict"] in text
    assert "this run has no attribution maps" in text  # issue 14: section 10 without `--saliency`
    assert "scans as independent (wrong)" in text and "percentile CI" in text
    assert "between_subject" in text and "monkeys where the model beats the reference" in text
    # trending, read from stats.json: its table and sentence; power, planned anew for the verdict's model
    assert "Trending: consecutive ICP steps at the same IOP step" in text and stats["trending"]["sentence"] in text
    assert "models whose prediction barely moves at a fixed IOP step: mean, ols_iop" in text
    assert f"Power of a new study to find {stats['trending']['verdict_model']} better than ols_iop" in text
    assert f"sign-flip p × {len(stats['comparisons'])} comparisons < 0.05" in text
    assert "Training randomness was not measured: each network (cnn) was trained once per fold" in text
    # 4 figures before, then the four-quadrant and the polar plots (one figure each, a panel per model:
    # issue 22), and the power curve
    assert sum(1 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})) >= 7


def test_one_run_notebook_reads_training_randomness_of_a_run_with_repeats(tmp_path_factory, monkeypatch):
    from icpcv.util import read_json

    run = shared_run("tiny_repeats", tmp_path_factory.getbasetemp() / "report_runs")
    nb = execute(REPO / "analysis" / "01_one_run.ipynb", {"ICPCV_RUN": run, "ICPCV_NBOOT": 200, "ICPCV_NSIM": 200},
                 monkeypatch)
    text = outputs_text(nb)
    tv = read_json(run / "stats.json")["training_variance"]
    assert "Training randomness: 3 repeats per fold of cnn" in text
    assert f"called better alone in {tv['models']['cnn']['n_called_better']} of 3 repeats" in text
    assert "MAE of each repeat alone" in text


def test_one_run_notebook_browses_a_monkeys_maps(tmp_path_factory, monkeypatch):
    """Issue 14: with `run --saliency N` maps, section 10 shows one monkey's maps (without them it says so)."""
    run = shared_run("tiny_saliency", tmp_path_factory.getbasetemp() / "report_runs")
    nb = execute(REPO / "analysis" / "01_one_run.ipynb", {"ICPCV_RUN": run, "ICPCV_NBOOT": 100, "ICPCV_NSIM": 100,
                                                          "ICPCV_MONKEY": "2"}, monkeypatch)
    text = outputs_text(nb)
    assert "this run has no attribution maps" not in text
    assert "scans of monkey 2" in text and "times its volume share" in text


def test_compare_runs_notebook(tmp_path_factory, tmp_path, monkeypatch):
    base = tmp_path_factory.getbasetemp() / "report_runs"
    runs = f"{shared_run('tiny', base)},{shared_run('tiny_b', base)}"
    nb = execute(REPO / "analysis" / "02_compare_runs.ipynb",
                 {"ICPCV_RUNS": runs, "ICPCV_NBOOT": 200, "ICPCV_COMPARE_OUT": tmp_path / "cmp"}, monkeypatch)
    text = outputs_text(nb)
    assert "shared fold plan:" in text and "compared: tiny:cnn, tiny_b:cnn | reference: tiny:cnn" in text
    assert (tmp_path / "cmp" / "index.html").exists() and (tmp_path / "cmp" / "stats.json").exists()
