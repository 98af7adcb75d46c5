"""2-D convolution, in the formulation XLA's CPU backend runs well for each shape.

Why this exists. Every convolution of jaxdef's models goes through here, for
two measured reasons (figures: ``python -m launch.bench``'s per-shape table,
BENCHMARKS.md).

1. XLA CPU's own convolution has pathological shapes. A 3 x 3 convolution
   whose output map is 2 x 2 or smaller (ResNet's last stages at 32 or 64
   pixels) ran 10x to 150x slower than PyTorch (64 x 2 x 2 x 512 -> 512:
   528 ms against 4 ms), and so did the input gradient of a strided
   convolution with a small output (4 x 4 x 512 -> 2 x 2 x 512: 404 ms
   against 18 ms). Written as an *unfold* -- the k x k shifted (strided)
   slices of the padded input concatenated on the channel axis, then one
   matmul with the kernel reshaped to (k k C_in, C_out) -- the same
   convolutions run at PyTorch's speed, and their input gradient (the
   transpose: one matmul, then the slices' transposes, pads that add into
   place) does too. On large maps the other way round holds: building the
   unfolded copy costs more than XLA's convolution (56 x 56 x 64 -> 64,
   batch 8: 36 ms against 13 ms), so those keep XLA's.
2. Inside a compiled attack loop the weights are loop-carried values and
   JAX's transpose rule expresses the input gradient's kernel flip by
   relabelling dimensions (``01oi``), which XLA CPU runs on a slow generic
   path. Where XLA's convolution computes the input gradient, the flipped,
   channel-swapped kernel is materialised in the standard HWIO layout
   behind an optimization barrier.

`plan` is the rule, from those measurements (2-core Xeon, batch 4 to 64,
every distinct convolution of ResNet-18/50 at 32, 64 and 224 pixels; the
bench's per-shape table re-checks it on any machine):

* 1 x 1 kernels: a matmul of the strided input, both ways (never much
  slower than XLA's convolution, up to 2.3x faster).
* output map of at most `UNFOLD_MAX_OUTPUT_PIXELS` pixels, or at least
  `UNFOLD_MIN_OUTPUT_CHANNELS` output channels (ResNet's last stage at any
  size), or a small-kernel image stem (`_is_small_stem`): unfold, forward
  and input gradient.
* input gradient of a strided convolution, of one whose output map has at
  most `UNFOLD_GRADIENT_MAX_OUTPUT_PIXELS` pixels, or of one with at most
  `UNFOLD_GRADIENT_MAX_INPUT_CHANNELS` input channels (the first
  convolution: the gradient with respect to the image itself): unfold's
  transpose.
* otherwise XLA's convolution (forward) and the HWIO flipped-kernel
  convolution (input gradient).

The rule is a CPU measurement: on other backends (GPU, TPU) models call
`lax.conv_general_dilated` directly, with JAX's own derivative (`applies`).

The kernel gradient is JAX's own derivative of the forward formulation.
Values agree with `lax.conv_general_dilated` to float32 rounding (tested).
The convolution is reverse-mode only (`jax.custom_vjp`): `jax.jvp` through a
model built on it raises, as for any custom-VJP function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
XLA, UNFOLD = "xla", "unfold"
FORMULATIONS = (XLA, UNFOLD)
# Output pixels (H_out x W_out) up to which the forward pass unfolds: XLA's
# convolution was 1.5x (4 x 4 -> 2 x 2, stride 2) to 150x slower there, and
# at 4 x 4 outputs and above it was as fast or faster than unfolding.
UNFOLD_MAX_OUTPUT_PIXELS = 4
# Output channels from which the forward pass unfolds at any map size: in the
# bench's tables (batch 4 and 32) every 3 x 3 convolution to 512 channels of
# ResNet-18/50 (7 x 7 to 1 x 1 maps) ran 1.35x to 1.6x faster unfolded; one
# probe at batch 8 measured 14 x 14 x 256 -> 512 (stride 2) at 0.74x.
UNFOLD_MIN_OUTPUT_CHANNELS = 512
# A stem of at most 3 x 3 from an image (at most 4 channels) to at most 16
# channels unfolds forward: 160 x 28 x 28 x 1 -> 8 took 1.7 ms unfolded
# against XLA's 2.6 ms, 3 -> 16 2.7 against 3.3; to 32 channels XLA's was 2x
# faster, and ImageNet's 7 x 7 stem keeps XLA's (3.5x faster there). On the
# default study's small ResNets this made the sweep 6% faster.
STEM_MAX_KERNEL, STEM_MAX_INPUT_CHANNELS, STEM_MAX_OUTPUT_CHANNELS = 3, 4, 16
# Output pixels up to which a stride-1 input gradient unfolds: 7 x 7 and
# smaller ran 1.2x to 1.7x faster than the flipped-kernel convolution, 8 x 8
# and larger 0.85x to 0.5x.
UNFOLD_GRADIENT_MAX_OUTPUT_PIXELS = 49

# Input channels up to which the input gradient unfolds at any size: XLA's
# transposed convolution into 1 to 4 channels (an image's) ran 2x to 5x
# slower than unfold's transpose (160 x 28 x 28 x 1 <- 8: 3.6 ms against
# 0.7 ms); at 8 channels XLA's was faster.
UNFOLD_GRADIENT_MAX_INPUT_CHANNELS = 4

Padding = tuple[tuple[int, int], tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which formulation computes the forward pass and which the input gradient."""
  forward: str
  input_gradient: str


