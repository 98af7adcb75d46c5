"""Tests for jaxdef.transforms._filters against scipy.ndimage references."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxdef.transforms import _filters as flt
from jaxdef.transforms import _routing
from jaxdef.transforms import routed_switch

MAX = 13  # the largest kernel of the default range, 3..13
ODD = np.arange(1, MAX + 1, 2, dtype=np.int32)  # 1, 3, ..., 13
SHAPES = [(28, 28, 1), (17, 23, 3), (5, 4, 2)]  # the last is smaller than the largest kernel
GAUSS_TOL = 1e-5


def _image(shape, seed=0, levels=None):
  image = np.random.default_rng(seed).random(shape, dtype=np.float32)
  if levels is not None:  # repeated values: ties in every window
    image = (np.round(image * levels) / levels).astype(np.float32)
  return image


def _median_ref(image, k):
  return ndimage.median_filter(image, size=(int(k), int(k), 1), mode="reflect")


def _gauss_ref(image, k, sigma):
  return ndimage.gaussian_filter(np.asarray(image, np.float64), sigma=float(sigma),
                                 radius=(int(k) - 1) // 2, mode="reflect", axes=(0, 1))


# One compiled program per image shape serves every kernel size (batch of 14).
_median13 = jax.jit(jax.vmap(lambda x, k: flt.median_blur(x, k, max_kernel_size=MAX)))
_gauss_params = jax.jit(jax.vmap(lambda x, k, s: flt.gaussian_blur(x, k, s, max_kernel_size=MAX),
                                 in_axes=(None, 0, 0)))


# --- Median blur against scipy -------------------------------------------------


@pytest.mark.parametrize("shape,sizes,levels", [((28, 28, 1), (1, 3), None),
                                                ((17, 23, 3), (5,), 4), ((5, 4, 2), (13,), None)])
def test_median_blur_concrete_size_matches_scipy(shape, sizes, levels):
  """A Python-int kernel size gives scipy's median_filter(reflect) exactly, ties too."""
  image = _image(shape, seed=1, levels=levels)
  for k in sizes:
    out = np.asarray(flt.median_blur(image, k))
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, _median_ref(image, k), err_msg=f"k={k}")


@pytest.mark.parametrize("shape", SHAPES[1:])  # each shape costs a compile; 28x28x1 is above
def test_median_blur_traced_size_matches_scipy(shape):
  """Traced sizes 1..13 under jit+vmap (max 13) equal scipy, also with ties (4 levels)."""
  images = np.stack([_image(shape, seed=2)] * 7 + [_image(shape, seed=2, levels=4)] * 7)
  sizes = np.concatenate([ODD, ODD])
  out = np.asarray(_median13(images, sizes))
  assert out.shape == images.shape and out.dtype == np.float32
  for i, k in enumerate(sizes):
    np.testing.assert_array_equal(out[i], _median_ref(images[i], k), err_msg=f"k={k}")


def test_median_blur_vmap_per_image_kernel_sizes():
  """vmap over 14 different images with per-image kernel sizes matches scipy."""
  images = _image((14, 17, 23, 3), seed=4)
  images[::3] = np.round(images[::3] * 3) / 3
  sizes = np.random.default_rng(4).choice(ODD, 14).astype(np.int32)
  out = np.asarray(_median13(images, sizes))
  for i, k in enumerate(sizes):
    np.testing.assert_array_equal(out[i], _median_ref(images[i], k), err_msg=f"k={k}")


def _value_and_gradient(fn, image, cotangent):
  out, vjp = jax.vjp(fn, image)
  return out, vjp(cotangent)[0]


