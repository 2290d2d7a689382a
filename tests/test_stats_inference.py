"""Sign-flip permutation test and Holm adjustment."""

import itertools

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from icpcv.stats.inference import holm, signflip_test


def _brute_force_p(d):
    d = np.asarray(d, float)
    t_obs = abs(d.mean())
    hits = 0
    total = 0
    for signs in itertools.product((-1, 1), repeat=d.size):
        total += 1
        if abs(np.dot(signs, d) / d.size) >= t_obs - 1e-12:
            hits += 1
    return hits / total


def test_four_positive_differences_give_two_sixteenths():
    res = signflip_test([0.5, 1.0, 2.0, 3.5])
    assert res["method"] == "exact"
    assert res["p"] == pytest.approx(2 / 16)
    assert res["statistic"] == pytest.approx(7.0 / 4)


def test_hand_computed_mixed_signs():
    # d = (1, -2, 3, 4): observed |sum| = 6. Flipping signs of (1, 2, 3, 4):
    # +1+2+3+4=10, -1+2+3+4=8, +1-2+3+4=6, +1+2-3+4=4, +1+2+3-4=2,
    # -1-2+3+4=4, -1+2-3+4=2, -1+2+3-4=0, and the 8 negatives of these.
    # |sum| >= 6 for 10, 8, 6 and their negatives: 6 of 16 patterns.
    assert signflip_test([1, -2, 3, 4])["p"] == pytest.approx(6 / 16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_matches_brute_force_enumeration(seed):
    d = np.random.default_rng(seed).normal(0.3, 1, 11)
    assert signflip_test(d)["p"] == pytest.approx(_brute_force_p(d), abs=1e-12)


def test_ties_and_zero_differences():
    # zeros do not change |sum|; integer ties must be counted as ties
    d = [0, 0, 1, 1, 1]
    assert signflip_test(d)["p"] == pytest.approx(_brute_force_p(d))
    assert signflip_test([0.0, 0.0, 0.0])["p"] == 1.0


def test_monte_carlo_branch_close_to_exact():
    d = np.random.default_rng(5).normal(0.35, 1, 22)
    exact = signflip_test(d, max_exact=22)
    mc = signflip_test(d, n_perm=100_000, seed=3)
    assert exact["method"] == "exact" and mc["method"] == "monte_carlo"
    se = np.sqrt(exact["p"] * (1 - exact["p"]) / 100_000)
    assert abs(mc["p"] - exact["p"]) < 4 * se + 1e-5
    # seeded: reproducible
    assert signflip_test(d, n_perm=100_000, seed=3)["p"] == mc["p"]


def test_monte_carlo_branch_close_to_normal_approximation_for_many_subjects():
    d = np.random.default_rng(8).normal(0.25, 1, 40)
    mc = signflip_test(d, n_perm=200_000, seed=1)
    z = abs(d.sum()) / np.sqrt(np.sum(d**2))  # Var(Σ s_g d_g) = Σ d_g² under sign flips
    assert mc["p"] == pytest.approx(2 * sps.norm.sf(z), abs=0.01)


def test_holm_matches_statsmodels():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.uniform(0, 0.2, rng.integers(1, 12))
        p[rng.integers(0, p.size)] = p[0]  # ties
        np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-12)


def test_holm_ignores_missing_p_values():
    out = holm([0.01, None, 0.04, float("nan")])
    np.testing.assert_allclose(out[[0, 2]], multipletests([0.01, 0.04], method="holm")[1])
    assert np.isnan(out[1]) and np.isnan(out[3])
