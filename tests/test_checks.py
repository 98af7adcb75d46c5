"""jaxdef.checks: each warning fires on a crafted case and stays silent on a sound one.

The report's numbers are recomputed in numpy from the same draws: a linear
model behind randomized smoothing, whose logits and margin gradient have
closed forms.
"""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd
from jaxdef import checks

KEY = jax.random.key(0)
RNG = np.random.default_rng(0)
SHAPE = (6, 4, 4, 1)
WEIGHTS = RNG.normal(size=(16, 5)).astype(np.float32)
IMAGES = jnp.asarray(RNG.uniform(0.2, 0.8, SHAPE).astype(np.float32))
LABELS = jnp.asarray(RNG.integers(0, 5, SHAPE[0]).astype(np.int32))
SIGMA = 0.1


def linear_logits(images):
  return images.reshape(images.shape[0], -1) @ WEIGHTS


def _sanity_warnings(clf, **kwargs):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    report = checks.sanity_check(clf, KEY, IMAGES, LABELS, num_votes=5, **kwargs)
  return report, [w for w in caught if issubclass(w.category, checks.SanityWarning)]


def _smoothed(logits_fn=linear_logits):
  return jd.StochasticClassifier(logits_fn, jd.defenses.randomized_smoothing(SIGMA))


@pytest.mark.parametrize("outputs, expected", [
    (np.array([[0.2, 0.8], [0.5, 0.5]]), True),
    (np.array([[0.2, 0.8 + 2e-4]]), False),  # a row sum off by more than the tolerance
    (np.array([[0.3, 0.3], [0.1, 0.2]]), False),  # sigmoid-like: in [0, 1], rows not summing to 1
    (np.array([[-0.5, 1.5]]), False),  # sums to 1 but leaves [0, 1]
    (np.array([[2.0, -1.0, 3.0]]), False),  # logits
    (np.array([[np.nan, 1.0]]), False),
])
def test_looks_like_probabilities_is_autoattacks_rule(outputs, expected):
  assert checks.looks_like_probabilities(jnp.asarray(outputs, jnp.float32)) is expected
  softmax = jax.nn.softmax(jnp.asarray(RNG.normal(size=(7, 10)) * 5, jnp.float32))
  assert checks.looks_like_probabilities(softmax)


@pytest.mark.parametrize("value, error, match", [
    ([[0.5, 0.5]], TypeError, "logits must be an array"),
    (jnp.zeros((0, 3)), ValueError, "logits must be a non-empty"),
    (jnp.ones((2, 2), jnp.int32), TypeError, "logits must be floating point"),
])
def test_looks_like_probabilities_refuses_bad_input(value, error, match):
  with pytest.raises(error, match=match):
    checks.looks_like_probabilities(value)


# The crafted cases below are undefended (no random draws to compile: fast); the
# undefended model is exempt from the determinism warning, so each fires alone.
def test_softmax_model_gets_a_probabilities_warning():
  softmax = lambda x: jax.nn.softmax(linear_logits(x))
  report, caught = _sanity_warnings(jd.StochasticClassifier(softmax))
  assert [w.category for w in caught] == [checks.ProbabilitiesWarning]
  assert "probabilities" in str(caught[0].message) and "logits_fn" in str(caught[0].message)
  assert report.looks_like_probabilities and report.row_sum_max_error < 1e-4


def test_deterministic_defense_warns_that_eot_is_pointless_but_undefended_does_not():
  halve = lambda key, images: images * 0.5
  report, caught = _sanity_warnings(jd.StochasticClassifier(linear_logits, halve))
  assert [w.category for w in caught] == [checks.DeterministicDefenseWarning]
  assert "EOT" in str(caught[0].message) and "not random" in str(caught[0].message)
  assert not report.defense_random and report.defense_max_difference == 0
  assert not report.undefended and not report.random
  for undefended in (jd.StochasticClassifier(linear_logits),
                     jd.StochasticClassifier(linear_logits, jd.defenses.identity())):
    report, caught = _sanity_warnings(undefended)
    assert caught == [] and report.undefended and not report.defense_random


