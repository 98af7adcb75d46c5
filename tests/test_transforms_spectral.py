"""Tests for jaxdef.transforms._spectral against numpy references."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef
from jaxdef.transforms import _spectral as spc

SHAPES = [(28, 28, 1), (17, 23, 3)]
LEVELS = np.array([1, 2, 3, 4, 7, 8, 16, 100, 200, 255], np.int32)
FFT_TOL = 1e-5


def _image(shape, seed=0):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _quantize_ref(image, levels):
  levels = np.asarray(levels, np.float32)
  return np.round(image * levels) / levels  # float32 throughout; numpy rounds half to even


def _keep_mask(key, shape, fraction):
  return np.asarray(jax.random.uniform(key, shape)) >= np.asarray(fraction, np.float32)


def _fft_ref(image, mask):
  spectrum = np.fft.fft2(np.asarray(image, np.float64), axes=(0, 1))
  return np.clip(np.fft.ifft2(spectrum * mask, axes=(0, 1)).real, 0, 1)


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


_quantize_levels = jax.jit(jax.vmap(spc.quantize, in_axes=(None, 0)))
_fft_fractions = jax.jit(jax.vmap(spc.fft_perturb, in_axes=(0, None, 0)))


# --- quantize against numpy ------------------------------------------------------


def _assert_quantized_like_numpy(out, image, levels):
  """Same grid point as numpy's round(x * levels) / levels; the value within 1 ulp of it.

  Exact for power-of-two levels. For others XLA turns the division by levels into a
  multiplication by 1 / levels, which can be 1 ulp off (documented in quantize).
  """
  ref = _quantize_ref(image, levels)
  levels = np.asarray(levels, np.float32)
  np.testing.assert_array_equal(np.round(out * levels), np.round(image * levels))
  np.testing.assert_array_max_ulp(out, ref, maxulp=1)
  if np.all(np.log2(levels) % 1 == 0):
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_matches_numpy(shape):
  """Concrete and traced levels give round(x * levels) / levels (exact for powers of 2)."""
  image = _image(shape, seed=1)
  traced = np.asarray(_quantize_levels(image, LEVELS))
  for i, levels in enumerate(LEVELS):
    _assert_quantized_like_numpy(traced[i], image, levels)
    concrete = np.asarray(spc.quantize(image, int(levels)))
    assert concrete.shape == shape and concrete.dtype == np.float32
    _assert_quantized_like_numpy(concrete, image, levels)
    assert concrete.min() >= 0 and concrete.max() <= 1


def test_quantize_four_levels_and_half_to_even():
  """levels=4 leaves only {0, .25, .5, .75, 1}; exact halves round to even like numpy."""
  image = _image((16, 16, 3), seed=2)
  out = np.asarray(spc.quantize(image, 4))
  assert set(np.unique(out).tolist()) == {0.0, 0.25, 0.5, 0.75, 1.0}
  halves = np.array([0.0, 0.125, 0.375, 0.625, 0.875, 1.0], np.float32).reshape(1, 6, 1)
  np.testing.assert_array_equal(spc.quantize(halves, 4).ravel(), [0, 0, 0.5, 0.5, 1, 1])
  np.testing.assert_array_equal(spc.quantize(image, 1), np.round(image))


def test_quantize_per_channel_levels():
  """A levels array of shape (C,) quantizes each channel with its own levels."""
  image = _image((17, 23, 3), seed=3)
  levels = np.array([2, 4, 100], np.int32)
  ref = _quantize_ref(image, levels)
  _assert_quantized_like_numpy(np.asarray(spc.quantize(image, levels)), image, levels)
  batch = np.array([[2, 4, 100], [8, 3, 1], [16, 2, 1]], np.int32)
  out = np.asarray(jax.jit(jax.vmap(spc.quantize, in_axes=(None, 0)))(image, batch))
  for i in range(3):
    _assert_quantized_like_numpy(out[i], image, batch[i])
  for c, n in enumerate(levels):
    assert np.unique(ref[..., c]).size <= n + 1


# --- fft_perturb against numpy ---------------------------------------------------

FRACTIONS = np.array([0.0, 0.05, 0.3, 0.5, 0.9, 0.95, 1.0], np.float32)


@pytest.mark.parametrize("shape", SHAPES)
def test_fft_perturb_matches_numpy(shape):
  """Traced and concrete fractions equal numpy's FFT with the same keep mask."""
  image = _image(shape, seed=4)
  keys = _keys(FRACTIONS.size, seed=1)
  traced = np.asarray(_fft_fractions(keys, image, FRACTIONS))
  assert traced.dtype == np.float32
  for i, fraction in enumerate(FRACTIONS):
    mask = _keep_mask(keys[i], shape, fraction)
    ref = _fft_ref(image, mask)
    np.testing.assert_allclose(traced[i], ref, atol=FFT_TOL, rtol=0, err_msg=f"f={fraction}")
    if i in (1, 4):
      concrete = np.asarray(spc.fft_perturb(keys[i], image, float(fraction)))
      assert concrete.shape == shape and concrete.dtype == np.float32
      np.testing.assert_allclose(concrete, ref, atol=FFT_TOL, rtol=0)
  np.testing.assert_allclose(traced[0], image, atol=FFT_TOL, rtol=0)  # fraction 0: identity
  np.testing.assert_array_equal(traced[-1], 0.0)  # fraction 1: every coefficient zeroed
  assert 0 < np.abs(traced[3] - image).mean()


