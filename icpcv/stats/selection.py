"""Recipe selection (``run --tune``): how stable the nested choice is, and the optimism of picking by looking.

The twin of the leakage audit (:mod:`icpcv.stats.leakage`). Picking the best of C recipes by
their leave-one-monkey-out MAE reports the minimum of C noisy estimates, which is biased low
(Varma & Simon 2006, BMC Bioinformatics 7:91; Cawley & Talbot 2010, JMLR 11:2079). Nested
selection chooses in each outer fold on inner folds of the training monkeys only, so its
estimate is not. Both predict every scan once, so they are paired scan by scan, and the
optimism gets a monkey-level interval and sign-flip p from the same engine as everything else.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd

from icpcv.stats.analysis import analyze
from icpcv.stats.repeats import REPEAT_COLUMN, ensemble
from icpcv.util import fmt_num, fmt_p


def choice_stability(choices) -> dict:
    """How often each candidate was chosen across outer folds, and how stable the choice is.

    .. math::

        \\text{modal share} = \\max_c n_c / K, \\qquad
        \\text{agreement} = \\sum_c \\frac{n_c (n_c - 1)}{K (K - 1)}

    where :math:`n_c` is the number of the K outer folds that chose candidate c; the agreement is
    the probability that two different folds, drawn at random, chose the same candidate (Simpson's
    index without replacement): 1 when every fold agrees, 0 when no two do.

    Parameters
    ----------
    choices : sequence of str
        The candidate chosen in each outer fold.

    Returns
    -------
    dict
        ``counts`` (candidate -> folds, most chosen first), ``n_folds``, ``n_distinct``,
        ``modal`` (the most chosen; ties: first chosen), ``modal_share``, ``agreement``
        (None with one fold).

    Examples
    --------
    >>> s = choice_stability(["a", "a", "b", "a"])
    >>> s["counts"], s["modal"], s["modal_share"], round(s["agreement"], 3)
    ({'a': 3, 'b': 1}, 'a', 0.75, 0.5)
    """
    choices = [str(c) for c in choices]
    K = len(choices)
    first = {c: i for i, c in reversed(list(enumerate(choices)))}
    counts = dict(sorted(Counter(choices).items(), key=lambda kv: (-kv[1], first[kv[0]])))
    modal = next(iter(counts)) if counts else None
    agreement = (sum(n * (n - 1) for n in counts.values()) / (K * (K - 1))) if K > 1 else None
    return dict(counts=counts, n_folds=K, n_distinct=len(counts), modal=modal,
                modal_share=(counts[modal] / K) if K else None, agreement=agreement)


def _mae(table: pd.DataFrame) -> float:
    return float(np.mean(np.abs(table["y_pred"].to_numpy(float) - table["y_true"].to_numpy(float))))


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    if REPEAT_COLUMN in table.columns and table[REPEAT_COLUMN].notna().any():
        return ensemble(table)
    return table.drop(columns=[REPEAT_COLUMN], errors="ignore")


def selection_optimism(candidates: pd.DataFrame, tuned: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0,
                       ci_level: float = 0.95) -> dict:
    """The naive pick against the nested estimate, paired over monkeys.

    Each candidate's plain leave-one-monkey-out MAE (scans pooled, as the analysis' ``mae``) is
    computed from ``candidates``; the best of them, :math:`\\hat c = \\arg\\min_c \\mathrm{MAE}_c`, is
    what a user comparing runs would report. The optimism is

    .. math::

        \\Delta = \\mathrm{MAE}_{\\text{nested}} - \\mathrm{MAE}_{\\hat c}

    (positive: picking after seeing the held-out monkeys flatters the recipe), with the interval
    and exact sign-flip p of :func:`icpcv.stats.analyze`'s paired comparison (whole monkeys
    resampled; the same monkeys for both). Networks trained several times (a ``repeat`` column)
    are taken as their seed ensembles, like the run's own analysis.

    Parameters
    ----------
    candidates : pandas.DataFrame
        Long predictions of every candidate on the outer folds (``model`` = the candidate's label).
    tuned : pandas.DataFrame
        Long predictions of the nested choice (one ``model``), on the same scans.
    n_boot, seed, ci_level
        As for :func:`icpcv.stats.analyze`.

    Returns
    -------
    dict
        ``candidates`` (label -> MAE), ``best``, ``mae_best`` (the naive, picked-after-seeing MAE),
        ``mae_nested``, ``optimism``, ``optimism_ci``, ``p_signflip``, ``n_candidates``,
        ``statement``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> subj = np.repeat([f"m{i}" for i in range(10)], 5)
    >>> base = pd.DataFrame({"fold": 0, "subject": subj, "scan_id": [f"s{i}" for i in range(50)],
    ...                      "y_true": 10.0})
    >>> cands = pd.concat([base.assign(model=f"c{c}", y_pred=10 + rng.normal(0, 2, 50)) for c in range(4)])
    >>> tuned = base.assign(model="x_tuned", y_pred=10 + rng.normal(0, 2, 50))
    >>> out = selection_optimism(cands, tuned, n_boot=500)
    >>> out["best"], round(out["mae_best"], 2), round(out["mae_nested"], 2), round(out["optimism"], 2)
    ('c0', 1.48, 1.96, 0.48)
    """
    cand = _plain(candidates)
    tuned = _plain(tuned)
    name = str(tuned["model"].iloc[0])
    maes = {str(m): _mae(g) for m, g in cand.groupby("model", sort=False)}
    best = min(maes, key=maes.get)
    naive = f"best of {len(maes)} by leave-one-monkey-out"
    pair = pd.concat([tuned, cand[cand["model"] == best].assign(model=naive)], ignore_index=True)
    res = analyze(pair, reference=name, n_boot=n_boot, seed=seed, ci_level=ci_level)
    comp = res.comparison(naive, "mae")
    lo, hi = (None if v is None or not math.isfinite(v) else v for v in (comp.ci or (None, None)))
    out = dict(candidates=maes, n_candidates=len(maes), best=best, mae_best=res.models[naive].mae.estimate,
               mae_nested=res.models[name].mae.estimate, optimism=-comp.delta,
               optimism_ci=[None if hi is None else -hi, None if lo is None else -lo],
               p_signflip=comp.p_signflip, ci_level=ci_level, n_boot=n_boot, tuned=name)
    out["statement"] = statement(out)
    return out


def statement(o: dict) -> str:
    """The audit in one sentence (the issue's wording)."""
    def fmt(x):
        return fmt_num(x, 1, "n/a")

    pct = f"{round(o['ci_level'] * 100):g}%"
    lo, hi = o["optimism_ci"]
    ci = f"{pct} CI {fmt(lo)} to {fmt(hi)}" if lo is not None else "no interval"
    head = (f"Picking the best of {o['n_candidates']} recipes by their leave-one-monkey-out MAE ({o['best']}) "
            f"would have reported {fmt(o['mae_best'])} mmHg; chosen without seeing the held-out monkey, the recipe "
            f"gets {fmt(o['mae_nested'])} mmHg: ")
    tail = f" ({ci}; sign-flip p {fmt_p(o['p_signflip'], 'n/a', True)})."
    if o["optimism"] > 0:
        return head + f"{fmt(o['optimism'])} mmHg optimistic" + tail
    return head + f"the naive pick was not optimistic here ({fmt(o['optimism'])} mmHg)" + tail
