"""Figures of trending and power: four-quadrant plot, polar plot, power curve.

Same look as :mod:`icpcv.report.figures` (its ``style()``, ``subplots()``, palettes; built without
pyplot). Points are the change pairs as written (``ChangePairs.frame`` of one model: columns
``subject, delta_measured, delta_predicted``); lines, zones and numbers come from the statistics'
``to_dict()`` (the future ``stats.json`` → ``trending.models.<name>`` and ``power.json``), so a
figure never recomputes a statistic.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from icpcv.report.figures import palette, subject_legend, subject_styles, subplots
from icpcv.util import is_finite_number
from icpcv.stats.trending import polar_coordinates, retained_pairs

EXCLUDED_COLOR = "0.6"


def _ci_text(block, level, pct=True):
    ci = block.get("ci")
    if not ci or not all(is_finite_number(v) for v in ci):
        return "no interval"
    if pct:
        return f"{level} CI {100 * ci[0]:.0f} to {100 * ci[1]:.0f}%"
    return f"{level} CI {ci[0]:.1f} to {ci[1]:.1f}"


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


def four_quadrant_figure(model: str, pairs: pd.DataFrame, mstats: dict, subjects: list[str],
                         ci_level: float = 0.95):
    """Predicted against measured change of each change pair, with the exclusion zone.

    ``mstats`` is the model's trending block (``ModelTrending.to_dict()``): its exclusion zone and
    rule, concordance rate and interval label the plot. Excluded pairs are grey crosses.
    """
    if pairs is None or pairs.empty:
        return None
    zone = float(mstats.get("exclusion_zone") or 0.0)
    rule = mstats.get("exclusion") or "measured"
    dm = pairs["delta_measured"].to_numpy(float)
    dp = pairs["delta_predicted"].to_numpy(float)
    keep = retained_pairs(dm, dp, zone, rule)
    styles = subject_styles(subjects)
    fig, ax = subplots(figsize=(7.8, 5.6))
    lim = 1.08 * max(float(np.nanmax(np.abs(np.r_[dm, dp]))), 2 * zone, 1.0)
    if zone > 0:
        if rule == "measured":
            ax.axvspan(-zone, zone, color="0.85", lw=0, zorder=0)
        else:
            ax.add_patch(Rectangle((-zone, -zone), 2 * zone, 2 * zone, color="0.85", lw=0, zorder=0))
    ax.axhline(0, color="0.2", lw=1)
    ax.axvline(0, color="0.2", lw=1)
    ax.plot([-lim, lim], [-lim, lim], color="0.35", lw=1.1, ls="--")
    _split(pairs, keep, styles, lambda m, kw: ax.scatter(dm[m], dp[m], **kw))
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    level = f"{round(ci_level * 100):g}%"
    rate = (mstats.get("concordance_rate") or {})
    est = rate.get("estimate")
    head = "n/a" if not is_finite_number(est) else f"{100 * est:.0f}%"
    ax.set(xlabel="measured change in ICP between consecutive steps (mmHg)",
           ylabel="predicted change in ICP (mmHg)",
           title=f"Four-quadrant plot: {model} — concordance {head} ({_ci_text(rate, level)})")
    subject_legend(ax, styles, [s for s in subjects if s in set(pairs["subject"].astype(str))])
    zone_label = (f"exclusion zone: measured change < {zone:g} mmHg" if rule == "measured"
                  else f"exclusion zone: both changes < {zone:g} mmHg")
    handles = [Patch(color="0.85", label=zone_label),
               Line2D([], [], color="0.35", lw=1.1, ls="--", label="identity"),
               Line2D([], [], ls="", marker="x", color=EXCLUDED_COLOR, label="excluded pair")]
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.06, 0.0), ncol=3, fontsize="small")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def polar_figure(model: str, pairs: pd.DataFrame, mstats: dict, subjects: list[str],
                 ci_level: float = 0.95):
    """Polar plot (Critchley et al. 2011): radius = mean change, angle from the line of identity.

    Lines from ``mstats["polar"]``: angular bias (solid), radial limits of agreement (dashed),
    ±30° (dotted); the grey disc is the exclusion zone. Caption for the report: "radius: mean of
    the measured and predicted change; angle: from the line of identity, positive when the
    predicted change is larger, below −45° when it goes the other way".
    """
    if pairs is None or pairs.empty:
        return None
    polar = mstats.get("polar") or {}
    zone = float(polar.get("exclusion_zone") or 0.0)
    radius, theta = polar_coordinates(pairs["delta_measured"].to_numpy(float),
                                      pairs["delta_predicted"].to_numpy(float))
    keep = (radius >= zone) & (radius > 0)
    styles = subject_styles(subjects)
    fig, ax = subplots(figsize=(7.8, 5.8), subplot_kw={"projection": "polar"})
    rmax = 1.08 * max(float(np.nanmax(radius)), 2 * zone, 1.0)
    ax.set_thetamin(-90)
    ax.set_thetamax(90)
    ax.set_rlim(0, rmax)
    if zone > 0:
        arc = np.radians(np.linspace(-90, 90, 91))
        ax.fill_between(arc, 0, zone, color="0.85", lw=0, zorder=0)
    _split(pairs, keep, styles, lambda m, kw: ax.scatter(np.radians(theta[m]), radius[m], **kw))
    handles = [Patch(color="0.85", label=f"exclusion: mean change < {zone:g} mmHg")]
    bias = (polar.get("angular_bias") or {}).get("estimate")
    if is_finite_number(bias):
        ax.plot([np.radians(bias)] * 2, [0, rmax], color="0.1", lw=1.6)
        handles.append(Line2D([], [], color="0.1", lw=1.6, label=f"angular bias {bias:.1f}°"))
    loa = [v for v in (polar.get("radial_loa") or []) if is_finite_number(v)]
    for v in loa:
        ax.plot([np.radians(np.clip(v, -90, 90))] * 2, [0, rmax], color="0.1", lw=1.3, ls="--")
    if loa:
        handles.append(Line2D([], [], color="0.1", lw=1.3, ls="--",
                              label="radial limits of agreement " + " / ".join(f"{v:.0f}°" for v in loa)))
    accept = float(polar.get("accept_deg") or 30.0)
    for v in (-accept, accept):
        ax.plot([np.radians(v)] * 2, [0, rmax], color="0.45", lw=1.2, ls=":")
    handles.append(Line2D([], [], color="0.45", lw=1.2, ls=":", label=f"±{accept:g}°"))
    handles.append(Line2D([], [], ls="", marker="x", color=EXCLUDED_COLOR, label="excluded pair"))
    ax.set_thetagrids(range(-90, 91, 30))
    ax.set_title(f"Polar plot: {model}", pad=14)
    ax.text(np.radians(-90), rmax * 1.02, "mean change (mmHg)", ha="center", va="top", fontsize="small",
            color="0.3")
    subject_legend(ax, styles, [s for s in subjects if s in set(pairs["subject"].astype(str))])
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.03, 0.0), ncol=2, fontsize="small")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def power_curve_figure(power: dict):
    """Power against the number of monkeys of a new study (``PowerResult.to_dict()``).

    Points with ±1.96 Monte Carlo SE; dashed: each half of the rule alone; the target power and the
    run's own number of monkeys as reference lines.
    """
    rows = power.get("table") or []
    if not rows:
        return None
    g = np.array([r["n_monkeys"] for r in rows], dtype=float)
    pw = np.array([r["power"] for r in rows], dtype=float)
    se = np.array([r["mc_se"] for r in rows], dtype=float)
    colors = palette(10)
    fig, ax = subplots(figsize=(7.8, 4.6))
    ax.errorbar(g, pw, yerr=1.96 * se, color=colors[0], marker="o", ms=6, lw=1.8, capsize=3,
                label="verdict rule (interval and sign-flip test)")
    ax.plot(g, [r["power_interval"] for r in rows], color=colors[1], lw=1.2, ls="--", marker=".",
            label="interval below 0 alone")
    ax.plot(g, [r["power_signflip"] for r in rows], color=colors[2], lw=1.2, ls="--", marker=".",
            label="sign-flip test alone")
    det = power.get("detectable") or {}
    target = det.get("target", 0.8)
    ax.axhline(target, color="0.3", lw=1, ls=":")
    run_g = power.get("run_subjects")
    if run_g:
        ax.axvline(run_g, color="0.3", lw=1, ls=":")
        ax.annotate(f"this run: {run_g} monkeys", (run_g, 0.02), xytext=(4, 0), textcoords="offset points",
                    fontsize="small", color="0.3")
    red = power.get("assumed_reduction")
    effect = ("MAE change n/a" if not is_finite_number(red) else
              f"MAE lower by {red:.2f} mmHg" if red >= 0 else f"MAE higher by {-red:.2f} mmHg")
    ax.set(xlabel="monkeys in the new study", ylabel="probability of the verdict \u201cbetter\u201d",
           ylim=(-0.02, 1.02),
           title=f"Power: {power.get('model')} vs {power.get('reference')}, {effect}")
    ax.legend(loc="lower right", fontsize="small")
    if is_finite_number(det.get("effect")):
        ax.text(0.01, 0.98, f"80% power at {det['n_monkeys']} monkeys needs an MAE reduction of "
                f"{det['effect']:.2f} mmHg" if target == 0.8 else
                f"{target:.0%} power at {det['n_monkeys']} monkeys: {det['effect']:.2f} mmHg",
                transform=ax.transAxes, va="top", fontsize="small", color="0.3",
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.85))
    fig.tight_layout()
    return fig
