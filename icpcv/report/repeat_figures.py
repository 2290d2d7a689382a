"""Figures of training randomness (``--repeats``): what a training seed changes.

Same look as :mod:`icpcv.report.figures`. Every number is an attribute of stats.json's
``training_variance`` read back (:class:`~icpcv.stats.repeats.TrainingVariance`): a figure never
recomputes a statistic.
"""
from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from icpcv.report.figures import palette, subplots
from icpcv.stats.repeats import TrainingVariance
from icpcv.util import is_finite_number


def repeat_differences_figure(tv: TrainingVariance):
    """Per repeated model: each repeat's MAE difference against the reference (a point, filled when
    the verdict's rule alone calls it better) beside the seed ensemble's difference and interval."""
    rows = [m for m in tv.models.values() if m.ensemble is not None]
    if not tv.measured or not rows:
        return None
    colors = palette(10)
    fig, ax = subplots(figsize=(8.2, 0.9 * len(rows) + 1.9))
    level = f"{round(tv.ci_level * 100):g}%"
    y = np.arange(len(rows))[::-1]
    for yi, m in zip(y, rows):
        e = m.ensemble
        if e.ci and all(is_finite_number(v) for v in e.ci):
            ax.plot(e.ci, [yi + 0.18] * 2, color=colors[0], lw=2.4, solid_capstyle="butt")
        if is_finite_number(e.delta):
            ax.plot([e.delta], [yi + 0.18], "D", color=colors[0], ms=7)
        for c in m.per_repeat:
            if not is_finite_number(c.delta):
                continue
            if c.ci and all(is_finite_number(v) for v in c.ci):
                ax.plot(c.ci, [yi - 0.18 - 0.05 * (c.repeat or 0)] * 2, color="0.75", lw=1)
            ax.plot([c.delta], [yi - 0.18 - 0.05 * (c.repeat or 0)], "o", ms=6,
                    color=colors[2] if c.called_better else colors[7],
                    markerfacecolor=colors[2] if c.called_better else "white", markeredgewidth=1.4)
        ax.annotate(f"{m.n_called_better} of {m.n_repeats} seeds alone called better",
                    (1.0, yi), xycoords=("axes fraction", "data"), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize="small")
    ax.axvline(0, color="0.2", lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.set_yticks(y, [f"{m.model} − {tv.reference}" for m in rows])
    ax.set_ylim(-0.9, len(rows) - 0.2)
    ax.grid(axis="y", visible=False)
    ax.set(xlabel=f"difference in MAE ({tv.unit}), {level} CI; left of 0: the model is better",
           title=f"What the training seed changes: {tv.n_repeats} repeats per fold")
    handles = [Line2D([], [], color=colors[0], marker="D", lw=2.4, label=f"seed ensemble, {level} CI"),
               Line2D([], [], color=colors[7], marker="o", markerfacecolor="white", lw=0,
                      label="one repeat alone (grey: its CI)"),
               Line2D([], [], color=colors[2], marker="o", lw=0, label="one repeat the rule calls better")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3, fontsize="small",
              frameon=False)
    fig.tight_layout()
    return fig


def fold_spread_figure(tv: TrainingVariance, model: str):
    """Per fold of ``model``: each repeat's MAE on the held-out monkey(s) (points), the seed
    ensemble's (diamond) and the reference's (bar)."""
    m = tv.models.get(model) if tv.measured else None
    if m is None or not m.per_fold:
        return None
    colors = palette(10)
    folds = m.per_fold
    fig, ax = subplots(figsize=(max(6.5, 0.45 * len(folds) + 2.5), 4.2))
    x = np.arange(len(folds))
    for xi, f in zip(x, folds):
        maes = [v for v in f.mae if is_finite_number(v)]
        if maes:
            jitter = np.linspace(-0.12, 0.12, len(maes)) if len(maes) > 1 else [0.0]
            ax.scatter(xi + np.asarray(jitter), maes, s=18, color=colors[7], alpha=0.85, zorder=3)
            ax.plot([xi, xi], [min(maes), max(maes)], color="0.6", lw=1, zorder=2)
        if is_finite_number(f.ensemble_mae):
            ax.plot([xi], [f.ensemble_mae], "D", color=colors[0], ms=6, zorder=4)
        if is_finite_number(f.reference_mae):
            ax.plot([xi - 0.28, xi + 0.28], [f.reference_mae] * 2, color=colors[3], lw=1.6, zorder=1)
    ax.set_xticks(x, [", ".join(map(str, f.subjects[:2])) + ("…" if len(f.subjects) > 2 else "") for f in folds],
                  rotation=45 if len(folds) > 8 else 0, ha="right" if len(folds) > 8 else "center")
    ax.set(xlabel="held-out monkey(s) of the fold", ylabel=f"MAE on the held-out scans ({tv.unit})",
           title=f"{model}: MAE of each repeat per fold")
    handles = [Line2D([], [], color=colors[7], marker="o", lw=0, label="one repeat"),
               Line2D([], [], color=colors[0], marker="D", lw=0, label="seed ensemble"),
               Line2D([], [], color=colors[3], lw=1.6, label=tv.reference)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    fig.tight_layout()
    return fig
