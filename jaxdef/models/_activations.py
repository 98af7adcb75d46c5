"""Activation functions: ReLU and the two activation-level defenses.

* Stochastic activation pruning (SAP; Dhillon et al., ICLR 2018): after the
  ReLU, draw ``r`` activations of a sample with replacement, with
  probability proportional to their magnitude; keep those drawn at least
  once, rescaled by the inverse of their keep probability, and zero the rest.
  Random; the rescaling makes the layer unbiased, ``E[sap(h)] = h``.
* k-winners-take-all (k-WTA; Xiao et al., ICLR 2020): keep the ``k``
  largest pre-activations of a sample and zero the rest. Deterministic, but
  its output is a discontinuous function of the input.

Both work per sample on the flattened (H * W * C) activations of one layer:
the leading axis of the input is the batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdef import _validate

ACTIVATIONS = ("relu", "sap", "kwta")
# Xiao et al.'s sparse setting keeps 10% of the units of a layer.
KWTA_RATIO = 0.1
# Dhillon et al. draw as many samples as the layer has activations.
SAP_RATIO = 1.0


def _count(ratio: float, units: int, name: str) -> int:
  """The static number ``max(1, round(ratio * units))``."""
  _validate.check_number(ratio, name, low=0, low_inclusive=False)
  return max(1, int(round(float(ratio) * units)))


def _check_batched(x: Any, name: str) -> jax.Array:
  if not hasattr(x, "ndim") or x.ndim < 2:
    shape = tuple(getattr(x, "shape", ()))
    raise ValueError(f"{name} must be batched activations of shape (B, ...), got shape {shape}")
  return jnp.asarray(x)


def kwta(x: jax.Array, *, ratio: float = KWTA_RATIO) -> jax.Array:
  """k-winners-take-all over each sample's flattened activations.

  Keeps ``k = max(1, round(ratio * n))`` units per sample, ``n`` the number
  of units of one sample (H * W * C for a feature map), and zeros the rest.
  It replaces the ReLU (no ReLU before it), as in Xiao et al. Units equal to
  the k-th largest value are all kept, so ties at the threshold (measure zero
  for continuous inputs) may keep more than k. Gradients flow through the
  kept units only.

  Args:
    x: float array, shape (B, ...): a batch of pre-activations.
    ratio: the fraction of units kept, in (0, 1].

  Returns:
    Array of the shape and dtype of `x`.
  """
  x = _check_batched(x, "x")
  _validate.check_number(ratio, "kwta_ratio", low=0, high=1, low_inclusive=False)
  flat = x.reshape(x.shape[0], -1)
  k = _count(ratio, flat.shape[1], "kwta_ratio")
  keys = _order_keys(flat)
  kept = keys >= _kth_largest_key(keys, k)
  return jnp.where(kept, flat, jnp.zeros_like(flat)).reshape(x.shape)


def _order_keys(values: jax.Array) -> jax.Array:
  """uint32 keys (B, n) ordered as the float values are (-0.0 just below +0.0)."""
  bits = jax.lax.bitcast_convert_type(
      jax.lax.stop_gradient(values).astype(jnp.float32), jnp.uint32)
  # Negative floats: flip every bit (larger magnitude -> smaller key);
  # non-negative ones: set the sign bit (above every negative one).
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(1 << 31))


def _kth_largest_key(keys: jax.Array, k: int) -> jax.Array:
  """The k-th largest of each row of `keys` (B, n), exactly; shape (B, 1).

  Bisection on the key itself: the largest t with at least k keys >= t.
  32 passes of a compare-and-count over the row, where XLA's CPU top_k
  sorts every row (k-WTA models trained about 6x slower with it).
  """
  low = jnp.min(keys, axis=1, keepdims=True)
  high = jnp.max(keys, axis=1, keepdims=True)

  def halve(_, bounds):
    low, high = bounds
    gap = high - low
    middle = low + (gap - gap // 2)  # ceil((low + high) / 2) without overflow
    enough = jnp.sum(keys >= middle, axis=1, keepdims=True) >= k
    return jnp.where(enough, middle, low), jnp.where(enough, high, middle - 1)

  low, _ = jax.lax.fori_loop(0, 32, halve, (low, high))
  return low


def _sap_one(h: jax.Array, u: jax.Array) -> jax.Array:
  """SAP of one sample's flattened activations `h` (n,), with uniforms `u` (r,) in [0, 1)."""
  flat = h.astype(jnp.float32)  # cumulative sums need float32, even in bf16 models
  size, draws = flat.shape[0], u.shape[0]
  magnitude = jnp.abs(flat)
  cdf = jnp.cumsum(magnitude)
  total = cdf[-1]
  # Inverse-CDF sampling with replacement: draw j when u * total falls in
  # [cdf[j-1], cdf[j]), so zero activations are never drawn. O(r log n),
  # where the categorical sampler's Gumbel trick would be O(r n).
  index = jnp.minimum(jnp.searchsorted(cdf, u * total, side="right"), size - 1)
  drawn = jnp.zeros(size, jnp.bool_).at[index].set(True)
  kept = drawn & (magnitude > 0)
  p = magnitude / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)
  # P(drawn at least once in r draws) = 1 - (1 - p)^r, in a form that stays
  # accurate for tiny p.
  keep_prob = -jnp.expm1(draws * jnp.log1p(-p))
  scale = jnp.where(kept, 1.0 / jnp.where(kept, keep_prob, 1.0), 0.0)
  # The multiplier carries no gradient: then the gradient of one draw,
  # diag(scale), has expectation I, the Jacobian of E[sap(h)] = h; the
  # pathwise gradient through keep_prob would be biased (it misses the
  # dependence of the sampling distribution on h).
  return (flat * jax.lax.stop_gradient(scale)).astype(h.dtype)