def output_size(x_shape: Sequence[int], kernel_shape: Sequence[int], strides: Sequence[int],
                padding: Padding) -> tuple[int, int]:
  """(H_out, W_out) of an NHWC input `x_shape` under an HWIO kernel."""
  return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi)
               in zip(x_shape[1:3], kernel_shape[:2], strides, padding))


def plan(x_shape: Sequence[int], kernel_shape: Sequence[int], strides: Sequence[int],
         padding: Padding, backend: str | None = None) -> Plan:
  """The formulations `conv2d` uses for this shape (the rule in the module docstring).

  Args:
    x_shape: (B, H, W, C_in); kernel_shape: (KH, KW, C_in, C_out).
    strides, padding: as `conv2d`'s.
    backend: "cpu", "gpu", ...; None: JAX's default backend.
  """
  if not applies(backend):
    return Plan(XLA, XLA)
  height, width = output_size(x_shape, kernel_shape, strides, padding)
  pixels = height * width
  pointwise = tuple(kernel_shape[:2]) == (1, 1)
  forward = (UNFOLD if pointwise or pixels <= UNFOLD_MAX_OUTPUT_PIXELS
             or kernel_shape[3] >= UNFOLD_MIN_OUTPUT_CHANNELS or _is_small_stem(kernel_shape)
             else XLA)
  gradient = UNFOLD if (forward == UNFOLD or max(strides) > 1
                        or pixels <= UNFOLD_GRADIENT_MAX_OUTPUT_PIXELS
                        or kernel_shape[2] <= UNFOLD_GRADIENT_MAX_INPUT_CHANNELS) else XLA
  return Plan(forward, gradient)


def applies(backend: str | None = None) -> bool:
  """Whether model convolutions take this module's `conv2d` (the one place that decides).

  Only on CPU, where its rule was measured. On a GPU or TPU, `lax`'s own
  convolution and JAX's own derivative run unchanged: the vendor library
  does well there, and the CPU workarounds (the materialised flipped kernel
  behind an optimization barrier) would hide the backward-input pattern
  that XLA GPU hands to cuDNN.

  Args:
    backend: "cpu", "gpu", ...; None: JAX's default backend.
  """
  return (backend or _default_backend()) == "cpu"


def _default_backend() -> str:
  return jax.default_backend()


def _is_small_stem(kernel_shape: Sequence[int]) -> bool:
  kh, kw, c_in, c_out = kernel_shape
  return (max(kh, kw) <= STEM_MAX_KERNEL and c_in <= STEM_MAX_INPUT_CHANNELS
          and c_out <= STEM_MAX_OUTPUT_CHANNELS)


def _xla_forward(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSIONS)


