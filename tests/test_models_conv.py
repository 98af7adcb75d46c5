"""The per-shape convolution: same values and gradients as lax in every formulation."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdef.models import _conv

DIMS = ("NHWC", "HWIO", "NHWC")

CASES = [  # (input H=W, kernel, stride, padding per side)
    (28, 3, 1, 1),
    (28, 3, 2, 1),
    (15, 3, 2, 1),
    (14, 1, 2, 0),
    (9, 7, 2, 3),
    (11, 5, 3, 2),
    (2, 3, 1, 1),  # output 2 x 2: unfolded both ways
    (4, 3, 2, 1),  # output 2 x 2, strided
    (1, 3, 1, 1),  # output 1 x 1, all but the centre tap in the padding
    (8, 1, 1, 0),  # pointwise: a matmul
]


def _inputs(size, kernel, c_in=3, c_out=5, batch=2, seed=0):
  kx, kk = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (batch, size, size, c_in))
  w = jax.random.normal(kk, (kernel, kernel, c_in, c_out)) / kernel
  return x, w


@pytest.mark.parametrize("size,kernel,stride,pad", CASES)
def test_values_and_gradients_match_lax(size, kernel, stride, pad):
  x, w = _inputs(size, kernel)
  padding = ((pad, pad), (pad, pad))
  ours = lambda x, w: _conv.conv2d(x, w, (stride, stride), padding)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding,
                                              dimension_numbers=DIMS)
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  out, ref_vjp = jax.vjp(ref, x, w)
  cotangent = jax.random.normal(jax.random.key(7), out.shape)
  _, our_vjp = jax.vjp(ours, x, w)
  for got, want in zip(our_vjp(cotangent), ref_vjp(cotangent)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("formulation", _conv.FORMULATIONS)
@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((2, 9, 7, 3), 3, (2, 1), ((1, 1), (0, 2))),   # rectangular, uneven strides and padding
    ((1, 5, 5, 4), 3, (2, 2), ((0, 0), (0, 0))),   # no padding: trailing rows unused
    ((3, 6, 6, 2), 1, (2, 2), ((0, 0), (0, 0))),   # strided pointwise
    ((2, 3, 3, 5), 5, (1, 1), ((2, 2), (2, 2))),   # kernel larger than the input
])
def test_each_formulation_matches_lax_both_ways(formulation, shape, kernel, stride, padding):
  kx, kk, kg = jax.random.split(jax.random.key(11), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kk, (kernel, kernel, shape[3], 6)) / kernel
  ref = lambda x: lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=DIMS)
  out, ref_vjp = jax.vjp(ref, x)
  got = _conv.forward(x, w, stride, padding, formulation)
  np.testing.assert_allclose(got, out, rtol=1e-5, atol=1e-5)
  assert _conv.output_size(shape, w.shape, stride, padding) == out.shape[1:3]
  grad = jax.random.normal(kg, out.shape)
  got_grad = _conv.input_gradient(grad, w, shape, stride, padding, formulation)
  np.testing.assert_allclose(got_grad, ref_vjp(grad)[0], rtol=1e-5, atol=1e-5)


def test_bfloat16_formulations_stay_bfloat16_and_close_to_float32():
  x, w = _inputs(4, 3, c_in=8, c_out=8)
  padding = ((1, 1), (1, 1))
  want = lax.conv_general_dilated(x, w, (2, 2), padding, dimension_numbers=DIMS)
  loss = lambda x: jnp.sum(_conv.conv2d(x, w.astype(jnp.bfloat16), (2, 2), padding))
  x16 = x.astype(jnp.bfloat16)
  got = _conv.conv2d(x16, w.astype(jnp.bfloat16), (2, 2), padding)
  assert got.dtype == jnp.bfloat16 and jax.grad(loss)(x16).dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("x_shape,kernel_shape,strides,padding,expected", [
    # ResNet-18's last stage at 64 pixels: XLA's pathological 2 x 2 output.
    ((64, 2, 2, 512), (3, 3, 512, 512), (1, 1), ((1, 1), (1, 1)), ("unfold", "unfold")),
    ((64, 4, 4, 256), (3, 3, 256, 512), (2, 2), ((1, 1), (1, 1)), ("unfold", "unfold")),
    # Pointwise convolutions are matmuls at any size.
    ((8, 56, 56, 64), (1, 1, 64, 256), (1, 1), ((0, 0), (0, 0)), ("unfold", "unfold")),
    # Large maps: XLA's convolution forward; strided input gradients unfold.
    ((8, 56, 56, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), ("xla", "xla")),
    ((8, 56, 56, 64), (3, 3, 64, 128), (2, 2), ((1, 1), (1, 1)), ("xla", "unfold")),
    ((8, 224, 224, 3), (7, 7, 3, 64), (2, 2), ((3, 3), (3, 3)), ("xla", "unfold")),
    # 512 output channels (the last stage) unfold at any size.
    ((8, 7, 7, 512), (3, 3, 512, 512), (1, 1), ((1, 1), (1, 1)), ("unfold", "unfold")),
    ((8, 14, 14, 256), (3, 3, 256, 512), (2, 2), ((1, 1), (1, 1)), ("unfold", "unfold")),
    # Stride 1 up to 7 x 7 outputs: the input gradient unfolds.
    ((8, 7, 7, 256), (3, 3, 256, 256), (1, 1), ((1, 1), (1, 1)), ("xla", "unfold")),
    ((8, 8, 8, 128), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), ("xla", "xla")),
    # The gradient with respect to an image (1 to 4 channels) unfolds; so does a small
    # 3 x 3 stem's forward pass, but not one to 32 channels.
    ((160, 28, 28, 1), (3, 3, 1, 8), (1, 1), ((1, 1), (1, 1)), ("unfold", "unfold")),
    ((160, 28, 28, 1), (3, 3, 1, 32), (1, 1), ((1, 1), (1, 1)), ("xla", "unfold")),
    ((160, 28, 28, 8), (3, 3, 8, 8), (1, 1), ((1, 1), (1, 1)), ("xla", "xla")),
])
def test_plan_follows_the_measured_rule(x_shape, kernel_shape, strides, padding, expected):
  chosen = _conv.plan(x_shape, kernel_shape, strides, padding, backend="cpu")
  assert (chosen.forward, chosen.input_gradient) == expected
  # The rule is a CPU measurement: elsewhere XLA's convolution (the vendor library).
  assert _conv.plan(x_shape, kernel_shape, strides, padding, backend="gpu") == _conv.Plan(
      "xla", "xla")


@pytest.mark.parametrize("backend, custom", [("cpu", True), ("gpu", False), ("tpu", False)])
def test_only_cpu_models_take_the_custom_convolution(monkeypatch, backend, custom):
  """Elsewhere the model's program is lax's convolution with JAX's own
  derivative: no custom VJP, no optimization barrier hiding the kernel flip."""
  import jaxdef as jd

  monkeypatch.setattr(_conv, "_default_backend", lambda: backend)
  assert _conv.applies() is custom
  logits = jd.models.logits_fn(*jd.models.small_resnet(widths=(4, 8, 8), key=jax.random.key(0)))
  images = jnp.zeros((2, 28, 28, 1))
  forward = str(jax.make_jaxpr(logits)(images))
  gradient = str(jax.make_jaxpr(jax.grad(lambda x: logits(x).sum()))(images))
  assert ("custom_vjp_call" in forward) is custom
  assert ("optimization_barrier" in gradient) is custom
  assert "conv_general_dilated" in forward and "conv_general_dilated" in gradient


def test_recording_lists_every_convolution_of_a_resnet_in_call_order():
  import jaxdef as jd

  logits = jd.models.logits_fn(*jd.models.resnet(18, 10))
  with _conv.recording() as shapes:
    jax.eval_shape(logits, jnp.zeros((2, 64, 64, 3)))
  # conv1, then 4 stages of 2 blocks (2 convs each, plus a shortcut in stages 2-4).
  assert len(shapes) == 1 + 16 + 3
  assert shapes[0] == _conv.ConvShape((2, 64, 64, 3), (7, 7, 3, 64), (2, 2), ((3, 3), (3, 3)))
  assert shapes[-1].x_shape == (2, 2, 2, 512) and shapes[-1].kernel_shape == (3, 3, 512, 512)
  with _conv.recording() as nothing:
    pass
  assert nothing == [] and not _conv._RECORDERS


def test_input_gradient_matches_numpy_finite_differences():
  # An independent reference: central differences in float64 numpy.
  x, w = _inputs(6, 3, c_in=2, c_out=2, batch=1, seed=3)
  padding = ((1, 1), (1, 1))
  weights = jax.random.normal(jax.random.key(9), (1, 3, 3, 2))
  loss = lambda x: jnp.sum(_conv.conv2d(x, w, (2, 2), padding) * weights)
  grad = np.asarray(jax.grad(loss)(x))
  x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)

  def numpy_loss(xv):
    padded = np.pad(xv, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((1, 3, 3, 2))
    for i in range(3):
      for j in range(3):
        patch = padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
        out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, w64)
    return float(np.sum(out * np.asarray(weights, np.float64)))

  numeric = np.zeros_like(x64)
  for index in np.ndindex(x64.shape):
    step = np.zeros_like(x64)
    step[index] = 1e-4
    numeric[index] = (numpy_loss(x64 + step) - numpy_loss(x64 - step)) / 2e-4
  np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-4)


def test_other_convolutions_fall_back_to_lax():
  x, w = _inputs(12, 3)
  numbers = lax.conv_dimension_numbers(x.shape, w.shape, DIMS)
  for kwargs in ({"padding": "SAME"}, {"padding": ((1, 1), (1, 1)), "rhs_dilation": (2, 2)}):
    got = _conv.conv_general_dilated(x, w, (1, 1), dimension_numbers=numbers, **kwargs)
    want = lax.conv_general_dilated(x, w, (1, 1), dimension_numbers=numbers, **kwargs)
    np.testing.assert_array_equal(got, want)


def _loop_convolution_kernels(conv):
  """Kernel dimension labels of every convolution in a compiled 3-step input-gradient loop."""
  x, w = _inputs(16, 3, c_in=8, c_out=8)  # not a stem: XLA convolves
  padding = ((1, 1), (1, 1))

  def loss(x, w):
    return jnp.sum(jnp.tanh(conv(jnp.tanh(conv(x, w, (1, 1), padding)), w, (2, 2), padding)))

  def attack(x, w):
    return lax.fori_loop(0, 3, lambda i, z: z + 0.01 * jnp.sign(jax.grad(loss)(z, w)), x)

  text = jax.jit(attack).lower(x, w).compile().as_text()
  return re.findall(r"dim_labels=b01f_(\w+)->b01f", text)


def test_input_gradient_keeps_the_standard_kernel_layout_inside_loops():
  lax_conv = lambda x, w, s, p: lax.conv_general_dilated(x, w, s, p, dimension_numbers=DIMS)
  ours = _loop_convolution_kernels(_conv.conv2d)
  assert ours and set(ours) == {"01io"}, ours
  # What it avoids: the relabelled kernel that XLA CPU runs on its slow path.
  assert "01oi" in _loop_convolution_kernels(lax_conv)


def test_resnet_logits_and_input_gradients_match_a_plain_lax_model(monkeypatch):
  import types

  import jaxdef as jd
  from jaxdef.models import _resnet

  model, variables = jd.models.small_resnet(10, widths=(4, 8), key=jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
  loss = lambda fn: lambda x: jnp.sum(jax.nn.log_softmax(fn(x))[:, 3])
  ours = jd.models.logits_fn(model, variables)
  # Gradients jitted: one program each instead of hundreds of eager ops.
  got_logits, got_grad = ours(x), jax.jit(jax.grad(loss(ours)))(x)
  monkeypatch.setattr(_resnet, "conv_ops",
                      types.SimpleNamespace(conv_general_dilated=lax.conv_general_dilated))
  reference = jd.models.logits_fn(model, variables)
  np.testing.assert_allclose(got_logits, reference(x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_grad, jax.jit(jax.grad(loss(reference)))(x), rtol=1e-4,
                             atol=1e-6)
