"""Tests of jaxdef.defenses: the Defense value, registry, BaRT, compose, sample, bpda."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd
from jaxdef import defenses as D
from jaxdef import transforms as T

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.uniform(0.05, 0.95, (3, 20, 20, 3)).astype(np.float32))


# --- registry ---------------------------------------------------------------

def test_registry_lists_the_study_defenses():
  for name in ("identity", "randomized_smoothing", "bart", "noise", "gaussian_blur",
               "median_blur", "swirl", "quantization", "fft", "rotation", "random_crop",
               "resize_pad"):
    assert name in D.available()


def test_unknown_name_lists_valid_ones():
  with pytest.raises(ValueError, match="unknown defense 'barrt'.*bart.*randomized_smoothing"):
    D.get("barrt")


def test_unknown_parameter_lists_accepted_ones():
  with pytest.raises(TypeError, match="does not take sigm.*sigma, clip"):
    D.get("randomized_smoothing", sigm=0.1)


@pytest.mark.parametrize("kappa", [0, 7, 2.5, True, "3"])
def test_bart_kappa_out_of_range(kappa):
  with pytest.raises(ValueError, match="kappa must be an integer in 1..6"):
    D.bart(kappa=kappa)


@pytest.mark.parametrize("name, params, match", [
    ("randomized_smoothing", {"sigma": -0.1}, "sigma"),
    ("gaussian_blur", {"sigma_range": (2.0, 1.0)}, "sigma_range"),
    ("median_blur", {"kernel_size_range": (5, 5)}, "kernel_size_range"),
    ("quantization", {"levels_range": (0, 10)}, "levels_range"),
    ("fft", {"fraction_range": (0.5, 1.5)}, "fraction_range"),
    ("noise", {"kinds": ("gaussian", "pink")}, "kinds"),
    ("swirl", {"strength_range": (1.0, 0.5)}, "strength_range"),
    ("rotation", {"mode": "bogus"}, "mode"),
])
def test_bad_parameters_fail_at_construction(name, params, match):
  with pytest.raises((ValueError, TypeError), match=match):
    D.get(name, **params)


# --- calling a defense ------------------------------------------------------

@pytest.mark.parametrize("bad, error, match", [
    (np.zeros((20, 20, 3), np.float32), ValueError, "images must have rank 4"),
    (np.zeros((2, 20, 20, 3), np.uint8), TypeError, "images must be floating point"),
    (np.full((2, 20, 20, 3), 2.0, np.float32), ValueError, r"images values must lie in \[0, 1\]"),
    (np.full((2, 20, 20, 3), np.nan, np.float32), ValueError, "images contains NaN"),
    (np.zeros((0, 20, 20, 3), np.float32), ValueError, "images must not be empty"),
])
def test_bad_images_are_named(bad, error, match):
  with pytest.raises(error, match=match):
    D.randomized_smoothing(0.1)(KEY, bad)


def test_bad_key_is_named(images):
  with pytest.raises(TypeError, match="key must be a jax.random key"):
    D.randomized_smoothing(0.1)(1234, images)


def test_images_of_a_batch_get_independent_parameters():
  image = np.random.default_rng(1).uniform(0.1, 0.9, (1, 16, 16, 1)).astype(np.float32)
  batch = jnp.asarray(np.repeat(image, 2, axis=0))
  out = D.get("gaussian_blur")(KEY, batch)
  assert not np.array_equal(out[0], out[1])


def test_resize_pad_outputs_the_canvas(images):
  out = D.random_resize_pad()(KEY, images)
  side = round(20 * 331 / 299)
  assert out.shape == (3, side, side, 3)


def test_smoothing_matches_its_formula_and_has_the_true_gradient(images):
  defense = D.randomized_smoothing(sigma=0.25)
  expected = images + 0.25 * jax.random.normal(KEY, images.shape)
  np.testing.assert_allclose(defense(KEY, images), expected, rtol=0, atol=1e-6)
  grad = jax.grad(lambda x: defense(KEY, x).sum())(images)
  np.testing.assert_array_equal(grad, np.ones_like(images))
  clipped = D.randomized_smoothing(sigma=0.25, clip=True)(KEY, images)
  assert float(clipped.min()) >= 0 and float(clipped.max()) <= 1


def test_smoothing_noise_has_the_requested_std():
  x = jnp.full((64, 16, 16, 3), 0.5, jnp.float32)
  noise = D.randomized_smoothing(sigma=0.5)(KEY, x) - x
  assert abs(float(noise.std()) - 0.5) < 0.01 and abs(float(noise.mean())) < 0.01


# --- BaRT -------------------------------------------------------------------

def _affine_bart():
  """BaRT over two non-commuting transforms, to read off the order used."""
  add = lambda key, image: image + 0.1
  halve = lambda key, image: image * 0.5
  return D.bart(kappa=2, transforms=[("add", add), ("halve", halve)])


def test_bart_applies_every_transform_once_in_a_random_order():
  x = jnp.full((400, 2, 2, 1), 0.4, jnp.float32)
  out = np.asarray(_affine_bart()(KEY, x))[:, 0, 0, 0]
  add_first, halve_first = (0.4 + 0.1) * 0.5, 0.4 * 0.5 + 0.1
  is_add_first = np.isclose(out, add_first)
  assert np.all(is_add_first | np.isclose(out, halve_first))
  assert 0.4 < is_add_first.mean() < 0.6  # both orders, about equally often


def test_bart_orders_cover_all_permutations():
  keys = jax.random.split(KEY, 600)
  orders = np.asarray(jax.vmap(lambda k: D.bart_order(k, 3))(keys))
  assert {tuple(o) for o in orders} == {(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1),
                                        (2, 1, 0)}


def test_bart_order_is_the_one_applied():
  tags = [(f"t{i}", functools.partial(lambda i, key, image: image * 10 + i, i)) for i in range(3)]
  defense = D.bart(kappa=3, transforms=tags)
  x = jnp.zeros((1, 1, 1, 1), jnp.float32)
  for seed in range(5):
    key = jax.random.key(seed)
    per_image_key = jax.random.split(key, 1)[0]
    order = np.asarray(D.bart_order(per_image_key, 3))
    value = float(defense(key, x)[0, 0, 0, 0])  # digits spell the order
    assert value == pytest.approx(order[0] * 100 + order[1] * 10 + order[2])


# Each transform compiled once for one image (called eagerly, its ops would
# compile one by one: hundreds of programs).
_ONE_IMAGE_TRANSFORMS = [jax.jit(transform) for _, transform in D.BART_TRANSFORMS]


def _bart_one_image_at_a_time(key, images, kappa):
  """Reference: each image alone, its transforms applied one by one in its drawn order.

  No vmap anywhere, so every per-image switch (BaRT's position, the noise
  kind, the median kernel size) is a plain branch: what the routed, batched
  BaRT must reproduce.
  """
  outputs = []
  for image_key, image in zip(jax.random.split(key, images.shape[0]), images):
    order = np.asarray(D.bart_order(image_key, kappa))
    step_keys = jax.random.split(jax.random.split(image_key)[1], kappa)
    for position, index in enumerate(order):
      image = _ONE_IMAGE_TRANSFORMS[index](step_keys[position], image)
    outputs.append(image)
  return jnp.stack(outputs)


def test_bart6_values_and_gradients_equal_images_one_at_a_time(images):
  """Routed BaRT-6 under jit and vmap applies, and differentiates, each image's own draw.

  One vector-Jacobian product each way gives both the values and the
  gradients (the reference costs seconds per pass).
  """
  x = jnp.concatenate([images, images[::-1]])  # 6 images: several per transform and position
  key = jax.random.key(3)
  cotangent = jax.random.normal(jax.random.key(4), x.shape)

  def values_and_gradient(fn, x, cotangent):
    values, pullback = jax.vjp(fn, x)
    return values, pullback(cotangent)[0]

  defense = D.bart(kappa=6)
  batched, batched_gradient = jax.jit(
      lambda x, c: values_and_gradient(lambda y: defense.fn(key, y), x, c))(x, cotangent)
  reference, reference_gradient = values_and_gradient(
      lambda y: _bart_one_image_at_a_time(key, y, 6), x, cotangent)
  close = np.isclose(batched, reference, rtol=0, atol=1e-5)
  # Quantization can move a value that sits on a rounding boundary to the next
  # level when fused arithmetic differs by an ulp; anything more is a bug.
  assert close.mean() > 0.999, close.mean()
  assert np.all(np.isfinite(batched_gradient)) and float(jnp.abs(batched_gradient).sum()) > 0
  np.testing.assert_allclose(batched_gradient, reference_gradient, rtol=1e-4, atol=1e-4)


def test_bart_per_call_order_is_shared_by_the_batch_and_random_across_calls():
  tags = [(f"t{i}", functools.partial(lambda i, key, image: image * 10 + i, i)) for i in range(3)]
  defense = D.bart(kappa=3, transforms=tags, order="per_call")
  assert defense.describe()["order"] == "per_call"
  x = jnp.zeros((16, 1, 1, 1), jnp.float32)
  spelled = set()
  for seed in range(12):
    values = np.asarray(defense(jax.random.key(seed), x))[:, 0, 0, 0]
    assert np.all(values == values[0])  # one order for the whole batch
    spelled.add(int(round(values[0])))
  assert len(spelled) >= 4  # and orders vary between calls
  with pytest.raises(ValueError, match="order must be one of"):
    D.bart(order="per_batch")


# --- sample, compose, from_transform ---------------------------------------

def test_sample_is_one_vmapped_call_equal_to_separate_draws(images):
  defense = D.get("gaussian_blur")
  samples = D.sample(defense, KEY, images, 5)
  assert samples.shape == (5,) + images.shape
  keys = jax.random.split(KEY, 5)
  for i in range(5):
    np.testing.assert_allclose(samples[i], defense(keys[i], images), atol=1e-6)


def test_sample_chunked_equals_unchunked(images):
  defense = D.get("gaussian_blur")
  full = D.sample(defense, KEY, images, 6)
  chunked = D.sample(defense, KEY, images, 6, chunk_size=4)
  np.testing.assert_allclose(full, chunked, atol=1e-6)


def test_sample_500_draws_in_one_call(images):
  samples = D.sample(D.randomized_smoothing(0.25), KEY, images, 500)
  assert samples.shape == (500,) + images.shape
  assert float(jnp.std(samples, axis=0).mean()) == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("n, match", [(0, "n must be in"), (2.5, "n must be an integer")])
def test_sample_bad_n(images, n, match):
  with pytest.raises(ValueError, match=match):
    D.sample(D.identity(), KEY, images, n)


def test_compose_applies_parts_in_order_with_split_keys(images):
  first, second = D.get("fft"), D.randomized_smoothing(0.1)
  composed = D.compose(first, second)
  k1, k2 = jax.random.split(KEY)
  np.testing.assert_allclose(composed(KEY, images), second(k2, first(k1, images)), atol=1e-6)
  assert "fft" in composed.name and "randomized_smoothing" in composed.name


def test_plain_functions_are_defenses(images):
  shift = lambda key, x: jnp.clip(x + jax.random.uniform(key, ()) * 0.1, 0, 1)
  out = D.sample(shift, KEY, images, 3)
  assert out.shape == (3,) + images.shape
  assert D.compose(shift, D.identity())(KEY, images).shape == images.shape


def test_a_user_transform_gets_jit_vmap_bpda_composition_and_a_name(images, monkeypatch):
  from jaxdef.defenses import _core

  # A registry copy for this test: the registration must not leak into other
  # tests (tests/test_properties.py checks that every registered defense is covered).
  monkeypatch.setattr(_core, "_REGISTRY", dict(_core._REGISTRY))

  def random_posterize(key, image):
    levels = jax.random.randint(key, (), 2, 5)
    return jnp.round(image * levels) / levels

  @D.register("posterize_test")
  def posterize():
    return D.from_transform(jd.bpda(random_posterize), name="posterize_test")

  defense = D.get("posterize_test")
  out = D.sample(D.compose(defense, D.randomized_smoothing(0.0)), KEY, images, 4)
  assert out.shape == (4,) + images.shape
  grad = jax.grad(lambda x: defense(KEY, x).sum())(images)
  np.testing.assert_array_equal(grad, np.ones_like(images))


# --- bpda -------------------------------------------------------------------

def test_bpda_forward_is_exact_and_backward_is_identity():
  image = jnp.asarray(np.random.default_rng(2).random((8, 8, 3)).astype(np.float32))
  wrapped = jd.bpda(T.quantize)
  np.testing.assert_array_equal(wrapped(image, 4), T.quantize(image, 4))
  cotangent = jnp.asarray(np.random.default_rng(3).normal(size=(8, 8, 3)).astype(np.float32))
  _, vjp = jax.vjp(lambda x: wrapped(x, 4), image)
  np.testing.assert_array_equal(vjp(cotangent)[0], cotangent)
  # Without BPDA the rounding has no gradient at all.
  assert float(jnp.abs(jax.grad(lambda x: T.quantize(x, 4).sum())(image)).sum()) == 0


def test_bpda_swirl_defense_gradient_is_identity(images):
  grad = jax.grad(lambda x: (D.swirl()(KEY, x) * 3).sum())(images)
  np.testing.assert_allclose(grad, np.full(images.shape, 3.0), atol=0)


def test_bpda_works_in_forward_mode_and_under_jit_and_vmap():
  image = jnp.full((4, 4, 1), 0.3, jnp.float32)
  wrapped = jd.bpda(T.random_quantize)
  _, tangent = jax.jvp(lambda x: wrapped(KEY, x), (image,), (jnp.ones_like(image),))
  np.testing.assert_array_equal(tangent, np.ones_like(image))
  keys = jax.random.split(KEY, 3)
  out = jax.jit(jax.vmap(lambda k: wrapped(k, image)))(keys)
  assert out.shape == (3, 4, 4, 1)


def test_bpda_errors():
  with pytest.raises(TypeError, match="bpda expects a callable"):
    jd.bpda(3)
  with pytest.raises(ValueError, match="no positional argument is a floating-point array"):
    jd.bpda(lambda n: n)(3)
  shrink = jd.bpda(lambda x: x[:2])
  with pytest.raises(ValueError, match="shape-preserving"):
    jax.grad(lambda x: shrink(x).sum())(jnp.ones((4,)))