def _unfold_forward(x, kernel, strides, padding):
  """The convolution as one matmul of the k x k strided shifts of the padded input."""
  kh, kw, c_in, c_out = kernel.shape
  height, width = output_size(x.shape, kernel.shape, strides, padding)
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  sh, sw = strides
  # Tap (i, j) of every output pixel; concatenated in HWIO's (i, j, c_in) order.
  shifts = [lax.slice(padded, (0, i, j, 0),
                      (x.shape[0], i + sh * (height - 1) + 1, j + sw * (width - 1) + 1, c_in),
                      (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
  columns = shifts[0] if len(shifts) == 1 else jnp.concatenate(shifts, axis=-1)
  return jnp.dot(columns, kernel.reshape(kh * kw * c_in, c_out))


def forward(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding,
            formulation: str) -> jax.Array:
  """The convolution in the named formulation (one of `FORMULATIONS`)."""
  if formulation == UNFOLD:
    return _unfold_forward(x, kernel, strides, padding)
  return _xla_forward(x, kernel, strides, padding)


def _gradient_padding(x_shape, out_shape, kernel_shape, strides, padding):
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


def input_gradient(grad: jax.Array, kernel: jax.Array, x_shape: Sequence[int],
                   strides: tuple[int, int], padding: Padding, formulation: str) -> jax.Array:
  """d(sum(conv(x) * grad)) / dx for an input of `x_shape`, in the named formulation."""
  if formulation == UNFOLD:
    transpose = jax.linear_transpose(
        lambda x: _unfold_forward(x, kernel, strides, padding),
        jax.ShapeDtypeStruct(tuple(x_shape), grad.dtype))
    return transpose(grad)[0]
  # HWIO layout of the flipped, channel-swapped kernel, kept as real data.
  flipped = lax.optimization_barrier(jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
  pads = _gradient_padding(x_shape, grad.shape, kernel.shape, strides, padding)
  return lax.conv_general_dilated(grad, flipped, (1, 1), pads, lhs_dilation=strides,
                                  dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: Padding) -> jax.Array:
  """NHWC x HWIO convolution with explicit padding, in the formulation `plan` picks.

  Args:
    x: float (B, H, W, C_in).
    kernel: float (KH, KW, C_in, C_out).
    strides: (sh, sw) positive ints.
    padding: ((top, bottom), (left, right)) non-negative ints.

  Returns:
    float (B, H_out, W_out, C_out), equal to `lax.conv_general_dilated` to
    float32 rounding.
  """
  return _planned_forward(x, kernel, strides, padding)


def _planned_forward(x, kernel, strides, padding):
  _record(x, kernel, strides, padding)
  return forward(x, kernel, strides, padding, plan(x.shape, kernel.shape, strides, padding).forward)


def _conv2d_fwd(x, kernel, strides, padding):
  return _planned_forward(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, residuals, grad):
  x, kernel = residuals
  chosen = plan(x.shape, kernel.shape, strides, padding)
  grad_x = input_gradient(grad, kernel, x.shape, strides, padding, chosen.input_gradient)
  _, kernel_vjp = jax.vjp(lambda k: forward(x, k, strides, padding, chosen.forward), kernel)
  return grad_x.astype(x.dtype), kernel_vjp(grad)[0]


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@dataclasses.dataclass(frozen=True)
class ConvShape:
  """One convolution a model runs: NHWC input and HWIO kernel shapes, strides, padding."""
  x_shape: tuple[int, ...]
  kernel_shape: tuple[int, ...]
  strides: tuple[int, int]
  padding: Padding


_RECORDERS: list[list[ConvShape]] = []


def _record(x, kernel, strides, padding) -> None:
  for shapes in _RECORDERS:
    shapes.append(ConvShape(tuple(x.shape), tuple(kernel.shape), tuple(strides),
                            tuple(tuple(p) for p in padding)))


@contextlib.contextmanager
def recording() -> Iterator[list[ConvShape]]:
  """Collects the shape of every `conv2d` traced inside the block, in call order.

  Trace the model (``jax.eval_shape`` of a fresh function is enough) inside
  ``with recording() as shapes:``. Only tracing records: a function whose
  trace JAX has cached records nothing. vmapped calls record their
  per-example shapes.
  """
  shapes: list[ConvShape] = []
  _RECORDERS.append(shapes)
  try:
    yield shapes
  finally:
    _RECORDERS.remove(shapes)


def _explicit_padding(padding: Any) -> Padding | None:
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

  On CPU (`applies`), plain 2-D NHWC/HWIO convolutions with explicit
  padding take `conv2d`. Other backends, and anything else (dilations,
  groups, string padding, other layouts, a precision), go to
  `lax.conv_general_dilated` unchanged.
  """
  pads = _explicit_padding(padding)
  plain = (applies() and pads is not None and lhs.ndim == 4 and feature_group_count == 1
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
