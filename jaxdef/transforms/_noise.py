"""Noise injection: the six modes of ``skimage.util.random_noise``.

The mode may be a string or an integer index (a traced value when drawn per
image inside jit); modes are chosen with `routed_switch`, so one compiled
program serves all six and, under vmap, each image computes only its own.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxdef import _validate
from jaxdef.transforms._common import clip
from jaxdef.transforms._common import clip as _clip01
from jaxdef.transforms._routing import routed_switch

NOISE_KINDS = ("gaussian", "poisson", "salt", "pepper", "s&p", "speckle")

# scikit-image scales Poisson noise by 2 ** ceil(log2(number of unique
# values)), which depends on the data and cannot be traced. 256 is what it
# uses for any 8-bit image with more than 128 distinct values.
POISSON_SCALE = 256.0

# Ranges of the randomized strength. Each is centred on scikit-image's
# default (var 0.01, amount 0.05), which the study used for every draw.
VAR_RANGE = (0.005, 0.02)
AMOUNT_RANGE = (0.025, 0.1)


def _kind_index(kind: Any) -> Any:
  if isinstance(kind, str):
    return NOISE_KINDS.index(_validate.check_choice(kind, "kind", NOISE_KINDS))
  if _validate.is_concrete(kind):
    _validate.check_number(kind, "kind", low=0, high=len(NOISE_KINDS) - 1, integer=True)
  return kind


def noise(
    key: jax.Array,
    image: jax.Array,
    kind: Any,
    *,
    var: Any = 0.01,
    amount: Any = 0.05,
    salt_vs_pepper: Any = 0.5,
    poisson_scale: float = POISSON_SCALE,
) -> jax.Array:
  """Adds noise of one kind, like ``skimage.util.random_noise``, then clips.

  Kinds (scikit-image's semantics; salt and pepper act per element):
    gaussian: ``x + N(0, var)``; poisson: ``Poisson(x * scale) / scale``;
    salt: a fraction `amount` of elements set to 1; pepper: set to 0;
    s&p: a fraction `amount` replaced, `salt_vs_pepper` of them by 1;
    speckle: ``x + x * N(0, var)``.

  Poisson sampling has no gradient; its noise enters straight-through
  (``x + stop_gradient(noisy - x)``), so the gradient is the identity.

  Args:
    key: PRNG key.
    image: float array, shape (H, W, C), values in [0, 1].
    kind: one of NOISE_KINDS, or its index (may be traced).
    var: variance of the Gaussian and speckle noise, >= 0.
    amount: fraction of elements replaced by salt or pepper, in [0, 1].
    salt_vs_pepper: fraction of salt among replaced elements (s&p), in [0, 1].
    poisson_scale: photon count of a pixel of value 1.

  Returns:
    The noisy image, shape (H, W, C), clipped to [0, 1].
  """
  _validate.check_key(key)
  image = _validate.check_image(image)
  index = _kind_index(kind)
  _validate.check_number(var, "var", low=0)
  _validate.check_number(amount, "amount", low=0, high=1)
  _validate.check_number(salt_vs_pepper, "salt_vs_pepper", low=0, high=1)
  _validate.check_number(poisson_scale, "poisson_scale", low=0, low_inclusive=False)
  dtype = image.dtype
  keys = tuple(jax.random.split(key, 4))  # normal, replace, salt, poisson
  std = jnp.sqrt(jnp.asarray(var, dtype))
  strengths = (std, jnp.asarray(amount, dtype), jnp.asarray(salt_vs_pepper, dtype))
  # Routed, not lax.switch: under vmap each image computes only its own
  # kind (Poisson sampling alone costs more than the other five together).
  kinds = tuple(functools.partial(_add_noise, kind=kind, poisson_scale=float(poisson_scale))
                for kind in NOISE_KINDS)
  return clip(routed_switch(index, kinds, image, keys, strengths))


def _add_noise(x, keys, strengths, *, kind: str, poisson_scale: float):
  """One kind of noise on one image, unclipped; see `noise`."""
  normal_key, replace_key, salt_key, poisson_key = keys
  std, amount, salt_vs_pepper = strengths
  shape, dtype = x.shape, x.dtype
  if kind == "gaussian":
    return x + std * jax.random.normal(normal_key, shape, dtype)
  if kind == "speckle":
    return x + x * std * jax.random.normal(normal_key, shape, dtype)
  if kind == "poisson":
    counts = jax.random.poisson(poisson_key, jax.lax.stop_gradient(x) * poisson_scale, shape)
    return x + jax.lax.stop_gradient(counts.astype(dtype) / poisson_scale - x)
  salt_fraction = {"salt": 1.0, "pepper": 0.0, "s&p": salt_vs_pepper}[kind]
  replaced = jax.random.bernoulli(replace_key, amount, shape)
  salt = jax.random.bernoulli(salt_key, salt_fraction, shape)
  return jnp.where(replaced, salt.astype(dtype), x)


def noise_parameters(
    key: jax.Array,
    *,
    kinds: tuple[str, ...] = NOISE_KINDS,
    var_range: tuple[float, float] = VAR_RANGE,
    amount_range: tuple[float, float] = AMOUNT_RANGE,
) -> dict[str, jax.Array]:
  """The parameters `random_noise` draws from `key` (its arguments as documented there).

  Returns:
    {"kind": index into NOISE_KINDS, int32 scalar; "var", "amount",
    "salt_vs_pepper": float32 scalars; "noise_key": the key of the noise
    itself}. ``noise(noise_key, image, kind, var=..., amount=...,
    salt_vs_pepper=...)`` is then ``random_noise(key, image)``.
  """
  if isinstance(kinds, str) or not kinds:
    raise ValueError(f"kinds must be a non-empty tuple of noise kinds from {NOISE_KINDS}, "
                     f"got {kinds!r}")
  indices = jnp.asarray([NOISE_KINDS.index(_validate.check_choice(k, "kinds", NOISE_KINDS))
                         for k in kinds])
  var_range = _validate.check_interval(var_range, "var_range", 0.0, 1.0)
  amount_range = _validate.check_interval(amount_range, "amount_range", 0.0, 1.0)
  _validate.check_key(key)
  kind_key, var_key, amount_key, ratio_key, noise_key = jax.random.split(key, 5)
  return {
      "kind": indices[jax.random.randint(kind_key, (), 0, len(kinds))],
      "var": jax.random.uniform(var_key, (), minval=var_range[0], maxval=var_range[1]),
      "amount": jax.random.uniform(amount_key, (), minval=amount_range[0],
                                   maxval=amount_range[1]),
      "salt_vs_pepper": jax.random.uniform(ratio_key, ()),
      "noise_key": noise_key,
  }


def random_noise(
    key: jax.Array,
    image: jax.Array,
    *,
    kinds: tuple[str, ...] = NOISE_KINDS,
    var_range: tuple[float, float] = VAR_RANGE,
    amount_range: tuple[float, float] = AMOUNT_RANGE,
) -> jax.Array:
  """Noise of a random kind and strength (BaRT's noise injection).

  Random: the kind uniformly from `kinds`; var uniform in `var_range`;
  amount uniform in `amount_range`; salt_vs_pepper uniform in [0, 1); and
  the noise itself.

  Args:
    key: PRNG key.
    image: float array, shape (H, W, C), values in [0, 1].
    kinds: the kinds to draw from (a non-empty subset of NOISE_KINDS).
    var_range: range of the Gaussian and speckle variance.
    amount_range: range of the salt/pepper fraction.

  Returns:
    The noisy image, shape (H, W, C), values in [0, 1].
  """
  drawn = noise_parameters(key, kinds=kinds, var_range=var_range, amount_range=amount_range)
  return noise(drawn["noise_key"], image, drawn["kind"], var=drawn["var"],
               amount=drawn["amount"], salt_vs_pepper=drawn["salt_vs_pepper"])


def gaussian_noise(key: jax.Array, image: jax.Array, sigma: Any, *,
                   clip: bool = False) -> jax.Array:
  """Adds N(0, sigma^2) noise (randomized smoothing); optionally clips to [0, 1].

  Works on any shape (one image or a batch). The gradient is the identity
  (clipping zeroes it where the noisy value left [0, 1]).

  Args:
    key: PRNG key.
    image: float array of any shape, values in [0, 1].
    sigma: noise standard deviation, >= 0.
    clip: clip the result to [0, 1]; the randomized-smoothing literature
      uses both, Cohen et al. do not clip.

  Returns:
    Array of the same shape and dtype.
  """
  _validate.check_key(key)
  # Loose range: composed after another unclipped noise, its input may leave
  # [0, 1] a little; 8-bit input (up to 255) is still caught.
  image = _validate.check_image(image, rank=None, range_tolerance=16.0)
  _validate.check_number(sigma, "sigma", low=0)
  if not isinstance(clip, bool):
    raise TypeError(f"clip must be True or False, got {clip!r}")
  noisy = image + jnp.asarray(sigma, image.dtype) * jax.random.normal(key, image.shape, image.dtype)
  return _clip01(noisy) if clip else noisy