def test_fft_perturb_per_channel_fraction():
  """A fraction array of shape (C,) applies per channel: 0 keeps a channel intact."""
  image = _image((20, 18, 3), seed=5)
  fraction = np.array([0.0, 0.6, 1.0], np.float32)
  key = jax.random.key(3)
  out = np.asarray(spc.fft_perturb(key, image, fraction))
  np.testing.assert_allclose(out, _fft_ref(image, _keep_mask(key, image.shape, fraction)),
                             atol=FFT_TOL, rtol=0)
  np.testing.assert_allclose(out[..., 0], image[..., 0], atol=FFT_TOL, rtol=0)
  np.testing.assert_array_equal(out[..., 2], 0.0)


# --- Random versions: parameter distributions ------------------------------------


def test_random_quantize_levels_cover_8_to_200():
  """Levels drawn by the library span exactly the integers 8..200; outputs match numpy."""
  keys = _keys(4000, seed=4)
  levels = np.asarray(jax.jit(jax.vmap(spc.quantize_levels))(keys))
  assert set(np.unique(levels).tolist()) == set(range(8, 201))
  image = _image((12, 12, 3), seed=6)
  n = 64
  out = np.asarray(jax.jit(jax.vmap(spc.random_quantize, in_axes=(0, None)))(keys[:n], image))
  assert out.shape == (n, 12, 12, 3) and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 1
  for i in range(n):
    _assert_quantized_like_numpy(out[i], image, levels[i])
  # Inclusive range: (8, 8) always quantizes to 8 levels.
  np.testing.assert_array_equal(spc.random_quantize(keys[0], image, levels_range=(8, 8)),
                                _quantize_ref(image, 8))


def test_random_fft_perturb_fractions_cover_range():
  """Per-channel fractions drawn by the library lie in [0, 0.95); outputs match numpy."""
  keys = _keys(2000, seed=5)
  fractions, mask_keys = jax.jit(jax.vmap(lambda k: spc.fft_fractions(k, 3)))(keys)
  fractions = np.asarray(fractions)
  assert 0 <= fractions.min() < 0.002 and 0.948 < fractions.max() < 0.95
  assert np.all(np.ptp(fractions, axis=1) > 0)  # one fraction per channel
  image = _image((10, 12, 3), seed=7)
  n = 32
  out = np.asarray(jax.jit(jax.vmap(spc.random_fft_perturb, in_axes=(0, None)))(keys[:n], image))
  assert out.shape == (n, 10, 12, 3) and out.min() >= 0 and out.max() <= 1
  for i in range(n):
    mask = _keep_mask(mask_keys[i], image.shape, fractions[i])
    np.testing.assert_allclose(out[i], _fft_ref(image, mask), atol=FFT_TOL, rtol=0)


# --- Determinism, jit and vmap ---------------------------------------------------

RANDOM_FNS = {"quantize": spc.random_quantize, "fft_perturb": spc.random_fft_perturb}


