"""Tests for jaxdef.transforms._noise against skimage.util.random_noise statistics."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.util import random_noise as sk_random_noise

from jaxdef.transforms import _noise as nz

KINDS = nz.NOISE_KINDS
VAR, AMOUNT = 0.01, 0.05  # scikit-image's defaults
N_KEYS = 32  # jaxdef draws per statistic, vmapped in one call
N_SEEDS = 8  # scikit-image draws per statistic


def _image8(shape=(64, 64, 3), seed=0):
  """8-bit values k / 255 in [0.2, 0.8]; > 128 distinct, so skimage's Poisson scale is 256."""
  return (np.random.default_rng(seed).integers(51, 205, shape) / 255).astype(np.float32)


IMAGE8 = _image8()
CONST = np.full((64, 64, 3), 0.5, np.float32)
SMALL = _image8((32, 32, 3), seed=12)

# One compiled program for every kind: the kind index is a traced argument.
_noise_keys = jax.jit(jax.vmap(
    lambda key, image, kind, var, amount, ratio: nz.noise(
        key, image, kind, var=var, amount=amount, salt_vs_pepper=ratio),
    in_axes=(0, None, None, None, None, None)))
_noise_one = jax.jit(
    lambda key, image, kind, var=VAR, amount=AMOUNT, ratio=0.5: nz.noise(
        key, image, kind, var=var, amount=amount, salt_vs_pepper=ratio))


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


def _jaxdef_draws(image, kind, seed=0, var=VAR, amount=AMOUNT, ratio=0.5):
  return np.asarray(_noise_keys(_keys(N_KEYS, seed), image, KINDS.index(kind), var, amount,
                                ratio))


def _skimage_draws(image, kind):
  kwargs = {"gaussian": {"var": VAR}, "speckle": {"var": VAR}, "poisson": {}}.get(
      kind, {"amount": AMOUNT})
  return np.stack([sk_random_noise(image, mode=kind, rng=seed, **kwargs)
                   for seed in range(N_SEEDS)])


def _stats(out, image):
  """Summary statistics of the noise out - image, split by dark and bright pixels."""
  diff = out - image
  stats = {"mean": diff.mean(), "std": diff.std(), "ones": np.mean(out == 1.0),
           "zeros": np.mean(out == 0.0)}
  dark = np.broadcast_to(image < 0.5, out.shape)
  if dark.any() and not dark.all():
    stats.update(std_dark=diff[dark].std(), std_bright=diff[~dark].std())
  return stats


# --- Against scikit-image ------------------------------------------------------


def test_poisson_scale_assumption_holds_for_the_test_image():
  """The test image has 129..256 distinct values: skimage also scales Poisson by 256."""
  distinct = np.unique(IMAGE8).size
  assert 128 < distinct <= 256
  assert 2 ** np.ceil(np.log2(distinct)) == nz.POISSON_SCALE


CASES = [(kind, "image8") for kind in KINDS] + [(k, "const") for k in ("salt", "pepper", "s&p")]


@pytest.mark.parametrize("kind,image_name", CASES)
def test_noise_statistics_match_skimage(kind, image_name):
  """Mean, std (dark/bright pixels) and 0/1 fractions of the noise match skimage's."""
  image = {"image8": IMAGE8, "const": CONST}[image_name]
  ours = _jaxdef_draws(image, kind)
  theirs = _skimage_draws(image, kind)
  assert ours.shape == (N_KEYS, *image.shape) and ours.dtype == np.float32
  assert ours.min() >= 0.0 and ours.max() <= 1.0
  a, b = _stats(ours, image), _stats(theirs, image)
  for name in ("mean", "ones", "zeros"):
    assert abs(a[name] - b[name]) < 4e-3, (name, a[name], b[name])
  assert a.keys() == b.keys()
  for name in {"std", "std_dark", "std_bright"} & a.keys():
    assert abs(a[name] / b[name] - 1) < 0.03, (name, a[name], b[name])


