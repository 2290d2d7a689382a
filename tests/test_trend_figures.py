"""Trending and power figures: a matplotlib Figure with one point per change pair / study size."""

import numpy as np
import pandas as pd
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from icpcv.report import figures as F
from icpcv.report.trend_figures import four_quadrant_figure, polar_figure, power_curve_figure
from icpcv.stats.power import PairedDifferences, PowerResult, plan_power
from icpcv.stats.trending import TrendingResult, trending


def _points(fig):
    return sum(len(c.get_offsets()) for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection))


def _result():
    rng = np.random.default_rng(0)
    rows = [(str(g), f"{g}-{iop}-{icp}", icp + rng.normal(0, 0.5), float(iop))
            for g in range(5) for iop in (10, 30) for icp in (3.0, 4.0, 12.0, 25.0)]
    t = pd.DataFrame(rows, columns=["subject", "scan_id", "y_true", "iop"]).assign(fold=lambda d: d.subject)
    preds = pd.concat([t.assign(model="cnn", y_pred=t.y_true + rng.normal(0, 3, len(t))),
                       t.assign(model="ols_iop", y_pred=15 + 0.1 * t.iop)])
    return trending(preds)


def test_four_quadrant_and_polar_draw_every_pair():
    """Small multiples (issue 22): one panel per model, in the order given, every pair drawn once."""
    res = TrendingResult.from_dict(_result().to_dict())  # as the report reads stats.json
    panels = [(res[m], res.pairs.for_model(m)) for m in ("ols_iop", "cnn")]
    for _, pairs in panels:
        assert len(pairs) == 5 * 2 * 2  # ICP 3 and 4 merge into one step (gap 1 < 2.5): 3 steps, 2 changes
    with F.style():
        fq = four_quadrant_figure(panels, res.pairs.subjects)
        pol = polar_figure(panels, res.pairs.subjects)
    assert isinstance(fq, Figure) and isinstance(pol, Figure)
    assert _points(fq) == _points(pol) == 2 * 5 * 2 * 2
    shown = [ax for ax in fq.axes if ax.get_visible()]
    assert [ax.get_title().split(":")[0] for ax in shown] == ["ols_iop", "cnn"]
    assert {ax.get_xlim() for ax in shown} == {shown[0].get_xlim()}  # one scale for every panel
    assert [ax.name for ax in pol.axes if ax.get_visible()] == ["polar", "polar"]
    assert [ax.get_title().split("\n")[0] for ax in pol.axes if ax.get_visible()] == ["ols_iop", "cnn"]
    assert F.to_png(fq)[:4] == b"\x89PNG" and F.to_png(pol)[:4] == b"\x89PNG"
    assert four_quadrant_figure([(res["cnn"], panels[1][1].iloc[:0])], []) is None


def test_power_curve_has_one_point_per_study_size():
    n = np.full(10, 20.0)
    diffs = PairedDifferences("cnn", "ols_iop", [str(i) for i in range(10)], n,
                              n * (9 + np.linspace(-2, 1, 10)), n * 10.0)
    res = plan_power(diffs, [6, 8, 10, 14], n_sim=200, detectable=True)
    with F.style():
        fig = power_curve_figure(PowerResult.from_dict(res.to_dict()))
    assert isinstance(fig, Figure)
    line = fig.axes[0].lines[0]  # the errorbar's data line
    assert list(line.get_xdata()) == [6, 8, 10, 14]
    assert list(line.get_ydata()) == [r.power for r in res.rows]
    res.rows = []
    assert power_curve_figure(res) is None
