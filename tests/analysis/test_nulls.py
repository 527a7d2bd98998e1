"""The scorer's statistics against its nulls: firing-rate-matched empirical p-values and Benjamini-Hochberg."""

import numpy as np
from scipy.stats import false_discovery_control

from frobnolab.analysis.scoring.nulls import benjamini_hochberg, matched_p_values


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