@pytest.mark.parametrize("kind", ["salt", "pepper", "s&p"])
def test_salt_and_pepper_replace_only(kind):
  """Replaced elements become exactly 1 (salt) or 0 (pepper); the rest are untouched."""
  out = _jaxdef_draws(IMAGE8, kind, seed=1)
  changed = out != IMAGE8
  values = set(np.unique(out[changed]).tolist())
  assert values == {"salt": {1.0}, "pepper": {0.0}, "s&p": {0.0, 1.0}}[kind]
  assert abs(changed.mean() - AMOUNT) < 3e-3
  if kind == "s&p":
    assert abs(np.mean(out[changed] == 1.0) - 0.5) < 0.02


def test_salt_vs_pepper_and_amount_extremes():
  """salt_vs_pepper sets the salt share; amount 1 replaces all, amount 0 none; var 0 no noise."""
  out = _jaxdef_draws(IMAGE8, "s&p", seed=2, amount=0.2, ratio=0.8)
  changed = out != IMAGE8
  assert abs(changed.mean() - 0.2) < 3e-3 and abs(np.mean(out[changed] == 1) - 0.8) < 0.01
  out = _jaxdef_draws(IMAGE8, "s&p", seed=3, amount=1.0, ratio=0.5)
  assert set(np.unique(out).tolist()) == {0.0, 1.0}
  for kind in ("salt", "pepper", "s&p"):
    np.testing.assert_array_equal(_jaxdef_draws(IMAGE8, kind, seed=4, amount=0.0)[:2],
                                  np.stack([IMAGE8] * 2))
  for kind in ("gaussian", "speckle"):
    np.testing.assert_array_equal(_jaxdef_draws(IMAGE8, kind, seed=4, var=0.0)[:2],
                                  np.stack([IMAGE8] * 2))


def test_poisson_values_are_counts_over_scale():
  """Poisson outputs are integer counts / 256 with count mean x * 256 per pixel."""
  out = _jaxdef_draws(IMAGE8, "poisson", seed=5)
  counts = out * nz.POISSON_SCALE
  np.testing.assert_array_equal(counts, np.round(counts))
  # Per-pixel mean over 32 draws: each has std sqrt(x / 256 / 32) <= 0.01.
  assert np.abs(out.mean(0) - IMAGE8).max() < 0.06


def test_kind_by_index_equals_kind_by_name():
  """kind='salt' and kind=2 (its index, traced) give the same noise for the same key."""
  by_name = jax.jit(lambda key: [nz.noise(key, SMALL, kind) for kind in KINDS])
  key = jax.random.key(6)
  for i, out in enumerate(by_name(key)):
    np.testing.assert_allclose(out, _noise_one(key, SMALL, i), atol=1e-6, err_msg=KINDS[i])


# --- gaussian_noise --------------------------------------------------------------


def test_gaussian_noise_statistics_and_clipping():
  """Noise has mean 0, std sigma; clip=True keeps [0, 1], clip=False leaves it."""
  image = jnp.full((4, 64, 64, 3), 0.5)  # a batch: any shape works
  fn = jax.jit(nz.gaussian_noise, static_argnames="clip")
  for sigma in (0.05, 0.25, 0.5):
    out = np.asarray(fn(jax.random.key(7), image, sigma))
    assert out.shape == image.shape and out.dtype == np.float32
    diff = out - 0.5
    assert abs(diff.mean()) < 0.03 * sigma and abs(diff.std() / sigma - 1) < 0.01
    clipped = np.asarray(fn(jax.random.key(7), image, sigma, clip=True))
    assert clipped.min() >= 0 and clipped.max() <= 1
    # Separately compiled programs may fuse x + sigma * n differently: 1 ulp.
    np.testing.assert_allclose(clipped, np.clip(out, 0, 1), rtol=0, atol=1e-6)
  assert out.min() < 0 and out.max() > 1  # sigma 0.5 leaves [0, 1] without clip
  np.testing.assert_array_equal(fn(jax.random.key(7), image, 0.0), image)


def test_gaussian_noise_any_shape_and_dtype():
  """Rank 1 and rank 4 inputs, float16 kept; same key same bits."""
  key = jax.random.key(8)
  vec = nz.gaussian_noise(key, jnp.full((10,), 0.5), 0.1)
  assert vec.shape == (10,)
  half = nz.gaussian_noise(key, jnp.full((2, 3, 4, 1), 0.5, jnp.float16), 0.1)
  assert half.shape == (2, 3, 4, 1) and half.dtype == jnp.float16
  np.testing.assert_array_equal(nz.gaussian_noise(key, IMAGE8, 0.1),
                                nz.gaussian_noise(key, IMAGE8, 0.1))
  assert not np.array_equal(nz.gaussian_noise(key, IMAGE8, 0.1),
                            nz.gaussian_noise(jax.random.key(9), IMAGE8, 0.1))


