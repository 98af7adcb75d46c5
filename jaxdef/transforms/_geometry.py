"""Geometric transforms: swirl, rotation, random crop-resize, random resize-pad.

All are bilinear inverse warps: each output pixel mixes four input pixels at
coordinates computed from (possibly traced) parameters, so each transform is
one fixed-shape gather that works under `jax.jit`/`jax.vmap` with per-image
parameters and is differentiable in the image. The references are
scikit-image's ``swirl``, ``rotate`` (order 1, with their clipping to the
input's value range) and ``resize(..., order=1, mode="edge",
anti_aliasing=False)``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import _validate
from jaxdef.transforms._common import clip as _clip

# numpy.pad mode names (scikit-image's) -> index rule for out-of-range pixels.
# scikit-image translates them to scipy.ndimage's names the same way.
ROTATE_MODES = {
    "constant": "constant",  # cval
    "edge": "nearest",  # a a | a b c | c c
    "reflect": "mirror",  # c b | a b c | b a  (about the edge pixel centres)
    "symmetric": "reflect",  # b a | a b c | c b  (about the edge itself)
    "wrap": "wrap",  # b c | a b c | a b
}


def _fix_index(index: jax.Array, size: int, rule: str) -> jax.Array:
  """Maps integer pixel indices (any range) into [0, size)."""
  if rule in ("nearest", "constant"):  # "constant" masks these pixels later
    return jnp.clip(index, 0, size - 1)
  if rule == "wrap":
    return index % size
  if rule == "mirror":
    if size == 1:  # no period; scikit-image and scipy use the one pixel
      return jnp.zeros_like(index)
    period = 2 * (size - 1)
    index = index % period
    return jnp.where(index < size, index, period - index)
  if rule == "reflect":
    period = 2 * size
    index = index % period
    return jnp.where(index < size, index, period - 1 - index)
  raise ValueError(f"unknown boundary rule {rule!r}")


def _bilinear(image: jax.Array, rows: jax.Array, cols: jax.Array, rule: str,
              cval: Any = 0.0) -> jax.Array:
  """Samples all channels of `image` (H, W, C) at float (rows, cols).

  `rows` and `cols` broadcast to a shape S; returns S + (C,). Each of the four
  neighbours is mapped into the image by `rule` on its own, or replaced by
  `cval` when outside under "constant" (scipy's "grid-constant", which is
  what scikit-image's fast warp does).
  """
  height, width, _ = image.shape
  row0, col0 = jnp.floor(rows), jnp.floor(cols)
  row_frac, col_frac = rows - row0, cols - col0
  row0, col0 = row0.astype(jnp.int32), col0.astype(jnp.int32)
  cval = jnp.asarray(cval, image.dtype)
  out = 0.0
  for row, row_weight in ((row0, 1 - row_frac), (row0 + 1, row_frac)):
    for col, col_weight in ((col0, 1 - col_frac), (col0 + 1, col_frac)):
      value = image[_fix_index(row, height, rule), _fix_index(col, width, rule)]
      if rule == "constant":
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        value = jnp.where(inside[..., None], value, cval)
      out = out + (row_weight * col_weight)[..., None] * value
  return out.astype(image.dtype)


def _static_size(value: Any, name: str, low: int, high: int | None = None) -> int:
  """A Python int in [low, high] that fixes a shape, so it cannot be traced."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be a Python int (it sets an array shape, so it cannot be "
                    f"traced), got {value!r}")
  _validate.check_number(int(value), name, low=low, high=high, integer=True)
  return int(value)


def _output_hw(output_size: Any, default: tuple[int, int]) -> tuple[int, int]:
  if output_size is None:
    return default
  if isinstance(output_size, (int, np.integer)) and not isinstance(output_size, bool):
    output_size = (output_size, output_size)
  if not isinstance(output_size, (tuple, list)) or len(output_size) != 2:
    raise TypeError(f"output_size must be None, an int or a pair (height, width) of ints, got "
                    f"{output_size!r}")
  return tuple(_static_size(s, "output_size", low=1) for s in output_size)


def swirl(image: jax.Array, strength: Any, radius: Any, center: Any, *,
          rotation: Any = 0.0) -> jax.Array:
  """Swirls the image about `center`, like ``skimage.transform.swirl``.

  Output pixel (x, y) at distance rho from the centre samples the input
  turned by ``rotation + strength * exp(-rho / (radius * ln(2) / 5))``
  radians about the centre (the swirl decays to ~1/1000 at `radius`).
  Bilinear, the image mirrored beyond its edges (numpy's "reflect",
  scikit-image's default), clipped to the input's [min, max] like skimage.

  Args:
    image: float array, shape (H, W, C), values in [0, 1].
    strength: swirl angle at the centre, radians (sign sets the direction).
    radius: extent of the swirl in pixels, > 0.
    center: (x, y) = (column, row) of the centre in pixels, a pair or shape (2,).
    rotation: extra rotation in radians, applied everywhere.
    All four may be traced.

  Returns:
    The swirled image, same shape and dtype.
  """
  image = _validate.check_image(image)
  _validate.check_number(strength, "strength")
  _validate.check_number(radius, "radius", low=0, low_inclusive=False)
  _validate.check_number(rotation, "rotation")
  if np.shape(center) != (2,):
    raise ValueError(f"center must be a pair (x, y) = (column, row), got {center!r}")
  for value, name in zip(center, ("center x", "center y"), strict=True):
    _validate.check_number(value, name)
  return _swirl(image, strength, radius, jnp.asarray(center, jnp.float32), rotation)


def _swirl(image, strength, radius, center, rotation):
  rows, cols = jnp.mgrid[:image.shape[0], :image.shape[1]].astype(jnp.float32)
  dx, dy = cols - center[0], rows - center[1]
  squared = dx**2 + dy**2
  # sqrt has an infinite derivative at 0 (a pixel exactly at the centre).
  rho = jnp.where(squared > 0, jnp.sqrt(jnp.where(squared > 0, squared, 1.0)), 0.0)
  decay = jnp.asarray(radius, jnp.float32) / 5 * math.log(2)
  angle = rotation + strength * jnp.exp(-rho / decay)
  # Rotating (dx, dy) by `angle` equals scikit-image's rho * cos(angle +
  # arctan2(dy, dx)) without arctan2, whose gradient at the centre is NaN.
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_cols = center[0] + dx * cos - dy * sin
  src_rows = center[1] + dx * sin + dy * cos
  out = _bilinear(image, src_rows, src_cols, "mirror")
  return _clip(out, image.min(), image.max())


def _draw_swirl_params(key, image, strength_range=(0.1, 2.0), radius_range=(10, 200),
                       center_range=(1, 200)):
  """Draws (strength, radius, center) for `random_swirl`; see there."""
  _validate.check_key(key)
  low, high = _validate.check_interval(strength_range, "strength_range", 0.0, 10.0)
  if low <= 0:
    raise ValueError(f"strength_range must lie in (0, 10], got {strength_range!r}")
  radius_range = _validate.check_interval(radius_range, "radius_range", 1, math.inf, integer=True)
  center_lo, center_hi = _validate.check_interval(center_range, "center_range", 0, math.inf,
                                                  integer=True)
  height, width = image.shape[:2]
  # Keep the centre on the image: the study's ranges are for 224-px images.
  x_hi, y_hi = min(center_hi, width - 1), min(center_hi, height - 1)
  strength_key, int_key = jax.random.split(key)
  strength = jax.random.uniform(strength_key, (), minval=low, maxval=high)
  # One draw for the three integers (radius, x, y): each RNG call adds compile time.
  minval = jnp.array([radius_range[0], min(center_lo, x_hi), min(center_lo, y_hi)])
  maxval = jnp.array([radius_range[1], x_hi, y_hi]) + 1
  radius, x, y = jax.random.randint(int_key, (3,), minval, maxval)
  return strength, radius, jnp.stack([x, y])


