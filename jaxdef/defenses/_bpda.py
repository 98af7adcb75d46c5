"""BPDA: a transform whose backward pass is the identity (straight-through)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _is_array(value: Any) -> bool:
  return isinstance(value, (jax.Array, np.ndarray))


def _first_float_argument(args: tuple[Any, ...]) -> int:
  for index, value in enumerate(args):
    if _is_array(value) and jnp.issubdtype(value.dtype, jnp.floating):
      return index
  raise ValueError(
      "bpda could not find the image argument: no positional argument is a floating-point "
      "array; pass argnum= to name it"
  )


def bpda(fn: Callable[..., jax.Array], argnum: int | None = None) -> Callable[..., jax.Array]:
  """Wraps `fn` so its gradient with respect to the image is the identity.

  Backward Pass Differentiable Approximation (Athalye et al. 2018) for
  non-differentiable pre-processing: the forward pass is exactly `fn`; the
  backward pass treats ``fn(x)`` as ``x``. Works on a transform
  ``fn(image, ...)``, a random transform ``fn(key, image, ...)``, a defense
  ``fn(key, images)`` or any user function whose output has the input's
  shape. The rule is a `jax.custom_jvp` (identity tangent), so it serves both
  forward- and reverse-mode differentiation and composes with jit and vmap.
  Other arguments (keys, parameters) get no gradient.

  Args:
    fn: the function to wrap.
    argnum: index of the positional argument that is the image; by default
      the first floating-point array argument.

  Returns:
    A function with the same signature and forward values as `fn`.
  """
  if not callable(fn):
    raise TypeError(f"bpda expects a callable, got {type(fn).__name__}")

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    image_index = _first_float_argument(args) if argnum is None else argnum
    if not 0 <= image_index < len(args) or not _is_array(args[image_index]):
      raise ValueError(f"bpda argnum={image_index} does not point at an array argument")
    # Arrays travel through custom_jvp; everything else (strings, Python
    # numbers used as static sizes, keyword options) is closed over.
    dynamic = [i for i, value in enumerate(args) if _is_array(value)]

    def call(*dynamic_values):
      full = list(args)
      for i, value in zip(dynamic, dynamic_values):
        full[i] = value
      return fn(*full, **kwargs)

    straight_through = jax.custom_jvp(call)

    @straight_through.defjvp
    def _identity_jvp(primals, tangents):
      out = straight_through(*primals)
      image_tangent = tangents[dynamic.index(image_index)]
      if image_tangent.shape != out.shape:
        raise ValueError(
            f"bpda needs a shape-preserving function: input {image_tangent.shape}, "
            f"output {out.shape}"
        )
      return out, image_tangent.astype(out.dtype)

    return straight_through(*[args[i] for i in dynamic])

  wrapped.is_bpda = True
  return wrapped