@pytest.mark.parametrize("name", list(RANDOM_FNS))
def test_random_vmap_over_keys_deterministic(name):
  """Same key -> same bits (batch, repeated call, eager); different keys -> different outputs."""
  fn = RANDOM_FNS[name]
  image = _image((16, 16, 3), seed=8)
  keys = _keys(40, seed=6)
  keys = jnp.concatenate([keys, keys[:4]])
  sample = jax.jit(jax.vmap(fn, in_axes=(0, None)))
  out = np.asarray(sample(keys, image))
  assert out.shape == (44, 16, 16, 3) and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 1
  np.testing.assert_array_equal(out[40:], out[:4])
  np.testing.assert_array_equal(np.asarray(sample(keys, image)), out)
  np.testing.assert_allclose(fn(keys[5], image), out[5], atol=1e-6)  # eager
  distinct = len({o.tobytes() for o in out[:40]})
  if name == "quantize":  # the output depends on the key only through the levels drawn
    levels = jax.vmap(lambda k: jax.random.randint(k, (), 8, 201))(keys[:40])
    assert distinct == len(set(np.asarray(levels).tolist())) > 30
  else:
    assert distinct == 40


@pytest.mark.parametrize("name", list(RANDOM_FNS))
def test_random_vmap_over_images_with_per_image_keys(name):
  """vmap over (keys, images): each output depends only on its own pair."""
  fn = RANDOM_FNS[name]
  images = _image((5, 9, 11, 3), seed=9)
  keys = _keys(5, seed=7)
  sample = jax.jit(jax.vmap(fn))
  out = np.asarray(sample(keys, images))
  assert out.shape == images.shape and out.dtype == np.float32
  order = np.array([4, 2, 0, 1, 3])
  np.testing.assert_allclose(sample(keys[order], images[order]), out[order], atol=1e-6)


def test_jit_equals_eager_and_traces_once():
  """levels and fraction as jit arguments: one trace, eager values."""
  image = _image((14, 13, 3), seed=10)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def quantize(levels):
    return spc.quantize(image, levels)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fft_perturb(key, fraction):
    return spc.fft_perturb(key, image, fraction)

  for levels in (1, 8, 200):
    np.testing.assert_allclose(quantize(levels), spc.quantize(image, levels), atol=1e-6)
  for i, fraction in enumerate((0.0, 0.4, 0.9)):
    key = jax.random.key(i)
    np.testing.assert_allclose(fft_perturb(key, fraction), spc.fft_perturb(key, image, fraction),
                               atol=1e-6)


def test_dtype_preserved():
  """float16 and bfloat16 images come back in their own dtype."""
  image = _image((6, 6, 2), seed=11)
  for dtype in (jnp.float16, jnp.bfloat16):
    assert spc.quantize(jnp.asarray(image, dtype), 8).dtype == dtype
  x = jnp.asarray(image, jnp.float16)
  assert spc.fft_perturb(jax.random.key(0), x, 0.3).dtype == jnp.float16


# --- Gradients -------------------------------------------------------------------


def test_quantize_gradients():
  """True gradient is zero; bpda(quantize) and bpda(random_quantize) give all ones."""
  image = jnp.asarray(_image((10, 10, 3), seed=12))
  grad = jax.grad(lambda x: spc.quantize(x, 8).sum())(image)
  np.testing.assert_array_equal(grad, np.zeros(image.shape))
  grad = jax.grad(lambda x: jaxdef.bpda(spc.quantize)(x, 8).sum())(image)
  np.testing.assert_array_equal(grad, np.ones(image.shape))
  np.testing.assert_array_equal(jaxdef.bpda(spc.quantize)(image, 8), spc.quantize(image, 8))
  grad = jax.jit(jax.grad(lambda x, n: jaxdef.bpda(spc.quantize)(x, n).sum()))(image, 16)
  np.testing.assert_array_equal(grad, np.ones(image.shape))
  key = jax.random.key(4)
  grad = jax.jit(jax.grad(lambda x: jaxdef.bpda(spc.random_quantize)(key, x).sum()))(image)
  np.testing.assert_array_equal(grad, np.ones(image.shape))
  grad = jax.grad(lambda x: spc.random_quantize(key, x).sum())(image)
  np.testing.assert_array_equal(grad, np.zeros(image.shape))


