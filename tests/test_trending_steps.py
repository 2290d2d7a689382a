"""Pressure steps into the run: the phantom's set levels and a scan table's step columns reach
trending's change pairs, through `icpcv run` and `icpcv analyze` into a run directory."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icpcv.cohort import materialise, read_steps
from icpcv.cohort.phantom import make_cohort
from icpcv.cohort.table import read_scan_table
from icpcv.commands import main
from icpcv.config import RunConfig
from icpcv.errors import InputError
from icpcv.rundir import CohortDir
from icpcv.stats.trending import change_pairs
from icpcv.util import read_json
from test_report_support import copy_run, shared_run

#: the tiny phantom's data hash on main before the set levels were carried (its scans and volumes unchanged)
TINY_DATA_HASH = "f0b87ca6665c70dc"


def _pairs_of_the_design(scans: pd.DataFrame) -> int:
    """Consecutive ICP set levels at each IOP set level of each monkey, counted from the design."""
    levels = scans.groupby(["subject", "iop_set"])["icp_set"].nunique()
    return int((levels - 1).sum())


def test_phantom_cohort_carries_its_set_levels_and_keeps_its_hash(tmp_path):
    cfg = RunConfig(phantom="tiny")
    coh, _, data_hash = materialise(cfg, CohortDir(tmp_path / "cohort"), need_iop=True, need_volumes=True)
    assert data_hash == TINY_DATA_HASH
    steps = read_steps(CohortDir(tmp_path / "cohort"))
    truth, _, _ = make_cohort("tiny", signal=cfg.signal, seed=cfg.data_seed)
    merged = steps.merge(truth[["scan_id", "iop_set", "icp_set"]], on="scan_id")
    assert len(merged) == len(truth) == len(coh.scans)
    assert (merged["iop_step"].astype(float) == merged["iop_set"]).all()
    assert (merged["icp_step"].astype(float) == merged["icp_set"]).all()
    # the models see the same four columns as before (the step columns are extra)
    assert {"scan_id", "subject", "iop", "icp"} <= set(coh.scans.columns)


def test_a_run_pairs_its_set_levels(tmp_path_factory):
    run = shared_run("tiny", tmp_path_factory.getbasetemp() / "report_runs")
    trending = read_json(run / "stats.json")["trending"]
    design = pd.DataFrame(read_json(run / "cohort" / "truth.json")["scans"])
    assert trending["step_source"] == "steps table (iop_step, icp_step)"
    assert trending["n_pairs"] == _pairs_of_the_design(design)
    assert trending["n_subjects"] == design["subject"].nunique()
    assert trending["verdict_model"] in trending["models"]


def test_analyze_into_a_run_directory_uses_its_steps(tmp_path_factory, tmp_path, capsys):
    run = copy_run(shared_run("tiny", tmp_path_factory.getbasetemp() / "report_runs"), tmp_path / "run")
    assert main(["analyze", str(run / "predictions.csv"), "--out", str(run), "--n-boot", "200"]) == 0
    trending = read_json(run / "stats.json")["trending"]
    assert trending["step_source"] == "steps table (iop_step, icp_step)"
    # the same table analysed outside the run has only the pressures: the gap rule
    out = tmp_path / "outside"
    assert main(["analyze", str(run / "predictions.csv"), "--out", str(out), "--n-boot", "200"]) == 0
    assert read_json(out / "stats.json")["trending"]["step_source"].startswith("pressures (gap rule")
    capsys.readouterr()


def test_scan_table_step_columns_are_carried(tmp_path):
    table = tmp_path / "scans.csv"
    pd.DataFrame({"scan_id": list("abcdef"), "subject": ["1"] * 3 + ["2"] * 3,
                  "iop": [15.2, 14.8, 15.1, 30.3, 29.9, 30.0], "icp": [5.1, 9.8, 15.5, 4.9, 10.2, 14.7],
                  "iop_step": ["15", "15", "15", "30", "30", ""],
                  "icp_step": ["low", "mid", "high", "low", "mid", "high"]}).to_csv(table, index=False)
    st = read_scan_table(table, need_iop=True)
    assert st.scans["iop_step"].tolist() == ["15", "15", "15", "30", "30", ""]
    cfg = RunConfig(manifest=str(table), models=("mean", "ols_iop"))
    materialise(cfg, CohortDir(tmp_path / "cohort"), need_iop=True, need_volumes=False)
    steps = read_steps(CohortDir(tmp_path / "cohort"))
    assert steps["icp_step"].tolist() == ["low", "mid", "high", "low", "mid", "high"]
    assert steps["iop_step"].isna().tolist() == [False] * 5 + [True]
    # a blank step leaves that scan out of trending only, with a warning
    preds = st.scans.assign(fold=st.scans.subject, model="ols_iop", y_true=st.scans.icp, y_pred=10.0)
    pairs = change_pairs(preds, steps=steps)
    assert len(pairs.frame) == 2 + 1 and any("no step" in w for w in pairs.warnings)
    # one step column without the other is refused, naming the file and both columns
    pd.read_csv(table).drop(columns="icp_step").to_csv(tmp_path / "half.csv", index=False)
    with pytest.raises(InputError, match=r"half\.csv: has the column iop_step but not icp_step"):
        read_scan_table(tmp_path / "half.csv")


def test_seed_table_pairs_by_the_gap_rule(monkey_table):
    """The seed's table records IOP once per step and ICP per scan, with no step column: the gap rule on
    the recorded pressures gives 108 change pairs in 12 of its 13 usable monkeys (docs/trending_power.md)."""
    st = read_scan_table(monkey_table)
    assert not {"iop_step", "icp_step"} & set(st.scans.columns)
    preds = st.scans.assign(fold=st.scans.subject, model="ols_iop", y_true=st.scans.icp, y_pred=st.scans.icp)
    pairs = change_pairs(preds)
    assert pairs.step_source.startswith("pressures (gap rule")
    assert len(pairs.frame) == 108 and pairs.frame["subject"].nunique() == 12
    assert sorted(set(st.scans.subject) - set(pairs.frame.subject)) == ["11"]
    assert np.all(pairs.frame["delta_measured"] > 0)
