"""Figures of trending and power: four-quadrant plot, polar plot, power curve.

Same look as :mod:`icpcv.report.figures` (its ``style()``, ``subplots()``, palettes; built without
pyplot). Points are the change pairs as stats.json holds them (``TrendingResult.pairs.for_model``:
columns ``subject, delta_measured, delta_predicted``); lines, zones and numbers are the attributes
of the statistics read back from ``stats.json`` → ``trending`` (:class:`ModelTrending`) and
``power.json`` (:class:`PowerResult`), so a figure never recomputes a statistic.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from icpcv.report.figures import palette, subject_styles, subplots
from icpcv.stats.power import PowerResult, reduction_text
from icpcv.stats.trending import ModelTrending, polar_coordinates, retained_pairs
from icpcv.util import is_finite_number

EXCLUDED_COLOR = "0.6"


def _ci_text(ci, level):
    if not ci or not all(is_finite_number(v) for v in ci):
        return "no interval"
    return f"{level} CI {100 * ci[0]:.0f} to {100 * ci[1]:.0f}%"


def _split(pairs: pd.DataFrame, keep: np.ndarray, styles: dict, draw):
    """Draw the retained pairs by monkey and the excluded ones in grey; returns points drawn."""
    subj = pairs["subject"].astype(str).to_numpy()
    drawn = 0
    for name, st in styles.items():
        m = (subj == name) & keep
        if m.any():
            draw(m, dict(color=st["color"], marker=st["marker"], s=22, alpha=0.8, linewidths=0))
            drawn += int(m.sum())
    if (~keep).any():
        draw(~keep, dict(color=EXCLUDED_COLOR, marker="x", s=18, alpha=0.8, linewidths=1))
        drawn += int((~keep).sum())
    return drawn


def _panel_grid(n: int, polar: bool = False):
    """Small multiples of square panels: one column for one model, two up to four, then three."""
    # up to four across (a polar panel is a half disc, half as wide as tall)
    ncol = min(n, 4)
    nrow = int(np.ceil(n / ncol))
    width, height = (2.7, 4.3) if polar else (3.6, 3.6)
    fig, axes = subplots(nrow, ncol, figsize=(width * ncol + 1.6, height * nrow + 1.0), squeeze=False,
                         subplot_kw={"projection": "polar"} if polar else {})
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _subject_key(fig, styles, subjects, panels):
    seen = set().union(*(set(p["subject"].astype(str)) for _, p in panels))
    present = [s for s in subjects if s in seen]
    handles = [Line2D([], [], ls="", marker=styles[s]["marker"], color=styles[s]["color"], ms=6, label=s)
               for s in present]
    fig.legend(handles=handles, title="monkey", loc="upper left", bbox_to_anchor=(1.0, 0.97), fontsize="small",
               title_fontsize="small", ncol=1 if len(present) <= 16 else 2)


def _usable(panels):
    return [(m, p) for m, p in panels if p is not None and not p.empty]


def four_quadrant_figure(panels: list, subjects: list[str]):
    """Small multiples: per model, its change pairs' predicted against measured change, with the
    exclusion zone; all panels on the same scale.

    ``panels`` is a list of ``(ModelTrending, pairs)``, in the order to draw (the verdict's model and
    the reference first): the model's trending statistics give its exclusion zone and rule and its
    concordance rate and interval (the panel's title). Excluded pairs are grey crosses.
    """
    panels = _usable(panels)
    if not panels:
        return None
    styles = subject_styles(subjects)
    fig, axes = _panel_grid(len(panels))
    lim = 1.08 * max(max(float(np.nanmax(np.abs(np.r_[p["delta_measured"].to_numpy(float),
                                                       p["delta_predicted"].to_numpy(float)]))),
                         2 * m.concordance.exclusion_zone, 1.0) for m, p in panels)
    rules = set()
    for ax, (mstats, pairs) in zip(axes.flat, panels):
        conc = mstats.concordance
        zone, rule = conc.exclusion_zone, conc.exclusion
        rules.add((zone, rule))
        dm = pairs["delta_measured"].to_numpy(float)
        dp = pairs["delta_predicted"].to_numpy(float)
        keep = retained_pairs(dm, dp, zone, rule)
        if zone > 0:
            if rule == "measured":
                ax.axvspan(-zone, zone, color="0.85", lw=0, zorder=0)
            else:
                ax.add_patch(Rectangle((-zone, -zone), 2 * zone, 2 * zone, color="0.85", lw=0, zorder=0))
        ax.axhline(0, color="0.2", lw=1)
        ax.axvline(0, color="0.2", lw=1)
        ax.plot([-lim, lim], [-lim, lim], color="0.35", lw=1.1, ls="--")
        _split(pairs, keep, styles, lambda m, kw, ax=ax, dm=dm, dp=dp: ax.scatter(dm[m], dp[m], **kw))
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        level = f"{round(conc.ci_level * 100):g}%"
        head = "n/a" if not is_finite_number(conc.rate) else f"{100 * conc.rate:.0f}%"
        ax.set_title(f"{mstats.model}: concordance {head}\n({_ci_text(conc.ci, level)})", fontsize="medium")
        ax.set_xlabel("measured change (mmHg)", fontsize="small")
        ax.set_ylabel("predicted change (mmHg)", fontsize="small")
    _subject_key(fig, styles, subjects, panels)
    zone, rule = next(iter(rules))
    zone_label = (f"exclusion zone: measured change < {zone:g} mmHg" if rule == "measured"
                  else f"exclusion zone: both changes < {zone:g} mmHg") if len(rules) == 1 else "exclusion zone"
    handles = [Patch(color="0.85", label=zone_label),
               Line2D([], [], color="0.35", lw=1.1, ls="--", label="identity"),
               Line2D([], [], ls="", marker="x", color=EXCLUDED_COLOR, label="excluded pair")]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.45, 0.0), ncol=3, fontsize="small")
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))
    return fig


def polar_figure(panels: list, subjects: list[str]):
    """Small multiples of polar plots (Critchley et al. 2011): radius = mean change, angle from the
    line of identity; one panel per ``(ModelTrending, pairs)`` of ``panels``, on one radial scale.

    Lines from each model's ``polar``: angular bias (solid), radial limits of agreement (dashed),
    ±30° (dotted); the grey disc is the exclusion zone. Caption for the report: "radius: mean of
    the measured and predicted change; angle: from the line of identity, positive when the
    predicted change is larger, below −45° when it goes the other way". Each panel's key gives its
    angular bias and limits.
    """
    panels = _usable(panels)
    if not panels:
        return None
    styles = subject_styles(subjects)
    fig, axes = _panel_grid(len(panels), polar=True)
    coords = [polar_coordinates(p["delta_measured"].to_numpy(float), p["delta_predicted"].to_numpy(float))
              for _, p in panels]
    rmax = 1.08 * max(max(float(np.nanmax(r)), 2 * m.polar.exclusion_zone, 1.0)
                      for (m, _), (r, _) in zip(panels, coords))
    accepts = set()
    for ax, (mstats, pairs), (radius, theta) in zip(axes.flat, panels, coords):
        polar = mstats.polar
        zone = polar.exclusion_zone
        keep = (radius >= zone) & (radius > 0)
        ax.set_thetamin(-90)
        ax.set_thetamax(90)
        ax.set_rlim(0, rmax)
        if zone > 0:
            arc = np.radians(np.linspace(-90, 90, 91))
            ax.fill_between(arc, 0, zone, color="0.85", lw=0, zorder=0)
        _split(pairs, keep, styles,
               lambda m, kw, ax=ax, r=radius, t=theta: ax.scatter(np.radians(t[m]), r[m], **kw))
        key = []
        bias = polar.angular_bias
        if is_finite_number(bias):
            ax.plot([np.radians(bias)] * 2, [0, rmax], color="0.1", lw=1.6)
            key.append(f"bias {bias:.1f}°")
        loa = [v for v in polar.radial_loa if is_finite_number(v)]
        for v in loa:
            ax.plot([np.radians(np.clip(v, -90, 90))] * 2, [0, rmax], color="0.1", lw=1.3, ls="--")
        if loa:
            key.append("limits " + " / ".join(f"{v:.0f}°" for v in loa))
        accept = polar.accept_deg
        accepts.add(accept)
        for v in (-accept, accept):
            ax.plot([np.radians(v)] * 2, [0, rmax], color="0.45", lw=1.2, ls=":")
        ax.set_thetagrids(range(-90, 91, 30))
        ax.set_title(mstats.model + (f"\n{'; '.join(key)}" if key else ""), fontsize="medium", pad=10)
        ax.text(np.radians(-90), rmax * 1.02, "mean change (mmHg)", ha="center", va="top", fontsize="x-small",
                color="0.3")
    _subject_key(fig, styles, subjects, panels)
    accept = next(iter(accepts))
    handles = [Patch(color="0.85", label="exclusion zone"),
               Line2D([], [], color="0.1", lw=1.6, label="angular bias"),
               Line2D([], [], color="0.1", lw=1.3, ls="--", label="radial limits of agreement"),
               Line2D([], [], color="0.45", lw=1.2, ls=":", label=f"±{accept:g}°" if len(accepts) == 1 else "accepted"),
               Line2D([], [], ls="", marker="x", color=EXCLUDED_COLOR, label="excluded pair")]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.45, 0.0), ncol=3, fontsize="small")
    fig.tight_layout(rect=(0, 0.75 / fig.get_figheight(), 1, 1))
    return fig


def power_curve_figure(power: PowerResult):
    """Power against the number of monkeys of a new study (``power.json`` read back as a PowerResult).

    Points with ±1.96 Monte Carlo SE; dashed: each half of the rule alone; the target power and the
    run's own number of monkeys as reference lines.
    """
    rows = power.rows
    if not rows:
        return None
    g = np.array([r.n_monkeys for r in rows], dtype=float)
    pw = np.array([r.power for r in rows], dtype=float)
    se = np.array([r.mc_se for r in rows], dtype=float)
    colors = palette(10)
    fig, ax = subplots(figsize=(7.8, 4.6))
    ax.errorbar(g, pw, yerr=1.96 * se, color=colors[0], marker="o", ms=6, lw=1.8, capsize=3,
                label="verdict rule (interval and sign-flip test)")
    ax.plot(g, [r.power_interval for r in rows], color=colors[1], lw=1.2, ls="--", marker=".",
            label="interval below 0 alone")
    ax.plot(g, [r.power_signflip for r in rows], color=colors[2], lw=1.2, ls="--", marker=".",
            label="sign-flip test alone")
    det = power.detectable
    target = det.target if det is not None else 0.8
    ax.axhline(target, color="0.3", lw=1, ls=":")
    run_g = power.run_subjects
    if run_g:
        ax.axvline(run_g, color="0.3", lw=1, ls=":")
        ax.annotate(f"this run: {run_g} monkeys", (run_g, 0.02), xytext=(4, 0), textcoords="offset points",
                    fontsize="small", color="0.3")
    title = f"Power: {power.model} vs {power.reference}, {reduction_text(power.assumed_reduction)}"
    if det is not None and is_finite_number(det.effect):
        title += (f"\n{target:.0%} power at {det.n_monkeys} monkeys needs an MAE reduction of "
                  f"{det.effect:.2f} mmHg")
    ax.set(xlabel="monkeys in the new study", ylabel="probability of the verdict \u201cbetter\u201d",
           ylim=(-0.02, 1.02), title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig
