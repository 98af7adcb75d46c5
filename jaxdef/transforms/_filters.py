"""Gaussian and median blur with kernel sizes that may be traced values.

A defense draws a kernel size per image inside `jax.jit`, so the size cannot
set an array shape. Both filters therefore work on a window of a static
*maximum* size and switch taps on or off with the drawn size: one compiled
program serves every kernel size up to the maximum.

Borders use scipy's ``mode="reflect"`` (numpy's ``"symmetric"``: the edge
pixel is repeated, ``d c b a | a b c d``). The reflected index of a pixel
depends only on its position, not on the kernel size, so padding once by the
maximum radius gives every smaller kernel the same values scipy would see.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import _validate
from jaxdef.transforms._routing import routed_switch
from jaxdef.transforms._routing import with_output_pullback
from jaxdef.transforms._selection import median_of

# BaRT draws kernel sizes from [2, 14) and rounds even draws up: 3..13.
KERNEL_SIZE_RANGE = (2, 14)
SIGMA_RANGE = (0.1, 3.1)

# Kernel sizes up to this use selection networks (13 x 13: 1,884 steps per
# pixel); beyond it the networks grow faster than bisection's 32 passes.
NETWORK_MAX_KERNEL_SIZE = 13


def _static_max_kernel_size(kernel_size: Any, max_kernel_size: int | None) -> int:
  """The window size the computation is built for (a static odd integer)."""
  if max_kernel_size is None:
    if not _validate.is_concrete(kernel_size) or np.ndim(kernel_size) != 0:
      raise ValueError(
          "max_kernel_size must be given (a Python int) when kernel_size is a traced value, "
          "e.g. inside jax.jit or jax.vmap"
      )
    # The window is the kernel itself: report problems under its own name.
    _validate.check_number(kernel_size, "kernel_size", low=1, integer=True)
    if int(kernel_size) % 2 == 0:
      raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    max_kernel_size = int(kernel_size)
  _validate.check_number(max_kernel_size, "max_kernel_size", low=1, integer=True)
  max_kernel_size = int(max_kernel_size)
  if max_kernel_size % 2 == 0:
    raise ValueError(f"max_kernel_size must be odd, got {max_kernel_size}")
  return max_kernel_size


def _check_kernel_size(kernel_size: Any, max_kernel_size: int) -> Any:
  """Checks a concrete kernel size (returned as an int); tracers pass through."""
  if _validate.is_concrete(kernel_size) and np.ndim(kernel_size) == 0:
    _validate.check_number(kernel_size, "kernel_size", low=1, high=max_kernel_size, integer=True)
    if int(kernel_size) % 2 == 0:
      raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    return int(kernel_size)
  if not jnp.issubdtype(jnp.result_type(kernel_size), jnp.integer):
    raise TypeError(f"kernel_size must be an integer, got dtype {jnp.result_type(kernel_size)}")
  return kernel_size


def _check_kernel_size_range(kernel_size_range: Any) -> tuple[int, int]:
  """Checks a half-open integer range [low, high) of kernel sizes."""
  low, high = _validate.check_interval(kernel_size_range, "kernel_size_range", 1, 1001,
                                       integer=True)
  if low == high:
    raise ValueError(f"kernel_size_range is a half-open range [low, high) and must not be empty, "
                     f"got {kernel_size_range}")
  return low, high


def random_kernel_size(key: jax.Array, *,
                       kernel_size_range: tuple[int, int] = KERNEL_SIZE_RANGE) -> jax.Array:
  """The odd kernel size `random_median_blur` draws: an integer in [low, high), even rounded up.

  Returns:
    int32 scalar; the default range gives 3, 5, ..., 13, each with
    probability 1/6.
  """
  _validate.check_key(key)
  return _odd_kernel_size(key, _check_kernel_size_range(kernel_size_range))


def _odd_kernel_size(key: jax.Array, size_range: tuple[int, int]) -> jax.Array:
  """Draws an integer in [low, high) and rounds even draws up to odd."""
  size = jax.random.randint(key, (), size_range[0], size_range[1])
  # 2 * (size // 2) + 1, written with a shift: XLA's CPU compiler was seen to
  # hang on integer remainders of per-image draws under nested vmap.
  return 2 * (size >> 1) + 1


def _max_odd(size_range: tuple[int, int]) -> int:
  largest = size_range[1] - 1
  return largest + (1 - largest % 2)


def gaussian_blur(
    image: jax.Array, kernel_size: Any, sigma: Any, *, max_kernel_size: int | None = None
) -> jax.Array:
  """Blurs with a normalised separable Gaussian kernel, reflect padding.

  Equals ``scipy.ndimage.gaussian_filter(image, sigma, radius=(kernel_size -
  1) // 2, mode="reflect", axes=(0, 1))``.

  Args:
    image: float array, shape (H, W, C), values in [0, 1].
    kernel_size: odd integer >= 1 (may be traced).
    sigma: standard deviation in pixels, > 0 (may be traced).
    max_kernel_size: static upper bound of `kernel_size`; required when
      `kernel_size` is traced.

  Returns:
    The blurred image, shape (H, W, C), values in [0, 1].
  """
  image = _validate.check_image(image)
  max_size = _static_max_kernel_size(kernel_size, max_kernel_size)
  kernel_size = _check_kernel_size(kernel_size, max_size)
  _validate.check_number(sigma, "sigma", low=0, low_inclusive=False)
  radius = max_size // 2
  offsets = jnp.arange(-radius, radius + 1, dtype=image.dtype)
  active = jnp.abs(offsets) <= (kernel_size - 1) >> 1  # shift, see _odd_kernel_size
  weights = jnp.where(active, jnp.exp(-0.5 * (offsets / sigma) ** 2), 0.0)
  weights = (weights / weights.sum()).astype(image.dtype)
  height, width = image.shape[:2]
  padded = _padded(image, radius)
  # Separable filter: rows then columns. The static tap loop unrolls into
  # shifted slices that XLA fuses into one pass per axis.
  rows = sum(weights[t] * padded[t:t + height] for t in range(max_size))
  return sum(weights[t] * rows[:, t:t + width] for t in range(max_size))


def gaussian_blur_parameters(
    key: jax.Array,
    *,
    kernel_size_range: tuple[int, int] = KERNEL_SIZE_RANGE,
    sigma_range: tuple[float, float] = SIGMA_RANGE,
) -> tuple[jax.Array, jax.Array]:
  """The (kernel size, sigma) `random_gaussian_blur` draws from `key`.

  Returns:
    int32 and float32 scalars: the odd size as `random_kernel_size` draws
    it, sigma uniform in [low, high).
  """
  sigma_range = _validate.check_interval(sigma_range, "sigma_range", 1e-6, 1e3)
  _validate.check_key(key)
  size_key, sigma_key = jax.random.split(key)
  return (random_kernel_size(size_key, kernel_size_range=kernel_size_range),
          jax.random.uniform(sigma_key, (), minval=sigma_range[0], maxval=sigma_range[1]))


def random_gaussian_blur(
    key: jax.Array,
    image: jax.Array,
    *,
    kernel_size_range: tuple[int, int] = KERNEL_SIZE_RANGE,
    sigma_range: tuple[float, float] = SIGMA_RANGE,
) -> jax.Array:
  """Gaussian blur with a random kernel size and sigma.

  Random: kernel size uniform in the integers of [low, high), even draws
  rounded up to odd (the default gives 3..13); sigma uniform in
  [low, high) (default [0.1, 3.1)).

  Args:
    key: PRNG key.
    image: float array, shape (H, W, C), values in [0, 1].
    kernel_size_range: half-open integer range of the drawn size.
    sigma_range: half-open range of the drawn standard deviation.

  Returns:
    The blurred image, shape (H, W, C).
  """
  kernel_size, sigma = gaussian_blur_parameters(key, kernel_size_range=kernel_size_range,
                                                sigma_range=sigma_range)
  # The static bound of the traced size (the range was checked by the draw).
  return gaussian_blur(image, kernel_size, sigma,
                       max_kernel_size=_max_odd(tuple(int(v) for v in kernel_size_range)))


def _order_keys(values: jax.Array) -> jax.Array:
  """Maps float32 values to int32 keys with the same order (an involution)."""
  bits = jax.lax.bitcast_convert_type(values, jnp.int32)
  return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _from_order_keys(keys: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(keys ^ ((keys >> 31) & 0x7FFFFFFF), jnp.float32)


def median_blur(
    image: jax.Array, kernel_size: Any, *, max_kernel_size: int | None = None
) -> jax.Array:
  """Median of each kernel_size x kernel_size window, per channel.

  Equals ``scipy.ndimage.median_filter(image, size=(k, k, 1),
  mode="reflect")`` exactly. The gradient flows to the window's median
  element (shared equally among ties).

  Sizes up to 13 (the study's 3..13) use a median selection network for
  their own size (`_selection`); a traced size picks its network with
  `routed_switch`, so under vmap each image pays only for its own kernel.
  Larger sizes count window values below a threshold in 32 bisection passes
  over the bit pattern, in a window of `max_kernel_size`.

  Args:
    image: float array, shape (H, W, C), values in [0, 1], no NaN.
    kernel_size: odd integer >= 1 (may be traced).
    max_kernel_size: static upper bound of `kernel_size`; required when
      `kernel_size` is traced.

  Returns:
    The filtered image, shape (H, W, C).
  """
  image = _validate.check_image(image)
  max_size = _static_max_kernel_size(kernel_size, max_kernel_size)
  kernel_size = _check_kernel_size(kernel_size, max_size)
  if isinstance(kernel_size, int):
    return _static_median(image, kernel_size)
  return _routed_median(image, jnp.asarray(kernel_size, jnp.int32), max_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _routed_median(image: jax.Array, kernel_size: jax.Array, max_size: int) -> jax.Array:
  """`median_blur` for a traced size: each image (row under vmap) runs its own size's network.

  A custom VJP keeps the median as the residual, so the backward pass only
  tests ties: differentiating through `routed_switch` instead would evaluate
  the networks again (its backward recomputes each branch's forward pass),
  and the selection networks are what make BaRT's programs slow to compile.
  """
  return routed_switch(_branch_index(kernel_size, max_size), _median_branches(max_size),
                       image, kernel_size)


def _routed_median_fwd(image, kernel_size, max_size):
  median = _routed_median(image, kernel_size, max_size)
  return median, (image, kernel_size, median)


def _routed_median_bwd(max_size, residuals, cotangent):
  image, kernel_size, median = residuals
  return _median_gradient(image, kernel_size, median, cotangent, max_size), None


_routed_median.defvjp(_routed_median_fwd, _routed_median_bwd)


def _median_gradient(image: jax.Array, kernel_size: jax.Array, median: jax.Array,
                     cotangent: jax.Array, max_size: int) -> jax.Array:
  """The image cotangent of ``median = median_blur(image, kernel_size)``; see `_median_pullback`."""
  pullbacks = [functools.partial(_median_pullback, window_size=size)
               for size in _branch_windows(max_size)]
  return routed_switch(_branch_index(kernel_size, max_size), pullbacks,
                       image, median, cotangent, kernel_size)


def _branch_windows(max_size: int) -> list[int]:
  """The window of each branch: the networks' sizes 1, 3, .., 13, then bisection's max_size."""
  networks = list(range(1, min(max_size, NETWORK_MAX_KERNEL_SIZE) + 1, 2))
  return networks + ([max_size] if max_size > NETWORK_MAX_KERNEL_SIZE else [])


def _branch_index(kernel_size: jax.Array, max_size: int) -> jax.Array:
  """Branch k // 2 for the networks (sizes 1, 3, ..); the last one is bisection."""
  last = len(_branch_windows(max_size)) - 1
  return jnp.minimum((kernel_size - 1) >> 1, last)  # shift, see _odd_kernel_size


def _median_branches(max_size: int) -> list:
  """Value-only medians, one per branch: `_routed_median`'s VJP supplies the gradient."""
  return [functools.partial(_median_by_bisection, max_size=size)
          if size > NETWORK_MAX_KERNEL_SIZE
          else lambda image, kernel_size, size=size: _network_median(image, size)
          for size in _branch_windows(max_size)]


def _median_pullback(image: jax.Array, median: jax.Array, cotangent: jax.Array,
                     kernel_size: jax.Array, *, window_size: int) -> jax.Array:
  """The image cotangent of a median blur: the transpose of `_median_tangent`."""
  tangent = functools.partial(_median_tangent, image, median, kernel_size=kernel_size,
                              window_size=window_size)
  (gradient,) = jax.linear_transpose(tangent, image)(cotangent)
  return gradient


def _median_tangent(image: jax.Array, median: jax.Array, tangent: jax.Array, *,
                    kernel_size: Any, window_size: int) -> jax.Array:
  """The tangent of a median blur: each output's is its median element's (ties: their mean).

  Taps of the `window_size` window outside the kernel (`kernel_size`, maybe
  traced) are switched off; where the two sizes agree, none is. Linear in
  `tangent`, so `jax.linear_transpose` gives the gradient.

  Args:
    image: (H, W, C), the blurred image.
    median: (H, W, C), `median_blur(image, kernel_size)`.
    tangent: (H, W, C), the tangent of `image`.
    kernel_size: odd int (or int32 scalar), at most `window_size`.

  Returns:
    (H, W, C), the tangent of `median`.
  """
  radius, half = window_size // 2, (kernel_size - 1) >> 1
  height, width = image.shape[:2]
  padded, padded_tangent = _padded(image, radius), _padded(tangent, radius)

  # A loop over the window's rows, its columns unrolled: as fast to run as
  # all k*k taps unrolled, and about 6x quicker to compile (BENCHMARKS.md).
  # The median enters the loop as an operand, so XLA computes it once
  # instead of fusing its network into each of the k*k tie tests.
  def ties_in_row(dy):
    band = jax.lax.dynamic_slice_in_dim(padded, dy, height, axis=0)
    row_on = jnp.abs(dy - radius) <= half
    return [(band[:, dx:dx + width] == median) & row_on & (abs(dx - radius) <= half)
            for dx in range(window_size)]

  def count_row(dy, count):
    return count + sum(t.astype(image.dtype) for t in ties_in_row(dy))

  def add_row(dy, total):
    band = jax.lax.dynamic_slice_in_dim(padded_tangent, dy, height, axis=0)
    return total + sum(jnp.where(t, band[:, dx:dx + width], 0.0)
                       for dx, t in enumerate(ties_in_row(dy)))

  tie_count = jax.lax.fori_loop(0, window_size, count_row, jnp.zeros_like(image))
  return jax.lax.fori_loop(0, window_size, add_row, jnp.zeros_like(tangent)) / tie_count


def _padded(image: jax.Array, radius: int) -> jax.Array:
  """`image` with `radius` reflected pixels on each side of both spatial axes."""
  return jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")


def _windows(image: jax.Array, kernel_size: int) -> list[jax.Array]:
  """The kernel_size**2 shifted copies of `image` (reflect borders), (H, W, C) each."""
  height, width = image.shape[:2]
  padded = _padded(image, kernel_size // 2)
  return [padded[dy:dy + height, dx:dx + width]
          for dy in range(kernel_size) for dx in range(kernel_size)]


# Jitted so that its trace is cached: routing and differentiation trace a
# branch many times, and each trace of a 13 x 13 network emits 3,600 ops.
_network_median = jax.jit(lambda image, kernel_size: median_of(_windows(image, kernel_size)),
                          static_argnums=1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _static_median(image: jax.Array, kernel_size: int) -> jax.Array:
  """`median_blur` for a Python int size: its own network, or bisection above 13."""
  if kernel_size <= NETWORK_MAX_KERNEL_SIZE:
    return _network_median(image, kernel_size)
  return _median_by_bisection(image, kernel_size, max_size=kernel_size)


@_static_median.defjvp
def _static_median_jvp(kernel_size, primals, tangents):
  (image,), (image_tangent,) = primals, tangents
  median = _static_median(image, kernel_size)
  return median, _median_tangent(image, median, image_tangent, kernel_size=kernel_size,
                                 window_size=kernel_size)


def _median_by_bisection(image: jax.Array, kernel_size: Any, *, max_size: int) -> jax.Array:
  """Median by bisection on the float's bit pattern, in a max_size window.

  32 rounds, each counting how many window values lie below a threshold:
  elementwise work that XLA fuses, one program for every (traced) size.
  """
  radius = max_size // 2
  height, width = image.shape[:2]
  padded = _padded(image, radius)
  padded_keys = _order_keys(padded.astype(jnp.float32))
  half = (kernel_size - 1) >> 1  # shift, see _odd_kernel_size
  shifts = [(dy, dx) for dy in range(max_size) for dx in range(max_size)]
  # Whether each tap of the largest window belongs to the drawn kernel.
  active = [(abs(dy - radius) <= half) & (abs(dx - radius) <= half) for dy, dx in shifts]

  def window(array, dy, dx):
    return array[dy:dy + height, dx:dx + width]

  def count_at_most(threshold):
    return sum(jnp.where(on, window(padded_keys, dy, dx) <= threshold, False).astype(jnp.int32)
               for on, (dy, dx) in zip(active, shifts))

  rank = (kernel_size * kernel_size - 1) >> 1

  def bisect(_, bounds):
    low, high = bounds
    middle = (low >> 1) + (high >> 1) + (low & high & 1)  # floor mean without overflow
    enough = count_at_most(middle) >= rank + 1
    return jnp.where(enough, low, middle + 1), jnp.where(enough, middle, high)

  int32 = jnp.iinfo(jnp.int32)
  bounds = (jnp.full(image.shape, int32.min, jnp.int32),
            jnp.full(image.shape, int32.max, jnp.int32))
  median_key, _ = jax.lax.fori_loop(0, 32, bisect, bounds)
  return _from_order_keys(median_key).astype(image.dtype)


def _random_median_blur_pullback(
    key: jax.Array, image: jax.Array, median: jax.Array, cotangent: jax.Array, *,
    kernel_size_range: tuple[int, int] = KERNEL_SIZE_RANGE) -> tuple[None, jax.Array]:
  """`random_median_blur`'s gradient from its output: BaRT's backward pass need not recompute it."""
  kernel_size_range = _check_kernel_size_range(kernel_size_range)
  kernel_size = _odd_kernel_size(key, kernel_size_range)
  return None, _median_gradient(image, kernel_size, median, cotangent,
                                _max_odd(kernel_size_range))


@functools.partial(with_output_pullback, pullback=_random_median_blur_pullback)
def random_median_blur(
    key: jax.Array, image: jax.Array, *, kernel_size_range: tuple[int, int] = KERNEL_SIZE_RANGE
) -> jax.Array:
  """Median blur with a random odd kernel size.

  Random: kernel size uniform in the integers of [low, high), even draws
  rounded up to odd (the default gives 3..13).

  Args:
    key: PRNG key.
    image: float array, shape (H, W, C), values in [0, 1].
    kernel_size_range: half-open integer range of the drawn size.

  Returns:
    The filtered image, shape (H, W, C).
  """
  kernel_size_range = _check_kernel_size_range(kernel_size_range)
  _validate.check_key(key)
  kernel_size = _odd_kernel_size(key, kernel_size_range)
  return median_blur(image, kernel_size, max_kernel_size=_max_odd(kernel_size_range))