def test_median_blur_above_the_networks_uses_bisection_and_matches_scipy():
  """Sizes above 13 (bisection) and below (networks) routed in one vmapped call, and concrete 15.

  Values against scipy, gradients against `_median_gradient_ref` (ties included).
  """
  images = _image((4, 19, 18, 2), seed=9)
  images[1] = np.round(images[1] * 3) / 3  # ties
  sizes = np.array([15, 3, 17, 13], np.int32)
  cotangents = np.random.default_rng(10).normal(size=images.shape).astype(np.float32)
  assert sizes.max() > flt.NETWORK_MAX_KERNEL_SIZE
  out, gradients = map(np.asarray, jax.jit(jax.vmap(lambda x, k, c: _value_and_gradient(
      lambda y: flt.median_blur(y, k, max_kernel_size=17), x, c)))(images, sizes, cotangents))
  for i, k in enumerate(sizes):
    np.testing.assert_array_equal(out[i], _median_ref(images[i], k), err_msg=f"k={k}")
    np.testing.assert_allclose(gradients[i], _median_gradient_ref(images[i], k, cotangents[i]),
                               rtol=1e-5, atol=1e-6, err_msg=f"k={k}")
  np.testing.assert_array_equal(flt.median_blur(images[0], 15), _median_ref(images[0], 15))
  static = jax.jit(lambda x, c: _value_and_gradient(lambda y: flt.median_blur(y, 15), x, c))
  np.testing.assert_allclose(static(images[1], cotangents[1])[1],
                             _median_gradient_ref(images[1], 15, cotangents[1]),
                             rtol=1e-5, atol=1e-6)


def _median_gradient_ref(image, k, cotangent):
  """numpy: each output's cotangent shared equally by the window elements equal to its median."""
  k, r = int(k), int(k) // 2
  padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="symmetric")
  gradient = np.zeros_like(padded, np.float64)
  height, width, channels = image.shape
  for i in range(height):
    for j in range(width):
      for c in range(channels):
        window = padded[i:i + k, j:j + k, c]
        ties = window == np.median(window)
        gradient[i:i + k, j:j + k, c] += ties * cotangent[i, j, c] / ties.sum()
  # Fold the reflected border back onto the pixels it copies (r <= H, W here).
  for axis in (0, 1):
    gradient = np.moveaxis(gradient, axis, 0)
    inner = gradient[r:gradient.shape[0] - r].copy()
    if r:
      inner[:r] += gradient[:r][::-1]
      inner[-r:] += gradient[-r:][::-1]
    gradient = np.moveaxis(inner, 0, axis)
  return gradient


def test_median_blur_negative_zero_and_tolerated_overshoot():
  """Values just outside [0, 1] (within tolerance) and -0.0 order like scipy's."""
  image = _image((9, 9, 1), seed=5, levels=2)
  image[image == 0] = -0.0
  image[0, :4, 0] = (-5e-5, 1 + 5e-5, -2e-5, 1.0)
  out = np.asarray(flt.median_blur(image, 3))
  np.testing.assert_array_equal(out, _median_ref(image, 3))


# --- Gaussian blur against scipy -----------------------------------------------

