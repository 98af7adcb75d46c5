"""ResNets in Flax with torchvision's topology and parameter layout.

Three families share one module, `ResNet`:

* ``resnet(depth)``: torchvision's ImageNet ResNet-18/34/50/101/152 (v1.5:
  the stride of a bottleneck sits on its 3x3 conv).
* ``cifar_resnet(depth)``: the CIFAR ResNet of depth 6n + 2 used by Cohen et
  al. (2019) for randomized smoothing (bearpaw's ``models/cifar/resnet.py``:
  3x3 stem, stages of 16/32/64 channels, 1x1 conv + BN shortcuts).
* ``small_resnet()``: the same design, narrow and shallow, for 28x28
  Fashion-MNIST on a CPU.

Inputs are NHWC floats in [0, 1]; the per-channel mean/std normalisation
runs inside the model. All padding is explicit and symmetric, as PyTorch's:
Flax's "SAME" pads stride-2 windows asymmetrically (more at the end), which
would shift every stride-2 conv and the max-pool by a pixel.

Submodules are named after torchvision's (``conv1``, ``bn1``, ``layer1_0``
for ``layer1.0``, ``downsample_conv``/``downsample_bn`` for
``downsample.0``/``.1``, ``fc``), which makes weight conversion a renaming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdef import _validate
from jaxdef.models import _activations
from jaxdef.models import _conv as conv_ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Cohen et al.'s NormalizeLayer for CIFAR-10 (the std is the commonly
# copied (0.2023, 0.1994, 0.2010), not the data set's true per-pixel std).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# depth -> (block, blocks per stage) of torchvision's ImageNet ResNets.
IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
BN_EPSILON = 1e-5
# PyTorch's BatchNorm momentum 0.1 weighs the new batch; Flax's weighs the old average.
BN_MOMENTUM = 0.9

# torchvision's initialisation: kaiming_normal_(mode="fan_out",
# nonlinearity="relu") for convs, std sqrt(2 / (kh kw out)); nn.Linear's
# default for fc weights, uniform in +-1 / sqrt(fan_in); BatchNorm weight 1,
# bias 0. (The fc bias starts at 0 here, not uniform.)


def _conv_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  # Drawn flat and reshaped: XLA's CPU compiler takes seconds for random
  # bits of rank 4, and fractions of a second for rank 1.
  std = math.sqrt(2.0 / (shape[0] * shape[1] * shape[3]))  # HWIO: fan_out = kh kw out
  return (std * jax.random.normal(key, (math.prod(shape),), dtype)).reshape(shape)


def _fc_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  pad = kernel // 2  # PyTorch's padding for torchvision's 1x1, 3x3 and 7x7 convs
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=_conv_init, name=name,
                 # Same values as lax's; its input gradient is fast inside loops (see conv_ops).
                 conv_general_dilated=conv_ops.conv_general_dilated)


def _bn(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      dtype=dtype, param_dtype=jnp.float32, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs (torchvision's BasicBlock, expansion 1)."""

  features: int
  stride: int = 1
  activation: str = "relu"
  kwta_ratio: float = _activations.KWTA_RATIO
  sap_ratio: float = _activations.SAP_RATIO
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = lambda y: _activations.activate(self, y)
    out = act(_bn(train, self.dtype, "bn1")(
        _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)))
    out = _bn(train, self.dtype, "bn2")(_conv(self.features, 3, 1, self.dtype, "conv2")(out))
    return act(out + _shortcut(self, x, self.features, train))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 convs, expansion 4 (torchvision v1.5)."""

  features: int  # the inner width; the block outputs 4 * features channels
  stride: int = 1
  activation: str = "relu"
  kwta_ratio: float = _activations.KWTA_RATIO
  sap_ratio: float = _activations.SAP_RATIO
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = lambda y: _activations.activate(self, y)
    out = act(_bn(train, self.dtype, "bn1")(_conv(self.features, 1, 1, self.dtype, "conv1")(x)))
    out = act(_bn(train, self.dtype, "bn2")(
        _conv(self.features, 3, self.stride, self.dtype, "conv2")(out)))
    out = _bn(train, self.dtype, "bn3")(_conv(4 * self.features, 1, 1, self.dtype, "conv3")(out))
    return act(out + _shortcut(self, x, 4 * self.features, train))


def _shortcut(block: nn.Module, x: jax.Array, features: int, train: bool) -> jax.Array:
  """Identity, or 1x1 conv + BN where the stride or the width changes."""
  if block.stride == 1 and x.shape[-1] == features:
    return x
  y = _conv(features, 1, block.stride, block.dtype, "downsample_conv")(x)
  return _bn(train, block.dtype, "downsample_bn")(y)


class ResNet(nn.Module):
  """A ResNet classifier on NHWC images in [0, 1].

  Attributes:
    stage_sizes: blocks per stage (the first block of every stage after the
      first has stride 2).
    block: "basic" or "bottleneck".
    num_classes: output classes.
    widths: the base width of each stage (bottlenecks output 4x).
    stem: "imagenet" (7x7/2 conv, 3x3/2 max-pool) or "cifar" (3x3/1 conv,
      no pool; its width is ``widths[0]``).
    mean, std: per-channel normalisation constants (length C or 1).
    activation: "relu" | "sap" | "kwta"; replaces every ReLU of the network.
    kwta_ratio: fraction of units k-WTA keeps per layer.
    sap_ratio: SAP draws per activation.
    dtype: computation dtype (parameters stay float32); logits are float32.
  """

  stage_sizes: Sequence[int]
  block: str = "basic"
  num_classes: int = 1000
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  mean: Sequence[float] = IMAGENET_MEAN
  std: Sequence[float] = IMAGENET_STD
  activation: str = "relu"
  kwta_ratio: float = _activations.KWTA_RATIO
  sap_ratio: float = _activations.SAP_RATIO
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits of a batch.

    Args:
      x: float array, shape (B, H, W, C), values in [0, 1].
      train: BatchNorm uses (and, with ``mutable=["batch_stats"]``, updates)
        batch statistics when True, running averages when False.

    Returns:
      float32 logits, shape (B, num_classes).

    Random: with ``activation="sap"`` every activation draws from the "sap"
    rng stream (``apply(..., rngs={"sap": key})``).
    """
    mean = jnp.asarray(self.mean, jnp.float32)
    std = jnp.asarray(self.std, jnp.float32)
    x = ((x.astype(jnp.float32) - mean) / std).astype(self.dtype)
    act = lambda y: _activations.activate(self, y)
    if self.stem == "imagenet":
      x = act(_bn(train, self.dtype, "bn1")(_conv(self.widths[0], 7, 2, self.dtype, "conv1")(x)))
      # Pad with -inf so that padding never wins the max (PyTorch's MaxPool2d).
      x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    else:
      x = act(_bn(train, self.dtype, "bn1")(_conv(self.widths[0], 3, 1, self.dtype, "conv1")(x)))
    block_cls = Bottleneck if self.block == "bottleneck" else BasicBlock
    for stage, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for index in range(blocks):
        stride = 2 if stage > 0 and index == 0 else 1
        x = block_cls(features=width, stride=stride, activation=self.activation,
                      kwta_ratio=self.kwta_ratio, sap_ratio=self.sap_ratio, dtype=self.dtype,
                      name=f"layer{stage + 1}_{index}")(x, train)
    x = jnp.mean(x, axis=(1, 2))  # global average pool
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=_fc_init, name="fc")(x)
    return x.astype(jnp.float32)


