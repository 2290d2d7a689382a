"""`icpcv power RUN_DIR`: the table, power.json, figures/power.png, the report's section, bad input.

The planner's numbers are checked against known answers in tests/test_stats_power.py; here the
command's wiring: which predictions, model, reference and Holm family it plans for, what it writes,
and that the report shows power.json only while it belongs to the run's predictions.
"""
from __future__ import annotations

import json
import re
from html import unescape

import numpy as np
import pandas as pd
import pytest

from icpcv.commands import main
from icpcv.config import PowerConfig
from icpcv.rundir import RunDir
from icpcv.stats import power as P
from icpcv.stats.power import paired_differences, plan_power
from icpcv.util import read_json
from test_report_support import copy_run, shared_run

PNG = b"\x89PNG\r\n\x1a\n"
ARGS = ["--n-sim", "200", "--monkeys", "6,8"]


@pytest.fixture(scope="module")
def powered(tmp_path_factory):
    """A copy of the shared tiny run (6 monkeys, mean/ols_iop/ridge_scan/cnn) after `icpcv power`."""
    base = tmp_path_factory.getbasetemp() / "report_runs"
    run = copy_run(shared_run("tiny", base), tmp_path_factory.mktemp("power") / "tiny")
    assert main(["report", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def power_output(powered):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["power", str(powered), *ARGS])
    return rc, out.getvalue()


def test_defaults_are_the_planners():
    d = PowerConfig()
    assert d.monkeys == P.DEFAULT_MONKEYS and d.n_sim == P.DEFAULT_N_SIM and d.n_perm == P.DEFAULT_N_PERM
    assert d.alpha == P.VERDICT_ALPHA and d.target_power == P.TARGET_POWER


def test_power_prints_the_table_and_writes_json_and_figure(powered, power_output):
    rc, text = power_output
    assert rc == 0
    data = read_json(powered / "power.json")
    stats = read_json(powered / "stats.json")
    # the run's own reference and Holm family (2 metrics x 3 models against ols_iop), the run's predictions
    assert data["model"] == "cnn" and data["reference"] == stats["reference"] == "ols_iop"
    assert data["n_comparisons"] == len(stats["comparisons"]) == 6
    assert data["run_subjects"] == 6 and [r["n_monkeys"] for r in data["table"]] == [6, 8]
    rec = RunDir(powered).read_record()
    assert data["made_for"]["run_key"] == rec.key
    # the same numbers as the planner called directly on the run's predictions
    preds = pd.read_csv(powered / "predictions.csv", dtype={"subject": str, "scan_id": str})
    direct = plan_power(paired_differences(preds, "cnn", "ols_iop"), [6, 8], n_sim=200, n_comparisons=6)
    assert data["table"] == direct.to_dict()["table"]
    assert data["observed_reduction"] == pytest.approx(direct.observed_reduction)
    # the run's pooled MAE difference, computed here from the predictions by hand
    wide = preds.pivot(index="scan_id", columns="model", values="y_pred")
    truth = preds.drop_duplicates("scan_id").set_index("scan_id")["y_true"]
    by_hand = (wide["ols_iop"] - truth).abs().mean() - (wide["cnn"] - truth).abs().mean()
    assert data["observed_reduction"] == pytest.approx(by_hand)
    # 6 monkeys with 6 comparisons: 6 x 2/2^6 > 0.05, so no study of 6 can be called better
    assert data["table"][0]["power"] == 0 and data["detectable"]["effect"] is None
    assert "cannot reach" in data["detectable"]["note"]
    # printed: the table with each size and its power
    for row in data["table"]:
        assert re.search(rf"^\s+{row['n_monkeys']}\s+{row['power']:.3f}\s", text, re.M), text
    assert f"wrote {powered / 'power.json'}" in text
    assert (powered / "figures" / "power.png").read_bytes().startswith(PNG)
    assert json.loads(json.dumps(data, allow_nan=False)) == data


def test_report_shows_power_while_it_matches_the_predictions(powered, power_output, tmp_path):
    assert power_output[0] == 0
    html = (powered / "index.html").read_text()
    data = read_json(powered / "power.json")
    section = html[html.index('<section id="power">'):]
    section = section[:section.index("</section>")]
    assert 'href="#power"' in html and "figures/power.png" in section
    for row in data["table"]:
        assert f"<td>{row['n_monkeys']}</td><td><b>{row['power']:.3f}</b></td>" in section
    assert data["detectable"]["note"] in unescape(section)
    # every figure of the report is still on disk, the power curve among them
    assert {"power", "forest", "four_quadrant", "polar"} <= {p.stem for p in (powered / "figures").glob("*.png")}
    # predictions that changed since: power.json no longer belongs to them, and the report says so
    changed = copy_run(powered, tmp_path / "changed")
    preds = pd.read_csv(changed / "predictions.csv", dtype=str)
    preds.loc[0, "y_pred"] = str(float(preds.loc[0, "y_pred"]) + 1)
    preds.to_csv(changed / "predictions.csv", index=False)
    assert main(["report", str(changed)]) == 0
    html = (changed / "index.html").read_text()
    assert '<section id="power">' not in html and "power.json was made for other predictions" in html
    assert not (changed / "figures" / "power.png").exists()


def test_power_plans_for_the_seed_ensemble_of_an_analysis_directory(tmp_path, capsys):
    """An `icpcv analyze` directory of a table whose cnn was trained 3 times per fold: the planner uses the
    ensemble (per scan, the mean of the repeats), as the verdict does."""
    rng = np.random.default_rng(3)
    rows = []
    for g in range(1, 9):
        for i in range(6):
            y, iop = rng.uniform(5, 40), rng.choice([10.0, 30.0])
            rows.append(dict(fold=g, subject=str(g), scan_id=f"{g}-{i}", y_true=round(y, 2), iop=iop))
    base = pd.DataFrame(rows)
    frames = [base.assign(model="ols_iop", y_pred=base.y_true + rng.normal(0, 5, len(base)), repeat=np.nan)]
    for r in range(3):
        frames.append(base.assign(model="cnn", repeat=r, y_pred=base.y_true + rng.normal(0, 2, len(base))))
    table = pd.concat(frames, ignore_index=True)
    src = tmp_path / "preds.csv"
    table.to_csv(src, index=False)
    out = tmp_path / "analysis"
    assert main(["analyze", str(src), "--out", str(out), "--n-boot", "200"]) == 0
    capsys.readouterr()
    assert main(["power", str(out), "--n-sim", "200", "--monkeys", "8", "--n-comparisons", "1"]) == 0
    data = read_json(out / "power.json")
    ens = table[table.model == "cnn"].groupby("scan_id")["y_pred"].mean()
    ref = table[table.model == "ols_iop"].set_index("scan_id")
    by_hand = (ref["y_pred"] - ref["y_true"]).abs().mean() - (ens - ref["y_true"]).abs().mean()
    assert data["observed_reduction"] == pytest.approx(by_hand)
    assert data["made_for"]["run_key"] is None and data["n_comparisons"] == 1
    assert '<section id="power">' in (out / "index.html").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--model", "nosuch"], "the model 'nosuch' is not among the models"),
    (["--reference", "ols_iop2"], "the reference 'ols_iop2' is not among the models"),
    (["--monkeys", "1,6"], "--monkeys 1: accepted 2 to 1000"),
    (["--monkeys", "six,ten"], "--monkeys: 'six' is not a whole number"),
    (["--monkeys", ","], "--monkeys: give study sizes"),
    (["--alpha", "1.5"], "--alpha 1.5: accepted above 0 and below 1"),
])
def test_bad_input_is_one_sentence_and_exit_2(powered, argv, message, capsys):
    before = (powered / "power.json").read_bytes() if (powered / "power.json").exists() else None
    assert main(["power", str(powered), *ARGS[:2], *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("icpcv: error: ") and message in err and "Traceback" not in err
    if "model" in message or "reference" in message:
        assert str(powered / "predictions.csv") in err  # the file it looked in
    after = (powered / "power.json").read_bytes() if (powered / "power.json").exists() else None
    assert after == before  # nothing written


def test_not_a_run_directory(tmp_path, capsys):
    assert main(["power", str(tmp_path / "nowhere")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["power", str(tmp_path)]) == 2
    assert "no predictions.csv" in capsys.readouterr().err
