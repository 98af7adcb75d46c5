"""Input checks for data sets, and batched accuracy of a model with or without a defense."""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import _validate
from jaxdef import classifier
from jaxdef import defenses

# Role constants folded into the root key, one per use of randomness.
ROLE_DEFENSE = 0
ROLE_MODEL = 1
ROLE_EVAL = 2


def check_model(model: Any, variables: Any) -> dict:
  """Checks the model/variables pair and returns the variables as a plain dict."""
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a Flax module (e.g. from jaxdef.models.small_resnet), got "
                    f"{type(model).__name__}")
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise TypeError("variables must be a dict with 'params' (and 'batch_stats'), got "
                    f"{type(variables).__name__}")
  return {k: v for k, v in dict(variables).items()}


def num_classes(model: nn.Module, variables: Mapping[str, Any], images: jax.Array) -> int:
  """The width of the model's logits on `images` (one abstract evaluation, no FLOPs)."""
  x = jax.ShapeDtypeStruct((1, *images.shape[1:]), images.dtype)
  rngs = model_rngs(jax.random.key(0))
  try:
    shape = jax.eval_shape(lambda x: model.apply(variables, x, train=False, rngs=rngs), x).shape
  except Exception as e:  # any failure here means model and variables/images do not fit
    raise ValueError(f"model.apply(variables, images, train=False) fails on images of shape "
                     f"{tuple(images.shape[1:])}: {type(e).__name__}: {e}") from e
  if len(shape) != 2:
    raise ValueError(f"the model must return logits of shape (batch, classes), got {shape}")
  return int(shape[1])


def check_data(data: Any, name: str) -> tuple[jax.Array, np.ndarray]:
  """Checks a pair (images, labels) and returns (images as jax.Array, labels as int32 numpy).

  Args:
    data: images float (N, H, W, C) in [0, 1] and integer labels (N,).
    name: the argument's name, for error messages.
  """
  if not isinstance(data, (tuple, list)) or len(data) != 2:
    raise TypeError(f"{name} must be a pair (images, labels), got {type(data).__name__}")
  images = _validate.check_images(data[0], name=f"{name} images")
  labels = np.asarray(data[1])
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name} labels must be a 1-D integer array, got dtype {labels.dtype} and "
                     f"shape {labels.shape}")
  if len(labels) != images.shape[0]:
    raise ValueError(f"{name} has {images.shape[0]} images but {len(labels)} labels")
  return images, labels.astype(np.int32)


def check_labels(labels: np.ndarray, classes: int, name: str) -> None:
  if labels.min() < 0 or labels.max() >= classes:
    raise ValueError(f"{name} labels must lie in [0, {classes - 1}] (the model has {classes} "
                     f"classes), got min {labels.min()} and max {labels.max()}")


def as_defense(defense: Any) -> defenses.Defense | None:
  """None, a registered defense name, a `Defense` or a ``(key, images) -> images`` function."""
  if defense is None:
    return None
  if isinstance(defense, str):
    return defenses.get(defense)
  if not callable(defense):
    raise TypeError("defense must be None, a defense name (jaxdef.defenses.available()) or a "
                    f"callable (key, images) -> images, got {type(defense).__name__}")
  return defenses.as_defense(defense)


def model_rngs(key: jax.Array) -> dict[str, jax.Array]:
  """Rng streams for random layers (SAP, dropout); deterministic models ignore them."""
  sap, dropout = jax.random.split(key)
  return {"sap": sap, "dropout": dropout}


