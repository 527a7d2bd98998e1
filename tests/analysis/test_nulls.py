"""The scorer's statistics against its nulls: firing-rate-matched empirical p-values, their fitted tail, and
Benjamini-Hochberg."""

import numpy as np
from scipy import stats
from scipy.stats import false_discovery_control

from frobnolab.analysis.scoring.nulls import benjamini_hochberg, matched_p_values, null_calibration, tail_p


def _rate_dependent_nulls(rng, n=2000):
    """Nulls whose statistic grows with their firing rate, as random directions' gaps do (dense ones mix more)."""
    rate = np.exp(rng.uniform(np.log(1e-3), np.log(0.5), n))
    return rng.normal(size=n) * 0.05 + 0.4 * rate / 0.5, rate


def test_matched_p_values_are_uniform_for_features_drawn_like_their_nulls():
    rng = np.random.default_rng(0)
    null, null_rate = _rate_dependent_nulls(rng)
    feat, feat_rate = _rate_dependent_nulls(rng, 4000)
    p, n = matched_p_values(feat, feat_rate, null, null_rate)
    assert (n >= 100).all()
    # exchangeable with their matched nulls: p is (nearly) uniform, so about 5% fall below 0.05
    assert abs(np.mean(p <= 0.05) - 0.05) < 0.02
    assert abs(np.mean(p <= 0.5) - 0.5) < 0.05
    assert p.min() >= 1 / (1 + n.max())


def test_matching_by_firing_rate_changes_the_verdict_where_a_pooled_null_would_not():
    rng = np.random.default_rng(1)
    null, null_rate = _rate_dependent_nulls(rng)
    # a dense feature with a gap typical of dense nulls, and a sparse one with the same gap
    p, _ = matched_p_values(np.array([0.3, 0.3]), np.array([0.45, 0.002]), null, null_rate)
    pooled = (1 + (null >= 0.3).sum()) / (1 + len(null))
    assert p[0] > 0.2  # against its own (dense) nulls: chance
    assert p[1] < 0.01 < pooled  # against sparse nulls: far beyond them, though the pooled null says less
    # NaN statistics and no finite nulls give NaN, not a p-value
    p, n = matched_p_values(np.array([np.nan, 0.1]), np.array([0.1, 0.1]), np.full(5, np.nan), np.full(5, 0.1))
    assert np.isnan(p).all() and (n == 0).all()


def test_benjamini_hochberg_matches_scipy_and_skips_nan():
    rng = np.random.default_rng(2)
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 1e-3, size=20)])
    q = benjamini_hochberg(p)
    np.testing.assert_allclose(q, false_discovery_control(p), rtol=1e-12)
    assert (q >= p).all() and (q <= 1).all()
    with_nan = np.concatenate([p, [np.nan, np.nan]])
    q2 = benjamini_hochberg(with_nan)
    assert np.isnan(q2[-2:]).all()
    np.testing.assert_allclose(q2[:-2], q)  # untested features do not count as tests
    # the planted discoveries survive at 0.1, and few of the 200 uniform ones do
    assert (q[200:] <= 0.1).all() and (q[:200] <= 0.1).sum() <= 5


def test_the_fitted_tail_goes_below_the_empirical_floor_near_the_truth_on_an_unbounded_null():
    # 265 nulls (what a feature's 2x rate window holds in the main job) put the empirical p at >= 1/266
    rng = np.random.default_rng(0)
    dist, true_p = stats.gamma(2), 1e-3
    x = dist.isf(true_p)
    p = np.array([tail_p(x, dist.rvs(265, random_state=rng)) for _ in range(40)])
    assert (p[:, 1] == 1).all()  # every one from the fitted tail
    assert p[:, 0].max() < 1  # and a real p
    assert 0.5 < np.median(p[:, 0]) / true_p < 4
    assert np.median(p[:, 0]) < 1 / 266


def test_the_fitted_tail_errs_high_on_a_bounded_null_and_stops_a_decade_past_the_sample():
    rng = np.random.default_rng(1)
    dist, true_p = stats.beta(2, 8), 1e-3  # bounded like a gap: maximum likelihood's shape would be < 0
    p = np.array([tail_p(dist.isf(true_p), dist.rvs(265, random_state=rng))[0] for _ in range(40)])
    assert np.mean(p >= true_p) >= 0.8  # conservative: the exponential tail in place of a bounded one
    # far past every null: the floor, a tenth of the empirical resolution, not 0
    assert tail_p(5.0, dist.rvs(265, random_state=rng))[0] == 0.1 / 266
    # where 10 or more nulls reach the statistic the empirical value is kept exactly
    null = dist.rvs(265, random_state=rng)
    x = np.sort(null)[-12]
    assert tail_p(x, null) == ((1 + 12) / 266, 0)
    # too few nulls to fit a tail: empirical
    assert tail_p(5.0, null[:60]) == (1 / 61, 0)


def test_tail_p_values_are_calibrated_on_nulls_tested_against_each_other():
    rng = np.random.default_rng(2)
    for dist in (stats.gamma(2), stats.beta(2, 8)):
        stat = dist.rvs(2048, random_state=rng)
        rate = np.exp(rng.uniform(np.log(1e-3), np.log(0.5), 2048))
        cal = null_calibration(stat, rate)
        assert cal["nulls"] == 2048
        # at the levels the fitted tail decides (p <= 0.01 needs fewer than 10 of ~270 matched nulls above)
        assert cal["p_le_0.01"] <= 0.016
        assert abs(cal["p_le_0.05"] - 0.05) < 0.015
    # and the test has power: features at the nulls' true 1e-4 quantile pass the empirical floor most of the time
    null = stats.gamma(2).rvs(1024, random_state=rng)
    rate = np.exp(rng.uniform(np.log(1e-3), np.log(0.5), 1024))
    p, n = matched_p_values(np.full(200, stats.gamma(2).isf(1e-4)), rate[:200], null, rate, tail=True)
    assert np.mean(p < 1 / (1 + n)) > 0.8