def test_gaussian_noise_gradient():
  """Without clip the gradient is exactly ones; with clip, zero where the value left [0, 1]."""
  image = jnp.asarray(IMAGE8)
  key = jax.random.key(10)
  grad = jax.grad(lambda x: nz.gaussian_noise(key, x, 0.3).sum())(image)
  np.testing.assert_array_equal(grad, np.ones(image.shape))
  grad = np.asarray(jax.grad(lambda x: nz.gaussian_noise(key, x, 0.3, clip=True).sum())(image))
  noisy = np.asarray(nz.gaussian_noise(key, image, 0.3))
  inside = (noisy > 0) & (noisy < 1)
  assert 0 < inside.mean() < 1
  np.testing.assert_array_equal(grad[inside], 1.0)
  np.testing.assert_array_equal(grad[~inside], 0.0)


def test_gaussian_noise_traces_once():
  """sigma as a jit argument: one trace for several values."""

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(key, sigma):
    return nz.gaussian_noise(key, IMAGE8, sigma)

  for sigma in (0.0, 0.1, 0.5):
    np.testing.assert_allclose(fn(jax.random.key(11), sigma),
                               nz.gaussian_noise(jax.random.key(11), IMAGE8, sigma), atol=1e-6)


# --- random_noise: parameter distributions ---------------------------------------

@jax.jit
def _random_params(keys):
  """random_noise's draws, through the library's own `noise_parameters`."""
  drawn = jax.vmap(nz.noise_parameters)(keys)
  return (drawn["kind"], drawn["var"], drawn["amount"], drawn["salt_vs_pepper"],
          drawn["noise_key"])


# One program for every random_noise batch test: 96 (key, image) pairs.
N_BATCH = 96
_random_noise_batch = jax.jit(jax.vmap(nz.random_noise))


def _random_noise_keys(keys, image):
  return np.asarray(_random_noise_batch(keys, np.broadcast_to(image, (len(keys), *image.shape))))


def _infer_kind(out, image):
  """Tells the kind from one output alone (image values k / 255 in [0.2, 0.8])."""
  counts = out * nz.POISSON_SCALE
  if np.array_equal(counts, np.round(counts)):
    return "poisson"
  new = tuple(np.unique(out[out != image]).tolist())
  if set(new) <= {0.0, 1.0}:
    return {(1.0,): "salt", (0.0,): "pepper", (0.0, 1.0): "s&p"}[new]
  diff = out - image
  ratio = diff[image > 0.6].std() / diff[image < 0.4].std()  # speckle grows with x
  return "speckle" if ratio > 1.6 else "gaussian"


def test_random_noise_parameters_cover_ranges():
  """Every kind about 1/6 of draws; var in [0.005, 0.02); amount in [0.025, 0.1)."""
  kind, var, amount, ratio = map(np.asarray, _random_params(_keys(3000, seed=13))[:4])
  counts = np.bincount(kind, minlength=6)
  assert counts.size == 6 and np.all(np.abs(counts / 3000 - 1 / 6) < 0.03), counts
  assert 0.005 <= var.min() < 0.0051 and 0.0199 < var.max() < 0.02
  assert 0.025 <= amount.min() < 0.0253 and 0.0997 < amount.max() < 0.1
  assert 0 <= ratio.min() < 0.002 and 0.998 < ratio.max() < 1