def random_swirl(key: jax.Array, image: jax.Array, *,
                 strength_range: tuple[float, float] = (0.1, 2.0),
                 radius_range: tuple[int, int] = (10, 200),
                 center_range: tuple[int, int] = (1, 200)) -> jax.Array:
  """Swirl with random strength, radius and centre (BaRT's swirl).

  Random: strength uniform in [strength_range); radius a uniform integer in
  `radius_range` (inclusive); centre x and y uniform integers in
  `center_range` (inclusive) with both bounds lowered to at most W - 1 (x)
  or H - 1 (y), so the centre lies on the image. The defaults are the
  study's ranges for 224 x 224 images; on smaller images many centres land
  on the right/bottom edge, so pass scaled ranges there.

  Args:
    key: PRNG key.
    image: float array, shape (H, W, C), values in [0, 1].
    strength_range: (low, high) in (0, 10], radians.
    radius_range: (low, high) integers >= 1, pixels.
    center_range: (low, high) integers >= 0, pixels.

  Returns:
    The swirled image, same shape and dtype.
  """
  image = _validate.check_image(image)
  strength, radius, center = _draw_swirl_params(key, image, strength_range, radius_range,
                                                center_range)
  return _swirl(image, strength, radius, center.astype(jnp.float32), 0.0)


def rotate(image: jax.Array, angle: Any, *, mode: str = "constant", cval: Any = 0.0) -> jax.Array:
  """Rotates counter-clockwise about the centre, like ``skimage.transform.rotate``.

  The centre is ((W - 1) / 2, (H - 1) / 2) in (x, y); the shape is kept
  (corners are cut off). Bilinear. Like skimage, the output is clipped to the
  input's [min, max], widened to `cval` if some output pixel equals it.

  Args:
    image: float array, shape (H, W, C), values in [0, 1].
    angle: degrees, counter-clockwise; may be traced.
    mode: fill beyond the edges (numpy.pad names, as in skimage): one of
      "constant", "edge", "reflect", "symmetric", "wrap".
    cval: fill value for mode "constant", in [0, 1]; may be traced.

  Returns:
    The rotated image, same shape and dtype.
  """
  image = _validate.check_image(image)
  _validate.check_choice(mode, "mode", tuple(ROTATE_MODES))
  _validate.check_number(angle, "angle")
  _validate.check_number(cval, "cval", low=0, high=1)
  return _rotate(image, angle, mode, cval)


