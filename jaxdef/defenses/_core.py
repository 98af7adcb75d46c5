"""The defense value, composition, sampling and the name registry.

A defense is a callable ``(key, images) -> images`` on NHWC batches that
draws its own randomness from `key`. `Defense` adds a name and the
parameters (for records and error messages) and input checks; any plain
function with that signature is accepted wherever a defense is.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax

from jaxdef import _validate

DefenseFn = Callable[[jax.Array, jax.Array], jax.Array]


class Defense:
  """A stochastic pre-processing defense ``(key, images) -> images``.

  Args:
    fn: the pure function ``fn(key, images)``; images are float NHWC in
      [0, 1]. It must be traceable (jit, vmap over keys, grad).
    name: a short name for records.
    params: the parameters it was built with (JSON-friendly values).
  """

  def __init__(self, fn: DefenseFn, *, name: str, params: Mapping[str, Any] | None = None):
    if not callable(fn):
      raise TypeError(f"fn must be callable (key, images) -> images, got {type(fn).__name__}")
    self.fn = fn
    self.name = name
    self.params = dict(params or {})
    # Eager calls run compiled: op-by-op dispatch of a vmapped BaRT draw is
    # orders of magnitude slower than one XLA program.
    self._compiled = jax.jit(fn)

  def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
    """Applies one random draw of the defense.

    Args:
      key: PRNG key; the same key gives the same output.
      images: float array, shape (B, H, W, C), values in [0, 1].

    Returns:
      Defended images, shape (B, H', W', C) (H' = H, W' = W for all but
      resizing defenses).
    """
    _validate.check_key(key)
    images = _validate.check_images(images)
    if _validate.is_concrete(images) and _validate.is_concrete(key):
      return self._compiled(key, images)
    return self.fn(key, images)

  def describe(self) -> dict[str, Any]:
    """The name and parameters as a JSON-friendly dict, for records."""
    return {"name": self.name, **self.params}

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
    return f"{self.name}({args})"


def as_defense(defense: Any, name: str | None = None) -> Defense:
  """Returns `defense` as a `Defense`, wrapping a plain function."""
  if isinstance(defense, Defense):
    return defense
  if not callable(defense):
    raise TypeError(
        f"a defense must be callable (key, images) -> images, got {type(defense).__name__}"
    )
  return Defense(defense, name=name or getattr(defense, "__name__", "custom"))


def from_transform(
    transform: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> Defense:
  """Lifts a random per-image transform to a defense on batches.

  Each image of the batch gets its own key, hence its own parameters.

  Args:
    transform: ``transform(key, image) -> image`` on one HWC image, e.g.
      ``jaxdef.transforms.random_swirl`` or ``functools.partial`` of it.
      Wrap it with `jaxdef.bpda` first for a straight-through gradient.
    name: the defense's name; defaults to the transform's.
    params: parameters for records.

  Returns:
    A `Defense` applying the transform to every image of an NHWC batch.
  """
  if not callable(transform):
    raise TypeError(f"transform must be callable (key, image) -> image, got {transform!r}")

  def per_image(key: jax.Array, images: jax.Array) -> jax.Array:
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(transform)(keys, images)

  default_name = getattr(transform, "__name__", None) or getattr(
      getattr(transform, "func", None), "__name__", "transform")
  return Defense(per_image, name=name or default_name, params=params)


def compose(*defenses: Any) -> Defense:
  """Applies defenses in order, each with its own key split from one key.

  Args:
    *defenses: defenses or plain ``(key, images) -> images`` functions.

  Returns:
    A `Defense` named ``compose(a, b, ...)``.
  """
  if not defenses:
    raise ValueError("compose needs at least one defense")
  parts = [as_defense(d) for d in defenses]

  def composed(key: jax.Array, images: jax.Array) -> jax.Array:
    for part, part_key in zip(parts, jax.random.split(key, len(parts))):
      images = part.fn(part_key, images)
    return images

  name = "compose(" + ", ".join(repr(p) for p in parts) + ")"
  return Defense(composed, name=name, params={"parts": [p.describe() for p in parts]})


def sample(
    defense: Any, key: jax.Array, images: jax.Array, n: int, *, chunk_size: int | None = None
) -> jax.Array:
  """Draws `n` independent defended copies of a batch in one vmapped call.

  Args:
    defense: a defense or plain ``(key, images) -> images`` function.
    key: PRNG key, split into `n` draw keys.
    images: float array, shape (B, H, W, C), values in [0, 1].
    n: number of draws, >= 1.
    chunk_size: if set, draws are computed `chunk_size` at a time
      (`jax.lax.map` over vmapped chunks) to bound memory; same values.

  Returns:
    Array of shape (n, B, H', W', C).
  """
  defense = as_defense(defense)
  _validate.check_number(n, "n", low=1, integer=True)
  if chunk_size is not None:
    _validate.check_number(chunk_size, "chunk_size", low=1, integer=True)
  _validate.check_key(key)
  images = _validate.check_images(images)
  return _sample(defense, key, images, int(n), None if chunk_size is None else int(chunk_size))


def compile_sample(defense: Any, key: jax.Array, images: jax.Array, n: int, *,
                   chunk_size: int | None = None):
  """Compiles `sample` ahead of time for these shapes.

  Returns:
    ``compiled(key, images) -> samples``, for timing without compilation.
  """
  defense = as_defense(defense)
  return _sample.lower(defense, key, images, int(n),
                       None if chunk_size is None else int(chunk_size)).compile()


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _sample(defense: Defense, key, images, n: int, chunk_size: int | None) -> jax.Array:
  keys = jax.random.split(key, n)
  draw = lambda k: defense.fn(k, images)
  if chunk_size is None or chunk_size >= n:
    return jax.vmap(draw)(keys)
  return jax.lax.map(draw, keys, batch_size=chunk_size)


# --- registry --------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Defense]] = {}


def register(name: str) -> Callable[[Callable[..., Defense]], Callable[..., Defense]]:
  """Decorator registering a defense factory under `name` for `get`.

  Example::

    @jaxdef.defenses.register("my_blur")
    def my_blur(sigma=1.0):
      return jaxdef.defenses.from_transform(...)
  """

  def decorator(factory: Callable[..., Defense]) -> Callable[..., Defense]:
    if name in _REGISTRY and _REGISTRY[name] is not factory:
      raise ValueError(f"a defense named {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory

  return decorator


def available() -> tuple[str, ...]:
  """The registered defense names, sorted."""
  return tuple(sorted(_REGISTRY))


def get(name: str, **params: Any) -> Defense:
  """Builds a registered defense by name, e.g. ``get("bart", kappa=6)``.

  Raises:
    ValueError: unknown name (the message lists the valid ones) or a bad
      parameter value.
    TypeError: a parameter the defense does not take (the message lists the
      ones it takes).
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown defense {name!r}; available: {', '.join(available())}")
  factory = _REGISTRY[name]
  signature = inspect.signature(factory)
  accepted = [p for p in signature.parameters if not p.startswith("_")]
  takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
  unknown = [p for p in params if p not in accepted]
  if unknown and not takes_any:
    raise TypeError(
        f"defense {name!r} does not take {', '.join(unknown)}; "
        f"its parameters are: {', '.join(accepted) or '(none)'}"
    )
  return factory(**params)
