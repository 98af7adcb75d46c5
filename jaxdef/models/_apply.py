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


class _Static:
  """Hashable stand-in for a module that is not (a list among its fields): by identity."""

  def __init__(self, value: Any):
    self.value = value

  def __hash__(self) -> int:
    return id(self.value)

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, _Static) and other.value is self.value


def _hashable(model: nn.Module) -> Any:
  try:
    hash(model)
  except TypeError:
    return _Static(model)
  return model


@jax.tree_util.register_pytree_node_class
class ModelLogits:
  """A model's logits function whose variables are data, not code.

  Calls as ``fn(images)`` (or ``fn(key, images)`` when `stochastic`). As a
  JAX pytree its leaves are the variables and its structure is the module:
  a compiled attack or vote that takes the classifier as an argument is
  compiled once per architecture, and two models that differ only in their
  weights (a base model and its fine-tuned copy) share it.

  Attributes:
    model: the Flax module (inference mode).
    variables: {"params", "batch_stats"}.
    channels: input channels C the first convolution takes.
    stochastic: True for models with random layers (SAP): ``fn(key, images)``.
  """

  def __init__(self, model: nn.Module, variables: Mapping[str, Any], channels: int,
               stochastic: bool):
    self.model = model
    self.variables = variables
    self.channels = channels
    self.stochastic = stochastic

  def tree_flatten(self):
    return (self.variables,), (_hashable(self.model), self.channels, self.stochastic)

  @classmethod
  def tree_unflatten(cls, aux, children):
    model, channels, stochastic = aux
    return cls(model.value if isinstance(model, _Static) else model, children[0], channels,
               stochastic)

  def pure(self, *args: jax.Array) -> jax.Array:
    """The traceable computation: ``pure(images)`` or ``pure(key, images)``."""
    if self.stochastic:
      key, images = args
      _validate.check_key(key)
      images = _checked_images(images, self.channels)
      return self.model.apply(self.variables, images, train=False, rngs={"sap": key})
    (images,) = args
    images = _checked_images(images, self.channels)
    return self.model.apply(self.variables, images, train=False)

  def __call__(self, *args: jax.Array) -> jax.Array:
    """Logits, float32 (B, num_classes), of images float (B, H, W, C) in [0, 1].

    Called on concrete arrays it runs compiled (once per architecture and
    shape) after checking the values; traced, it is the pure computation.
    """
    expected = 2 if self.stochastic else 1
    if len(args) != expected:
      signature = "(key, images)" if self.stochastic else "(images)"
      raise TypeError(f"this logits function takes {signature}, got {len(args)} arguments")
    if all(_validate.is_concrete(a) for a in args):
      if self.stochastic:
        _validate.check_key(args[0])
      images = _checked_images(args[-1], self.channels)  # value checks, before compiling
      return _compiled_logits(self, *args[:-1], images)
    return self.pure(*args)

  def __repr__(self) -> str:
    kind = "stochastic_logits_fn" if self.stochastic else "logits_fn"
    return f"{kind}({type(self.model).__name__}, channels={self.channels})"


@jax.jit
def _compiled_logits(fn: ModelLogits, *args: jax.Array) -> jax.Array:
  return fn.pure(*args)


def logits_fn(model: nn.Module, variables: Mapping[str, Any], *, dtype: Any = None) -> ModelLogits:
  """The pure function ``images -> logits`` of a deterministic model.

  BatchNorm uses the running averages (inference mode). The function is
  traceable: use it under `jax.jit`, `jax.vmap` and `jax.grad`. Called on
  concrete arrays it runs a compiled version (compiled once per shape).
  It is a pytree whose leaves are the variables (`ModelLogits`), so compiled
  attacks are shared by models of one architecture.

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
  return ModelLogits(model, variables, channels, stochastic=False)


def stochastic_logits_fn(model: nn.Module, variables: Mapping[str, Any], *,
                         dtype: Any = None) -> ModelLogits:
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
  return ModelLogits(model, variables, channels, stochastic=True)