def _rotate(image, angle, mode, cval):
  height, width = image.shape[:2]
  rows, cols = jnp.mgrid[:height, :width].astype(jnp.float32)
  dx, dy = cols - (width - 1) / 2, rows - (height - 1) / 2
  theta = jnp.deg2rad(jnp.asarray(angle, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  # scikit-image's inverse map: output (x, y) samples the input at R(angle) (x, y).
  src_cols = (width - 1) / 2 + dx * cos - dy * sin
  src_rows = (height - 1) / 2 + dx * sin + dy * cos
  out = _bilinear(image, src_rows, src_cols, ROTATE_MODES[mode], cval)
  low, high = image.min(), image.max()
  if mode == "constant":
    # skimage's _clip_warp_output: cval widens the range only when it is
    # outside the input's range but inside the output's.
    cval = jnp.asarray(cval, image.dtype)
    widen = ((cval < low) | (cval > high)) & (out.min() <= cval) & (cval <= out.max())
    low = jnp.where(widen, jnp.minimum(low, cval), low)
    high = jnp.where(widen, jnp.maximum(high, cval), high)
  return _clip(out, low, high)


def random_rotate(key: jax.Array, image: jax.Array, *,
                  angle_range: tuple[float, float] = (-30.0, 30.0),
                  mode: str = "constant") -> jax.Array:
  """Rotation by a random angle (uniform in [angle_range) degrees).

  Args:
    key: PRNG key.
    image: float array, shape (H, W, C), values in [0, 1].
    angle_range: (low, high) in degrees, within [-360, 360].
    mode: boundary mode; see `rotate`.

  Returns:
    The rotated image, same shape and dtype; fill value 0 for "constant".
  """
  image = _validate.check_image(image)
  _validate.check_choice(mode, "mode", tuple(ROTATE_MODES))
  return _rotate(image, _draw_rotate_params(key, angle_range), mode, 0.0)


def _draw_rotate_params(key, angle_range=(-30.0, 30.0)):
  low, high = _validate.check_interval(angle_range, "angle_range", -360.0, 360.0)
  return jax.random.uniform(_validate.check_key(key), (), minval=low, maxval=high)


def _resize_coords(out_size: int, in_size: Any, length: Any, offset: Any = 0) -> jax.Array:
  """Input coordinates (half-pixel centres) of `out_size` output pixels.

  Output pixels [offset, offset + length) cover all `in_size` input pixels.
  Clamping to the edge pixel centres is skimage's mode="edge" for order 1.
  """
  index = jnp.arange(out_size, dtype=jnp.float32) - jnp.asarray(offset, jnp.float32)
  scale = jnp.asarray(in_size, jnp.float32) / jnp.asarray(length, jnp.float32)
  return jnp.clip((index + 0.5) * scale - 0.5, 0.0, in_size - 1)


def crop_resize(image: jax.Array, top: Any, left: Any, *, crop_size: int,
                output_size: Any = None) -> jax.Array:
  """Crops a square window and resizes it (Guo et al. 2018).

  Bilinear, half-pixel centres, no antialiasing: ``skimage.transform.resize(
  crop, output_size, order=1, mode="edge", anti_aliasing=False)``, and
  ``jax.image.resize(crop, ..., "linear")`` when upsampling.

  Args:
    image: float array, shape (H, W, C), values in [0, 1].
    top: row of the window's top-left corner, integer in [0, H - crop_size].
    left: its column, integer in [0, W - crop_size]. Both may be traced
      (then out-of-range values are clamped, as by `lax.dynamic_slice`).
    crop_size: side of the window, a Python int in [1, min(H, W)].
    output_size: None (the input's (H, W)), an int or a pair (height, width).

  Returns:
    Array of shape output_size + (C,), same dtype.
  """
  image = _validate.check_image(image)
  height, width, channels = image.shape
  crop_size = _static_size(crop_size, "crop_size", low=1, high=min(height, width))
  out_h, out_w = _output_hw(output_size, (height, width))
  _validate.check_number(top, "top", low=0, high=height - crop_size, integer=True)
  _validate.check_number(left, "left", low=0, high=width - crop_size, integer=True)
  return _crop_resize(image, top, left, crop_size, out_h, out_w)


def _crop_resize(image, top, left, crop_size, out_h, out_w):
  start = (jnp.asarray(top, jnp.int32), jnp.asarray(left, jnp.int32), jnp.int32(0))
  crop = jax.lax.dynamic_slice(image, start, (crop_size, crop_size, image.shape[2]))
  rows = _resize_coords(out_h, crop_size, out_h)[:, None]
  cols = _resize_coords(out_w, crop_size, out_w)[None, :]
  out = _bilinear(crop, rows, cols, "nearest")
  return _clip(out, crop.min(), crop.max())


def _draw_crop_resize_params(key, image, crop_size=None):
  _validate.check_key(key)
  height, width = image.shape[:2]
  if crop_size is None:
    crop_size = max(1, round(min(height, width) * 90 / 299))
  crop_size = _static_size(crop_size, "crop_size", low=1, high=min(height, width))
  top, left = jax.random.randint(key, (2,), 0, jnp.array([height, width]) - crop_size + 1)
  return top, left, crop_size


def random_crop_resize(key: jax.Array, image: jax.Array, *, crop_size: int | None = None
                       ) -> jax.Array:
  """Random crop resized back to the input's size (Guo et al. 2018).

  Random: the window's position, uniform over all windows inside the image.

  Args:
    key: PRNG key.
    image: float array, shape (H, W, C), values in [0, 1].
    crop_size: side of the window, a Python int in [1, min(H, W)]; default
      ``round(min(H, W) * 90 / 299)`` (the study's 90-px crops of 299 px).

  Returns:
    The resized crop, same shape and dtype as `image`.
  """
  image = _validate.check_image(image)
  top, left, crop_size = _draw_crop_resize_params(key, image, crop_size)
  return _crop_resize(image, top, left, crop_size, *image.shape[:2])


def resize_pad(image: jax.Array, size: Any, top: Any, left: Any, *, output_size: int
               ) -> jax.Array:
  """Resizes to size x size and pastes onto a zero canvas (Xie et al. 2018).

  One fixed-shape computation whatever `size`: canvas pixels in the pasted
  window sample the input like ``skimage.transform.resize(image, (size,
  size), order=1, mode="edge", anti_aliasing=False)``; all others are 0.

  Args:
    image: float array, shape (H, W, C), values in [0, 1].
    size: side of the resized image, integer in [1, output_size].
    top: row of the pasted window, integer in [0, output_size - size].
    left: its column, integer in [0, output_size - size].
    output_size: side of the square canvas, a Python int >= 1.
    size, top and left may be traced.

  Returns:
    Array of shape (output_size, output_size, C), same dtype.
  """
  image = _validate.check_image(image)
  output_size = _static_size(output_size, "output_size", low=1)
  _validate.check_number(size, "size", low=1, high=output_size, integer=True)
  room = output_size - size if _validate.is_concrete(size) else output_size - 1
  _validate.check_number(top, "top", low=0, high=room, integer=True)
  _validate.check_number(left, "left", low=0, high=room, integer=True)
  return _resize_pad(image, size, top, left, output_size)


def _resize_pad(image, size, top, left, output_size):
  height, width = image.shape[:2]
  rows = _resize_coords(output_size, height, size, top)[:, None]
  cols = _resize_coords(output_size, width, size, left)[None, :]
  out = _clip(_bilinear(image, rows, cols, "nearest"), image.min(), image.max())
  index = jnp.arange(output_size)
  inside_rows = (index >= top) & (index < top + size)
  inside_cols = (index >= left) & (index < left + size)
  inside = inside_rows[:, None, None] & inside_cols[None, :, None]
  return jnp.where(inside, out, jnp.zeros((), image.dtype))


def _draw_resize_pad_params(key, image, size_range=None, output_size=None):
  """Draws (size, top, left, output_size) for `random_resize_pad`; see there."""
  _validate.check_key(key)
  height = image.shape[0]
  if output_size is None:
    output_size = max(1, round(height * 331 / 299))
  output_size = _static_size(output_size, "output_size", low=1)
  if size_range is None:
    high = min(max(2, round(height * 331 / 299)), output_size + 1)
    size_range = (min(max(1, round(height * 200 / 299)), high - 1), high)
  low, high = _validate.check_interval(size_range, "size_range", 1, output_size + 1,
                                       integer=True)
  if low >= high:
    raise ValueError(f"size_range is a half-open range [low, high) and must not be empty, "
                     f"got {size_range!r}")
  size_key, offset_key = jax.random.split(key)
  size = jax.random.randint(size_key, (), low, high)
  top, left = jax.random.randint(offset_key, (2,), 0, output_size - size + 1)
  return size, top, left, output_size


def random_resize_pad(key: jax.Array, image: jax.Array, *,
                      size_range: tuple[int, int] | None = None,
                      output_size: int | None = None) -> jax.Array:
  """Random resize and random zero padding (Xie et al. 2018).

  Random: the size, a uniform integer in [size_range) (half-open), and the
  offset (top, left), uniform integers in [0, output_size - size].

  Defaults scale the study's setting (299 px resized to [200, 331) on a
  331-px canvas) to the height H: output_size ``round(H * 331 / 299)``,
  size_range ``(round(H * 200 / 299), round(H * 331 / 299))``, kept
  non-empty and, if `output_size` is given, capped at output_size + 1.

  Args:
    key: PRNG key.
    image: float array, shape (H, W, C), values in [0, 1].
    size_range: (low, high) integers, 1 <= low < high <= output_size + 1.
    output_size: side of the square canvas, a Python int.

  Returns:
    Array of shape (output_size, output_size, C), same dtype.
  """
  image = _validate.check_image(image)
  size, top, left, output_size = _draw_resize_pad_params(key, image, size_range, output_size)
  return _resize_pad(image, size, top, left, output_size)
