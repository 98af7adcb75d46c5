"""Pure logits functions of a model and its variables.

`logits_fn` gives what `jaxdef.StochasticClassifier` and the attacks take:
``images -> logits``, BatchNorm in inference mode. A model whose activation
is random (SAP) has no such function: hiding a fixed key inside it would
turn the defense into one fixed pruning mask, and an attack would be
evaluated against a deterministic network that the defense never is. For
those, `stochastic_logits_fn` gives ``(key, images) -> logits``, the same
signature as a defense, so the randomness stays visible to EOT and voting.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdef import _validate
from jaxdef.models import _io

LogitsFn = Callable[[jax.Array], jax.Array]
StochasticLogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def _input_channels(variables: Mapping[str, Any]) -> int | None:
  try:
    return int(variables["params"]["conv1"]["kernel"].shape[2])  # HWIO
  except (KeyError, TypeError, AttributeError, IndexError):
    return None


def _check_variables(model: nn.Module, variables: Any) -> int:
  """Checks `variables` against `model`'s own (abstract) init; returns C."""
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise TypeError("variables must be a dict with 'params' (and 'batch_stats'), got "
                    f"{type(variables).__name__}")
  channels = _input_channels(variables)
  if channels is None:
    raise ValueError("variables['params'] has no conv1 kernel; were they made for a "
                     "jaxdef.models ResNet?")
  rngs = {"params": jax.random.key(0), "sap": jax.random.key(0)}
  x = jax.ShapeDtypeStruct((1, 32, 32, channels), jnp.float32)
  # Abstract evaluation only: shapes, no FLOPs.
  template = jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)
  problems = _io.tree_mismatches(template, variables)
  if problems:
    raise ValueError(f"variables do not fit the model (num_classes={model.num_classes}): "
                     + "; ".join(problems))
  return channels


# Defended images may leave [0, 1] (unclipped randomized smoothing adds
# N(0, sigma^2) noise); 8-bit images (up to 255) are still caught.
MODEL_RANGE_TOLERANCE = 16.0


def _checked_images(images: Any, channels: int) -> jax.Array:
  images = _validate.check_images(images, range_tolerance=MODEL_RANGE_TOLERANCE)
  if images.shape[-1] != channels:
    raise ValueError(f"images must have {channels} channels (the model's first conv takes "
                     f"{channels}), got shape {tuple(images.shape)}")
  return images


def _prepare(model: nn.Module, variables: Any, dtype: Any) -> tuple[nn.Module, dict, int]:
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a Flax module, got {type(model).__name__}")
  channels = _check_variables(model, variables)
  if dtype is not None:
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f"dtype must be a floating-point dtype, got {dtype!r}")
    # Parameters stay float32 and are cast inside each layer (mixed precision).
    model = model.clone(dtype=dtype)
  inference = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  return model, inference, channels


def logits_fn(model: nn.Module, variables: Mapping[str, Any], *, dtype: Any = None) -> LogitsFn:
  """The pure function ``images -> logits`` of a deterministic model.

  BatchNorm uses the running averages (inference mode). The function is
  traceable: use it under `jax.jit`, `jax.vmap` and `jax.grad`. Called on
  concrete arrays it runs a compiled version (compiled once per shape).

  Args:
    model: a `jaxdef.models` ResNet with activation "relu" or "kwta".
    variables: its {"params", "batch_stats"} (e.g. from `from_torchvision`).
    dtype: computation dtype; None keeps the model's. ``jnp.bfloat16`` runs
      convolutions and BatchNorm in bfloat16 with float32 parameters.

  Returns:
    ``fn(images)``: images float (B, H, W, C) in [0, 1], C the model's input
    channels -> float32 logits (B, num_classes).

  Raises:
    ValueError: the model uses SAP (random: use `stochastic_logits_fn`), or
      the variables do not fit the model.
  """
  if getattr(model, "activation", "relu") == "sap":
    raise ValueError("model uses stochastic activation pruning (activation='sap'), whose "
                     "output depends on a key: use stochastic_logits_fn(model, variables), "
                     "which returns fn(key, images)")
  model, variables, channels = _prepare(model, variables, dtype)

  def pure(images: jax.Array) -> jax.Array:
    images = _checked_images(images, channels)
    return model.apply(variables, images, train=False)

  compiled = jax.jit(pure)

  def fn(images: jax.Array) -> jax.Array:
    """Logits, float32 (B, num_classes), of images float (B, H, W, C) in [0, 1]."""
    if _validate.is_concrete(images):
      images = _checked_images(images, channels)  # value checks, before compiling
      return compiled(images)
    return pure(images)

  return fn


def stochastic_logits_fn(model: nn.Module, variables: Mapping[str, Any], *,
                         dtype: Any = None) -> StochasticLogitsFn:
  """The pure function ``(key, images) -> logits`` of a model with random layers.

  For SAP models: each call with a new key is an independent draw of every
  SAP layer (each layer and sample gets its own key split from `key`); the
  same key gives the same logits. For deterministic models the key is
  ignored, so one code path serves both. Gradients of one draw pass through
  the kept activations (see `jaxdef.models.sap`); average over keys (EOT)
  for the gradient of the expected logits.

  Args:
    model: a `jaxdef.models` ResNet.
    variables: its {"params", "batch_stats"}.
    dtype: computation dtype, see `logits_fn`.

  Returns:
    ``fn(key, images)``: key a PRNG key, images float (B, H, W, C) in [0, 1]
    -> float32 logits (B, num_classes). Traceable (jit, vmap over keys, grad).
  """
  model, variables, channels = _prepare(model, variables, dtype)

  def pure(key: jax.Array, images: jax.Array) -> jax.Array:
    _validate.check_key(key)
    images = _checked_images(images, channels)
    return model.apply(variables, images, train=False, rngs={"sap": key})

  compiled = jax.jit(pure)

  def fn(key: jax.Array, images: jax.Array) -> jax.Array:
    """Logits of one random draw, float32 (B, num_classes)."""
    if _validate.is_concrete(images) and _validate.is_concrete(key):
      _validate.check_key(key)
      return compiled(key, _checked_images(images, channels))
    return pure(key, images)

  return fn
