"""The defenses of the study, registered by name.

Each factory checks its parameters when called (so a bad config fails at
construction, not deep inside a trace) and returns a `Defense`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxdef import _validate
from jaxdef import transforms as T
from jaxdef.defenses._bpda import bpda
from jaxdef.defenses._core import Defense
from jaxdef.defenses._core import from_transform
from jaxdef.defenses._core import register

Transform = Callable[[jax.Array, jax.Array], jax.Array]

# A tiny image to trace a transform once at construction: parameter checks
# run at trace time, so bad ranges fail when the defense is built.
_PROBE = jax.ShapeDtypeStruct((32, 32, 3), jnp.float32)


def _checked(transform: Transform, name: str, **params: Any) -> Defense:
  bound = functools.partial(transform, **params)
  jax.eval_shape(bound, jax.random.key(0), _PROBE)
  return from_transform(bound, name=name, params=params)


@register("identity")
def identity() -> Defense:
  """No defense: returns the images unchanged (the undefended baseline)."""
  return Defense(lambda key, images: images, name="identity")


@register("randomized_smoothing")
def randomized_smoothing(sigma: float = 0.25, clip: bool = False) -> Defense:
  """Randomized smoothing (Cohen et al. 2019): ``x + N(0, sigma^2)``.

  Args:
    sigma: noise standard deviation, >= 0 (the study: 0.10..0.50 on
      ImageNette, 0.25 and 0.50 on ImageNet, 0.12..1.00 on CIFAR-10).
    clip: clip to [0, 1] after adding noise (Cohen et al. do not).
  """
  _validate.check_number(sigma, "sigma", low=0)
  if not isinstance(clip, bool):
    raise TypeError(f"clip must be True or False, got {clip!r}")
  return Defense(
      lambda key, images: T.gaussian_noise(key, images, sigma, clip=clip),
      name="randomized_smoothing",
      params={"sigma": float(sigma), "clip": clip},
  )


@register("noise")
def noise_injection(
    kinds: Sequence[str] = T.NOISE_KINDS,
    var_range: tuple[float, float] = (0.005, 0.02),
    amount_range: tuple[float, float] = (0.025, 0.1),
) -> Defense:
  """BaRT noise injection: a random kind of noise per image."""
  return _checked(T.random_noise, "noise", kinds=tuple(kinds), var_range=tuple(var_range),
                  amount_range=tuple(amount_range))


@register("gaussian_blur")
def gaussian_blur(
    kernel_size_range: tuple[int, int] = (2, 14), sigma_range: tuple[float, float] = (0.1, 3.1)
) -> Defense:
  """Gaussian blur with a random odd kernel size (3..13) and sigma per image."""
  return _checked(T.random_gaussian_blur, "gaussian_blur",
                  kernel_size_range=tuple(kernel_size_range), sigma_range=tuple(sigma_range))


@register("median_blur")
def median_blur(kernel_size_range: tuple[int, int] = (2, 14)) -> Defense:
  """Median blur with a random odd kernel size (3..13) per image."""
  return _checked(T.random_median_blur, "median_blur", kernel_size_range=tuple(kernel_size_range))


@register("swirl")
def swirl(
    strength_range: tuple[float, float] = (0.1, 2.0),
    radius_range: tuple[int, int] = (10, 200),
    center_range: tuple[int, int] = (1, 200),
) -> Defense:
  """Swirl with random strength, radius and centre; BPDA identity backward."""
  return _checked(bpda(T.random_swirl), "swirl", strength_range=tuple(strength_range),
                  radius_range=tuple(radius_range), center_range=tuple(center_range))


@register("quantization")
def quantization(levels_range: tuple[int, int] = (8, 200)) -> Defense:
  """Rounding to a random number of levels; BPDA identity backward."""
  return _checked(bpda(T.random_quantize), "quantization", levels_range=tuple(levels_range))


@register("fft")
def fft_perturbation(fraction_range: tuple[float, float] = (0.0, 0.95)) -> Defense:
  """Zeroes a random fraction of each channel's FFT coefficients."""
  return _checked(T.random_fft_perturb, "fft", fraction_range=tuple(fraction_range))


@register("rotation")
def random_rotation(angle_range: tuple[float, float] = (-30.0, 30.0),
                    mode: str = "constant") -> Defense:
  """Rotation by a random angle (degrees), bilinear (the study's case study)."""
  return _checked(T.random_rotate, "rotation", angle_range=tuple(angle_range), mode=mode)


@register("random_crop")
def random_crop(crop_size: int | None = None) -> Defense:
  """Guo et al. 2018: a random crop resized back to the input size.

  The published setting is 90 x 90 crops of 299 x 299 images with a majority
  vote over 30 crops (vote with n=30 in the classifier).

  Args:
    crop_size: crop side in pixels; default round(side * 90 / 299).
  """
  if crop_size is not None:
    _validate.check_number(crop_size, "crop_size", low=1, integer=True)
  return from_transform(functools.partial(T.random_crop_resize, crop_size=crop_size),
                        name="random_crop", params={"crop_size": crop_size})


