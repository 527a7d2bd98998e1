"""Oracles for the dictionary-level scores: MCC against a brute force over matchings, MIG and DCI on codes whose
answer is known by hand."""

import itertools
import math

import numpy as np
import pytest

from frobnolab.analysis.dictionary import dci, mcc, mig


def _mcc_brute(corr):
    """Best mean |corr| over every one-to-one matching of min(F, G) rows to columns (NaN counts as 0)."""
    c = np.abs(np.nan_to_num(corr))
    f, g = c.shape
    if f >= g:
        return max(np.mean([c[r, k] for k, r in enumerate(rows)]) for rows in itertools.permutations(range(f), g))
    return max(np.mean([c[r, k] for r, k in enumerate(cols)]) for cols in itertools.permutations(range(g), f))


def test_mcc_matches_a_brute_force_over_all_matchings():
    rng = np.random.default_rng(0)
    for _ in range(20):
        corr = rng.uniform(-1, 1, (4, 4))
        assert mcc(corr) == pytest.approx(_mcc_brute(corr), abs=1e-12)
    for shape in [(5, 3), (3, 5)]:
        corr = rng.uniform(-1, 1, shape)
        corr[0, 0] = np.nan
        assert mcc(corr) == pytest.approx(_mcc_brute(corr), abs=1e-12)


def test_mcc_by_hand():
    # the greedy choice (0.9 on the diagonal of row 0) is not the best matching: 0.8 + 0.8 beats 0.9 + 0.1
    corr = np.array([[0.9, -0.8], [0.8, 0.1]])
    assert mcc(corr) == pytest.approx(0.8)
    assert mcc(-np.eye(3)[[2, 0, 1]]) == pytest.approx(1.0)  # a signed permutation is matched perfectly
    assert math.isnan(mcc(np.zeros((0, 3))))


# ---- MIG -------------------------------------------------------------------------------------------------------


def _entropy(p):
    p = np.asarray(p, float)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _factorial(levels, reps=1):
    """Every combination of the given numbers of levels, `reps` times: columns that are exactly independent."""
    rows = list(itertools.product(*[range(n) for n in levels])) * reps
    return np.array(rows, float)


def test_mig_of_codes_that_copy_the_factors_is_one():
    # factors with 2 and 4 balanced levels, exactly independent in the sample: I(copy; own factor) = H(factor),
    # I(other code; factor) = 0, so every gap is H / H = 1
    f = _factorial([2, 4], reps=3)
    assert mig(f.copy(), f) == pytest.approx(1.0, abs=1e-12)
    # a monotone relabelling of a code (here a squash and a shift) carries the same information
    assert mig(np.stack([np.exp(f[:, 0]), 10 - f[:, 1]], 1), f) == pytest.approx(1.0, abs=1e-12)


def test_mig_of_a_factor_captured_by_two_identical_codes_has_gap_zero():
    f = _factorial([2, 4], reps=3)
    codes = np.stack([f[:, 0], f[:, 0], f[:, 1]], 1)  # factor 0 twice: its gap is 0; factor 1: gap 1
    assert mig(codes, f) == pytest.approx(0.5, abs=1e-12)


def test_mig_with_a_noisy_copy_by_hand():
    # a balanced binary factor over 40 images; code 0 copies it but flips 2 images of each class (flip rate 0.1,
    # still balanced); code 1 is a second balanced binary that is exactly independent of the factor
    factor = np.repeat([0.0, 1.0], 20)
    noisy = factor.copy()
    noisy[[0, 1, 20, 21]] = 1 - noisy[[0, 1, 20, 21]]
    other = np.tile([0.0, 1.0], 20)
    # mutual information from the definition: sum over the joint table of p log(p / (pa pb))
    joint = np.zeros((2, 2))
    for a, b in zip(noisy.astype(int), factor.astype(int)):
        joint[a, b] += 1
    joint /= joint.sum()
    outer = joint.sum(1)[:, None] * joint.sum(0)[None, :]
    mi = float((joint * np.log(joint / outer)).sum())
    assert mi == pytest.approx(math.log(2) - _entropy([0.1, 0.9]))  # the binary-symmetric-channel closed form
    want = (mi - 0.0) / _entropy([0.5, 0.5])
    assert mig(np.stack([noisy, other], 1), factor[:, None]) == pytest.approx(want, abs=1e-12)
    # the order of the codes does not matter
    assert mig(np.stack([other, noisy], 1), factor[:, None]) == pytest.approx(want, abs=1e-12)


def test_mig_with_fewer_than_two_codes_is_nan():
    f = _factorial([2, 4])
    assert math.isnan(mig(f[:, :1], f))


# ---- DCI -------------------------------------------------------------------------------------------------------



def _orthogonal_factors(k):
    """±1 factors over 2 * 2^k images: the even images and the odd images are each a full factorial, so the factors
    are exactly centred, of unit std and uncorrelated both overall and on the training (even) half."""
    f = 2 * _factorial([2] * k) - 1
    return np.repeat(f, 2, axis=0)