def test_fft_perturb_gradient_finite():
  """fft_perturb and random_fft_perturb pass finite, non-zero gradients to the image."""
  image = jnp.asarray(_image((12, 10, 3), seed=13))
  weights = jnp.asarray(_image((12, 10, 3), seed=14))
  key = jax.random.key(5)
  grad_fn = jax.jit(jax.grad(lambda x, f: (spc.fft_perturb(key, x, f) * weights).sum()))
  random_grad_fn = jax.jit(jax.grad(lambda x: (spc.random_fft_perturb(key, x) * weights).sum()))
  for grad in (grad_fn(image, 0.3), random_grad_fn(image)):
    assert grad.shape == image.shape
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
  # fraction 0 is the identity map, so its gradient is the identity too (inside [0, 1]).
  np.testing.assert_allclose(grad_fn(image, 0.0), weights, atol=1e-5)


# --- Bad input -------------------------------------------------------------------

GOOD = _image((16, 16, 3), seed=15)
NAN = GOOD.copy()
NAN[0, 0, 0] = np.nan
KEY = jax.random.key(6)
BAD_CALLS = [
    (lambda: spc.quantize(GOOD[..., 0], 8), ValueError, "image must have rank 3"),
    (lambda: spc.fft_perturb(KEY, GOOD[None], 0.5), ValueError, "image must have rank 3"),
    (lambda: spc.random_quantize(KEY, GOOD.reshape(-1)), ValueError, "image must have rank 3"),
    (lambda: spc.quantize((GOOD * 255).astype(np.uint8), 8), TypeError, "image must be float"),
    (lambda: spc.random_fft_perturb(KEY, (GOOD * 255).astype(np.int64)), TypeError,
     "image must be float"),
    (lambda: spc.quantize(GOOD + 1, 8), ValueError, "image values must lie"),
    (lambda: spc.fft_perturb(KEY, -GOOD - 0.01, 0.5), ValueError, "image values must lie"),
    (lambda: spc.quantize(NAN, 8), ValueError, "image contains NaN"),
    (lambda: spc.random_fft_perturb(KEY, NAN), ValueError, "image contains NaN"),
    (lambda: spc.quantize(GOOD, 0), ValueError, "levels must be in"),
    (lambda: spc.quantize(GOOD, -3), ValueError, "levels must be in"),
    (lambda: spc.quantize(GOOD, 2.5), ValueError, "levels must be an integer"),
    (lambda: spc.fft_perturb(KEY, GOOD, 1.5), ValueError, "fraction must be in"),
    (lambda: spc.fft_perturb(KEY, GOOD, -0.1), ValueError, "fraction must be in"),
    (lambda: spc.fft_perturb(KEY, GOOD, float("nan")), ValueError, "fraction must be finite"),
    (lambda: spc.random_quantize(KEY, GOOD, levels_range=(0, 8)), ValueError, "levels_range"),
    (lambda: spc.random_quantize(KEY, GOOD, levels_range=(20, 8)), ValueError, "levels_range"),
    (lambda: spc.random_quantize(KEY, GOOD, levels_range=(8.5, 20)), ValueError, "levels_range"),
    (lambda: spc.random_fft_perturb(KEY, GOOD, fraction_range=(0.5, 0.2)), ValueError,
     "fraction_range"),
    (lambda: spc.random_fft_perturb(KEY, GOOD, fraction_range=(0.0, 1.5)), ValueError,
     "fraction_range"),
    (lambda: spc.random_fft_perturb(KEY, GOOD, fraction_range=0.5), ValueError,
     "fraction_range"),
    (lambda: spc.random_quantize(0, GOOD), TypeError, "key"),
]


@pytest.mark.parametrize("call,error,match", BAD_CALLS)
def test_bad_input_raises_clear_error(call, error, match):
  """Bad arguments raise an error whose message names the argument."""
  with pytest.raises(error, match=match):
    call()



BAD_PER_CHANNEL = [
    (lambda: spc.quantize(GOOD, np.array([4, 0, 8])), "levels"),
    (lambda: spc.quantize(GOOD, np.array([4, -1, 8])), "levels"),
    (lambda: spc.quantize(GOOD, np.array([4, 2.5, 8])), "levels"),
    (lambda: spc.fft_perturb(KEY, GOOD, np.array([0.5, 2.0, 0.1])), "fraction"),
    (lambda: spc.fft_perturb(KEY, GOOD, np.array([0.5, np.nan, 0.1])), "fraction"),
]


@pytest.mark.parametrize("call,match", BAD_PER_CHANNEL)
def test_bad_per_channel_parameters_raise(call, match):
  """Out-of-range entries of a per-channel levels/fraction array raise like scalars do."""
  with pytest.raises(ValueError, match=match):
    call()