def sap(key: jax.Array, h: jax.Array, *, ratio: float = SAP_RATIO) -> jax.Array:
  """Stochastic activation pruning of each sample's activations.

  Per sample, with ``n`` activations and ``r = max(1, round(ratio * n))``:
  draws ``r`` indices with replacement, index ``j`` with probability
  ``p_j = |h_j| / sum |h|``; keeps activations drawn at least once, scaled
  by ``1 / (1 - (1 - p_j)^r)``, and zeros the rest, so ``E[sap(h)] = h``.
  Apply it to post-ReLU activations (the models do).

  Random: the draws, independent across samples of the batch (one uniform
  array of shape (B, r) from `key`). The same key gives the same output.

  Probabilities come from a float32 cumulative sum, whose resolution near
  its end (about 6e-8 of the total) limits how exactly the draw follows p
  for layers of millions of units; at CIFAR sizes the effect is below 0.1%.

  Args:
    key: PRNG key.
    h: float array, shape (B, ...): a batch of activations.
    ratio: draws per activation, > 0 (1.0: as many draws as activations).

  Returns:
    Array of the shape and dtype of `h`.
  """
  _validate.check_key(key)
  h = _check_batched(h, "h")
  flat = h.reshape(h.shape[0], -1)
  draws = _count(ratio, flat.shape[1], "sap_ratio")
  # One 2-D draw for the whole batch: XLA's CPU compiler takes seconds for
  # random bits of rank >= 3 and for one threefry kernel per split key.
  u = jax.random.uniform(key, (flat.shape[0], draws), jnp.float32)
  return jax.vmap(_sap_one)(flat, u).reshape(h.shape)


def check_activation(activation: Any, kwta_ratio: Any, sap_ratio: Any) -> None:
  """Validates a model's activation settings (raises ValueError)."""
  _validate.check_choice(activation, "activation", ACTIVATIONS)
  _validate.check_number(kwta_ratio, "kwta_ratio", low=0, high=1, low_inclusive=False)
  _validate.check_number(sap_ratio, "sap_ratio", low=0, low_inclusive=False)


def activate(module: Any, x: jax.Array) -> jax.Array:
  """Applies `module.activation` to `x`, drawing SAP keys from the "sap" rng stream.

  `module` is a Flax module with fields ``activation``, ``kwta_ratio`` and
  ``sap_ratio``; each call draws a fresh key (``make_rng``), so every layer
  and every call gets independent randomness.
  """
  if module.activation == "relu":
    return jax.nn.relu(x)
  if module.activation == "kwta":
    return kwta(x, ratio=module.kwta_ratio)
  if module.activation == "sap":
    return sap(module.make_rng("sap"), jax.nn.relu(x), ratio=module.sap_ratio)
  raise ValueError(f"activation must be one of {ACTIVATIONS}, got {module.activation!r}")
