"""A 2-D convolution whose input gradient runs at full speed inside XLA CPU loops.

Why this exists. An attack differentiates the model with respect to its
input inside a compiled `lax.fori_loop`. The input gradient of a convolution
is a convolution of the output gradient with the spatially flipped kernel
whose in/out channel axes are swapped. JAX's transpose rule expresses the
swap by relabelling the kernel's dimensions (``01oi``) instead of moving
data. Outside a loop the weights are constants and XLA folds the flip into
a fresh ``01io`` constant; inside a loop the weights are loop-carried
values, the ``01oi`` convolution stays, and XLA's CPU backend runs it on a
slow generic path instead of its Eigen/oneDNN-style kernel. On the small
ResNet, a 5-step EOT-10 PGD ran about 4x slower than the same steps taken
one by one (measured with /tmp probes; see BENCHMARKS.md for the bench).

Here the input gradient is written out: the flipped, swapped kernel is
materialised in the standard HWIO layout behind an optimization barrier (so
the simplifier cannot fold the transpose back into dimension labels) and
convolved with the dilated output gradient. The kernel gradient is JAX's
own. Values agree with JAX's autodiff to float32 rounding (tested).

The convolution is reverse-mode only (`jax.custom_vjp`): `jax.jvp` through
a model built on it raises, as for any custom-VJP function.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _forward(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
             padding: tuple[tuple[int, int], ...]) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """NHWC x HWIO convolution with explicit padding.

  Args:
    x: float (B, H, W, C_in).
    kernel: float (KH, KW, C_in, C_out).
    strides: (sh, sw) positive ints.
    padding: ((top, bottom), (left, right)) non-negative ints.

  Returns:
    float (B, H_out, W_out, C_out), identical to `lax.conv_general_dilated`.
  """
  return _forward(x, kernel, strides, padding)


def _conv2d_fwd(x, kernel, strides, padding):
  return _forward(x, kernel, strides, padding), (x, kernel)


def _input_gradient_padding(x_shape, out_shape, kernel_shape, strides, padding):
  """Padding of the stride-dilated output gradient that recovers the input size.

  Per spatial axis with input n, output o, kernel k, stride s and padding
  (lo, hi): the dilated gradient has (o - 1) s + 1 entries and the result
  must have n, so the padded length is n + k - 1.
  """
  pads = []
  for n, o, k, s, (lo, _) in zip(x_shape[1:3], out_shape[1:3], kernel_shape[:2], strides,
                                 padding):
    before = k - 1 - lo
    pads.append((before, n + k - 1 - ((o - 1) * s + 1) - before))
  return tuple(pads)


def _conv2d_bwd(strides, padding, residuals, grad):
  x, kernel = residuals
  # HWIO layout of the flipped, channel-swapped kernel, kept as real data.
  flipped = lax.optimization_barrier(jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
  pads = _input_gradient_padding(x.shape, grad.shape, kernel.shape, strides, padding)
  grad_x = lax.conv_general_dilated(grad, flipped, (1, 1), pads, lhs_dilation=strides,
                                    dimension_numbers=_DIMENSIONS)
  _, kernel_vjp = jax.vjp(lambda k: _forward(x, k, strides, padding), kernel)
  return grad_x.astype(x.dtype), kernel_vjp(grad)[0]


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _explicit_padding(padding: Any) -> tuple[tuple[int, int], ...] | None:
  if isinstance(padding, str):
    return None
  try:
    pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
  except (TypeError, ValueError):
    return None
  return pairs if len(pairs) == 2 else None


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Any, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         precision: Any = None, **kwargs: Any) -> jax.Array:
  """Drop-in for `lax.conv_general_dilated` as flax's `nn.Conv` calls it.

  Plain 2-D NHWC/HWIO convolutions with explicit padding take `conv2d`;
  anything else (dilations, groups, string padding, other layouts, a
  precision) goes to `lax.conv_general_dilated` unchanged.
  """
  pads = _explicit_padding(padding)
  plain = (pads is not None and lhs.ndim == 4 and feature_group_count == 1
           and precision is None and not kwargs
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and _is_nhwc(dimension_numbers))
  if plain:
    return conv2d(lhs, rhs, tuple(int(s) for s in window_strides), pads)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision, **kwargs)


def _is_nhwc(dimension_numbers: Any) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    # NHWC / HWIO / NHWC as flax builds them for 2-D inputs.
    return (tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
            and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
            and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))
  return tuple(dimension_numbers) == _DIMENSIONS