def test_quantization_without_bpda_warns_of_gradient_masking():
  # Its true gradient is zero almost everywhere (jax.lax.stop_gradient: next test).
  quantize = jd.defenses.from_transform(
      lambda key, image: jd.transforms.random_quantize(key, image))
  report, caught = _sanity_warnings(jd.StochasticClassifier(linear_logits, quantize))
  assert [w.category for w in caught] == [checks.GradientMaskingWarning]
  assert "6 of 6 images (100%)" in str(caught[0].message)
  assert report.zero_gradient_images == 6 and report.zero_gradient_fraction == 1.0


def test_a_fraction_of_zero_gradients_is_named_and_compared_with_the_threshold():
  alive = jnp.asarray([1, 0, 1, 0, 0, 1], jnp.float32)[:, None, None, None]
  masked = lambda x: linear_logits(x * alive + jax.lax.stop_gradient(x) * (1 - alive))
  clf = jd.StochasticClassifier(masked)  # one classifier: the second check reuses its compile
  report, caught = _sanity_warnings(clf)
  assert report.zero_gradient_images == 3 and report.zero_gradient_fraction == 0.5
  assert "3 of 6 images (50%)" in str(caught[0].message)
  report, caught = _sanity_warnings(clf, zero_gradient_threshold=0.6)
  assert caught == [] and report.zero_gradient_fraction == 0.5


def test_nonfinite_logits_are_reported():
  broken = lambda x: linear_logits(x) / jnp.where(jnp.arange(5) == 2, 0.0, 1.0)
  report, caught = _sanity_warnings(jd.StochasticClassifier(broken))
  assert checks.NonFiniteLogitsWarning in [w.category for w in caught]
  assert not report.finite_logits and report.nonfinite_logits > 0
  json.dumps(report.as_dict(), allow_nan=False)  # NaN/inf become None


def test_sound_classifier_is_silent_and_its_numbers_match_numpy():
  clf = _smoothed()
  report, caught = _sanity_warnings(clf, eot=2)
  assert caught == []
  # The draws of sanity_check, replayed: key -> (spread, draws, gradient, vote).
  spread_key, draws_key, gradient_key, vote_key = jax.random.split(KEY, 4)
  x = np.asarray(IMAGES, np.float64)
  labels = np.asarray(LABELS)
  weights = WEIGHTS.astype(np.float64)

  def noisy(key):
    return x + SIGMA * np.asarray(jax.random.normal(key, SHAPE, jnp.float32), np.float64)

  def logits(images):
    return images.reshape(len(images), -1) @ weights

  defended = [noisy(k) for k in jax.random.split(spread_key, 4)]
  spread = max(np.abs(d - defended[0]).max() for d in defended[1:])
  np.testing.assert_allclose(report.defense_max_difference, spread, rtol=1e-5)
  draws = np.stack([logits(noisy(k)) for k in jax.random.split(draws_key, 4)])
  assert report.single_draw_correct == int((draws.argmax(-1) == labels).sum())
  assert report.single_draw_accuracy == report.single_draw_correct / 24
  np.testing.assert_allclose([report.logits_min, report.logits_max],
                             [draws.min(), draws.max()], rtol=1e-4)
  np.testing.assert_allclose(report.row_sum_max_error, np.abs(draws[0].sum(-1) - 1).max(),
                             rtol=1e-4)
  # Margin gradient of a linear model at a draw: W[:, best other] - W[:, label].
  gradient = np.zeros_like(x)
  for key in jax.random.split(gradient_key, 2):
    z = logits(noisy(key))
    z[np.arange(len(z)), labels] = -np.inf
    gradient += (weights[:, z.argmax(-1)] - weights[:, labels]).T.reshape(SHAPE) / 2
  np.testing.assert_allclose(report.mean_abs_gradient, np.abs(gradient).mean(), rtol=1e-5)
  assert report.zero_gradient_images == int(np.all(gradient == 0, axis=(1, 2, 3)).sum()) == 0
  votes = np.stack([logits(noisy(k)).argmax(-1) for k in jax.random.split(vote_key, 5)])
  majority = np.array([np.bincount(column, minlength=5).argmax() for column in votes.T])
  assert report.vote_correct == int((majority == labels).sum())
  assert report.vote_accuracy == report.vote_correct / 6 and report.num_votes == 5
  record = report.as_dict()
  assert json.loads(json.dumps(record, allow_nan=False)) == record
  assert record["random"] and record["warnings"] == []


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(clf=linear_logits), TypeError, "clf must be a jaxdef.StochasticClassifier"),
    (dict(key=0), TypeError, "key must be a jax.random key"),
    (dict(images=IMAGES * 255), ValueError, "images values must lie in"),
    (dict(labels=LABELS + 5), ValueError, r"labels must lie in \[0, 5\)"),
    (dict(num_votes=0), ValueError, "num_votes must be in"),
    (dict(eot=1.5), ValueError, "eot must be an integer"),
    (dict(num_draws=1), ValueError, "num_draws must be in"),
    (dict(zero_gradient_threshold=0), ValueError, "zero_gradient_threshold must be in"),
    (dict(warn="no"), TypeError, "warn must be True or False"),
])
def test_sanity_check_refuses_bad_input(kwargs, error, match):
  args = dict(clf=_smoothed(), key=KEY, images=IMAGES, labels=LABELS)
  args.update(kwargs)
  with pytest.raises(error, match=match):
    checks.sanity_check(args.pop("clf"), args.pop("key"), args.pop("images"), args.pop("labels"),
                        **args)


