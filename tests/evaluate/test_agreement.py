"""Judge-human agreement statistics against hand-computed values."""

import pytest

from acculturate.evaluate.agreement import average_ranks, spearman, weighted_kappa


def test_average_ranks_ties():
    assert average_ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]


def test_spearman_by_hand():
    # ranks x = 1..5, ranks y = [1, 2, 3.5, 5, 3.5]; deviations (-2,-1,0,1,2) and (-2,-1,.5,2,.5):
    # sxy = 4+1+0+2+1 = 8, sxx = 10, syy = 4+1+.25+4+.25 = 9.5 -> rho = 8 / sqrt(95).
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / 95 ** 0.5)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [4, 4, 4]) is None      # a constant rater
    assert spearman([1], [2]) is None


def test_weighted_kappa_by_hand():
    assert weighted_kappa([1, 2, 3, 5], [1, 2, 3, 5]) == pytest.approx(1.0)
    # a = [1,2], b = [2,1] on categories (1,2): observed off-diagonal 1/2 each (sum w*o = 1);
    # marginals 1/2 each, expected sum w*r*c = 1/4 + 1/4 = 1/2 -> kappa = 1 - 1/(1/2) = -1.
    assert weighted_kappa([1, 2], [2, 1], categories=(1, 2)) == pytest.approx(-1.0)
    # a = [1,1,2,2], b = [1,2,2,2] on (1,2,3): observed o12 = 1/4 -> sum w*o = 1/4; rows (1/2,1/2,0),
    # cols (1/4,3/4,0): expected = 1*(1/2)(3/4) + 1*(1/2)(1/4) = 1/2 -> kappa = 1 - (1/4)/(1/2) = 1/2.
    assert weighted_kappa([1, 1, 2, 2], [1, 2, 2, 2], categories=(1, 2, 3)) == pytest.approx(0.5)
    assert weighted_kappa([1, 1, 2, 2], [1, 2, 2, 2], categories=(1, 2, 3), weights="linear") == pytest.approx(0.5)


def test_quadratic_weights_punish_far_disagreement_more():
    # One disagreement by 1 category versus one by 3, otherwise identical ratings.
    near = weighted_kappa([1, 2, 3, 4, 5, 3], [1, 2, 3, 4, 5, 4])
    far = weighted_kappa([1, 2, 3, 4, 5, 3], [1, 2, 3, 4, 5, 5])
    assert near > far


def test_weighted_kappa_errors():
    assert weighted_kappa([], []) is None
    assert weighted_kappa([3, 3], [3, 3]) is None    # no expected disagreement: undefined
    with pytest.raises(ValueError, match="not one of the categories"):
        weighted_kappa([0], [1])
    with pytest.raises(ValueError, match="paired"):
        weighted_kappa([1], [1, 2])
