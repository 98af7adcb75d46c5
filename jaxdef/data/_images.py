"""Decoding and ImageNet-style preprocessing of single images (PIL, like torchvision)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

# Resample filter of torchvision's `Resize` on PIL images (its default,
# InterpolationMode.BILINEAR); PIL's resize is antialiased when shrinking, as
# torchvision's `antialias=True` is, so both give identical pixels.
_RESAMPLE = Image.Resampling.BILINEAR


class UndecodableImageError(ValueError):
  """An image file (or record) that cannot be decoded; `name` says which."""

  def __init__(self, name: str, reason: object):
    super().__init__(f"cannot decode image {name}: {reason}")
    self.name = name


def check_sizes(resize_size: int | None, crop_size: int | None) -> None:
  """Raises ValueError unless both are None or positive ints, crop <= resize."""
  for arg, value in (("resize_size", resize_size), ("crop_size", crop_size)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
      raise ValueError(f"{arg} must be a positive int or None; got {value!r}")
  if resize_size is not None and crop_size is not None and crop_size > resize_size:
    raise ValueError(f"crop_size ({crop_size}) must not exceed resize_size ({resize_size}): "
                     "the centre crop is taken from the resized image")


def decode_image_file(path: str | os.PathLike, *, rgb: bool = True) -> Image.Image:
  """Decodes one image file with PIL.

  Args:
    path: a JPEG, PNG or any other format PIL reads.
    rgb: convert to 3-channel RGB (grayscale, palette, CMYK, RGBA inputs).

  Returns:
    The fully loaded PIL image.

  Raises:
    UndecodableImageError: the file is not an image PIL can decode (truncated,
      empty, another format), naming the file.
  """
  try:
    with Image.open(path) as image:
      image.load()
      return image.convert("RGB") if rgb else image.copy()
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
    raise UndecodableImageError(os.fspath(path), err) from err


def preprocess_image(image: Image.Image | np.ndarray, *, resize_size: int | None = 256,
                     crop_size: int | None = 224, name: str = "image") -> np.ndarray:
  """ImageNet evaluation preprocessing: resize the shorter side, centre-crop.

  Pixel-identical to torchvision's `Resize(resize_size)`, `CenterCrop(crop_size)`,
  `ToTensor()` on PIL images (bilinear, antialiased), in HWC layout.

  Args:
    image: a PIL image, or a uint8 array (H, W) or (H, W, C) with values in [0, 255].
    resize_size: the shorter side becomes this many pixels, the longer one
      `int(resize_size * long / short)`; None keeps the size.
    crop_size: side of the central square crop; None keeps the whole image.
    name: what to call the image in error messages (e.g. its file name).

  Returns:
    float32 (crop_size, crop_size, C) in [0, 1] (or the resized/original size).

  Raises:
    ValueError: bad sizes, or an image smaller than `crop_size` when not resized.
  """
  check_sizes(resize_size, crop_size)
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
      raise ValueError(f"{name}: arrays must be uint8 (H, W) or (H, W, C); "
                       f"got {image.dtype} {image.shape}")
    if resize_size is None and crop_size is None:
      array = image if image.ndim == 3 else image[..., None]
      return array.astype(np.float32) / np.float32(255)
    image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
  if resize_size is not None:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(resize_size * long / short)
    size = (resize_size, new_long) if width <= height else (new_long, resize_size)
    image = image.resize(size, _RESAMPLE)
  if crop_size is not None:
    width, height = image.size
    if width < crop_size or height < crop_size:
      raise ValueError(f"{name} is {width}x{height} pixels, smaller than crop_size {crop_size}; "
                       "set resize_size (e.g. 256) or a smaller crop_size")
    # round() like torchvision's center_crop (round half to even).
    top = int(round((height - crop_size) / 2.0))
    left = int(round((width - crop_size) / 2.0))
    image = image.crop((left, top, left + crop_size, top + crop_size))
  array = np.asarray(image, dtype=np.float32) / np.float32(255)
  return array if array.ndim == 3 else array[..., None]
