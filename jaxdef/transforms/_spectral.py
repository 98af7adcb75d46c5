"""Colour quantization and FFT perturbation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdef import _validate
from jaxdef.transforms._common import clip

LEVELS_RANGE = (8, 200)
FFT_FRACTION_RANGE = (0.0, 0.95)


def quantize(image: jax.Array, levels: Any) -> jax.Array:
  """Rounds to multiples of 1 / levels: ``round(image * levels) / levels``.

  levels = 4 gives values in {0, 0.25, 0.5, 0.75, 1}. Rounding is half to
  even, as numpy's; XLA may divide by multiplying with the rounded
  reciprocal, so a value can differ from numpy's by 1 ulp (never in which
  level it lands on). The true gradient is zero almost everywhere; wrap with
  `jaxdef.bpda` for the straight-through estimate (the defenses do).

  Args:
    image: float array, shape (H, W, C), values in [0, 1].
    levels: positive integer, a scalar or one per channel, shape (C,)
      (may be traced).

  Returns:
    The quantized image, shape (H, W, C), values in [0, 1].
  """
  image = _validate.check_image(image)
  _validate.check_number(levels, "levels", low=1, integer=True)
  levels = jnp.asarray(levels, image.dtype)
  return jnp.round(image * levels) / levels


def quantize_levels(key: jax.Array, *,
                    levels_range: tuple[int, int] = LEVELS_RANGE) -> jax.Array:
  """The number of levels `random_quantize` draws: uniform in the integers of [low, high].

  Returns:
    int32 scalar.
  """
  _validate.check_key(key)
  low, high = _validate.check_interval(levels_range, "levels_range", 1, 2**24, integer=True)
  return jax.random.randint(key, (), low, high + 1)


def random_quantize(
    key: jax.Array, image: jax.Array, *, levels_range: tuple[int, int] = LEVELS_RANGE
) -> jax.Array:
  """Quantizes with a random number of levels.

  Random: levels uniform in the integers of [low, high] (inclusive; default
  [8, 200]).

  Args:
    key: PRNG key.
    image: float array, shape (H, W, C), values in [0, 1].
    levels_range: inclusive integer range of levels.

  Returns:
    The quantized image, shape (H, W, C).
  """
  return quantize(image, quantize_levels(key, levels_range=levels_range))


def fft_perturb(key: jax.Array, image: jax.Array, fraction: Any) -> jax.Array:
  """Zeroes a random fraction of each channel's 2-D FFT coefficients.

  Each coefficient of each channel is zeroed independently with probability
  `fraction`; the result is the clipped real part of the inverse FFT.

  Args:
    key: PRNG key; draws which coefficients are zeroed.
    image: float array, shape (H, W, C), values in [0, 1].
    fraction: probability of zeroing a coefficient, in [0, 1]; a scalar or
      one per channel, shape (C,) (may be traced).

  Returns:
    The perturbed image, shape (H, W, C), values in [0, 1].
  """
  _validate.check_key(key)
  image = _validate.check_image(image)
  _validate.check_number(fraction, "fraction", low=0, high=1)
  keep = jax.random.uniform(key, image.shape) >= jnp.asarray(fraction)
  spectrum = jnp.fft.fft2(image, axes=(0, 1))
  restored = jnp.fft.ifft2(jnp.where(keep, spectrum, 0), axes=(0, 1)).real
  return clip(restored.astype(image.dtype))


def fft_fractions(key: jax.Array, channels: int, *,
                  fraction_range: tuple[float, float] = FFT_FRACTION_RANGE
                  ) -> tuple[jax.Array, jax.Array]:
  """What `random_fft_perturb` draws for an image of `channels` channels.

  Returns:
    (fractions, mask_key): float32 (channels,) uniform in [low, high), and
    the key ``fft_perturb(mask_key, image, fractions)`` zeroes coefficients
    with; that call is then ``random_fft_perturb(key, image)``.
  """
  _validate.check_key(key)
  low, high = _validate.check_interval(fraction_range, "fraction_range", 0.0, 1.0)
  fraction_key, mask_key = jax.random.split(key)
  return jax.random.uniform(fraction_key, (channels,), minval=low, maxval=high), mask_key


def random_fft_perturb(
    key: jax.Array, image: jax.Array, *, fraction_range: tuple[float, float] = FFT_FRACTION_RANGE
) -> jax.Array:
  """FFT perturbation with a random fraction per channel.

  Random: a fraction per channel uniform in [low, high) (default
  [0, 0.95)), and which coefficients are zeroed.

  Args:
    key: PRNG key.
    image: float array, shape (H, W, C), values in [0, 1].
    fraction_range: range of the per-channel fraction.

  Returns:
    The perturbed image, shape (H, W, C), values in [0, 1].
  """
  image = _validate.check_image(image)
  fractions, mask_key = fft_fractions(key, image.shape[-1], fraction_range=fraction_range)
  return fft_perturb(mask_key, image, fractions)