def _check_common(num_classes: Any, input_shape: Any, activation: str, kwta_ratio: Any,
                  sap_ratio: Any, mean: Sequence[float], std: Sequence[float]) -> tuple:
  _validate.check_number(num_classes, "num_classes", low=1, integer=True)
  try:
    shape = tuple(int(d) for d in input_shape)
  except (TypeError, ValueError):
    raise ValueError(f"input_shape must be (H, W, C), got {input_shape!r}") from None
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"input_shape must be (H, W, C) with positive sizes, got {input_shape!r}")
  _activations.check_activation(activation, kwta_ratio, sap_ratio)
  for name, values in (("mean", mean), ("std", std)):
    if len(values) not in (1, shape[2]):
      raise ValueError(
          f"{name} must have 1 or C = {shape[2]} values (input_shape {shape}), got {tuple(values)}")
  if min(std) <= 0:
    raise ValueError(f"std must be positive, got {tuple(std)}")
  return shape


def init_variables(model: ResNet, key: jax.Array | None, input_shape: Sequence[int]) -> dict:
  """Random variables {"params", "batch_stats"} of `model` for NHWC inputs of `input_shape`.

  The same distributions as ``model.init`` (torchvision's), but all conv
  kernels come from one flat normal draw and all fc kernels from one
  uniform draw: ``model.init`` compiles a random-number kernel per
  parameter, which takes XLA seconds per kernel on a CPU.
  """
  key = jax.random.key(0) if key is None else _validate.check_key(key)
  conv_key, fc_key = jax.random.split(key)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  rngs = {"params": jax.random.key(0), "sap": jax.random.key(0)}
  template = jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)
  leaves = traverse_util.flatten_dict(dict(template))
  convs = [p for p in sorted(leaves) if p[-1] == "kernel" and len(leaves[p].shape) == 4]
  dense = [p for p in sorted(leaves) if p[-1] == "kernel" and len(leaves[p].shape) == 2]
  normal = np.asarray(jax.random.normal(conv_key, (sum(leaves[p].size for p in convs),)))
  uniform = np.asarray(jax.random.uniform(fc_key, (sum(leaves[p].size for p in dense),),
                                          minval=-1.0, maxval=1.0))
  out, offset = {}, 0
  for path in convs:
    shape = leaves[path].shape
    std = math.sqrt(2.0 / (shape[0] * shape[1] * shape[3]))
    out[path] = std * normal[offset:offset + math.prod(shape)].reshape(shape)
    offset += math.prod(shape)
  offset = 0
  for path in dense:
    shape = leaves[path].shape
    out[path] = uniform[offset:offset + math.prod(shape)].reshape(shape) / math.sqrt(shape[0])
    offset += math.prod(shape)
  constants = {"scale": 1.0, "bias": 0.0, "mean": 0.0, "var": 1.0}
  for path, spec in leaves.items():
    if path not in out:
      out[path] = np.full(spec.shape, constants[path[-1]], np.float32)
  return traverse_util.unflatten_dict({p: jnp.asarray(v, jnp.float32) for p, v in out.items()})


