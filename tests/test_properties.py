"""Properties over random shapes and parameters (hypothesis).

* Attacks: iterates stay in the eps-ball and in [0, 1]. tests/test_attacks_pgd.py
  and tests/test_attacks_apgd.py already vary eps, alpha, steps, batch, norm
  and random start on one 8 x 8 x 1 image shape without EOT; here the image
  shape (height, width, channels) varies too, with EOT-m over a random
  defense, and the same key must give the same iterates.
* Defenses: every registered defense keeps the batch, dtype float32 and (but
  for resize-pad, whose canvas size it documents) the image shape, stays in
  [0, 1] where it promises to, is a function of its key, and differs across
  keys unless it is the identity. Shapes are fixed per defense (BaRT compiles
  slowly on CPU); hypothesis varies the keys and, where cheap, the parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import jaxdef as jd

SEEDS = st.integers(0, 2**31 - 1)


def _linear_classifier(shape, seed, defense):
  weights = jnp.asarray(np.random.default_rng(seed).normal(size=(int(np.prod(shape)), 4)),
                        jnp.float32)
  return jd.StochasticClassifier(lambda x: x.reshape(x.shape[0], -1) @ weights, defense)


def _assert_in_ball(adversarial, clean, eps, norm):
  adversarial, clean = np.asarray(adversarial), np.asarray(clean)
  assert adversarial.dtype == np.float32 and adversarial.shape == clean.shape
  assert adversarial.min() >= 0 and adversarial.max() <= 1
  delta = adversarial - clean
  if norm == "inf":
    assert np.abs(delta).max() <= eps + 1e-6
  else:
    # float32 storage of clean + delta: half an ulp of 1 per pixel (see test_attacks_pgd).
    rounding = np.sqrt(delta[0].size) * 2.0 ** -24
    assert np.sqrt((delta ** 2).sum(axis=(1, 2, 3))).max() <= eps * (1 + 1e-5) + rounding


IMAGE_SHAPES = st.tuples(st.integers(2, 6), st.integers(2, 6), st.sampled_from([1, 3]))


@settings(max_examples=4, deadline=None)  # each example compiles: a new shape
@given(shape=IMAGE_SHAPES, batch=st.integers(1, 3), eps=st.floats(0.002, 0.5),
       alpha_ratio=st.floats(0.1, 3.0), steps=st.integers(1, 3), eot=st.integers(1, 3),
       norm=st.sampled_from(["inf", "2"]), random_start=st.booleans(), seed=SEEDS)
def test_pgd_iterates_stay_in_the_ball_for_any_image_shape_with_eot(
    shape, batch, eps, alpha_ratio, steps, eot, norm, random_start, seed):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.uniform(0, 1, (batch,) + shape).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, 4, batch).astype(np.int32))
  clf = _linear_classifier(shape, seed, jd.defenses.randomized_smoothing(0.2))
  key = jax.random.key(seed)
  kwargs = dict(eps=eps, alpha=min(1.0, eps * alpha_ratio), eot=eot, norm=norm,
                random_start=random_start, checkpoints=range(1, steps + 1))
  trajectory = jd.attacks.pgd_trajectory(key, clf, images, labels, **kwargs)
  assert sorted(trajectory) == list(range(1, steps + 1))
  for adversarial in trajectory.values():
    _assert_in_ball(adversarial, images, eps, norm)
  again = jd.attacks.pgd_trajectory(key, clf, images, labels, **kwargs)
  for k, adversarial in trajectory.items():
    np.testing.assert_array_equal(again[k], adversarial)  # a function of the key


@settings(max_examples=3, deadline=None)
@given(shape=IMAGE_SHAPES, batch=st.integers(1, 3), eps=st.floats(0.002, 0.5),
       steps=st.integers(1, 5), eot=st.integers(1, 2), norm=st.sampled_from(["inf", "2"]),
       random_start=st.booleans(), seed=SEEDS)
def test_apgd_stays_in_the_ball_for_any_image_shape_with_eot(shape, batch, eps, steps, eot, norm,
                                                             random_start, seed):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.uniform(0, 1, (batch,) + shape).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, 4, batch).astype(np.int32))
  clf = _linear_classifier(shape, seed, jd.defenses.randomized_smoothing(0.2))
  key = jax.random.key(seed)
  kwargs = dict(eps=eps, steps=steps, eot=eot, norm=norm, random_start=random_start)
  adversarial = jd.attacks.apgd(key, clf, images, labels, **kwargs)
  _assert_in_ball(adversarial, images, eps, norm)
  np.testing.assert_array_equal(jd.attacks.apgd(key, clf, images, labels, **kwargs),
                                adversarial)


# Per registered defense: the fixed batch it is checked on, whether its output stays
# in [0, 1], and whether it keeps the image's height and width.
BATCH = (2, 8, 8, 3)
DEFENSE_PROMISES = {
    "bart": dict(kappa=6),
    "fft": {},
    "gaussian_blur": {},
    "identity": {},
    "median_blur": {},
    "noise": {},
    "quantization": {},
    "random_crop": {},
    "randomized_smoothing": dict(sigma=0.25),
    "resize_pad": {},
    "rotation": {},
    "swirl": {},
}
UNCLIPPED = {"randomized_smoothing"}  # Cohen et al. do not clip (clip=False by default)
RESIZING = {"resize_pad"}  # pads to a larger square canvas
NOT_RANDOM = {"identity"}


def test_every_registered_defense_is_covered():
  assert set(jd.defenses.available()) == set(DEFENSE_PROMISES)


@pytest.mark.parametrize("name", sorted(DEFENSE_PROMISES))
def test_every_defense_keeps_shape_and_dtype_and_is_a_function_of_its_key(name):
  defense = jd.defenses.get(name, **DEFENSE_PROMISES[name])
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 1, BATCH).astype(np.float32))

  @settings(max_examples=4, deadline=None)
  @given(seed=SEEDS, other=SEEDS)
  def check(seed, other):
    out = np.asarray(defense(jax.random.key(seed), images))
    assert out.dtype == np.float32 and out.shape[0] == BATCH[0] and out.shape[-1] == BATCH[-1]
    if name in RESIZING:
      assert out.shape[1] == out.shape[2] >= BATCH[1]
    else:
      assert out.shape == BATCH
    assert np.all(np.isfinite(out))
    if name not in UNCLIPPED:
      assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(defense(jax.random.key(seed), images), out)
    draws = [np.asarray(defense(jax.random.key(s), images)) for s in (other, other + 1, other + 2)]
    differs = any(not np.array_equal(out, d) for d in draws)
    assert differs == (name not in NOT_RANDOM)

  check()
  # The key is data: every new key reused the one compiled draw (BaRT's takes seconds).
  assert defense._compiled._cache_size() == 1


@settings(max_examples=3, deadline=None)  # each example compiles a new defense
@given(sigma=st.floats(0.0, 1.0), clip=st.booleans(), batch=st.integers(1, 3),
       shape=IMAGE_SHAPES, seed=SEEDS)
def test_randomized_smoothing_over_parameters_and_shapes(sigma, clip, batch, shape, seed):
  images = jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (batch,) + shape), jnp.float32)
  defense = jd.defenses.randomized_smoothing(sigma=sigma, clip=clip)
  key = jax.random.key(seed)
  out = np.asarray(defense(key, images))
  assert out.shape == images.shape and out.dtype == np.float32
  noise = sigma * np.asarray(jax.random.normal(key, images.shape, jnp.float32))
  expected = np.asarray(images) + noise
  np.testing.assert_allclose(out, np.clip(expected, 0, 1) if clip else expected, atol=1e-6)
  samples = np.asarray(jd.defenses.sample(defense, key, images, 3))
  assert samples.shape == (3,) + images.shape
  np.testing.assert_array_equal(samples, jd.defenses.sample(defense, key, images, 3))
  if sigma > 1e-3:  # smaller noise may round away entirely in float32
    assert not np.array_equal(samples[0], samples[1])
