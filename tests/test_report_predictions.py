"""The report of a predictions table analysed outside any run: `icpcv analyze PREDICTIONS --out DIR`."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil

import pandas as pd
import pytest

from icpcv.commands import main
from icpcv.util import read_json
from test_report import Page
from test_report_support import HOSTILE, copy_run, shared_analysis, shared_run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    return shared_analysis(tmp_path_factory.getbasetemp() / "report_runs")


def test_analyze_writes_stats_and_the_html_report(analysis):
    src, out = analysis["src"], analysis["out"]
    assert analysis["rc"] == 0
    assert analysis["stdout"].strip().splitlines()[-1] == f"report: {out / 'index.html'}"
    for name in ("stats.json", "predictions.csv", "analysis.json", "index.html"):
        assert (out / name).exists(), name
    stats, meta = read_json(out / "stats.json"), read_json(out / "analysis.json")
    # analysis.json: what was analysed (the file's own sha256), with which settings
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["kind"] == "predictions" and meta["source"]["sha256"] == sha
    assert meta["source"]["path"] == str(src) and meta["source"]["resolved"] == str(src.resolve())
    assert meta["source"]["n_rows"] == len(pd.read_csv(src)) == 96
    assert meta["settings"] == dict(reference="ols_iop", n_boot=500, seed=0, ci_level=0.95, ci_method=None,
                                    audit_failed=False)
    assert meta["icpcv"] and meta["time"]
    # the analysis saw the clearly better cnn
    assert stats["models"]["cnn"]["mae"]["estimate"] < stats["models"]["ols_iop"]["mae"]["estimate"] - 1
    html = (out / "index.html").read_text()
    page = Page(html)
    assert stats["verdict"] in page.plain and "The cnn lowers MAE" in stats["verdict"]
    assert "ols_iop" in page.plain and "cnn" in page.plain and sha in page.plain
    assert "Analysis directory" in page.plain and "leakage audit could not be checked" in page.plain
    order = ["verdict", "input", "models", "agreement", "provenance", "warnings"]
    assert [i for i in page.ids if i in order] == order
    assert not {"cohort", "data-quality", "folds", "runs", "training"} & set(page.ids)
    for c in stats["comparisons"]:
        assert f"{c['delta']:.2f}" in page.plain
    # self-contained: every image a PNG data URI, equal to the PNG written next to the report
    assert all(link.startswith(("#", "data:image/png;base64,")) for link in page.links), page.links
    assert page.images and all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    embedded = [base64.b64decode(img["src"].split(",", 1)[1], validate=True) for img in page.images]
    assert all(png.startswith(PNG) for png in embedded)
    pngs = {p.stem: p.read_bytes() for p in (out / "figures").glob("*.png")}
    assert set(pngs) == {"forest", "per_monkey_error", "predicted_vs_measured", "bland_altman"}
    assert sorted(embedded) == sorted(pngs.values())


def test_analysis_report_escapes_user_strings(analysis):
    html = (analysis["out"] / "index.html").read_text()
    assert "<script" not in html.lower() and HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the monkey label, shown as text
    assert HOSTILE in Page(html).plain


def test_report_command_regenerates_an_analysis_directory(analysis, tmp_path, capsys):
    out = tmp_path / "analysis"
    shutil.copytree(analysis["out"], out, ignore=shutil.ignore_patterns("index.html", "figures"))
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out / 'index.html'}"
    page = Page((out / "index.html").read_text())
    assert read_json(out / "stats.json")["verdict"] in page.plain and "input" in page.ids
    assert len(list((out / "figures").glob("*.png"))) == 4
    # a source that changed since it was analysed is a note, not an error: the report shows the copy
    changed = tmp_path / "changed.csv"
    changed.write_text(analysis["src"].read_text() + "\n")
    meta = read_json(out / "analysis.json")
    meta["source"]["resolved"] = str(changed)
    (out / "analysis.json").write_text(json.dumps(meta))
    assert main(["report", str(out)]) == 0
    assert f"report: {changed} has changed since it was analysed" in Page((out / "index.html").read_text()).plain
    # an incomplete analysis directory is refused in one line naming the file
    (out / "stats.json").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a complete analysis: stats.json missing" in err


def test_analyze_keeps_stats_json_when_the_report_fails(analysis, tmp_path, monkeypatch, capsys):
    def broken(_):
        raise RuntimeError("no matplotlib today")

    monkeypatch.setattr("icpcv.report.write_report", broken)
    out = tmp_path / "out"
    assert main(["analyze", str(analysis["src"]), "--out", str(out), "--n-boot", "100"]) == 1
    assert (out / "stats.json").exists() and (out / "analysis.json").exists() and not (out / "index.html").exists()
    assert "report failed: no matplotlib today" in capsys.readouterr().err


def test_analyze_into_a_run_directory_keeps_the_run_report(tmp_path_factory, tmp_path, capsys):
    run = copy_run(shared_run("tiny", tmp_path_factory.getbasetemp() / "report_runs"), tmp_path / "run")
    before = read_json(run / "stats.json")
    assert main(["analyze", str(run / "predictions.csv"), "--out", str(run), "--n-boot", "200"]) == 0
    after = read_json(run / "stats.json")
    # the run's own sections survive re-analysis: the prediction interval for a new monkey (no resampling in
    # it: equal) and the acquisition section
    assert set(after) == set(before) and after["prediction_intervals"] == before["prediction_intervals"]
    assert after["acquisition"].keys() == before["acquisition"].keys()
    assert not (run / "analysis.json").exists()
    page = Page((run / "index.html").read_text())
    assert {"cohort", "data-quality", "folds", "training"} <= set(page.ids) and "input" not in page.ids
    assert "Run directory" in page.plain and read_json(run / "stats.json")["n_boot"] == 200
    # another table into a run directory is refused before anything is written
    other = tmp_path / "other.csv"
    read_predictions_csv = (run / "predictions.csv").read_text()
    other.write_text(read_predictions_csv)
    before = {p.name: p.read_bytes() for p in (run / "stats.json", run / "predictions.csv", run / "index.html")}
    assert main(["analyze", str(other), "--out", str(run)]) == 2
    assert "is a run directory; analysing another table into it" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (run / "stats.json", run / "predictions.csv", run / "index.html")} == before