def resnet(depth: int = 50, num_classes: int = 1000, *, key: jax.Array | None = None,
           input_shape: Sequence[int] = (224, 224, 3), activation: str = "relu",
           dtype: Any = jnp.float32, kwta_ratio: float = _activations.KWTA_RATIO,
           sap_ratio: float = _activations.SAP_RATIO, mean: Sequence[float] = IMAGENET_MEAN,
           std: Sequence[float] = IMAGENET_STD) -> tuple[ResNet, dict]:
  """torchvision's ImageNet ResNet with a random initialisation.

  Args:
    depth: 18, 34, 50, 101 or 152.
    num_classes: output classes.
    key: PRNG key of the initialisation (default ``jax.random.key(0)``).
    input_shape: (H, W, C) of one image; only C shapes the parameters.
    activation: "relu" | "sap" | "kwta" (see `jaxdef.models.sap`, `kwta`).
    dtype: computation dtype; parameters are float32.
    kwta_ratio: fraction of units k-WTA keeps per layer.
    sap_ratio: SAP draws per activation.
    mean, std: normalisation constants applied inside the model.

  Returns:
    ``(model, variables)``: the Flax module and {"params", "batch_stats"}.
  """
  if depth not in IMAGENET_DEPTHS:
    raise ValueError(f"depth must be one of {sorted(IMAGENET_DEPTHS)}, got {depth!r}")
  shape = _check_common(num_classes, input_shape, activation, kwta_ratio, sap_ratio, mean, std)
  block, stages = IMAGENET_DEPTHS[depth]
  model = ResNet(stage_sizes=stages, block=block, num_classes=int(num_classes),
                 widths=(64, 128, 256, 512), stem="imagenet", mean=tuple(mean), std=tuple(std),
                 activation=activation, kwta_ratio=kwta_ratio, sap_ratio=sap_ratio, dtype=dtype)
  return model, init_variables(model, key, shape)