@functools.lru_cache(maxsize=32)
def _compiled_chunk(model: nn.Module, defense_fn: Callable | None, votes: int) -> Callable:
  """Correct counts on one padded chunk: clean, one defended draw, vote over `votes` draws."""

  def logits(variables, images, key):
    return model.apply(variables, images, train=False, rngs=model_rngs(key))

  def count(variables, images, labels, mask, key):
    correct = lambda predicted: jnp.sum((predicted == labels) & mask)
    clean_key, draw_key, vote_key = jax.random.split(key, 3)
    out = {"accuracy": correct(jnp.argmax(logits(variables, images, clean_key), -1))}
    if defense_fn is not None:
      k1, k2 = jax.random.split(draw_key)
      out["defended_accuracy"] = correct(
          jnp.argmax(logits(variables, defense_fn(k1, images), k2), -1))
      if votes:
        def draw(key):
          k1, k2 = jax.random.split(key)
          return logits(variables, defense_fn(k1, images), k2)

        draws = jax.lax.map(draw, jax.random.split(vote_key, votes))  # (votes, B, K)
        out["vote_accuracy"] = correct(classifier.aggregate(draws, "vote"))
    return out

  return jax.jit(count)


def accuracies(model: nn.Module, variables: Mapping[str, Any], images: jax.Array,
               labels: np.ndarray, *, defense: defenses.Defense | None, votes: int,
               key: jax.Array, batch_size: int) -> dict[str, float]:
  """`evaluate` on checked inputs: fixed-size padded chunks through one compiled function."""
  total = images.shape[0]
  batch = min(int(batch_size), total)
  run = _compiled_chunk(model, None if defense is None else defense.fn, int(votes))
  # Chunks are cut and padded on the host: slicing device arrays would compile
  # a program per chunk shape.
  images, labels = np.asarray(images), np.asarray(labels)
  counts = []
  for index, start in enumerate(range(0, total, batch)):
    x, y = images[start:start + batch], labels[start:start + batch]
    valid = x.shape[0]
    if valid < batch:  # pad to the compiled shape; padded rows are masked out
      x = np.concatenate([x, np.zeros((batch - valid, *x.shape[1:]), x.dtype)])
      y = np.concatenate([y, np.zeros(batch - valid, np.int32)])
    counts.append(run(dict(variables), x, y, np.arange(batch) < valid,
                      jax.random.fold_in(key, index)))
  sums = {name: sum(int(c[name]) for c in jax.device_get(counts)) for name in counts[0]}
  return {name: float(value) / total for name, value in sums.items()}


def evaluate(model: nn.Module, variables: Mapping[str, Any], images: Any, labels: Any, *,
             defense: Any = None, votes: int = 0, seed: int = 0,
             batch_size: int = 1000) -> dict[str, float]:
  """Accuracy of a model, clean and behind a defense (BatchNorm in inference mode).

  Args:
    model: a Flax module called as ``model.apply(variables, images, train=False)``.
    variables: its {"params", "batch_stats"}.
    images: float (N, H, W, C) in [0, 1].
    labels: integer (N,) in [0, num_classes).
    defense: None, a defense name or a ``(key, images) -> images`` function.
    votes: draws of the defense per image for the majority-vote accuracy
      (0 skips it; needs a defense).
    seed: seed of the defense draws (the same seed gives the same numbers).
    batch_size: images per compiled evaluation (the last chunk is padded).

  Returns:
    {"accuracy": clean accuracy} plus, with a defense, "defended_accuracy"
    (one draw per image) and, with votes, "vote_accuracy"; floats in [0, 1].
  """
  variables = check_model(model, variables)
  images, labels = check_data((images, labels), "images/labels")
  check_labels(labels, num_classes(model, variables, images), "images/labels")
  defense = as_defense(defense)
  _validate.check_number(votes, "votes", low=0, integer=True)
  if votes and defense is None:
    raise ValueError("votes > 0 needs a defense (majority vote over defense draws)")
  _validate.check_number(seed, "seed", low=0, integer=True)
  _validate.check_number(batch_size, "batch_size", low=1, integer=True)
  key = jax.random.fold_in(jax.random.key(int(seed)), ROLE_EVAL)
  return accuracies(model, variables, images, labels, defense=defense, votes=int(votes),
                    key=key, batch_size=int(batch_size))