def test_experiments_record_sanity_once_and_recheck_what_they_cannot_trust(tmp_path, monkeypatch):
  """The experiments' shared step: sanity.json written, reused on resume, a
  corrupt file named and recomputed, a changed vote count rechecked."""
  import ml_collections

  from jaxdef.experiments import _sanity

  config = ml_collections.ConfigDict({"seed": 0, "sanity_check": True})
  quantized = jd.StochasticClassifier(lambda x: linear_logits(jnp.round(x)), None)
  pairs = {("linear", "smoothing"): (_smoothed(), 5), ("rounded", "none"): (quantized, 3)}
  with pytest.warns(checks.GradientMaskingWarning):
    text = _sanity.run(config, pairs, IMAGES, LABELS, tmp_path)
  first = json.loads((tmp_path / _sanity.SANITY_FILE).read_text())
  assert [(r["model"], r["defense_label"], r["num_votes"]) for r in first] == [
      ("linear", "smoothing", 5), ("rounded", "none", 3)]
  assert first[0]["random"] and not first[0]["warnings"] and first[1]["warnings"]
  assert "| linear | smoothing | yes |" in text and "rounded behind none: " in text

  # Resumed: nothing recomputed, the recorded warning repeated.
  def no_check(*args, **kwargs):
    raise AssertionError("a recorded pair was checked again")

  monkeypatch.setattr(_sanity.checks, "sanity_check", no_check)
  with pytest.warns(checks.GradientMaskingWarning, match="recorded in sanity.json"):
    assert _sanity.run(config, pairs, IMAGES, LABELS, tmp_path) == text
  monkeypatch.undo()

  # A pair with other votes is checked again; the other is kept.
  pairs[("linear", "smoothing")] = (_smoothed(), 7)
  with pytest.warns(checks.GradientMaskingWarning):
    _sanity.run(config, pairs, IMAGES, LABELS, tmp_path)
  again = json.loads((tmp_path / _sanity.SANITY_FILE).read_text())
  assert again[0]["num_votes"] == 7 and again[1] == first[1]

  # Truncated: named, then every pair recomputed to the same numbers.
  path = tmp_path / _sanity.SANITY_FILE
  path.write_text(path.read_text()[:50])
  with pytest.warns(RuntimeWarning, match=f"{path}: unreadable or truncated"):
    _sanity.run(config, pairs, IMAGES, LABELS, tmp_path)
  assert json.loads(path.read_text()) == again

  # Switched off: no check, no section.
  config.sanity_check = False
  monkeypatch.setattr(_sanity.checks, "sanity_check", no_check)
  assert _sanity.run(config, pairs, IMAGES, LABELS, tmp_path) == ""
