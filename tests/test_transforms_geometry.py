"""Tests for jaxdef.transforms._geometry against scikit-image references."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import transform as sk

from jaxdef.transforms import _geometry as geo

TOL = 1e-4
SHAPES = [(28, 28, 1), (32, 32, 3), (64, 48, 3), (224, 224, 3)]
N_PARAMS = 4  # parameter draws per shape, vmapped in one compiled call


def _image(shape, seed=0):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _f64(x):
  return np.asarray(x, np.float64)


# --- Deterministic transforms against scikit-image ----------------------------


@pytest.mark.fusion_emitters  # a few edge coordinates sit on a rounding boundary
@pytest.mark.parametrize("shape", SHAPES)
def test_swirl_matches_skimage(shape):
  rng = np.random.default_rng(1)
  image = _image(shape)
  height, width, _ = shape
  strength = rng.uniform(0.1, 2.0, N_PARAMS).astype(np.float32)
  radius = rng.integers(10, 201, N_PARAMS).astype(np.float32)
  center = np.stack([rng.integers(1, width, N_PARAMS), rng.integers(1, height, N_PARAMS)], 1)
  rotation = rng.uniform(-1, 1, N_PARAMS).astype(np.float32)
  swirl = jax.jit(jax.vmap(lambda s, r, c, t: geo.swirl(image, s, r, c, rotation=t)))
  out = np.asarray(swirl(strength, radius, center.astype(np.float32), rotation))
  for i in range(N_PARAMS):
    ref = sk.swirl(_f64(image), center=tuple(center[i]), strength=float(strength[i]),
                   radius=float(radius[i]), rotation=float(rotation[i]))
    np.testing.assert_allclose(out[i], ref, atol=TOL, rtol=0)


# Every mode on the small shapes; the 224-px one only for two (compile time).
ROTATE_CASES = [(shape, mode) for shape in SHAPES
                for mode in ("constant", "edge", "reflect", "symmetric", "wrap")
                if shape[0] <= 64 or mode in ("constant", "edge")]


@pytest.mark.fusion_emitters  # a few edge coordinates sit on a rounding boundary
@pytest.mark.parametrize("shape,mode", ROTATE_CASES)
def test_rotate_matches_skimage(shape, mode):
  rng = np.random.default_rng(2)
  image = _image(shape, seed=3)
  # Small angles too: there skimage clips the half-filled border to the input's min.
  angle = np.concatenate([[0.0, 0.5, 90.0], rng.uniform(-180, 180, N_PARAMS)]).astype(np.float32)
  cval = rng.uniform(0, 1, angle.size).astype(np.float32) if mode == "constant" else 0 * angle
  cval[:2] = 0.0
  rotate = jax.jit(jax.vmap(lambda a, c: geo.rotate(image, a, mode=mode, cval=c)))
  out = np.asarray(rotate(angle, cval))
  for i in range(angle.size):
    ref = sk.rotate(_f64(image), float(angle[i]), resize=False, order=1, mode=mode,
                    cval=float(cval[i]))
    np.testing.assert_allclose(out[i], ref, atol=TOL, rtol=0, err_msg=f"angle {angle[i]}")


def test_rotate_clips_like_skimage_on_narrow_range_image():
  # Input range [0.2, 0.8]: skimage widens the clip range to cval only when some
  # output pixel lies fully outside; a 0.5-degree turn leaves none.
  image = (0.2 + 0.6 * _image((20, 24, 3), seed=4)).astype(np.float32)
  out = jax.jit(jax.vmap(lambda a: geo.rotate(image, a)))(jnp.array([0.5, 45.0]))
  for i, angle in enumerate((0.5, 45.0)):
    ref = sk.rotate(_f64(image), angle, order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(out[i], ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_crop_resize_matches_skimage(shape):
  rng = np.random.default_rng(5)
  image = _image(shape, seed=6)
  height, width, _ = shape
  # A small crop (upsampling) and a large crop shrunk to 1/3 (no antialiasing).
  for crop_size, output_size in ((max(1, min(height, width) * 90 // 299), None),
                                 (min(height, width) - 2, (height // 3, width // 3 + 1))):
    top = rng.integers(0, height - crop_size + 1, N_PARAMS)
    left = rng.integers(0, width - crop_size + 1, N_PARAMS)
    fn = jax.jit(jax.vmap(lambda t, lf, c=crop_size, o=output_size:
                          geo.crop_resize(image, t, lf, crop_size=c, output_size=o)))
    out = np.asarray(fn(top, left))
    for i in range(N_PARAMS):
      crop = _f64(image[top[i]:top[i] + crop_size, left[i]:left[i] + crop_size])
      ref = sk.resize(crop, output_size or (height, width), order=1, mode="edge",
                      anti_aliasing=False)
      np.testing.assert_allclose(out[i], ref, atol=TOL, rtol=0)


def test_crop_resize_equals_jax_image_resize_when_upsampling():
  image = _image((32, 32, 3), seed=7)
  out, ref = jax.jit(lambda x: (geo.crop_resize(x, 5, 9, crop_size=10),
                                jax.image.resize(x[5:15, 9:19], (32, 32, 3), "linear")))(image)
  np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_resize_pad_matches_skimage(shape):
  rng = np.random.default_rng(8)
  image = _image(shape, seed=9)
  height = shape[0]
  output_size = round(height * 331 / 299)
  size = np.array([1, height // 2, height, output_size])  # down, same, up, full canvas
  top = rng.integers(0, output_size - size + 1)
  left = rng.integers(0, output_size - size + 1)
  fn = jax.jit(jax.vmap(lambda s, t, lf: geo.resize_pad(image, s, t, lf, output_size=output_size)))
  out = np.asarray(fn(size, top, left))
  assert out.shape == (size.size, output_size, output_size, shape[2])
  for i, (s, t, lf) in enumerate(zip(size, top, left, strict=True)):
    ref = sk.resize(_f64(image), (s, s), order=1, mode="edge", anti_aliasing=False)
    np.testing.assert_allclose(out[i, t:t + s, lf:lf + s], ref, atol=TOL, rtol=0)
    outside = np.ones(out.shape[1:], bool)
    outside[t:t + s, lf:lf + s] = False
    assert np.all(out[i][outside] == 0)


# --- jit: traced parameters, one trace ---------------------------------------


def test_jit_equals_eager_and_traces_once():
  image = _image((32, 32, 3), seed=10)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def swirl(strength, radius, center):
    return geo.swirl(image, strength, radius, center)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def rotate(angle):
    return geo.rotate(image, angle)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def crop_resize(top, left):
    return geo.crop_resize(image, top, left, crop_size=9)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def resize_pad(size, top, left):
    return geo.resize_pad(image, size, top, left, output_size=36)

  for strength, radius, center in ((0.5, 20.0, (3.0, 4.0)), (1.7, 150.0, (16.0, 30.0))):
    np.testing.assert_allclose(swirl(strength, radius, jnp.array(center)),
                               geo.swirl(image, strength, radius, center), atol=1e-5)
  for angle in (-20.0, 13.5, 90.0):
    np.testing.assert_allclose(rotate(angle), geo.rotate(image, angle), atol=1e-5)
  for top, left in ((0, 0), (23, 11), (7, 19)):
    np.testing.assert_allclose(crop_resize(top, left),
                               geo.crop_resize(image, top, left, crop_size=9), atol=1e-5)
  for size, top, left in ((20, 0, 16), (36, 0, 0), (33, 2, 1)):
    np.testing.assert_allclose(resize_pad(size, top, left),
                               geo.resize_pad(image, size, top, left, output_size=36), atol=1e-5)


# --- Random versions ---------------------------------------------------------

RANDOM_FNS = {
    "swirl": geo.random_swirl,
    "rotate": geo.random_rotate,
    "crop_resize": geo.random_crop_resize,
    "resize_pad": geo.random_resize_pad,
}


@pytest.mark.parametrize("name", list(RANDOM_FNS))
def test_random_vmap_over_keys(name):
  fn = RANDOM_FNS[name]
  image = _image((28, 28, 3), seed=11)
  keys = jax.random.split(jax.random.key(0), 64)
  keys = jnp.concatenate([keys, keys[:4]])  # repeated keys must repeat outputs
  sample = jax.jit(jax.vmap(lambda k: fn(k, image)))
  out = np.asarray(sample(keys))
  side = round(28 * 331 / 299) if name == "resize_pad" else 28
  assert out.shape == (68, side, side, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  distinct = len({o.tobytes() for o in out[:64]})
  assert distinct >= 48, f"only {distinct} distinct outputs of 64 keys"
  # Same key, same output, bit for bit: within a batch and across calls.
  np.testing.assert_array_equal(out[64:], out[:4])
  np.testing.assert_array_equal(np.asarray(sample(keys)), out)


@pytest.mark.parametrize("name", list(RANDOM_FNS))
def test_random_vmap_over_images(name):
  fn = RANDOM_FNS[name]
  images = _image((6, 24, 24, 1), seed=12)
  keys = jax.random.split(jax.random.key(1), 6)
  sample = jax.jit(jax.vmap(fn))
  out = np.asarray(sample(keys, images))
  assert out.shape[0] == 6 and out.shape[-1] == 1 and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  # Each output depends only on its own (key, image): permuting both permutes it.
  order = np.array([3, 0, 5, 1, 4, 2])
  np.testing.assert_allclose(sample(keys[order], images[order]), out[order], atol=1e-6)


def _draw(draw, n=4000, **kwargs):
  keys = jax.random.split(jax.random.key(2), n)
  return jax.tree.map(np.asarray, jax.jit(jax.vmap(lambda k: draw(k, **kwargs)))(keys))


def test_swirl_params_cover_ranges():
  image = jnp.zeros((32, 40, 3))
  strength, radius, center = _draw(geo._draw_swirl_params, image=image)
  assert 0.1 <= strength.min() < 0.11 and 1.99 < strength.max() < 2.0
  assert radius.min() == 10 and radius.max() == 200
  # x clipped to width - 1 = 39, y to height - 1 = 31.
  assert center[:, 0].min() == 1 and center[:, 0].max() == 39
  assert center[:, 1].min() == 1 and center[:, 1].max() == 31
  assert set(np.unique(center[:, 1])) == set(range(1, 32))


def test_rotate_params_cover_range():
  angle = _draw(geo._draw_rotate_params, angle_range=(-10.0, 20.0))
  assert -10 <= angle.min() < -9.9 and 19.9 < angle.max() < 20


def test_crop_resize_params_cover_range():
  top, left, crop_size = _draw(geo._draw_crop_resize_params, image=jnp.zeros((28, 30, 1)))
  assert np.all(crop_size == 8)  # round(28 * 90 / 299)
  assert set(np.unique(top)) == set(range(28 - 8 + 1))
  assert set(np.unique(left)) == set(range(30 - 8 + 1))


def test_resize_pad_params_cover_range():
  size, top, left, output_size = _draw(geo._draw_resize_pad_params, image=jnp.zeros((28, 28, 1)))
  assert np.all(output_size == 31)  # round(28 * 331 / 299); static, broadcast by vmap
  output_size = 31
  assert set(np.unique(size)) == set(range(19, 31))  # [round(28*200/299), round(28*331/299))
  assert np.all(top + size <= output_size) and np.all(left + size <= output_size)
  assert top.min() == 0 and left.min() == 0
  assert np.any(top == output_size - size) and np.any(left == output_size - size)


def test_resize_pad_defaults_are_the_study_setting_at_299px():
  sizes, top, _, output_size = _draw(geo._draw_resize_pad_params, image=jnp.zeros((299, 299, 1)))
  assert np.all(output_size == 331)
  assert sizes.min() == 200 and sizes.max() == 330  # the half-open range [200, 331)
  assert np.all(top + sizes <= 331) and top.max() > 100


# --- Gradients ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(RANDOM_FNS))
def test_gradient_wrt_image_finite_nonzero(name):
  fn = RANDOM_FNS[name]
  image = jnp.asarray(_image((20, 20, 3), seed=13))
  key = jax.random.key(4)
  grad = jax.jit(jax.grad(lambda x: (fn(key, x) * jnp.arange(3.0)).sum()))(image)
  assert grad.shape == image.shape
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_swirl_gradient_wrt_parameters_finite_at_the_centre():
  image = jnp.asarray(_image((16, 16, 1), seed=14))
  grads = jax.jit(jax.grad(lambda s, c: geo.swirl(image, s, 20.0, c).sum(), argnums=(0, 1)))(
      1.0, jnp.array([8.0, 8.0]))  # pixel (8, 8) sits exactly on the centre
  assert all(np.all(np.isfinite(g)) for g in grads)


# --- Bad input -----------------------------------------------------------------

GOOD = _image((16, 16, 3), seed=15)
KEY = jax.random.key(5)
BAD_CALLS = [
    (lambda: geo.swirl(GOOD[..., 0], 1.0, 10, (4, 4)), ValueError, "image must have rank 3"),
    (lambda: geo.rotate((GOOD * 255).astype(np.uint8), 10), TypeError, "image must be floating"),
    (lambda: geo.crop_resize(GOOD * 2, 0, 0, crop_size=4), ValueError, "image values must lie"),
    (lambda: geo.swirl(GOOD, 1.0, 0.0, (4, 4)), ValueError, "radius must be in"),
    (lambda: geo.swirl(GOOD, 1.0, 10, (4, 4, 1)), ValueError, "center must be a pair"),
    (lambda: geo.rotate(GOOD, 10, mode="bogus"), ValueError, "mode must be one of.*'edge'"),
    (lambda: geo.random_rotate(KEY, GOOD, mode="nearest"), ValueError, "mode must be one of"),
    (lambda: geo.rotate(GOOD, 10, cval=2.0), ValueError, "cval must be in"),
    (lambda: geo.random_rotate(KEY, GOOD, angle_range=(30, -30)), ValueError, "angle_range"),
    (lambda: geo.random_swirl(KEY, GOOD, strength_range=(0, 1)), ValueError, "strength_range"),
    (lambda: geo.random_swirl(KEY, GOOD, strength_range=(1, 11)), ValueError, "strength_range"),
    (lambda: geo.random_swirl(KEY, GOOD, radius_range=(0, 5)), ValueError, "radius_range"),
    (lambda: geo.random_swirl(KEY, GOOD, center_range=(-1, 5)), ValueError, "center_range"),
    (lambda: geo.random_swirl(KEY, GOOD, center_range=(1.5, 5)), ValueError, "center_range"),
    (lambda: geo.crop_resize(GOOD, 0, 0, crop_size=17), ValueError, "crop_size must be in"),
    (lambda: geo.crop_resize(GOOD, 0, 0, crop_size=0), ValueError, "crop_size must be in"),
    (lambda: geo.crop_resize(GOOD, 0, 0, crop_size=4.0), TypeError, "crop_size must be a Python"),
    (lambda: geo.crop_resize(GOOD, 13, 0, crop_size=4), ValueError, "top must be in"),
    (lambda: geo.crop_resize(GOOD, 0, -1, crop_size=4), ValueError, "left must be in"),
    (lambda: geo.crop_resize(GOOD, 0, 0, crop_size=4, output_size=0), ValueError, "output_size"),
    (lambda: geo.random_crop_resize(KEY, GOOD, crop_size=20), ValueError, "crop_size must be in"),
    (lambda: geo.resize_pad(GOOD, 21, 0, 0, output_size=20), ValueError, "size must be in"),
    (lambda: geo.resize_pad(GOOD, 10, 11, 0, output_size=20), ValueError, "top must be in"),
    (lambda: geo.resize_pad(GOOD, 10, 0, 0, output_size=None), TypeError, "output_size"),
    (lambda: geo.random_resize_pad(KEY, GOOD, size_range=(10, 10)), ValueError, "size_range"),
    (lambda: geo.random_resize_pad(KEY, GOOD, size_range=(0, 10)), ValueError, "size_range"),
    (lambda: geo.random_resize_pad(KEY, GOOD, size_range=(5, 30), output_size=20), ValueError,
     "size_range"),
    (lambda: geo.random_swirl(0, GOOD), TypeError, "key must be a jax.random key"),
]


@pytest.mark.parametrize("call,error,match", BAD_CALLS)
def test_bad_input_raises_clear_error(call, error, match):
  with pytest.raises(error, match=match):
    call()