@pytest.mark.full_optimization  # the replay must land on the same Poisson count
def test_random_noise_kinds_inferred_from_outputs():
  """Kinds told from outputs alone: all six occur, and they match noise_parameters' draw."""
  keys = _keys(N_BATCH, seed=14)
  out = _random_noise_keys(keys, SMALL)
  assert out.shape == (N_BATCH, *SMALL.shape) and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 1
  kind, var, amount, ratio, noise_keys = _random_params(keys)
  inferred = [_infer_kind(o, SMALL) for o in out]
  assert set(inferred) == set(KINDS)
  for i, name in enumerate(inferred):
    drawn = KINDS[int(kind[i])]
    if drawn == "s&p" and not 0.1 < ratio[i] < 0.9:
      assert name in ("s&p", "salt", "pepper")  # nearly all salt or all pepper
    else:
      assert name == drawn, (i, name, drawn)
  # The output is noise() with the drawn parameters (two draws of each kind).
  for k in range(len(KINDS)):
    for i in np.flatnonzero(np.asarray(kind) == k)[:2]:
      replay = _noise_one(noise_keys[i], SMALL, k, float(var[i]), float(amount[i]),
                          float(ratio[i]))
      np.testing.assert_allclose(replay, out[i], atol=1e-6, err_msg=KINDS[k])


def test_random_noise_kinds_subset():
  """kinds=('salt', 'pepper') only ever salts or peppers."""
  sample = jax.jit(lambda k: nz.random_noise(k, SMALL, kinds=("salt", "pepper")))
  inferred = {_infer_kind(np.asarray(sample(k)), SMALL) for k in _keys(12, seed=15)}
  assert inferred == {"salt", "pepper"}


# --- Determinism, jit and vmap ---------------------------------------------------


def test_random_noise_deterministic_and_distinct():
  """Same key -> same bits (in a batch and across calls); different keys differ."""
  keys = _keys(N_BATCH - 4, seed=16)
  keys = jnp.concatenate([keys, keys[:4]])
  out = _random_noise_keys(keys, SMALL)
  np.testing.assert_array_equal(out[-4:], out[:4])
  np.testing.assert_array_equal(_random_noise_keys(keys, SMALL), out)
  assert len({o.tobytes() for o in out}) == N_BATCH - 4


def test_random_noise_vmap_over_images_with_per_image_keys():
  """vmap over (keys, images): each output depends only on its own pair."""
  images = np.stack([_image8(SMALL.shape, seed=s) for s in range(N_BATCH)])
  keys = _keys(N_BATCH, seed=17)
  out = np.asarray(_random_noise_batch(keys, images))
  assert out.shape == images.shape and out.dtype == np.float32
  order = np.random.default_rng(17).permutation(N_BATCH)
  np.testing.assert_allclose(_random_noise_batch(keys[order], images[order]), out[order],
                             atol=1e-6)
  np.testing.assert_allclose(_random_noise_keys(keys, images[5])[5], out[5], atol=1e-6)


def test_noise_jit_equals_eager_and_traces_once():
  """kind, var, amount and salt_vs_pepper as jit arguments: one trace, eager values."""

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(key, kind, var, amount, ratio):
    return nz.noise(key, SMALL, kind, var=var, amount=amount, salt_vs_pepper=ratio)

  for i in range(len(KINDS)):
    out = fn(jax.random.key(18 + i), i, 0.02, 0.1, 0.3)
    assert out.shape == SMALL.shape and out.dtype == jnp.float32
  # One eager call (each compiles the whole switch): the Poisson sampler.
  key = jax.random.key(19)
  eager = nz.noise(key, SMALL, "poisson", var=0.02, amount=0.1, salt_vs_pepper=0.3)
  np.testing.assert_allclose(fn(key, 1, 0.02, 0.1, 0.3), eager, atol=1e-6)


# --- Gradients -------------------------------------------------------------------

_noise_grad = jax.jit(jax.grad(lambda x, key, kind: nz.noise(key, x, kind).sum()))


def test_noise_gradients():
  """Poisson: identity (straight-through); gaussian: 1 unless clipped; salt: 0 where replaced."""
  image = jnp.asarray(SMALL)
  key = jax.random.key(24)
  for kind in ("poisson", "gaussian", "speckle", "salt", "pepper", "s&p"):
    grad = np.asarray(_noise_grad(image, key, KINDS.index(kind)))
    assert np.all(np.isfinite(grad)), kind
    out = np.asarray(_noise_one(key, image, KINDS.index(kind)))
    if kind == "poisson":
      assert 0 < out.min() and out.max() < 1  # nothing clipped
      np.testing.assert_array_equal(grad, np.ones(image.shape))
    elif kind == "gaussian":
      inside = (out > 0) & (out < 1)
      np.testing.assert_array_equal(grad[inside], 1.0)
    elif kind == "speckle":
      assert np.abs(grad - 1).max() < 0.7 and np.abs(grad - 1).mean() > 0.01  # 1 + sigma * n
    else:
      replaced = out != SMALL
      np.testing.assert_array_equal(grad[replaced], 0.0)
      np.testing.assert_array_equal(grad[~replaced], 1.0)


