"""Sequential voting (`StochasticClassifier.predict_sequential`) against the full vote and scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxdef as jd
from jaxdef import _sequential

KEY = jax.random.key(0)


def _flat_logits(images):
  return images.reshape(images.shape[0], -1)


def _categorical_defense(key, images):
  """Each draw votes for class c with the probability written in the image's channel c."""
  probs = images.reshape(images.shape[0], -1)
  uniform = jax.random.uniform(key, (images.shape[0], 1))
  votes = (uniform > jnp.cumsum(probs, -1)[:, :-1]).sum(-1)
  return images + 10.0 * jax.nn.one_hot(votes, probs.shape[-1]).reshape(images.shape)


def _classifier(probs, chunk=100):
  """A classifier whose vote distribution per image is the row of `probs`; images to vote on."""
  probs = np.asarray(probs, np.float32)
  images = jnp.asarray(probs.reshape(len(probs), 1, 1, -1))
  return jd.StochasticClassifier(_flat_logits, _categorical_defense, vote_chunk_size=chunk), images


def _first_unanimous_look(num_votes, chunk, error, num_classes):
  """Draws after which a unanimous image stops, straight from scipy's beta quantiles."""
  level = error / ((-(-num_votes // chunk) - 1) * num_classes)
  for seen in range(chunk, num_votes, chunk):
    if stats.beta.ppf(level, seen, 1) > stats.beta.ppf(1 - level, 1, seen):
      return seen
  return num_votes


@pytest.mark.parametrize("num_votes, most_draws", [(50, 0.95), (500, 0.5)])
def test_agrees_with_the_full_vote_and_saves_draws(num_votes, most_draws):
  rng = np.random.default_rng(0)
  fixed = [[1, 0, 0, 0], [0.9, 0.05, 0.05, 0], [0.5, 0.5, 0, 0], [0.45, 0.4, 0.15, 0]]
  probs = np.concatenate([fixed, rng.dirichlet(np.full(4, 0.3), size=60)])
  clf, images = _classifier(probs)
  labels, draws, spent = clf.predict_sequential(KEY, images, num_votes, chunk=10)
  labels, draws = np.asarray(labels), np.asarray(draws)
  full = np.asarray(clf.predict(KEY, images, n=num_votes))
  counts = np.asarray(clf.vote_counts(KEY, images, n=num_votes))

  assert labels.dtype == draws.dtype == np.int32 and labels.shape == draws.shape == (64,)
  assert draws[0] == _first_unanimous_look(num_votes, 10, 1e-3, 4)
  assert draws[2] == num_votes  # a fair coin is never decided
  ran_out = draws == num_votes
  # An image that used every draw got the full vote's counts, hence its label.
  np.testing.assert_array_equal(labels[ran_out], full[ran_out])
  # Early stops agree with the full vote wherever the full vote is clear.
  clear = np.sort(counts, -1)[:, -1] - np.sort(counts, -1)[:, -2] > 0.2 * num_votes
  np.testing.assert_array_equal(labels[clear], full[clear])
  assert (draws % 10 == 0).all() and draws.min() >= 10
  print(f"n={num_votes}: mean draws {draws.mean():.1f}, forward passes {int(spent)}")
  assert draws.mean() < most_draws * num_votes
  # 8 sub-batches of 8 rows: a look costs 10 draws x 8 rows per started sub-batch.
  assert draws.sum() <= spent < draws.sum() + 10 * 8 * -(-num_votes // 10)
  assert spent < num_votes * 64
  # Whole-batch looks give the same votes; they stop only when the last image does.
  whole = clf.predict_sequential(KEY, images, num_votes, chunk=10, sub_batches=1)
  np.testing.assert_array_equal(whole.labels, labels)
  np.testing.assert_array_equal(whole.draws, draws)
  assert int(whole.forward_passes) == draws.max() * 64


def test_runs_to_n_with_a_partial_last_chunk_equals_predict():
  clf, images = _classifier([[0.5, 0.5, 0], [0.34, 0.33, 0.33], [0.4, 0.3, 0.3]])
  # Typed and raw keys; whole-batch looks and one image per pass.
  for key, sub_batches in ((jax.random.key(1), 1), (jax.random.key(1), 3),
                           (jax.random.PRNGKey(1), 3)):
    labels, draws, spent = clf.predict_sequential(key, images, 45, chunk=10,
                                                  sub_batches=sub_batches)
    np.testing.assert_array_equal(draws, 45)
    np.testing.assert_array_equal(labels, clf.predict(key, images, n=45))
    rows = -(-3 // sub_batches)
    assert int(spent) == 5 * 10 * rows * -(-3 // rows)  # 5 looks, the last one padded


def test_decision_table_is_the_clopper_pearson_rule():
  num_votes, chunk, error, num_classes = 120, 20, 0.01, 3
  table = _sequential.decision_table(num_votes, chunk, error, num_classes)
  level = error / (5 * num_classes)
  rng = np.random.default_rng(1)
  for _ in range(300):
    look = int(rng.integers(0, 6))
    seen = min((look + 1) * chunk, num_votes)
    leader = int(rng.integers(1, seen + 1))
    runner = int(rng.integers(0, min(leader, seen - leader) + 1))
    lower = stats.beta.ppf(level, leader, seen - leader + 1)
    upper = 1.0 if runner == seen else stats.beta.ppf(1 - level, runner + 1, seen - runner)
    assert (leader >= table[look, runner]) == (lower > upper), (look, leader, runner)


def _exact_two_class(prob_wrong, num_votes, chunk, error):
  """Probability of an early stop on the wrong class, and the expected draws, by binomial DP."""
  table = _sequential.decision_table(num_votes, chunk, error, 2)
  looks = table.shape[0]
  alive = np.zeros(num_votes + 1)
  alive[0] = 1.0  # probability of (w wrong votes so far, not yet stopped)
  wrong_stop, expected_draws = 0.0, 0.0
  for look in range(looks):
    seen = min((look + 1) * chunk, num_votes)
    step = stats.binom.pmf(np.arange(seen - look * chunk + 1), seen - look * chunk, prob_wrong)
    alive = np.convolve(alive, step)[:num_votes + 1]
    wrong = np.arange(num_votes + 1)
    stop = (np.maximum(wrong, seen - wrong) >= table[look, np.minimum(wrong, seen - wrong)])
    stop &= wrong <= seen
    if look == looks - 1:
      stop = wrong <= seen
    else:
      wrong_stop += alive[stop & (wrong > seen - wrong)].sum()
    expected_draws += seen * alive[stop].sum()
    alive = np.where(stop, 0.0, alive)
  return wrong_stop, expected_draws


def test_wrong_stops_stay_below_the_error_level_exactly():
  for prob_wrong in (0.3, 0.45, 0.49):
    wrong_stop, _ = _exact_two_class(prob_wrong, 500, 10, 1e-3)
    assert wrong_stop <= 1e-3, prob_wrong


def test_stopping_matches_the_exact_binomial_calculation():
  # A loose level makes wrong stops frequent enough to count: 3000 images, one batch.
  prob_wrong, num_votes, chunk, error = 0.47, 200, 10, 0.9
  clf, images = _classifier(np.tile([[1 - prob_wrong, prob_wrong]], (3000, 1)), chunk=chunk)
  labels, draws, _ = clf.predict_sequential(KEY, images, num_votes, chunk=chunk, error=error)
  labels, draws = np.asarray(labels), np.asarray(draws)
  wrong_stop, expected_draws = _exact_two_class(prob_wrong, num_votes, chunk, error)
  observed = np.mean((labels == 1) & (draws < num_votes))
  assert 0.01 < wrong_stop < error
  assert abs(observed - wrong_stop) < 4 * np.sqrt(wrong_stop * (1 - wrong_stop) / 3000)
  assert abs(draws.mean() - expected_draws) < 4 * draws.std() / np.sqrt(3000)


def test_bad_input_is_named():
  clf, images = _classifier([[1.0, 0.0]])
  with pytest.raises(ValueError, match="n must be in"):
    clf.predict_sequential(KEY, images, 0)
  with pytest.raises(ValueError, match="chunk must be in"):
    clf.predict_sequential(KEY, images, 20, chunk=0)
  with pytest.raises(ValueError, match="chunk must be in"):
    clf.predict_sequential(KEY, images, 20, chunk=21)
  with pytest.raises(ValueError, match="error must be in"):
    clf.predict_sequential(KEY, images, 20, error=1.0)
  with pytest.raises(TypeError, match="error must be a number"):
    clf.predict_sequential(KEY, images, 20, error="low")
  with pytest.raises(ValueError, match="sub_batches must be in"):
    clf.predict_sequential(KEY, images, 20, sub_batches=0)
  with pytest.raises(ValueError, match="images must have rank 4"):
    clf.predict_sequential(KEY, images[0], 20)
  with pytest.raises(ValueError, match=r"skip must be a bool array of shape \(1,\)"):
    clf.predict_sequential(KEY, images, 20, skip=np.array([0]))


def test_skipped_images_cost_nothing_and_change_no_other_vote():
  rng = np.random.default_rng(3)
  clf, images = _classifier(rng.dirichlet(np.full(4, 0.5), size=24))
  skip = np.arange(24) % 3 != 0
  every = clf.predict_sequential(KEY, images, 60, chunk=10, sub_batches=8)
  some = clf.predict_sequential(KEY, images, 60, chunk=10, sub_batches=8, skip=skip)
  np.testing.assert_array_equal(np.asarray(some.labels)[~skip], np.asarray(every.labels)[~skip])
  np.testing.assert_array_equal(np.asarray(some.draws)[~skip], np.asarray(every.draws)[~skip])
  np.testing.assert_array_equal(np.asarray(some.labels)[skip], -1)
  np.testing.assert_array_equal(np.asarray(some.draws)[skip], 0)
  # 8 images left, one pass of 3 rows... at most 3 passes of 3 rows per look.
  assert int(some.forward_passes) <= 6 * 10 * 9 < int(every.forward_passes)
  nothing = clf.predict_sequential(KEY, images, 60, chunk=10, skip=np.ones(24, bool))
  assert int(nothing.forward_passes) == 0 and (np.asarray(nothing.labels) == -1).all()


def test_a_real_network_votes_like_predict_until_it_stops():
  """Small ResNet behind randomized smoothing: undecided-only passes change no vote."""
  model, variables = jd.models.small_resnet(num_classes=10, widths=(4, 8), key=jax.random.key(1))
  clf = jd.StochasticClassifier(jd.models.logits_fn(model, variables),
                                jd.defenses.randomized_smoothing(0.25))
  images = jax.random.uniform(jax.random.key(2), (12, 28, 28, 1))
  full = clf.predict_sequential(KEY, images, 60, chunk=10, error=0.5, sub_batches=1)
  compact = clf.predict_sequential(KEY, images, 60, chunk=10, error=0.5, sub_batches=4)
  np.testing.assert_array_equal(compact.labels, full.labels)
  np.testing.assert_array_equal(compact.draws, full.draws)
  ran_out = np.asarray(full.draws) == 60
  np.testing.assert_array_equal(np.asarray(full.labels)[ran_out],
                                np.asarray(clf.predict(KEY, images, n=60))[ran_out])
