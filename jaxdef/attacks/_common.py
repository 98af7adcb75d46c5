"""Argument checks, projections and the result record shared by the attacks."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import _validate

NORMS = ("inf", "2")


@dataclasses.dataclass(frozen=True)
class AttackResult:
  """An attack's output with its gradient accounting.

  Attributes:
    adversarial: float (B, H, W, C) in [0, 1], inside the eps-ball.
    attack: "pgd" or "apgd".
    steps: k, gradient steps.
    eot: m, defense draws averaged per step.
    strength: k x m, gradient computations per image.
    objective: mean objective (EOT-averaged) per image at the returned point.
    nonfinite_step: int (B,): the first step whose gradient was NaN or inf
      for that image (its gradient was zeroed there), -1 if none.
    params: the attack's other settings, for records.
  """
  adversarial: jax.Array
  attack: str
  steps: int
  eot: int
  strength: int
  objective: jax.Array
  nonfinite_step: np.ndarray
  params: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def gradient_computations(self) -> int:
    return self.strength


def check_step_size(value, norm: str, name: str = "alpha") -> None:
  """Checks an eps or alpha: a number > 0, and <= 1 for the L-inf norm.

  Pixels lie in [0, 1], so an L-inf radius or step above 1 is no constraint
  at all: almost always a budget written in 1/255 units (8 for 8/255). An L2
  ball may exceed the cube's diameter on purpose (a ball that never binds).
  """
  high = 1 if norm == "inf" else None
  hint = " (pixel units of [0, 1] images: write 8/255, not 8)" if norm == "inf" else ""
  try:
    _validate.check_number(value, name, low=0, high=high, low_inclusive=False)
  except ValueError as error:
    raise ValueError(f"{error}{hint}") from None


def check_attack_args(clf, images, labels, *, eps, steps, eot, norm, loss, losses, targeted,
                      true_labels=None, alpha=None, eot_chunk_size=None, key=None,
                      random_start=None):
  """Validates an attack call.

  Returns:
    (images, labels, true_labels, num_classes), the arrays as `jax.Array`.
  """
  from jaxdef.classifier import StochasticClassifier

  if key is not None:
    _validate.check_key(key)
  if not isinstance(clf, StochasticClassifier):
    raise TypeError(f"clf must be a jaxdef.StochasticClassifier, got {type(clf).__name__}")
  images = _validate.check_images(images)
  _validate.check_choice(norm, "norm", NORMS)
  for name, value in (("eps", eps), ("alpha", alpha)):
    if value is not None:
      check_step_size(value, norm, name)
  _validate.check_number(steps, "steps", low=1, integer=True)
  _validate.check_number(eot, "eot", low=1, integer=True)
  if eot_chunk_size is not None:
    _validate.check_number(eot_chunk_size, "eot_chunk_size", low=1, integer=True)
  _validate.check_choice(loss, "loss", losses)
  if not isinstance(targeted, bool):
    raise TypeError(f"targeted must be True or False, got {targeted!r}")
  if random_start is not None and not isinstance(random_start, (bool, np.bool_)):
    raise TypeError(f"random_start must be True or False, got {random_start!r}")
  num_classes = clf.num_classes(images)
  labels = check_labels(labels, "labels", images.shape[0], num_classes)
  if true_labels is not None:
    true_labels = check_labels(true_labels, "true_labels", images.shape[0], num_classes)
    if targeted and _validate.is_concrete(labels) and np.any(np.asarray(labels) ==
                                                             np.asarray(true_labels)):
      same = np.flatnonzero(np.asarray(labels) == np.asarray(true_labels))
      raise ValueError(f"targeted attack: labels (the targets) equal the true labels for images "
                       f"{same[:10].tolist()}; choose targets different from the true class")
  return images, labels, true_labels, num_classes


def check_labels(labels, name: str, batch: int, num_classes: int) -> jax.Array:
  if not hasattr(labels, "shape") or not hasattr(labels, "dtype"):
    raise TypeError(f"{name} must be an integer array of shape ({batch},), got "
                    f"{type(labels).__name__}")
  if labels.shape != (batch,):
    raise ValueError(f"{name} must have shape ({batch},) to match the images, got "
                     f"{tuple(labels.shape)}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"{name} must be integers, got dtype {labels.dtype}")
  if _validate.is_concrete(labels):
    values = np.asarray(labels)
    if values.min() < 0 or values.max() >= num_classes:
      raise ValueError(f"{name} must lie in [0, {num_classes}) (the model has {num_classes} "
                       f"classes), got values in [{values.min()}, {values.max()}]")
  return jnp.asarray(labels, jnp.int32)


def _l2_norm(x: jax.Array) -> jax.Array:
  """Per-example L2 norm, keeping dims for broadcasting: (B, 1, 1, 1)."""
  return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(1, x.ndim)), keepdims=True))


def project(x: jax.Array, clean: jax.Array, eps: jax.Array, norm: str) -> jax.Array:
  """Projects onto the eps-ball around `clean` and then onto [0, 1].

  Clipping to [0, 1] after the ball projection only moves coordinates
  towards `clean` (which lies in [0, 1]), so the result stays in the ball.
  """
  delta = x - clean
  if norm == "inf":
    delta = jnp.clip(delta, -eps, eps)
  else:
    norm_value = _l2_norm(delta)
    delta = delta * jnp.minimum(1.0, eps / jnp.maximum(norm_value, 1e-12))
  return jnp.clip(clean + delta, 0.0, 1.0)


def ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
  """Steepest ascent direction of unit norm: sign for L-inf, normalised for L2."""
  if norm == "inf":
    return jnp.sign(grad)
  return grad / jnp.maximum(_l2_norm(grad), 1e-12)


def random_start(key: jax.Array, clean: jax.Array, eps: jax.Array, norm: str) -> jax.Array:
  """A uniform point of the eps-ball (L-inf) or a random point inside it (L2)."""
  if norm == "inf":
    noise = jax.random.uniform(key, clean.shape, clean.dtype, -1.0, 1.0) * eps
  else:
    direction_key, radius_key = jax.random.split(key)
    direction = jax.random.normal(direction_key, clean.shape, clean.dtype)
    direction = direction / jnp.maximum(_l2_norm(direction), 1e-12)
    dims = int(np.prod(clean.shape[1:]))
    radius = eps * jax.random.uniform(radius_key, (clean.shape[0],) + (1,) * (clean.ndim - 1)
                                      ) ** (1.0 / dims)
    noise = direction * radius
  return jnp.clip(clean + noise, 0.0, 1.0)


def finite_or_zero(grad: jax.Array, step, first_bad: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Zeroes non-finite per-image gradients, recording the first bad step."""
  finite = jnp.all(jnp.isfinite(grad), axis=tuple(range(1, grad.ndim)))
  first_bad = jnp.where((~finite) & (first_bad < 0), step, first_bad)
  mask = finite.reshape((-1,) + (1,) * (grad.ndim - 1))
  return jnp.where(mask, grad, 0.0), first_bad


def report_nonfinite(attack: str, first_bad: np.ndarray) -> None:
  """Warns, naming images and steps, when any gradient was NaN or inf."""
  bad = np.flatnonzero(first_bad >= 0)
  if bad.size:
    pairs = ", ".join(f"image {i} at step {first_bad[i]}" for i in bad[:10])
    more = f" and {bad.size - 10} more" if bad.size > 10 else ""
    warnings.warn(
        f"{attack}: non-finite gradients for {bad.size} image(s): {pairs}{more}. Each such "
        "gradient was zeroed (the iterate stays finite); check the model and defense for "
        "NaN/inf (e.g. log of 0, division by 0). AttackResult.nonfinite_step has every image.",
        RuntimeWarning, stacklevel=3)