def test_poisson_gradient_is_identity_on_black_pixels():
  """Poisson's straight-through gradient is 1 also where the image is 0."""
  image = SMALL.copy()
  image[:16] = 0.0
  key = jax.random.key(25)
  out = np.asarray(_noise_one(key, image, KINDS.index("poisson")))
  assert np.all(out[:16] == 0)  # black stays black: no value was clipped
  grad = _noise_grad(jnp.asarray(image), key, KINDS.index("poisson"))
  np.testing.assert_array_equal(grad, np.ones(image.shape))


# --- Bad input -------------------------------------------------------------------

GOOD = _image8((16, 16, 3), seed=27)
NAN = GOOD.copy()
NAN[1, 2, 0] = np.nan
KEY = jax.random.key(28)
BAD_CALLS = [
    (lambda: nz.noise(KEY, GOOD[..., 0], "salt"), ValueError, "image must have rank 3"),
    (lambda: nz.random_noise(KEY, GOOD[None]), ValueError, "image must have rank 3"),
    (lambda: nz.noise(KEY, (GOOD * 255).astype(np.uint8), "salt"), TypeError,
     "image must be float"),
    (lambda: nz.noise(KEY, GOOD * 3, "gaussian"), ValueError, "image values must lie"),
    (lambda: nz.random_noise(KEY, GOOD - 1), ValueError, "image values must lie"),
    (lambda: nz.noise(KEY, NAN, "gaussian"), ValueError, "image contains NaN"),
    (lambda: nz.noise(KEY, GOOD, "uniform"), ValueError,
     "kind must be one of 'gaussian', 'poisson', 'salt', 'pepper', 's&p', 'speckle'"),
    (lambda: nz.noise(KEY, GOOD, 6), ValueError, "kind must be in"),
    (lambda: nz.noise(KEY, GOOD, -1), ValueError, "kind must be in"),
    (lambda: nz.noise(KEY, GOOD, "salt", amount=1.5), ValueError, "amount must be in"),
    (lambda: nz.noise(KEY, GOOD, "salt", amount=-0.1), ValueError, "amount must be in"),
    (lambda: nz.noise(KEY, GOOD, "gaussian", var=-0.01), ValueError, "var must be in"),
    (lambda: nz.noise(KEY, GOOD, "s&p", salt_vs_pepper=2), ValueError, "salt_vs_pepper"),
    (lambda: nz.noise(KEY, GOOD, "poisson", poisson_scale=0), ValueError, "poisson_scale"),
    (lambda: nz.random_noise(KEY, GOOD, kinds=()), ValueError, "kinds must be a non-empty"),
    (lambda: nz.random_noise(KEY, GOOD, kinds="salt"), ValueError, "kinds must be a non-empty"),
    (lambda: nz.random_noise(KEY, GOOD, kinds=("salt", "blur")), ValueError,
     "kinds must be one of 'gaussian'"),
    (lambda: nz.random_noise(KEY, GOOD, var_range=(0.02, 0.01)), ValueError, "var_range"),
    (lambda: nz.random_noise(KEY, GOOD, var_range=(-1, 0.01)), ValueError, "var_range"),
    (lambda: nz.random_noise(KEY, GOOD, amount_range=(0.0, 1.5)), ValueError, "amount_range"),
    (lambda: nz.random_noise(KEY, GOOD, amount_range=(0.1,)), ValueError, "amount_range"),
    (lambda: nz.gaussian_noise(KEY, GOOD, -0.1), ValueError, "sigma must be in"),
    (lambda: nz.gaussian_noise(KEY, GOOD, float("inf")), ValueError, "sigma must be finite"),
    (lambda: nz.random_noise(0, GOOD), TypeError, "key"),
]


@pytest.mark.parametrize("call,error,match", BAD_CALLS)
def test_bad_input_raises_clear_error(call, error, match):
  """Bad arguments raise an error whose message names the argument."""
  with pytest.raises(error, match=match):
    call()
