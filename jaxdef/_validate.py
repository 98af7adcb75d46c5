"""Input checks shared by the public API.

Every check raises a `ValueError` or `TypeError` whose message names the
argument and says what is allowed, so that bad input never surfaces as a bare
XLA shape error deep inside a trace. Checks on values (ranges, NaN) only run
on concrete arrays: inside `jax.jit` the values are abstract and only shapes
and dtypes can be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Pixel values may overshoot [0, 1] by float rounding (e.g. after a resize).
RANGE_TOLERANCE = 1e-4


def is_concrete(x: Any) -> bool:
  """True when `x` holds actual values (not a tracer inside jit/vmap/grad)."""
  return not isinstance(x, jax.core.Tracer)


def check_image(image: Any, name: str = "image", rank: int | None = 3, *,
                range_tolerance: float = RANGE_TOLERANCE) -> jax.Array:
  """Checks an image (rank 3, HWC) or batch (rank 4, NHWC) and returns it.

  Args:
    image: float array with values in [0, 1].
    name: the argument's name, used in error messages.
    rank: 3 for one HWC image, 4 for an NHWC batch, None for pixels of any
      rank >= 1 (functions that work on one image or a batch alike).
    range_tolerance: how far values may stray outside [0, 1] (rounding by
      default; models accept defended images, e.g. unclipped noise, with a
      loose bound that still catches 8-bit input).

  Returns:
    `image` as a `jax.Array` (unchanged dtype).

  Raises:
    ValueError: wrong rank, empty, values outside [0, 1] or not finite.
    TypeError: not a floating-point array.
  """
  layout = {3: "HWC (height, width, channels)", 4: "NHWC (batch, height, width, channels)",
            None: "HWC or NHWC"}[rank]
  if not hasattr(image, "shape") or not hasattr(image, "dtype"):
    raise TypeError(f"{name} must be an array of shape {layout}, got {type(image).__name__}")
  if (image.ndim != rank) if rank is not None else image.ndim < 1:
    wanted = f"rank {rank}" if rank is not None else "rank >= 1"
    raise ValueError(f"{name} must have {wanted} ({layout}), got shape {tuple(image.shape)}")
  if not jnp.issubdtype(image.dtype, jnp.floating):
    raise TypeError(
        f"{name} must be floating point with values in [0, 1], got dtype {image.dtype}; "
        "convert uint8 images with images.astype('float32') / 255"
    )
  if any(d == 0 for d in image.shape):
    raise ValueError(f"{name} must not be empty, got shape {tuple(image.shape)}")
  if is_concrete(image):
    finite, low, high = _range_summary(image)
    if not finite:
      raise ValueError(f"{name} contains NaN or inf values; pixel values must be finite, in [0, 1]")
    if low < -range_tolerance or high > 1 + range_tolerance:
      slack = "" if range_tolerance == RANGE_TOLERANCE else (
          f" (up to {range_tolerance:g} outside, for defended images)")
      raise ValueError(
          f"{name} values must lie in [0, 1]{slack}, got min {low:.4g} and max {high:.4g}; "
          "scale 8-bit images by 1/255"
      )
  return jnp.asarray(image)


def _range_summary(image: Any) -> tuple[bool, float, float]:
  """(all finite, min, max) of the finite values; a device array is reduced
  where it lives, and only the three scalars come back to the host (issue 19
  measured 0.3-0.5 s for copying a 1,000-image ImageNet batch, which also
  stalled asynchronous dispatch)."""
  if isinstance(image, jax.Array):
    # Eagerly, also when a traced function validates a concrete constant.
    with jax.ensure_compile_time_eval():
      finite, low, high = jax.device_get(_device_range_summary(image))
  else:
    values = np.asarray(image)
    mask = np.isfinite(values)
    finite = bool(mask.all())
    low = float(values[mask].min()) if mask.any() else np.inf
    high = float(values[mask].max()) if mask.any() else -np.inf
  return bool(finite), float(low), float(high)


@jax.jit
def _device_range_summary(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  finite = jnp.isfinite(image)
  return (finite.all(), jnp.where(finite, image, jnp.inf).min().astype(jnp.float32),
          jnp.where(finite, image, -jnp.inf).max().astype(jnp.float32))


def check_images(images: Any, name: str = "images", *,
                 range_tolerance: float = RANGE_TOLERANCE) -> jax.Array:
  """Checks an NHWC batch; see `check_image`."""
  return check_image(images, name=name, rank=4, range_tolerance=range_tolerance)


def check_interval(
    value: Sequence[float], name: str, low: float, high: float, integer: bool = False
) -> tuple[float, float]:
  """Checks a parameter range `(lo, hi)` with `low <= lo <= hi <= high`.

  Returns:
    The range as a tuple of two Python numbers.
  """
  kind = "integers" if integer else "numbers"
  try:
    lo, hi = value
    lo, hi = (int(lo), int(hi)) if integer else (float(lo), float(hi))
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a pair (low, high) of {kind}, got {value!r}") from None
  if integer and (lo != value[0] or hi != value[1]):
    raise ValueError(f"{name} must be a pair of integers, got {value!r}")
  if not (low <= lo <= hi <= high):
    raise ValueError(
        f"{name} must satisfy {low} <= low <= high <= {high}, got ({lo}, {hi})"
    )
  return lo, hi


def check_number(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
) -> Any:
  """Checks a number, or every element of an array, against bounds.

  Tracers pass unchecked (their values are unknown inside jit).

  Returns:
    `value` unchanged.
  """
  if not is_concrete(value):
    return value
  if isinstance(value, (str, bytes)):
    raise TypeError(f"{name} must be a number, got the string {value!r}")
  if np.ndim(value) != 0:
    try:
      numbers = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
      raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}") from None
    for number in numbers.ravel():
      _check_scalar(number, name, low, high, low_inclusive, high_inclusive, integer, value)
    return value
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name} must be a number, got {value!r}") from None
  _check_scalar(number, name, low, high, low_inclusive, high_inclusive, integer, value)
  return value


def _check_scalar(number: float, name: str, low, high, low_inclusive, high_inclusive, integer,
                  shown: Any) -> None:
  if not np.isfinite(number):
    raise ValueError(f"{name} must be finite, got {shown!r}")
  if integer and number != int(number):
    raise ValueError(f"{name} must be an integer, got {shown!r}")
  too_low = low is not None and (number < low if low_inclusive else number <= low)
  too_high = high is not None and (number > high if high_inclusive else number >= high)
  if too_low or too_high:
    left = "[" if low_inclusive else "("
    right = "]" if high_inclusive else ")"
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {shown!r}")


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
  """Checks that `value` is one of `choices` and returns it."""
  if value not in choices:
    allowed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
  return value


def check_key(key: Any, name: str = "key") -> Any:
  """Checks that `key` looks like a `jax.random` key (typed or raw uint32[2])."""
  if not hasattr(key, "dtype"):
    raise TypeError(
        f"{name} must be a jax.random key (jax.random.key(seed)), got {type(key).__name__}")
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  if key.dtype == jnp.uint32 and key.shape[-1:] == (2,):
    return key
  raise TypeError(
      f"{name} must be a jax.random key (jax.random.key(seed) or PRNGKey(seed)), "
      f"got an array of dtype {key.dtype} and shape {tuple(key.shape)}"
  )