@register("resize_pad")
def random_resize_pad(size_range: tuple[int, int] | None = None,
                      output_size: int | None = None) -> Defense:
  """Xie et al. 2018: resize to a random size, zero-pad at a random offset.

  The published setting resizes 299 -> r in [200, 331) and pads to 331; the
  defaults scale that to the input size. Output images are
  output_size x output_size.
  """
  if output_size is not None:
    _validate.check_number(output_size, "output_size", low=1, integer=True)
  if size_range is not None:
    size_range = _validate.check_interval(size_range, "size_range", 1, 1 << 16, integer=True)
  return from_transform(
      functools.partial(T.random_resize_pad, size_range=size_range, output_size=output_size),
      name="resize_pad", params={"size_range": size_range, "output_size": output_size})


# --- BaRT ------------------------------------------------------------------

# The study's BaRT subset, in the order that kappa truncates.
BART_TRANSFORMS: tuple[tuple[str, Transform], ...] = (
    ("noise", T.random_noise),
    ("gaussian_blur", T.random_gaussian_blur),
    ("median_blur", T.random_median_blur),
    ("swirl", bpda(T.random_swirl)),
    ("quantization", bpda(T.random_quantize)),
    ("fft", T.random_fft_perturb),
)


BART_ORDERS = ("per_image", "per_call")


@register("bart")
def bart(kappa: int = 6, transforms: Sequence[tuple[str, Transform]] | None = None,
         order: str = "per_image") -> Defense:
  """Barrage of Random Transforms (Raff et al. 2019), the study's subset.

  Every draw applies the first `kappa` transforms in a random order, each
  with freshly drawn parameters, independently per image. Each position
  dispatches with `jaxdef.transforms.routed_switch`: under vmap (images, EOT
  draws, votes) the rows are routed to their transform, so one draw costs
  about the sum of its kappa transforms, not kappa times all of them.

  Args:
    kappa: how many transforms to apply, 1..len(transforms) (1..6 by default).
    transforms: ``(name, random_transform)`` pairs, each
      ``random_transform(key, image) -> image`` keeping the image's shape;
      defaults to BART_TRANSFORMS (noise, Gaussian blur, median blur, swirl,
      quantization, FFT).
    order: "per_image" (default, BaRT's semantics): every image of every
      draw gets its own random order. "per_call": one order per call, shared
      by the batch (the study's reference implementation: its
      ``Ensemble.forward`` samples the order once per batch); parameters
      stay per image in both.
  """
  transforms = tuple(BART_TRANSFORMS if transforms is None else transforms)
  if not transforms:
    raise ValueError("transforms must hold at least one (name, transform) pair")
  for entry in transforms:
    if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[1])):
      raise TypeError(f"transforms must be (name, callable) pairs, got {entry!r}")
  if isinstance(kappa, bool) or not isinstance(kappa, int) or not 1 <= kappa <= len(transforms):
    raise ValueError(f"kappa must be an integer in 1..{len(transforms)}, got {kappa!r}")
  order = _validate.check_choice(order, "order", BART_ORDERS)
  chosen = [fn for _, fn in transforms[:kappa]]

  def apply_in_order(key: jax.Array, image: jax.Array, transform_order: jax.Array) -> jax.Array:
    _, positions_key = jax.random.split(key)

    def apply_one(current, step):
      index, step_key = step
      return T.routed_switch(index, chosen, step_key, current), None

    # A scan compiles the routed switch once rather than once per position.
    image, _ = jax.lax.scan(apply_one, image,
                            (transform_order, jax.random.split(positions_key, kappa)))
    return image

  def one_draw(key: jax.Array, image: jax.Array) -> jax.Array:
    return apply_in_order(key, image, bart_order(key, kappa))

  params = {"kappa": kappa, "transforms": [n for n, _ in transforms[:kappa]]}
  jax.eval_shape(one_draw, jax.random.key(0), _PROBE)
  if order == "per_image":
    return from_transform(one_draw, name="bart", params=params)

  def per_call(key: jax.Array, images: jax.Array) -> jax.Array:
    call_key, images_key = jax.random.split(key)
    shared = bart_order(call_key, kappa)
    keys = jax.random.split(images_key, images.shape[0])
    return jax.vmap(apply_in_order, in_axes=(0, 0, None))(keys, images, shared)

  return Defense(per_call, name="bart", params={**params, "order": order})


def bart_order(key: jax.Array, kappa: int) -> jax.Array:
  """The transform order one BaRT draw with `key` uses (for inspection/tests)."""
  order_key, _ = jax.random.split(key)
  return jax.random.permutation(order_key, kappa)
