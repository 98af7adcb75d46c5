"""jaxdef.theory: closed forms against scipy references, simulation, and the study's claims.

Tests run in float64 (the `float64` fixture) so that the closed forms can be
compared with scipy at 1e-9; `test_float32_matches_float64` covers the default
precision. Arrays of thresholds share the shape of `GRID` so that each jitted
function compiles once per test session.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from scipy import integrate
from scipy import special

from jaxdef import theory

PHI = special.ndtr


def _density(x):
  return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


LEFT = np.linspace(-2.0, 1.0, 151)  # k increasing towards 1
RIGHT = 2.0 - LEFT  # k decreasing towards 1
GRID = np.linspace(-2.0, 4.0, 151)


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


# ------------------------------------------------------- independent references


def _per_draw_positive(x, k, sigma):
  """Pr_theta[x + theta - k > 0] for theta ~ N(1, sigma^2)."""
  if sigma == 0:
    return float(x + 1 - k > 0)
  return PHI((x + 1 - k) / sigma)


def _vote_positive(x, k, sigma, num_votes):
  """Pr[majority of num_votes draws says +1], a fair coin on ties (scipy binomial)."""
  p = _per_draw_positive(x, k, sigma)
  if num_votes % 2:
    return special.bdtrc((num_votes - 1) // 2, num_votes, p)  # Pr[Bin > (n - 1) / 2]
  half = num_votes // 2
  tie = special.bdtr(half, num_votes, p) - special.bdtr(half - 1, num_votes, p)
  return special.bdtrc(half, num_votes, p) + 0.5 * tie


def _quad(fn, low, high, points):
  inside = sorted(p for p in points if low < p < high)
  edges = [low, *inside, high]
  return sum(integrate.quad(fn, a, b, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
             for a, b in zip(edges[:-1], edges[1:]))


def _reference(k, sigma, eps=0.0, num_votes=1):
  """(accuracy under the -eps*y shift, invariance) by scipy quad of the exact integrands."""
  step = 1 - k  # the decision steps where x = k - 1
  accuracy = invariance = 0.0
  for label in (1, -1):
    density = lambda x, y=label: _density(x - y)
    positive = lambda x: _vote_positive(x, k, sigma, num_votes)
    shifted = lambda x, y=label: positive(x - eps * y) if y > 0 else 1 - positive(x - eps * y)
    low, high = label - 12, label + 12
    accuracy += 0.5 * _quad(lambda x: density(x) * shifted(x), low, high, [-step + eps * label])
    invariance += 0.5 * (_quad(lambda x: density(x) * positive(x), 0, high, [-step])
                         + _quad(lambda x: density(x) * (1 - positive(x)), low, 0, [-step]))
  return accuracy, invariance


# ------------------------------------------------------------ undefended limit


@pytest.mark.parametrize("eps", [0.0, 0.25, 1.0, 2.5])
def test_sigma_zero_k_one_is_the_undefended_classifier(eps):
  assert float(theory.accuracy(1.0, 0.0)) == pytest.approx(PHI(1), abs=1e-12)
  assert float(theory.accuracy_under_attack(1.0, 0.0, eps)) == pytest.approx(
      PHI(1 - eps), abs=1e-12)
  assert float(theory.robust_accuracy(1.0, 0.0, eps)) == pytest.approx(
      PHI(1 - eps) / PHI(1), abs=1e-12)
  assert float(theory.invariance(1.0, 0.0)) == 1.0
  for votes in (4, 500):
    assert float(theory.vote_accuracy(1.0, 0.0, votes)) == pytest.approx(PHI(1), abs=1e-10)
    assert float(theory.vote_accuracy_under_attack(1.0, 0.0, eps, votes)) == pytest.approx(
        PHI(1 - eps), abs=1e-10)
    assert float(theory.vote_robust_accuracy(1.0, 0.0, eps, votes)) == pytest.approx(
        PHI(1 - eps) / PHI(1), abs=1e-10)
    assert float(theory.vote_invariance(1.0, 0.0, votes)) == pytest.approx(1.0, abs=1e-10)


def test_sigma_zero_is_the_deterministic_shifted_classifier():
  margin = 1 - GRID
  expected_accuracy = 0.5 * (PHI(1 + margin) + PHI(1 - margin))
  # sgn(x + 1 - k) and sgn(x) disagree when x lies between 0 and k - 1.
  expected_invariance = 1 - 0.5 * sum(abs(PHI(-y) - PHI(-margin - y)) for y in (1, -1))
  np.testing.assert_allclose(theory.accuracy(GRID, 0.0), expected_accuracy, atol=1e-12)
  np.testing.assert_allclose(theory.invariance(GRID, 0.0), expected_invariance, atol=1e-12)
  np.testing.assert_allclose(theory.vote_accuracy(GRID, 0.0, 25), expected_accuracy, atol=1e-10)
  np.testing.assert_allclose(theory.vote_invariance(GRID, 0.0, 25), expected_invariance,
                             atol=1e-10)


# -------------------------------------------------------- against references


@pytest.mark.parametrize("k, sigma, eps", [
    (1.0, 1.0, 0.5), (0.0, 1.0, 0.25), (0.5, 0.3, 0.1), (1.7, 2.0, 1.5), (-0.5, 0.05, 0.8),
    (3.0, 5.0, 0.0),
])
def test_single_draw_against_scipy_quad(k, sigma, eps):
  robust, invariant = _reference(k, sigma, eps)
  clean, _ = _reference(k, sigma, 0.0)
  assert float(theory.accuracy(k, sigma)) == pytest.approx(clean, abs=1e-10)
  assert float(theory.accuracy_under_attack(k, sigma, eps)) == pytest.approx(robust, abs=1e-10)
  assert float(theory.robust_accuracy(k, sigma, eps)) == pytest.approx(robust / clean,
                                                                       abs=1e-10)
  assert float(theory.invariance(k, sigma)) == pytest.approx(invariant, abs=1e-10)
  assert float(theory.attack_success_rate(k, sigma, eps)) == pytest.approx(
      1 - robust / clean, abs=1e-10)


@pytest.mark.parametrize("k, sigma, eps, votes", [
    (1.0, 1.0, 0.5, 3), (0.0, 1.0, 0.3, 4), (0.6, 0.4, 0.2, 25), (1.0, 2.0, 1.2, 500),
    (2.2, 0.1, 0.6, 25),
])
def test_vote_against_scipy_binomial_quad(k, sigma, eps, votes):
  robust, invariant = _reference(k, sigma, eps, votes)
  clean, _ = _reference(k, sigma, 0.0, votes)
  assert float(theory.vote_accuracy(k, sigma, votes)) == pytest.approx(clean, abs=1e-9)
  assert float(theory.vote_accuracy_under_attack(k, sigma, eps, votes)) == pytest.approx(
      robust, abs=1e-9)
  assert float(theory.vote_robust_accuracy(k, sigma, eps, votes)) == pytest.approx(
      robust / clean, abs=1e-9)
  assert float(theory.vote_invariance(k, sigma, votes)) == pytest.approx(invariant, abs=1e-9)
  assert float(theory.attack_success_rate(k, sigma, eps, num_votes=votes)) == pytest.approx(
      1 - robust / clean, abs=1e-9)


def test_owens_t_against_scipy():
  h = np.linspace(-6, 6, 49)[:, None]
  a = np.concatenate([np.linspace(-5, 5, 41), [-1e6, 1e6]])[None, :]
  h, a = np.broadcast_arrays(h, a)
  ours = jax.jit(theory._owens_t_ratio)(jnp.asarray(h), jnp.asarray(a), jnp.ones(a.shape),
                                        jnp.asarray(a * h), jnp.ones(a.shape))
  np.testing.assert_allclose(ours, special.owens_t(h, a), atol=1e-13)


def test_one_vote_is_the_single_draw():
  # Two independent implementations: Owen's T versus the vote quadrature.
  for sigma in (0.0, 0.02, 0.7, 3.0, 20.0):
    np.testing.assert_allclose(theory.vote_accuracy(GRID, sigma, 1),
                               theory.accuracy(GRID, sigma), atol=1e-11)
    np.testing.assert_allclose(theory.vote_invariance(GRID, sigma, 1),
                               theory.invariance(GRID, sigma), atol=1e-11)


def test_float32_matches_float64():
  calls = [lambda: theory.robust_accuracy(GRID, 0.8, 0.3),
           lambda: theory.accuracy_under_attack(GRID, 0.8, 0.3),
           lambda: theory.invariance(GRID, 0.8), lambda: theory.vote_invariance(GRID, 0.8, 25),
           lambda: theory.vote_robust_accuracy(GRID, 0.8, 0.3, 25)]
  expected = [call() for call in calls]
  with jax.enable_x64(False):
    values = [call() for call in calls]
  for value, reference in zip(values, expected):
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, reference, atol=1e-6)


def test_trained_invariance_closed_form():
  # R(1) = 1 - 2 T(1 / sqrt(1 + sigma^2), sigma).
  for sigma in (0.1, 1.0, 4.0):
    expected = 1 - 2 * special.owens_t(1 / math.hypot(1, sigma), sigma)
    assert float(theory.invariance(theory.TRAINED_THRESHOLD, sigma)) == pytest.approx(
        expected, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(k=st.floats(-3.0, 5.0), sigma=st.floats(0.0, 6.0), eps=st.floats(0.0, 3.0))
def test_properties(k, sigma, eps):
  clean = float(theory.accuracy(k, sigma))
  attacked = float(theory.accuracy_under_attack(k, sigma, eps))
  robust = float(theory.robust_accuracy(k, sigma, eps))
  invariant = float(theory.invariance(k, sigma))
  assert 0.0 <= attacked <= clean <= 1.0
  assert 0.0 <= robust <= 1.0 and clean > 0.5
  assert robust == pytest.approx(attacked / clean, abs=1e-12)
  assert float(theory.attack_success_rate(k, sigma, eps)) == pytest.approx(1 - robust, abs=1e-12)
  assert 0.0 <= invariant <= 1.0
  # Reflecting x, y and theta - 1 maps threshold k to 2 - k.
  assert float(theory.accuracy(2 - k, sigma)) == pytest.approx(clean, abs=1e-12)
  assert float(theory.invariance(2 - k, sigma)) == pytest.approx(invariant, abs=1e-12)
  # No threshold is more invariant than k = 1, trained invariance.
  assert invariant <= float(theory.invariance(1.0, sigma)) + 1e-12
  if sigma > 1e-3:
    _, reference = _reference(k, sigma)
    assert invariant == pytest.approx(reference, abs=1e-9)


# ---------------------------------------------------------------- simulation


@pytest.mark.parametrize("k, sigma, eps, votes", [
    (1.0, 1.0, 0.5, None), (0.0, 1.0, 0.3, None), (0.4, 2.0, 1.2, None), (1.0, 0.0, 0.5, None),
    (1.0, 1.0, 0.5, 4), (0.3, 0.5, 0.2, 4), (1.5, 2.0, 0.7, 25), (1.0, 1.0, 1.0, 15),
    (0.0, 1.0, 1.0, 15),
])
def test_monte_carlo_agrees_within_four_standard_errors(k, sigma, eps, votes):
  num_samples = 200_000
  key = jax.random.fold_in(jax.random.key(7), int(1000 * k + 100 * sigma + 10 * eps))
  estimate = theory.monte_carlo(key, k, sigma, eps, num_samples=num_samples, num_votes=votes)
  votes = votes or 1
  expected = {"accuracy": theory.vote_accuracy(k, sigma, votes),
              "robust_accuracy": theory.vote_robust_accuracy(k, sigma, eps, votes),
              "accuracy_under_attack": theory.vote_accuracy_under_attack(k, sigma, eps, votes),
              "invariance": theory.vote_invariance(k, sigma, votes),
              "attack_success_rate": theory.attack_success_rate(k, sigma, eps, num_votes=votes)}
  # The conditional rates count only the correctly classified inputs.
  counts = {"attack_success_rate": float(estimate.num_correct),
            "robust_accuracy": float(estimate.num_correct)}
  for name, value in expected.items():
    p = float(value)
    stderr = math.sqrt(p * (1 - p) / counts.get(name, num_samples))
    measured = float(getattr(estimate, name))
    assert abs(measured - p) <= 4 * stderr + 1e-9, (name, measured, p, stderr)
    assert float(getattr(estimate, name + "_stderr")) == pytest.approx(stderr, rel=0.05, abs=1e-9)
  # Same draws and coin: every input right after the attack was right before
  # it, so the conditional and the unconditional counts are the same inputs.
  robust_count = float(estimate.accuracy_under_attack) * num_samples
  assert robust_count == pytest.approx(
      float(estimate.robust_accuracy) * float(estimate.num_correct), abs=1e-3)


def test_shift_towards_the_wrong_side_is_the_worst_case():
  # For every input, each draw's decision (hence the vote) is increasing in x:
  # among all |delta| <= eps, delta = -eps * y minimises Pr[correct].
  rng = np.random.default_rng(0)
  deltas = np.linspace(-0.6, 0.6, 121)
  for _ in range(20):
    label = rng.choice([-1, 1])
    x = label + rng.normal()
    k, sigma = rng.uniform(-1, 3), rng.uniform(0.1, 3)
    for votes in (1, 5):
      positive = np.array([_vote_positive(x + d, k, sigma, votes) for d in deltas])
      correct = positive if label > 0 else 1 - positive
      assert correct.min() == pytest.approx(correct[0 if label > 0 else -1])


# ------------------------------------------------------------ the study's claims


def _increases_towards_one(fn, tolerance=1e-12):
  return all(bool(np.all(np.diff(np.asarray(fn(ks))) >= -tolerance)) for ks in (LEFT, RIGHT))


def _decreases_towards_one(fn, tolerance=1e-12):
  return _increases_towards_one(lambda ks: -fn(ks), tolerance)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 2.0, 5.0])
def test_invariance_and_accuracy_increase_towards_k_one(sigma):
  assert _increases_towards_one(lambda ks: theory.invariance(ks, sigma))
  assert _increases_towards_one(lambda ks: theory.accuracy(ks, sigma))
  for votes in (3, 25):
    assert _increases_towards_one(lambda ks: theory.vote_invariance(ks, sigma, votes))
    assert _increases_towards_one(lambda ks: theory.vote_accuracy(ks, sigma, votes))


@pytest.mark.parametrize("sigma", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("eps", [0.05, 0.3, 0.8, 1.5, 3.0])
def test_robustness_lost_to_the_attack_increases_towards_k_one(sigma, eps):
  # The trade-off: the fraction of inputs the attack turns from right to wrong
  # (accuracy - robust accuracy) grows as the classifier grows invariant.
  assert _increases_towards_one(
      lambda ks: theory.accuracy(ks, sigma) - theory.accuracy_under_attack(ks, sigma, eps))
  assert _increases_towards_one(
      lambda ks: theory.vote_accuracy(ks, sigma, 25)
      - theory.vote_accuracy_under_attack(ks, sigma, eps, 25))


@pytest.mark.parametrize("sigma", [0.1, 1.0, 3.0])
def test_accuracy_under_attack_direction_depends_on_eps(sigma):
  # The unconditional rate decreases towards k = 1 only for eps > 1: for eps < 1
  # it peaks at k = 1 like the benign accuracy, and at eps = 1 it is 1/2 for all
  # k, so that the paper's (conditional) robust accuracy is 1 / (2 accuracy).
  assert _decreases_towards_one(lambda ks: theory.accuracy_under_attack(ks, sigma, 1.5))
  assert _decreases_towards_one(
      lambda ks: theory.vote_accuracy_under_attack(ks, sigma, 1.5, 25))
  assert _increases_towards_one(lambda ks: theory.accuracy_under_attack(ks, sigma, 0.5))
  assert _increases_towards_one(
      lambda ks: theory.vote_accuracy_under_attack(ks, sigma, 0.5, 25))
  np.testing.assert_allclose(theory.accuracy_under_attack(GRID, sigma, 1.0), 0.5, atol=1e-12)
  np.testing.assert_allclose(theory.robust_accuracy(GRID, sigma, 1.0),
                             0.5 / theory.accuracy(GRID, sigma), atol=1e-12)
  np.testing.assert_allclose(theory.vote_robust_accuracy(GRID, sigma, 1.0, 25),
                             0.5 / theory.vote_accuracy(GRID, sigma, 25), atol=1e-9)


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0, 2.0])
def test_attack_success_rate_increases_towards_k_one_with_enough_noise(eps):
  for sigma in (1.0, 2.0):
    assert _increases_towards_one(lambda ks: theory.attack_success_rate(ks, sigma, eps))
  assert _increases_towards_one(
      lambda ks: theory.attack_success_rate(ks, 1.0, eps, num_votes=3))


def test_attack_success_rate_is_not_monotone_for_little_noise_and_small_eps():
  # The conditional success rate is lower at k = 1 than at k = 0 here, although
  # more inputs are flipped at k = 1 (see the test above): stated for the
  # conditional rate, the trade-off needs enough noise or a large enough eps.
  assert float(theory.attack_success_rate(0.0, 0.1, 0.1)) > float(
      theory.attack_success_rate(1.0, 0.1, 0.1))
  drop = lambda k: float(theory.accuracy(k, 0.1) - theory.accuracy_under_attack(k, 0.1, 0.1))
  assert drop(1.0) > drop(0.0)


@pytest.mark.parametrize("sigma, eps", [(1.0, 0.5), (2.0, 1.0), (1.0, 1.5)])
def test_trained_invariance_and_voting_restore_accuracy_and_take_robustness_back(sigma, eps):
  rows = {row["classifier"]: row for row in theory.summary(sigma, eps, num_votes=25)}
  undefended, defended = rows["undefended"], rows["defended"]
  trained, vote = rows["trained invariance"], rows["trained invariance, vote"]
  assert defended["accuracy"] < trained["accuracy"] < vote["accuracy"] < undefended["accuracy"]
  assert defended["invariance"] < trained["invariance"] < vote["invariance"] < 1.0
  assert (defended["attack_success_rate"] < trained["attack_success_rate"]
          < vote["attack_success_rate"] < undefended["attack_success_rate"])
  assert rows["defended, vote"]["accuracy"] > defended["accuracy"]


def test_many_votes_reduce_to_the_undefended_classifier():
  sigma, eps = 1.0, 0.4
  rates = [(float(theory.vote_accuracy(1.0, sigma, votes)),
            float(theory.vote_invariance(1.0, sigma, votes))) for votes in (1, 3, 25, 1001)]
  assert all(np.diff(np.array(rates), axis=0).ravel() > 0)
  assert rates[-1][0] == pytest.approx(PHI(1), abs=2e-3)
  assert rates[-1][1] == pytest.approx(1.0, abs=1e-2)  # R converges like 1 / sqrt(votes)
  assert float(theory.vote_accuracy_under_attack(1.0, sigma, eps, 1001)) == pytest.approx(
      PHI(1 - eps), abs=2e-3)
  assert float(theory.vote_robust_accuracy(1.0, sigma, eps, 1001)) == pytest.approx(
      PHI(1 - eps) / PHI(1), abs=3e-3)


# ------------------------------------------------------------ the paper's case


def _paper_reference(k, sigma, eps):
  """(accuracy, Pr[correct before and after the attack]) by scipy quad over x.

  Per draw of theta ~ N(1, sigma^2) both events hold for y = +1 when theta
  exceeds both thresholds k - x and k - x + eps (and mirrored for y = -1), so
  the joint probability is computed as such, without assuming that one event
  implies the other; independent of jaxdef.theory.
  """
  def correct(x, y, shift):
    # Pr_theta[y (x - shift * y + theta - k) > 0] for every shift in `shift`.
    threshold = max(y * (k - x + s * y) for s in shift)  # y theta must exceed it
    mean = y * 1.0
    if sigma == 0:
      return float(mean > threshold)
    return PHI((mean - threshold) / sigma)

  clean = joint = 0.0
  for y in (1, -1):
    density = lambda x, y=y: _density(x - y)
    steps = [k - 1, k - 1 + eps * y]  # where the deterministic decisions step
    clean += 0.5 * _quad(lambda x, y=y: density(x) * correct(x, y, [0.0]), y - 12, y + 12,
                         steps)
    joint += 0.5 * _quad(lambda x, y=y: density(x) * correct(x, y, [0.0, eps]), y - 12, y + 12,
                         steps)
  return clean, joint


@pytest.mark.parametrize("k, sigma, published_accuracy, published_robust", [
    (1.0, 0.0, 0.841, 0.594),  # undefended sgn(x)
    (0.0, 1.0, 0.711, 0.704),  # defended
    (1.0, 1.0, 0.760, 0.658),  # trained invariance
])
def test_robust_accuracy_is_the_papers_conditional_rate(k, sigma, published_accuracy,
                                                        published_robust):
  robust = float(theory.robust_accuracy(k, sigma, 1.0))
  clean, joint = _paper_reference(k, sigma, 1.0)
  assert robust == pytest.approx(published_robust, abs=0.0005)
  assert float(theory.accuracy(k, sigma)) == pytest.approx(published_accuracy, abs=0.0005)
  assert robust == pytest.approx(joint / clean, abs=1e-10)
  assert float(theory.accuracy_under_attack(k, sigma, 1.0)) == pytest.approx(joint, abs=1e-10)
  assert float(theory.attack_success_rate(k, sigma, 1.0)) == pytest.approx(1 - joint / clean,
                                                                           abs=1e-10)


@pytest.mark.parametrize("k, sigma, eps", [(0.3, 0.5, 0.2), (1.7, 2.0, 1.4), (-0.5, 0.0, 0.6)])
def test_robust_accuracy_against_joint_quad_elsewhere(k, sigma, eps):
  clean, joint = _paper_reference(k, sigma, eps)
  assert float(theory.robust_accuracy(k, sigma, eps)) == pytest.approx(joint / clean, abs=1e-10)


def test_paper_case_rows():
  rows = theory.paper_case()
  published = theory.PAPER_CASE["rows"]
  assert [row["classifier"] for row in rows] == [paper.classifier for paper in published]
  for row, paper in zip(rows, published):
    assert row["agrees_with_paper"], row
    assert row["robust_accuracy"] == pytest.approx(
        float(theory.robust_accuracy(paper.k, paper.sigma, theory.PAPER_CASE["eps"])))
    assert row["paper_robust_accuracy"] == paper.robust_accuracy
    assert row["accuracy_under_attack"] == pytest.approx(0.5, abs=1e-12)
  defended = rows[1]
  assert defended["paper_misprint"] == 0.677
  assert "67.7%" in defended["note"] and "70.36%" in defended["note"]
  assert defended["robust_accuracy"] - 0.677 > 0.02  # a misprint, not a rounding
  assert rows[0]["paper_misprint"] is None and rows[0]["note"] == ""


def test_vote_robust_accuracy_in_the_papers_case_against_monte_carlo():
  # The vote versions, checked against the simulation in the paper's setting.
  for k in (0.0, 1.0):
    estimate = theory.monte_carlo(jax.random.fold_in(jax.random.key(11), int(k)), k, 1.0, 1.0,
                                  num_samples=200_000, num_votes=15)
    expected = float(theory.vote_robust_accuracy(k, 1.0, 1.0, 15))
    assert abs(float(estimate.robust_accuracy) - expected) <= 4 * float(
        estimate.robust_accuracy_stderr), (k, float(estimate.robust_accuracy), expected)
    assert float(theory.vote_accuracy_under_attack(k, 1.0, 1.0, 15)) == pytest.approx(
        0.5, abs=1e-9)


# ------------------------------------------------------------ lemma checks


@pytest.fixture(scope="module")
def lemmas():
  return theory.lemma_checks(sigma=1.0, eps=1.0, num_votes=15)


def test_lemma_checks_lemma_one_and_corollaries_hold_at_sigma_one(lemmas):
  assert {check["name"] for check in lemmas} == {
      "Lemma 1", "Lemma 1, vote", "Lemma 2", "Lemma 2, vote", "Corollary 1", "Corollary 2",
      "Corollary 3"}
  for check in lemmas:
    assert set(check) == {"name", "statement", "holds", "evidence"}
    assert isinstance(check["holds"], bool)
    if check["name"].startswith("Lemma 1") or check["name"] in ("Corollary 1", "Corollary 3"):
      assert check["holds"], check
    if "eps = 1" in check["statement"] and "sigma = 1" in check["statement"]:
      assert check["holds"], check  # the paper's setting: Lemma 2 and Corollary 2 too


def test_lemma_checks_evidence_names_numbers(lemmas):
  for check in lemmas:
    assert re.search(r"\d\.\d{4}", check["evidence"]), check  # the end values
    assert re.search(r"\d\.\d+e[-+]\d+", check["evidence"]), check  # the extreme step


def test_lemma_two_verdicts_match_scipy(lemmas):
  # The conditional robust accuracy by scipy, on the same grid: where Lemma 2
  # fails (little noise, small eps) it fails for the ratio itself.
  ks = np.linspace(0.0, 1.0, theory.LEMMA_NUM_K)
  for check in (c for c in lemmas if c["name"] == "Lemma 2"):
    sigma, eps = (float(v) for v in re.findall(r"(?:sigma|eps) = ([\d.]+)", check["statement"]))
    scale = math.hypot(1.0, sigma)
    ratio = ((PHI((2 - ks - eps) / scale) + PHI((ks - eps) / scale))
             / (PHI((2 - ks) / scale) + PHI(ks / scale)))
    assert check["holds"] == bool(np.all(np.diff(ratio) < 0)), check
  failing = [c["statement"] for c in lemmas if not c["holds"]]
  assert any("sigma = 0.5, eps = 0.1" in text for text in failing)


def test_lemma_checks_verdicts_are_computed():
  # Without noise votes change nothing, so the corollaries cannot hold.
  checks = theory.lemma_checks(sigma=0.0, eps=1.0, num_votes=3)
  assert not any(c["holds"] for c in checks if c["name"].startswith("Corollary"))
  assert all(c["holds"] for c in checks if c["name"] == "Lemma 1")


# ------------------------------------------------------------ curves


def test_table_over_sigma_and_votes_match_the_pointwise_functions():
  sigmas = [0.0, 0.5, 1.0, 3.0]
  rows = theory.table_over_sigma(sigmas, 0.5)
  assert [(row["k"], row["sigma"]) for row in rows] == [(k, s) for k in (0.0, 1.0)
                                                        for s in sigmas]
  for row in rows:
    assert row["robust_accuracy"] == pytest.approx(
        float(theory.robust_accuracy(row["k"], row["sigma"], 0.5)), abs=1e-12)
    assert row["accuracy_under_attack"] == pytest.approx(
        float(theory.accuracy_under_attack(row["k"], row["sigma"], 0.5)), abs=1e-12)
  votes = [1, 3, 15, 101]
  rows = theory.table_over_votes(votes, 1.0, 0.5)
  assert [(row["k"], row["num_votes"]) for row in rows] == [(k, n) for k in (0.0, 1.0)
                                                            for n in votes]
  for row in rows:
    n = row["num_votes"]
    assert isinstance(n, int)
    assert row["accuracy"] == pytest.approx(float(theory.vote_accuracy(row["k"], 1.0, n)),
                                            abs=1e-12)
    assert row["robust_accuracy"] == pytest.approx(
        float(theory.vote_robust_accuracy(row["k"], 1.0, 0.5, n)), abs=1e-12)
    assert row["invariance"] == pytest.approx(float(theory.vote_invariance(row["k"], 1.0, n)),
                                              abs=1e-12)


def test_every_number_of_votes_shares_one_compilation():
  theory.vote_accuracy(0.3, 1.0, 3)
  before = theory._vote_accuracy_law._cache_size()
  for votes in (5, 7, 101, 500):
    theory.vote_accuracy(0.3, 1.0, votes)
  assert theory._vote_accuracy_law._cache_size() == before


# ------------------------------------------------------------ jit, vmap, grad


def test_jit_and_vmap_match_eager():
  ks = jnp.asarray(LEFT)
  np.testing.assert_allclose(jax.jit(theory.invariance)(ks, 0.8), theory.invariance(ks, 0.8),
                             atol=1e-12)
  vote = lambda k, s: theory.vote_invariance(k, s, 3)
  np.testing.assert_allclose(jax.vmap(vote, in_axes=(0, None))(ks, 0.8), vote(ks, 0.8),
                             atol=1e-12)
  robust = jax.vmap(theory.robust_accuracy, in_axes=(None, None, 0))(1.0, 1.0, ks + 3.0)
  np.testing.assert_allclose(robust, theory.robust_accuracy(1.0, 1.0, ks + 3.0), atol=1e-12)
  grid = theory.accuracy(ks[:, None], jnp.array([0.0, 0.5, 2.0]))
  assert grid.shape == (151, 3)


def test_gradients_match_finite_differences_and_stay_finite_at_sigma_zero():
  functions = {
      "invariance": lambda k, s, e: theory.invariance(k, s),
      "robust_accuracy": theory.robust_accuracy,
      "vote_robust_accuracy": lambda k, s, e: theory.vote_robust_accuracy(k, s, e, 3),
      "vote_invariance": lambda k, s, e: theory.vote_invariance(k, s, 3),
  }
  point, step = np.array([0.4, 0.9, 0.3]), 1e-5
  for name, fn in functions.items():
    grad = jax.jit(jax.grad(fn, argnums=(0, 1, 2)))
    for k in (0.0, 1.0, 2.0):
      assert np.all(np.isfinite(grad(k, 0.0, 0.5))), (name, k)
    for i, value in enumerate(grad(*point)):
      shift = step * np.eye(3)[i]
      finite_difference = (fn(*(point + shift)) - fn(*(point - shift))) / (2 * step)
      assert float(value) == pytest.approx(float(finite_difference), abs=1e-7), (name, i)
  # Closed-form derivative of the benign accuracy in k.
  k, sigma = 0.3, 1.2
  scale = math.hypot(1, sigma)
  expected = 0.5 * (_density(k / scale) - _density((2 - k) / scale)) / scale
  assert float(jax.grad(theory.accuracy)(k, sigma)) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- tables


def test_table_rows():
  rows = theory.table(GRID, 1.0, 0.5, num_votes=25)
  assert [row["k"] for row in rows] == GRID.tolist()
  assert all(isinstance(value, float) for row in rows for value in row.values())
  assert set(rows[0]) == {"k", "accuracy", "robust_accuracy", "accuracy_under_attack",
                          "invariance", "attack_success_rate", "vote_accuracy",
                          "vote_robust_accuracy", "vote_accuracy_under_attack",
                          "vote_invariance", "vote_attack_success_rate"}
  at_one = rows[int(np.argmin(np.abs(GRID - 1.0)))]
  assert at_one["accuracy"] == pytest.approx(float(theory.accuracy(at_one["k"], 1.0)))
  assert at_one["vote_invariance"] == pytest.approx(
      float(theory.vote_invariance(at_one["k"], 1.0, 25)))
  assert at_one["vote_robust_accuracy"] == pytest.approx(
      float(theory.vote_robust_accuracy(at_one["k"], 1.0, 0.5, 25)))
  assert at_one["robust_accuracy"] == pytest.approx(
      at_one["accuracy_under_attack"] / at_one["accuracy"])
  assert set(theory.table(GRID, 1.0, 0.5)[0]) == {
      "k", "accuracy", "robust_accuracy", "accuracy_under_attack", "invariance",
      "attack_success_rate"}


def test_summary_undefended_row():
  undefended = theory.summary(1.0, 0.5, num_votes=25)[0]
  assert undefended["classifier"] == "undefended"
  assert undefended["accuracy"] == pytest.approx(PHI(1), abs=1e-12)
  assert undefended["accuracy_under_attack"] == pytest.approx(PHI(0.5), abs=1e-12)
  assert undefended["robust_accuracy"] == pytest.approx(PHI(0.5) / PHI(1), abs=1e-12)
  assert undefended["attack_success_rate"] == pytest.approx(1 - PHI(0.5) / PHI(1), abs=1e-12)
  assert undefended["invariance"] == 1.0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, message", [
    (lambda: theory.accuracy(1.0, -0.5), r"sigma must be in \[0.0, inf\]"),
    (lambda: theory.accuracy(float("nan"), 1.0), "k must be finite"),
    (lambda: theory.invariance(1.0, float("inf")), "sigma must be finite"),
    (lambda: theory.robust_accuracy(1.0, 1.0, -0.1), r"eps must be in \[0.0, inf\]"),
    (lambda: theory.robust_accuracy(np.array([0.0, np.inf]), 1.0, 0.1), "k must be finite"),
    (lambda: theory.vote_accuracy(1.0, 1.0, 0), "num_votes must be an int >= 1"),
    (lambda: theory.vote_accuracy(1.0, 1.0, 2.5), "num_votes must be a Python int"),
    (lambda: theory.vote_invariance(1.0, 1.0, True), "num_votes must be a Python int"),
    (lambda: theory.attack_success_rate(1.0, 1.0, 0.5, num_votes=-3), "num_votes must be"),
    (lambda: theory.monte_carlo(jax.random.key(0), num_samples=0), "num_samples must be"),
    (lambda: theory.monte_carlo(jax.random.key(0), sigma=-1.0), "sigma must be"),
    (lambda: theory.table([], 1.0, 0.5), "ks must be a non-empty sequence"),
    (lambda: theory.table([[0.0, 1.0]], 1.0, 0.5), "ks must be a non-empty sequence"),
    (lambda: theory.table(["a"], 1.0, 0.5), "ks must be a non-empty sequence"),
    (lambda: theory.summary(1.0, -1.0), "eps must be"),
    (lambda: theory.accuracy_under_attack(1.0, 1.0, -0.1), r"eps must be in \[0.0, inf\]"),
    (lambda: theory.vote_accuracy_under_attack(1.0, 1.0, 0.5, 0), "num_votes must be"),
    (lambda: theory.table_over_sigma([], 0.5), "sigmas must be a non-empty sequence"),
    (lambda: theory.table_over_sigma([0.0, -1.0], 0.5), "sigma must be"),
    (lambda: theory.table_over_votes([], 1.0, 0.5), "votes must be a non-empty sequence"),
    (lambda: theory.table_over_votes([1, 2.5], 1.0, 0.5), "votes must be a Python int"),
    (lambda: theory.lemma_checks(sigma=-1.0), "sigma must be"),
    (lambda: theory.lemma_checks(num_votes=0), "num_votes must be"),
])
def test_bad_input_is_rejected_with_a_clear_message(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_bad_key_is_rejected():
  with pytest.raises(TypeError, match="key must be a jax.random key"):
    theory.monte_carlo(0, 1.0, 1.0, 0.5, num_samples=10)