GAUSS_CASES = [(1, 1.0), (3, 0.5), (3, 3.0), (5, 1.0), (7, 0.1), (9, 2.5), (11, 1.7), (13, 3.1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_blur_matches_scipy(shape):
  """Concrete and traced (max 13) sizes and sigmas equal scipy's gaussian_filter."""
  image = _image(shape, seed=6)
  sizes = np.array([k for k, _ in GAUSS_CASES], np.int32)
  sigmas = np.array([s for _, s in GAUSS_CASES], np.float32)
  traced = np.asarray(_gauss_params(image, sizes, sigmas))
  for i, (k, sigma) in enumerate(GAUSS_CASES):
    ref = _gauss_ref(image, k, sigmas[i])
    np.testing.assert_allclose(traced[i], ref, atol=GAUSS_TOL, rtol=0, err_msg=f"k={k}")
    if i in (0, 4, 7):
      concrete = np.asarray(flt.gaussian_blur(image, k, sigma))
      assert concrete.shape == shape and concrete.dtype == np.float32
      np.testing.assert_allclose(concrete, ref, atol=GAUSS_TOL, rtol=0, err_msg=f"k={k}")


def test_gaussian_blur_kernel_size_one_is_identity():
  """A 1x1 kernel returns the image whatever sigma."""
  image = _image((6, 7, 3), seed=7)
  np.testing.assert_array_equal(flt.gaussian_blur(image, 1, 0.3), image)
  np.testing.assert_array_equal(flt.median_blur(image, 1), image)


def test_gaussian_blur_max_kernel_size_larger_than_needed():
  """An explicit larger max_kernel_size does not change a concrete result."""
  image = _image((10, 11, 2), seed=8)
  np.testing.assert_allclose(flt.gaussian_blur(image, 5, 1.2, max_kernel_size=11),
                             _gauss_ref(image, 5, np.float32(1.2)), atol=GAUSS_TOL, rtol=0)
  np.testing.assert_array_equal(flt.median_blur(image, 3, max_kernel_size=7),
                                _median_ref(image, 3))


# --- Random versions: parameter distributions ----------------------------------

N_DRAWS = 2000


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


@jax.jit
def _odd_sizes(keys):
  """The kernel sizes random_median_blur draws, through the library's `random_kernel_size`."""
  return jax.vmap(flt.random_kernel_size)(keys)


def test_random_median_blur_kernel_sizes_cover_3_to_13():
  """Kernel sizes inferred from outputs (scipy match) are exactly {3, ..., 13}."""
  image = _image((6, 7, 1), seed=9)
  refs = {int(k): _median_ref(image, k) for k in ODD}
  assert len({r.tobytes() for r in refs.values()}) == len(refs)  # sizes tell apart
  keys = _keys(120, seed=1)
  out = np.asarray(jax.jit(jax.vmap(lambda k: flt.random_median_blur(k, image)))(keys))
  assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
  inferred = []
  for o in out:
    matches = [k for k, r in refs.items() if np.array_equal(o, r)]
    assert len(matches) == 1, "output matches no scipy median of any odd size"
    inferred.append(matches[0])
  assert set(inferred) == {3, 5, 7, 9, 11, 13}
  np.testing.assert_array_equal(inferred, _odd_sizes(keys))  # the library's draw
  # Each size has probability 1/6 (two of the 12 integers in [2, 14)).
  sizes = np.asarray(_odd_sizes(_keys(N_DRAWS, seed=2)))
  counts = np.array([np.sum(sizes == k) for k in range(3, 14, 2)])
  assert set(np.unique(sizes)) == {3, 5, 7, 9, 11, 13}
  assert np.all(np.abs(counts / N_DRAWS - 1 / 6) < 0.04), counts


def test_random_median_blur_custom_range():
  """kernel_size_range=(4, 6) draws 5 only (4 rounds up); (1, 2) draws 1 (identity)."""
  image = _image((8, 8, 1), seed=10)
  out = jax.jit(jax.vmap(lambda k: flt.random_median_blur(k, image, kernel_size_range=(4, 6))))(
      _keys(8))
  for o in np.asarray(out):
    np.testing.assert_array_equal(o, _median_ref(image, 5))
  out = flt.random_median_blur(jax.random.key(3), image, kernel_size_range=(1, 2))
  np.testing.assert_array_equal(out, image)


def test_random_gaussian_blur_parameters_and_outputs():
  """Sizes are {3..13}, sigma in [0.1, 3.1); outputs equal scipy for those draws."""
  keys = _keys(N_DRAWS, seed=4)
  sizes, sigmas = map(np.asarray, jax.jit(jax.vmap(flt.gaussian_blur_parameters))(keys))
  assert set(np.unique(sizes)) == {3, 5, 7, 9, 11, 13}
  assert 0.1 <= sigmas.min() < 0.11 and 3.09 < sigmas.max() < 3.1
  image = _image((11, 9, 2), seed=11)
  n = 48
  out = np.asarray(jax.jit(jax.vmap(lambda k: flt.random_gaussian_blur(k, image)))(keys[:n]))
  assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
  assert set(sizes[:n]) == {3, 5, 7, 9, 11, 13}
  for i in range(n):
    np.testing.assert_allclose(out[i], _gauss_ref(image, sizes[i], sigmas[i]), atol=GAUSS_TOL,
                               rtol=0, err_msg=f"draw {i}: k={sizes[i]} sigma={sigmas[i]}")


# --- Determinism, jit and vmap -------------------------------------------------

# Smaller kernel ranges than the default keep the compile time down.
RANDOM_FNS = {
    "median": lambda key, image: flt.random_median_blur(key, image, kernel_size_range=(2, 8)),
    "gaussian": flt.random_gaussian_blur,
}


@pytest.mark.parametrize("name", list(RANDOM_FNS))
def test_random_vmap_over_keys_deterministic(name):
  """Same key -> same bits; distinct draws -> distinct outputs; range and dtype kept."""
  fn = RANDOM_FNS[name]
  image = _image((12, 12, 3), seed=12)
  keys = _keys(40, seed=5)
  keys = jnp.concatenate([keys, keys[:4]])
  sample = jax.jit(jax.vmap(lambda k: fn(k, image)))
  out = np.asarray(sample(keys))
  assert out.shape == (44, 12, 12, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(out[40:], out[:4])
  np.testing.assert_array_equal(np.asarray(sample(keys)), out)
  if name == "gaussian":  # eager: same bits twice, jit's values (eager median is slow)
    np.testing.assert_array_equal(fn(keys[7], image), fn(keys[7], image))
    np.testing.assert_allclose(fn(keys[7], image), out[7], atol=1e-6)
  distinct = len({o.tobytes() for o in out[:40]})
  if name == "median":  # the output depends on the key only through the kernel size
    sizes = jax.vmap(lambda k: flt.random_kernel_size(k, kernel_size_range=(2, 8)))(keys[:40])
    assert distinct == len(set(np.asarray(sizes).tolist())) == 3
  else:
    assert distinct == 40


@pytest.mark.parametrize("name", list(RANDOM_FNS))
def test_random_vmap_over_images_with_per_image_keys(name):
  """vmap over (keys, images): each output depends only on its own pair."""
  fn = RANDOM_FNS[name]
  images = _image((5, 10, 9, 2), seed=13)
  keys = _keys(5, seed=6)
  sample = jax.jit(jax.vmap(fn))
  out = np.asarray(sample(keys, images))
  assert out.shape == images.shape and out.dtype == np.float32
  order = np.array([2, 4, 0, 3, 1])
  np.testing.assert_allclose(sample(keys[order], images[order]), out[order], atol=1e-6)


def test_jit_equals_eager_and_traces_once():
  """Kernel size and sigma as jit arguments: one trace, eager values."""
  image = _image((14, 15, 3), seed=14)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def median(k):
    return flt.median_blur(image, k, max_kernel_size=7)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def gauss(k, sigma):
    return flt.gaussian_blur(image, k, sigma, max_kernel_size=MAX)

  np.testing.assert_allclose(median(3), flt.median_blur(image, 3), atol=1e-6)
  for k in (5, 7):
    np.testing.assert_array_equal(median(k), _median_ref(image, k))
  for k, sigma in ((1, 0.5), (5, 1.3), (13, 3.0), (9, 0.2)):
    np.testing.assert_allclose(gauss(k, sigma), flt.gaussian_blur(image, k, sigma), atol=1e-6)


def test_dtype_preserved():
  """float16 and bfloat16 images come back in their own dtype."""
  image = _image((6, 6, 1), seed=15)
  assert flt.median_blur(jnp.asarray(image, jnp.float16), 3).dtype == jnp.float16
  for dtype in (jnp.float16, jnp.bfloat16):
    assert flt.gaussian_blur(jnp.asarray(image, dtype), 3, 1.0).dtype == dtype


# --- Gradients -----------------------------------------------------------------


def test_gaussian_blur_gradient():
  """Finite, non-zero; the gradient of sum() totals H*W*C (normalised kernel)."""
  image = jnp.asarray(_image((10, 12, 3), seed=16))
  weights = jnp.asarray(_image((10, 12, 3), seed=17))
  grad_fn = jax.jit(jax.grad(lambda x, k, s, w: (flt.gaussian_blur(x, k, s, max_kernel_size=MAX)
                                                 * w).sum()))
  grad = np.asarray(grad_fn(image, 7, 1.5, weights))
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
  ones = np.asarray(grad_fn(image, 13, 2.0, jnp.ones_like(image)))
  np.testing.assert_allclose(ones.sum(), image.size, rtol=1e-5)
  assert np.all(ones > 0)


def test_median_blur_gradient_goes_to_median_element():
  """d out[i, j] / d image is one-hot on the pixel holding the median (no ties)."""
  image = jnp.asarray(_image((6, 6, 1), seed=18))
  jac_and_out = jax.jit(lambda x: (jax.jacrev(flt.median_blur)(x, 3), flt.median_blur(x, 3)))
  jac, out = map(np.asarray, jac_and_out(image))  # jac: (6, 6, 1, 6, 6, 1)
  for i in range(6):
    for j in range(6):
      row = jac[i, j, 0]
      np.testing.assert_allclose(row.sum(), 1.0, rtol=1e-6)
      (where,) = np.nonzero(row.ravel())
      assert where.size == 1 and np.asarray(image).ravel()[where[0]] == out[i, j, 0]


def test_median_blur_gradient_shares_ties_like_numpy():
  """Traced sizes (one vmapped program) and static ones: to the median element(s), ties shared."""
  sizes = [3, 5, 1, 5]
  images = np.stack([_image((9, 8, 2), seed=30 + n, levels=5) for n in range(len(sizes))])
  cotangents = np.random.default_rng(31).normal(size=images.shape).astype(np.float32)
  traced = np.asarray(jax.jit(jax.vmap(lambda x, k, c: _value_and_gradient(
      lambda y: flt.median_blur(y, k, max_kernel_size=5), x, c)[1]))(
          images, jnp.asarray(sizes), cotangents))
  for n, k in enumerate(sizes):
    want = _median_gradient_ref(images[n], k, cotangents[n])
    np.testing.assert_allclose(traced[n], want, rtol=1e-5, atol=1e-6, err_msg=f"traced k={k}")
    static = jax.jit(lambda x, c, k=k: _value_and_gradient(lambda y: flt.median_blur(y, k), x, c))
    np.testing.assert_allclose(static(images[n], cotangents[n])[1], want, rtol=1e-5, atol=1e-6,
                               err_msg=f"static k={k}")


def test_static_sizes_keep_forward_mode_consistent_with_reverse():
  """jax.jvp works for a Python int size (network and bisection): <J t, u> = <t, J^T u>."""
  image = jnp.asarray(_image((16, 15, 1), seed=35, levels=6))
  t, u = np.random.default_rng(36).normal(size=(2,) + image.shape).astype(np.float32)
  for k in (3, 15):
    def jvp_and_vjp(x, t, u, k=k):
      forward = jax.jvp(lambda y: flt.median_blur(y, k), (x,), (t,))[1]
      return forward, jax.vjp(lambda y: flt.median_blur(y, k), x)[1](u)[0]
    forward, backward = map(np.asarray, jax.jit(jvp_and_vjp)(image, t, u))
    np.testing.assert_allclose((forward * u).sum(), (t * backward).sum(), rtol=1e-5,
                               err_msg=f"k={k}")
    np.testing.assert_allclose(backward, _median_gradient_ref(np.asarray(image), k, u),
                               rtol=1e-5, atol=1e-6, err_msg=f"k={k}")


def test_random_median_blur_routed_like_bart_takes_its_gradient_from_its_output():
  """In a routed_switch (BaRT's dispatch) the backward pass reads the kept median: = numpy."""
  rows = 6
  keys = jax.random.split(jax.random.key(32), rows)
  images = np.stack([_image((9, 8, 2), seed=33 + n, levels=5) for n in range(rows)])
  cotangents = np.random.default_rng(34).normal(size=images.shape).astype(np.float32)
  index = jnp.array([0, 1, 0, 0, 1, 0])
  # Sizes 3 and 5 (a partial binding the range: BaRT's own range, 3..13, compiles for longer).
  median = functools.partial(flt.random_median_blur, kernel_size_range=(2, 6))
  branches = (median, lambda key, x: x * 0.5)
  assert _routing._output_pullback_of(median) is not None
  routed = jax.vmap(lambda i, k, x: routed_switch(i, branches, k, x))
  out, gradient = map(np.asarray, jax.jit(lambda x, c: _value_and_gradient(
      lambda y: routed(index, keys, y), x, c))(images, cotangents))
  sizes = jax.vmap(functools.partial(flt.random_kernel_size, kernel_size_range=(2, 6)))(keys)
  for n in range(rows):
    if index[n] == 0:
      np.testing.assert_array_equal(out[n], _median_ref(images[n], sizes[n]))
      want = _median_gradient_ref(images[n], int(sizes[n]), cotangents[n])
    else:
      want = 0.5 * cotangents[n]
    np.testing.assert_allclose(gradient[n], want, rtol=1e-5, atol=1e-6, err_msg=f"row {n}")


@pytest.mark.parametrize("name", list(RANDOM_FNS))
def test_random_gradient_finite_nonzero(name):
  """Random versions pass a finite, non-zero gradient to the image."""
  image = jnp.asarray(_image((8, 8, 3), seed=20))
  grad = jax.jit(jax.grad(lambda x: (RANDOM_FNS[name](jax.random.key(7), x)
                                     * jnp.arange(1.0, 4.0)).sum()))(image)
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


# --- Bad input -----------------------------------------------------------------

GOOD = _image((16, 16, 3), seed=21)
NAN = GOOD.copy()
NAN[3, 4, 1] = np.nan
KEY = jax.random.key(8)
BAD_CALLS = [
    (lambda: flt.median_blur(GOOD[..., 0], 3), ValueError, "image must have rank 3"),
    (lambda: flt.gaussian_blur(GOOD[None], 3, 1.0), ValueError, "image must have rank 3"),
    (lambda: flt.median_blur((GOOD * 255).astype(np.uint8), 3), TypeError, "image must be float"),
    (lambda: flt.random_gaussian_blur(KEY, (GOOD * 255).astype(np.int32)), TypeError,
     "image must be float"),
    (lambda: flt.gaussian_blur(GOOD * 2, 3, 1.0), ValueError, "image values must lie"),
    (lambda: flt.median_blur(GOOD - 0.5, 3), ValueError, "image values must lie"),
    (lambda: flt.median_blur(NAN, 3), ValueError, "image contains NaN"),
    (lambda: flt.random_median_blur(KEY, NAN), ValueError, "image contains NaN"),
    (lambda: flt.median_blur(GOOD, 4), ValueError, "kernel_size must be odd"),
    (lambda: flt.gaussian_blur(GOOD, 6, 1.0), ValueError, "kernel_size must be odd"),
    (lambda: flt.median_blur(GOOD, 4, max_kernel_size=13), ValueError, "kernel_size must be odd"),
    (lambda: flt.median_blur(GOOD, 0), ValueError, "kernel_size must be in"),
    (lambda: flt.median_blur(GOOD, 15, max_kernel_size=13), ValueError, "kernel_size must be in"),
    (lambda: flt.gaussian_blur(GOOD, 3.5, 1.0), ValueError, "kernel_size must be an integer"),
    (lambda: flt.median_blur(GOOD, 3, max_kernel_size=12), ValueError,
     "max_kernel_size must be odd"),
    (lambda: jax.jit(lambda k: flt.median_blur(GOOD, k))(3), ValueError,
     "max_kernel_size must be given"),
    (lambda: jax.vmap(lambda k: flt.gaussian_blur(GOOD, k, 1.0))(jnp.array([3, 5])), ValueError,
     "max_kernel_size must be given"),
    (lambda: flt.gaussian_blur(GOOD, 3, 0.0), ValueError, "sigma must be in"),
    (lambda: flt.gaussian_blur(GOOD, 3, -1.0), ValueError, "sigma must be in"),
    (lambda: flt.gaussian_blur(GOOD, 3, float("nan")), ValueError, "sigma must be finite"),
    (lambda: flt.random_median_blur(KEY, GOOD, kernel_size_range=(5, 5)), ValueError,
     "kernel_size_range"),
    (lambda: flt.random_gaussian_blur(KEY, GOOD, kernel_size_range=(5, 5)), ValueError,
     "kernel_size_range"),
    (lambda: flt.random_median_blur(KEY, GOOD, kernel_size_range=(7, 3)), ValueError,
     "kernel_size_range"),
    (lambda: flt.random_median_blur(KEY, GOOD, kernel_size_range=(0, 5)), ValueError,
     "kernel_size_range"),
    (lambda: flt.random_median_blur(KEY, GOOD, kernel_size_range=(2.5, 5)), ValueError,
     "kernel_size_range"),
    (lambda: flt.random_gaussian_blur(KEY, GOOD, sigma_range=(2, 1)), ValueError, "sigma_range"),
    (lambda: flt.random_gaussian_blur(KEY, GOOD, sigma_range=(0, 1)), ValueError, "sigma_range"),
    (lambda: flt.random_gaussian_blur(KEY, GOOD, sigma_range=(1,)), ValueError, "sigma_range"),
    (lambda: flt.random_median_blur(0, GOOD), TypeError, "key"),
]


@pytest.mark.parametrize("call,error,match", BAD_CALLS)
def test_bad_input_raises_clear_error(call, error, match):
  """Bad arguments raise an error whose message names the argument."""
  with pytest.raises(error, match=match):
    call()


@pytest.mark.parametrize("fn", ["median", "gaussian"])
def test_integer_valued_float_kernel_size(fn):
  """kernel_size=5.0 either works like 5 or is rejected naming kernel_size."""
  call = {"median": lambda k: flt.median_blur(GOOD, k),
          "gaussian": lambda k: flt.gaussian_blur(GOOD, k, 1.0)}[fn]
  try:
    out = call(5.0)
  except (TypeError, ValueError) as error:
    assert "kernel_size" in str(error), f"unclear error: {error}"
  else:
    np.testing.assert_array_equal(out, call(5))
