"""Tests of jaxdef.StochasticClassifier: draws, votes, rejection, invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd

KEY = jax.random.key(0)
NUM_CLASSES = 5


def _flat_logits(images):
  """Logits are the image's channels: (B, 1, 1, K) -> (B, K)."""
  return images.reshape(images.shape[0], -1)


def _random_class_defense(key, images):
  """Adds a large bump to one random class per image: a uniformly random vote."""
  batch = images.shape[0]
  cls = jax.random.randint(key, (batch,), 0, NUM_CLASSES)
  return images + 10.0 * jax.nn.one_hot(cls, NUM_CLASSES).reshape(batch, 1, 1, NUM_CLASSES)


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.uniform(0, 0.5, (6, 1, 1, NUM_CLASSES)).astype(np.float32))


def test_logits_is_one_draw_of_model_after_defense(images):
  defense = jd.defenses.randomized_smoothing(0.2)
  clf = jd.StochasticClassifier(_flat_logits, defense)
  np.testing.assert_allclose(clf.logits(KEY, images), _flat_logits(defense(KEY, images)),
                             atol=1e-6)


def test_vote_all_and_logits_modes_match_numpy(images):
  clf = jd.StochasticClassifier(_flat_logits, _random_class_defense, vote_chunk_size=7)
  draws = np.asarray(clf.draw_logits(KEY, images, 50))  # (50, B, K)
  counts = np.stack([np.bincount(d, minlength=NUM_CLASSES) for d in draws.argmax(-1).T])
  np.testing.assert_array_equal(clf.predict(KEY, images, n=50, mode="vote"), counts.argmax(-1))
  np.testing.assert_array_equal(clf.predict(KEY, images, n=50, mode="logits"),
                                draws.mean(0).argmax(-1))
  np.testing.assert_array_equal(clf.vote_counts(KEY, images, n=50), counts)
  # 50 uniformly random votes over 5 classes are never unanimous here.
  np.testing.assert_array_equal(clf.predict(KEY, images, n=50, mode="all"), -1)


def test_all_mode_keeps_unanimous_labels(images):
  clf = jd.StochasticClassifier(_flat_logits)  # identity defense: every draw agrees
  np.testing.assert_array_equal(clf.predict(KEY, images, n=20, mode="all"),
                                np.asarray(images).reshape(6, -1).argmax(-1))


def test_vote_ties_go_to_the_lowest_label():
  # Two classes, two draws that disagree: a 1-1 tie resolved to label 0... or 2 vs 3.
  def alternate(key, images):
    bit = jax.random.bernoulli(key)
    bump = jnp.where(bit, jnp.array([0.0, 0.0, 5.0, 0.0]), jnp.array([0.0, 0.0, 0.0, 5.0]))
    return images + bump
  x = jnp.zeros((1, 1, 1, 4), jnp.float32)
  clf = jd.StochasticClassifier(_flat_logits, alternate)
  counts = np.asarray(clf.vote_counts(KEY, x, n=200))[0]
  label = int(clf.predict(KEY, x, n=200)[0])
  assert label == int(np.argmax(counts))
  tied = jd.classifier.aggregate(jnp.asarray([[[0., 0, 1, 0]], [[0., 0, 0, 1]]]), "vote")
  assert int(tied[0]) == 2


def test_chunked_votes_equal_unchunked(images):
  small = jd.StochasticClassifier(_flat_logits, _random_class_defense, vote_chunk_size=8)
  large = jd.StochasticClassifier(_flat_logits, _random_class_defense, vote_chunk_size=500)
  np.testing.assert_array_equal(small.vote_counts(KEY, images, 40),
                                large.vote_counts(KEY, images, 40))


def test_500_votes_for_a_batch(fashion_mlp):
  clf = jd.StochasticClassifier(fashion_mlp.logits_fn, jd.defenses.randomized_smoothing(0.1))
  x = jnp.asarray(fashion_mlp.test_images[:32])
  labels = clf.predict(KEY, x, n=500)
  assert labels.shape == (32,) and labels.dtype == jnp.int32
  accuracy = float(np.mean(np.asarray(labels) == fashion_mlp.test_labels[:32]))
  assert accuracy > 0.6


def test_invariance(images):
  assert float(jd.StochasticClassifier(_flat_logits).invariance(KEY, images, n=10)) == 1.0
  rate = float(jd.StochasticClassifier(_flat_logits, _random_class_defense)
               .invariance(KEY, images, n=400))
  assert abs(rate - 1 / NUM_CLASSES) < 0.05


def test_bad_input(images):
  clf = jd.StochasticClassifier(_flat_logits)
  with pytest.raises(ValueError, match="mode must be one of 'vote', 'all', 'logits'"):
    clf.predict(KEY, images, n=5, mode="majority")
  with pytest.raises(ValueError, match="n must be in"):
    clf.predict(KEY, images, n=0)
  with pytest.raises(ValueError, match="images must have rank 4"):
    clf.predict(KEY, images[0], n=5)
  with pytest.raises(TypeError, match="logits_fn must be callable"):
    jd.StochasticClassifier("model")
  with pytest.raises(ValueError, match="logits of shape"):
    jd.StochasticClassifier(lambda x: x.sum()).num_classes(images)


def test_stochastic_model_draws_split_the_key_between_defense_and_model(images):
  """A keyed model (SAP-style) gets its own key per draw, so votes average over it."""
  def keyed_logits(key, x):
    return _flat_logits(x) + 10.0 * jax.nn.one_hot(
        jax.random.randint(key, (x.shape[0],), 0, NUM_CLASSES), NUM_CLASSES)

  defense = jd.defenses.randomized_smoothing(0.2)
  clf = jd.StochasticClassifier(keyed_logits, defense, stochastic_model=True)
  defense_key, model_key = jax.random.split(KEY)
  np.testing.assert_allclose(clf.logits(KEY, images),
                             keyed_logits(model_key, defense(defense_key, images)), atol=1e-6)
  # The model's randomness dominates: 400 votes spread over every class.
  counts = np.asarray(clf.vote_counts(KEY, images, n=400))
  assert counts.sum() == 400 * images.shape[0] and (counts > 40).all()
  grad = jax.grad(lambda x: clf.logits(KEY, x).sum())(images)
  assert np.all(np.isfinite(grad))
  with pytest.raises(TypeError, match="stochastic_model must be True or False"):
    jd.StochasticClassifier(keyed_logits, stochastic_model="yes")


def test_sap_resnet_behind_a_defense():
  model, variables = jd.models.small_resnet(num_classes=10, activation="sap",
                                            key=jax.random.key(1))
  clf = jd.StochasticClassifier(jd.models.stochastic_logits_fn(model, variables),
                                jd.defenses.randomized_smoothing(0.1), stochastic_model=True)
  x = jax.random.uniform(KEY, (2, 28, 28, 1))
  first = clf.logits(jax.random.key(1), x)
  assert first.shape == (2, 10)
  assert not np.allclose(first, clf.logits(jax.random.key(2), x))
  np.testing.assert_array_equal(first, clf.logits(jax.random.key(1), x))
  assert clf.predict(KEY, x, n=8).shape == (2,)
