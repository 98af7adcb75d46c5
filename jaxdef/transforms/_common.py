"""Small pieces shared by the transforms."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def clip(x: jax.Array, low=0.0, high=1.0) -> jax.Array:
  """Clips to [low, high] with gradient 1 inside (bounds included), 0 outside.

  `jnp.clip` halves the gradient of a value lying exactly on a bound, which
  is common here (black pixels, clipped noise, bilinear outputs equal to the
  image's extremes); the bounds themselves get no gradient.
  """
  low, high = jax.lax.stop_gradient(low), jax.lax.stop_gradient(high)
  return jnp.where(x < low, low, jnp.where(x > high, high, x))
