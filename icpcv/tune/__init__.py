"""``run --tune``: nested recipe selection (issue 21).

* :mod:`icpcv.tune.spec`: the candidates (``--tune SPEC``);
* :mod:`icpcv.tune.plan`: each outer fold's inner plan, made of its training monkeys only (``tuning_plan.json``);
* :mod:`icpcv.tune.job`: one tuning unit (a candidate on an inner fold, or its fit on the outer fold);
* :mod:`icpcv.tune.select`: the choice per outer fold (``tuning.json``) and the tuned model's predictions.

The optimism audit's statistics are in :mod:`icpcv.stats.selection`.
"""