def cifar_resnet(depth: int = 110, num_classes: int = 10, *, key: jax.Array | None = None,
                 input_shape: Sequence[int] = (32, 32, 3), activation: str = "relu",
                 dtype: Any = jnp.float32, kwta_ratio: float = _activations.KWTA_RATIO,
                 sap_ratio: float = _activations.SAP_RATIO, mean: Sequence[float] = CIFAR_MEAN,
                 std: Sequence[float] = CIFAR_STD) -> tuple[ResNet, dict]:
  """The CIFAR ResNet of depth 6n + 2 of Cohen et al. (2019), random init.

  Three stages of n BasicBlocks with 16, 32 and 64 channels after a 3x3
  conv; global average pooling (their AvgPool2d(8) on 32x32 inputs) and fc.

  Args:
    depth: 6n + 2, e.g. 20, 56, 110.
    num_classes: output classes.
    key, input_shape, activation, dtype, kwta_ratio, sap_ratio: see `resnet`.
    mean, std: normalisation constants; default Cohen et al.'s CIFAR-10 ones.

  Returns:
    ``(model, variables)``.
  """
  _validate.check_number(depth, "depth", low=8, integer=True)
  if (int(depth) - 2) % 6:
    raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth!r}")
  shape = _check_common(num_classes, input_shape, activation, kwta_ratio, sap_ratio, mean, std)
  n = (int(depth) - 2) // 6
  model = ResNet(stage_sizes=(n, n, n), block="basic", num_classes=int(num_classes),
                 widths=(16, 32, 64), stem="cifar", mean=tuple(mean), std=tuple(std),
                 activation=activation, kwta_ratio=kwta_ratio, sap_ratio=sap_ratio, dtype=dtype)
  return model, init_variables(model, key, shape)


def small_resnet(num_classes: int = 10, *, key: jax.Array | None = None,
                 widths: Sequence[int] = (16, 32, 64), blocks_per_stage: int = 1,
                 input_shape: Sequence[int] = (28, 28, 1), activation: str = "relu",
                 dtype: Any = jnp.float32, kwta_ratio: float = _activations.KWTA_RATIO,
                 sap_ratio: float = _activations.SAP_RATIO, mean: Sequence[float] = (0.5,),
                 std: Sequence[float] = (1.0,)) -> tuple[ResNet, dict]:
  """A small CIFAR-style ResNet for 28x28 grayscale images (Fashion-MNIST).

  3x3 stem of ``widths[0]`` channels, one stage of `blocks_per_stage`
  BasicBlocks per width (stride 2 from the second stage on: 28 -> 14 -> 7),
  global average pooling and fc. Inputs are only centred (x - 0.5).
  With the defaults: 77,754 parameters and 17.3 MFLOPs per image (XLA cost
  analysis of the forward pass; 9.4M multiply-adds counting padded taps).

  Args:
    num_classes: output classes.
    key, input_shape, activation, dtype, kwta_ratio, sap_ratio, mean, std:
      see `resnet`.
    widths: channels of each stage.
    blocks_per_stage: BasicBlocks per stage.

  Returns:
    ``(model, variables)``.
  """
  _validate.check_number(blocks_per_stage, "blocks_per_stage", low=1, integer=True)
  widths = tuple(int(w) for w in widths)
  if not widths or min(widths) < 1:
    raise ValueError(f"widths must be positive channel counts, got {widths!r}")
  shape = _check_common(num_classes, input_shape, activation, kwta_ratio, sap_ratio, mean, std)
  model = ResNet(stage_sizes=(int(blocks_per_stage),) * len(widths), block="basic",
                 num_classes=int(num_classes), widths=widths, stem="cifar", mean=tuple(mean),
                 std=tuple(std), activation=activation, kwta_ratio=kwta_ratio,
                 sap_ratio=sap_ratio, dtype=dtype)
  return model, init_variables(model, key, shape)