def _standardise(a):
    return (a - a.mean(0)) / np.maximum(a.std(0), 1e-9)


def _ridge_by_augmentation(x, y, lam):
    """Ridge as ordinary least squares on the data stacked over sqrt(lam) * I (rows of fake zero targets)."""
    xa = np.vstack([x, math.sqrt(lam) * np.eye(x.shape[1])])
    ya = np.vstack([y, np.zeros((x.shape[1], y.shape[1]))])
    return np.linalg.lstsq(xa, ya, rcond=None)[0]


def _dci_reference(codes, factors, lam_per_image):
    """DCI from Eastwood & Williams (2018), with the importance R = |ridge coefficients| and informativeness the
    held-out R^2 on the odd images (trained on the even ones), written independently of dci()."""
    x, y = _standardise(codes), _standardise(factors)
    tr, te = slice(0, None, 2), slice(1, None, 2)
    W = _ridge_by_augmentation(x[tr], y[tr], lam_per_image * len(x))
    r2 = []
    for k in range(y.shape[1]):
        resid = y[te][:, k] - x[te] @ W[:, k]
        r2.append(1 - (resid @ resid) / ((y[te][:, k] - y[te][:, k].mean()) ** 2).sum())
    R = np.abs(W) + 1e-12
    n_codes, n_fac = R.shape
    d = [1 - _entropy(R[i] / R[i].sum()) / math.log(n_fac) for i in range(n_codes)]
    weight = R.sum(1) / R.sum()
    c = [1 - _entropy(R[:, k] / R[:, k].sum()) / math.log(n_codes) for k in range(n_fac)]
    return {"disentanglement": float(np.dot(weight, d)), "completeness": float(np.mean(c)),
            "informativeness": float(np.mean(np.clip(r2, -1, 1)))}


def test_dci_of_a_permutation_of_the_factors_is_one():
    f = _orthogonal_factors(3)
    out = dci(f[:, [2, 0, 1]], f)
    assert out["disentanglement"] == pytest.approx(1.0, abs=1e-6)
    assert out["completeness"] == pytest.approx(1.0, abs=1e-6)
    # random scales and signs of the codes change nothing
    out = dci(f[:, [2, 0, 1]] * [3.0, -0.5, 2.0], f)
    assert out["disentanglement"] == pytest.approx(1.0, abs=1e-6)
    assert out["completeness"] == pytest.approx(1.0, abs=1e-6)


# dci() once fixed lambda = n images: a perfect code scored informativeness 5/9, and D/C were blurred; these
# two tests would fail on it.


def test_dci_of_noisy_rescaled_copies_of_correlated_factors_is_near_one():
    # random factors (chance correlations up to ~0.1 over 200 images), codes = rescaled copies with 1% noise
    rng = np.random.default_rng(0)
    f = rng.normal(size=(200, 3))
    codes = f[:, [1, 2, 0]] * [3.0, -0.5, 2.0] + 0.01 * rng.normal(size=(200, 3))
    out = dci(codes, f)
    assert out["disentanglement"] > 0.9 and out["completeness"] > 0.9  # 0.73 and 0.73 now


def test_dci_of_codes_that_mix_all_factors_equally_is_zero():
    # each code is a ±1 combination of all four factors (the rows of a Hadamard matrix): every importance is equal
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], float)
    f = _orthogonal_factors(4)
    out = dci(f @ h.T, f)
    assert out["disentanglement"] == pytest.approx(0.0, abs=1e-6)
    assert out["completeness"] == pytest.approx(0.0, abs=1e-6)


def test_dci_matches_an_independent_computation():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(60, 3))
    mixing = rng.normal(size=(3, 5))
    codes = f @ mixing + 0.3 * rng.normal(size=(60, 5))
    got = dci(codes, f)
    assert got["ridge_lambda_per_image"] in (1e-3, 1e-2, 1e-1, 1.0)
    want = _dci_reference(codes, f, got["ridge_lambda_per_image"])
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert 0 < got["informativeness"] < 1


def test_dci_informativeness_is_the_held_out_r2():
    # codes that are noisy copies of the factors; the R^2 of the documented ridge fit on the odd images
    rng = np.random.default_rng(2)
    f = rng.normal(size=(80, 2))
    codes = f + 0.5 * rng.normal(size=(80, 2))
    got = dci(codes, f)
    want = _dci_reference(codes, f, got["ridge_lambda_per_image"])["informativeness"]
    assert got["informativeness"] == pytest.approx(want, abs=1e-9)
    # a code of pure noise predicts nothing held out
    noise = rng.normal(size=(80, 2))
    assert dci(noise, f)["informativeness"] < 0.1


def test_dci_informativeness_of_a_perfect_code_is_one():
    f = _orthogonal_factors(3)
    assert dci(f[:, [2, 0, 1]], f)["informativeness"] == pytest.approx(1.0, abs=1e-3)  # 5/9 with the former fixed lambda = n


def test_dci_with_too_few_images_is_nan():
    out = dci(np.ones((5, 2)), np.ones((5, 2)))
    assert all(math.isnan(v) for v in out.values())
