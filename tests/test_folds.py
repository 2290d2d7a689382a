"""Fold plans: leave-one-subject-out, grouped K-fold, inner validation, the leakage audit."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icpcv.errors import InputError
from icpcv.folds import Fold, FoldPlan, audit, make_plan


@pytest.fixture
def scans():
    rng = np.random.default_rng(1)
    sizes = {"1": 5, "2": 12, "3": 3, "4": 8, "5": 20, "6": 7, "7": 4, "10": 9}
    rows = [dict(scan_id=f"{s}-{i}", subject=s) for s, n in sizes.items() for i in range(n)]
    return pd.DataFrame(rows).sample(frac=1, random_state=0).reset_index(drop=True)


def test_leave_one_subject_out(scans):
    plan = make_plan(scans, seed=3)
    assert plan.n_folds == 8 and plan.kind == "subjects"
    assert [f.held_out for f in plan.folds] == [(s,) for s in ["1", "2", "3", "4", "5", "6", "7", "10"]]
    subj = dict(zip(scans.scan_id, scans.subject))
    for f in plan.folds:
        assert f.held_out[0] not in f.inner_val and f.held_out[0] not in f.train
        assert {subj[x] for x in f.test_scans} == set(f.held_out)
        assert {subj[x] for x in f.val_scans} == set(f.inner_val) and len(f.inner_val) == 1
        assert len(f.test_scans) + len(f.val_scans) + len(f.train_scans) == len(scans)
    assert audit(plan, scans)["passed"]


def test_grouped_kfold_and_too_many_folds(scans):
    plan = make_plan(scans, n_folds=3)
    held = [s for f in plan.folds for s in f.held_out]
    assert sorted(held) == sorted(scans.subject.unique()) and len(held) == 8
    loads = [len(f.test_scans) for f in plan.folds]
    assert max(loads) - min(loads) <= 8  # balanced by scan count
    assert audit(plan, scans)["passed"]
    with pytest.raises(InputError, match="the table has 8 subjects"):
        make_plan(scans, n_folds=9)


def test_audit_catches_a_leaked_subject(scans):
    plan = make_plan(scans)
    f0 = plan.folds[0]
    leaked = Fold(f0.index, f0.held_out, f0.inner_val, f0.train, f0.test_scans[1:], f0.val_scans,
                  f0.train_scans + f0.test_scans[:1])  # one scan of the held-out monkey moves to training
    bad = FoldPlan(plan.kind, plan.n_folds, plan.seed, (leaked,) + plan.folds[1:], plan.subjects)
    result = audit(bad, scans)
    assert not result["passed"]
    assert result["folds"][0]["subjects_in_train_and_test"] == ["1"]
    assert result["scans_never_tested"] == 1
    assert "LEAKAGE" in result["summary"]


def test_scan_level_split_is_flagged_as_leaky(scans):
    plan = make_plan(scans, split="scans", n_folds=4)
    tested = [x for f in plan.folds for x in f.test_scans]
    assert sorted(tested) == sorted(scans.scan_id)
    assert not audit(plan, scans)["passed"]


def test_plan_hash_is_stable_and_detects_edits(scans):
    a, b = make_plan(scans, seed=0), make_plan(scans.sample(frac=1, random_state=5), seed=0)
    assert a.hash == b.hash  # row order of the table does not matter
    assert make_plan(scans, seed=1).hash != a.hash  # another inner-validation draw
    d = a.to_dict()
    assert FoldPlan.from_dict(d).hash == a.hash
    d["folds"][0]["train_scans"].append(d["folds"][0]["test_scans"][0])
    with pytest.raises(InputError, match="hash mismatch"):
        FoldPlan.from_dict(d)


def _two_cols(sizes):
    return pd.DataFrame([dict(scan_id=f"{s}-{i}", subject=s) for s, n in sizes.items() for i in range(n)])


def test_one_subject_is_named_as_such_without_folds():
    """Issue 11: a 1-subject table said "--folds must be at least 2 (got 1)" with no --folds given."""
    with pytest.raises(InputError) as err:
        make_plan(_two_cols({"7": 5}))
    msg = str(err.value)
    assert "--folds" not in msg and "only 1 subject (7)" in msg and "at least 2" in msg
    with pytest.raises(InputError, match=r"--folds must be at least 2 \(got 1\)"):
        make_plan(_two_cols({"7": 5, "8": 3}), n_folds=1)


def test_two_subjects_with_no_inner_validation():
    """Issue 11: a 2-subject table was refused for the IOP-only models even with --val-fraction 0."""
    plan = make_plan(_two_cols({"1": 4, "2": 3}), val_fraction=0)
    assert plan.n_folds == 2
    for f in plan.folds:
        assert f.inner_val == () and f.val_scans == () and len(f.train) == 1
    with pytest.raises(InputError) as err:
        make_plan(_two_cols({"1": 4, "2": 3}), val_fraction=0.25)
    msg = str(err.value)
    assert "1 subject" in msg and "fewer --folds" in msg and "networks" in msg


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2.0, float("nan")])
def test_val_fraction_outside_its_range_is_an_input_error(scans, fraction):
    with pytest.raises(InputError, match="--val-fraction"):
        make_plan(scans, val_fraction=fraction)


def test_without_early_stopping_a_fold_with_one_training_subject_keeps_it(scans, tmp_path):
    """A labels-only run was refused by the inner-validation rule when a fold had one training subject,
    although no model early-stops (the baselines fit the inner-validation subjects too). Without a
    network the fold keeps every training subject; every plan that was drawn before is drawn the same."""
    two = _two_cols({"1": 4, "2": 3})
    plan = make_plan(two, val_fraction=0.25, inner_val_needed=False)
    assert [(f.held_out, f.inner_val, f.train) for f in plan.folds] == [(("1",), (), ("2",)), (("2",), (), ("1",))]
    assert make_plan(scans, val_fraction=0.25, seed=3, inner_val_needed=False).hash == \
        make_plan(scans, val_fraction=0.25, seed=3).hash  # same draws where a fold has subjects to spare

    from cli_support import icpcv, write_csv
    from icpcv.util import read_json

    rows = [[f"s{i}", str(1 + i % 2), 10 + i, 5 + i % 3] for i in range(8)]
    table = write_csv(tmp_path / "t.csv", ["scan_id", "subject", "iop", "icp"], rows)
    rc, _, err = icpcv("run", "--manifest", table, "--models", "mean,ols_iop", "--n-boot", "20", "--quiet",
                       "--out", tmp_path / "labels")
    assert rc == 0, err  # refused before: "fold 1 of 2 has 1 subject on its training side ..."
    assert all(not f["inner_val"] for f in read_json(tmp_path / "labels" / "fold_plan.json")["folds"])
