"""Tests of success rates and their Clopper-Pearson intervals."""

import numpy as np
import pytest
from scipy import stats

from jaxdef import attacks


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (57, 200), (1, 1), (499, 500)])
def test_clopper_pearson_matches_scipy(k, n):
  reference = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
  low, high = attacks.clopper_pearson(k, n)
  assert low == pytest.approx(reference.low, abs=1e-9)
  assert high == pytest.approx(reference.high, abs=1e-9)


def test_clopper_pearson_bad_input():
  with pytest.raises(ValueError, match="successes <= trials"):
    attacks.clopper_pearson(5, 3)
  with pytest.raises(ValueError, match="confidence"):
    attacks.clopper_pearson(1, 3, confidence=1.5)
  assert attacks.clopper_pearson(0, 0) == (0.0, 1.0)


def test_untargeted_success_counts_only_initially_correct():
  labels = np.array([0, 1, 2, 3, 4])
  clean = np.array([0, 1, 2, 0, 4])  # image 3 wrong before the attack
  adversarial = np.array([1, 1, 0, 2, 4])
  rate = attacks.success_rate(clean, adversarial, labels, num_votes=500)
  assert (rate.successes, rate.denominator, rate.num_images) == (2, 4, 5)
  assert rate.rate == 0.5 and rate.num_votes == 500 and not rate.targeted
  assert rate.ci_low < 0.5 < rate.ci_high
  assert "2/4 initially correct" in str(rate) and "500 votes" in str(rate)
  assert "gradient_computations" not in rate.as_dict()  # unknown: records keep their own
  spent = attacks.success_rate(clean, adversarial, labels, num_votes=500,
                               gradient_computations=80)
  assert str(spent).endswith("500 votes, 80 gradients per image)")
  assert spent.as_dict()["gradient_computations"] == 80


def test_targeted_success_needs_the_target_label():
  labels = np.array([0, 1, 2])
  targets = np.array([9, 9, 9])
  rate = attacks.success_rate(labels, np.array([9, 3, 9]), labels, targets, num_votes=1)
  assert (rate.successes, rate.denominator) == (2, 3) and rate.targeted


def test_no_correct_images_gives_nan_rate_not_a_crash():
  rate = attacks.success_rate(np.array([1]), np.array([1]), np.array([0]), num_votes=1)
  assert rate.denominator == 0 and np.isnan(rate.rate) and (rate.ci_low, rate.ci_high) == (0, 1)


def test_shape_mismatch_is_named():
  with pytest.raises(ValueError, match="1-D of one length"):
    attacks.success_rate(np.array([1, 2]), np.array([1]), np.array([0, 1]), num_votes=1)
