"""Median selection networks: exact window medians from min/max alone.

A sorting network is a fixed list of compare-exchange steps that sorts any
input. Keeping only the steps that can reach the middle output (and of
those, only the min or max half each one needs) leaves a *selection
network* for the median. Applied to the k*k shifted copies of an image it
computes every pixel's window median with elementwise ops that XLA fuses
into one vectorised loop, on a CPU or a GPU alike, with no sort and no data
dependent control flow.

The networks are Knuth's merge exchange (Batcher's sort for any n, TAOCP
5.2.2 Algorithm M), built and pruned once per size at trace time. Sizes of
the study's median blur (3..13) cost 18 (3 x 3) to 1,884 (13 x 13)
compare-exchange steps per pixel, against 32 bisection passes over a 13 x 13
window before (BENCHMARKS.md, 2026-12-05).
"""

from __future__ import annotations

import functools

import jax


@functools.cache
def merge_exchange(n: int) -> tuple[tuple[int, int], ...]:
  """Knuth's merge-exchange sorting network for n wires: (i, j) pairs, i < j."""
  steps = []
  t = max(1, (n - 1).bit_length())
  p = 1 << (t - 1)
  while p > 0:
    q, r, d = 1 << (t - 1), 0, p
    while True:
      steps.extend((i, i + d) for i in range(n - d) if i & p == r)
      if q == p:
        break
      d, q, r = q - p, q >> 1, p
    p >>= 1
  return tuple(steps)


@functools.cache
def median_network(n: int) -> tuple[tuple[int, int, bool, bool], ...]:
  """The steps of `merge_exchange(n)` that reach output n // 2.

  Returns:
    (i, j, wants_min, wants_max) per kept step: the step writes min to wire
    i if wants_min and max to wire j if wants_max.
  """
  needed, kept = {n // 2}, []
  for i, j in reversed(merge_exchange(n)):
    wants_min, wants_max = i in needed, j in needed
    if wants_min or wants_max:
      kept.append((i, j, wants_min, wants_max))
      needed |= {i, j}
  return tuple(reversed(kept))


def median_of(values: list[jax.Array]) -> jax.Array:
  """Elementwise median of an odd number of equally shaped arrays.

  Exact (the result is one of the inputs at every element). Inputs must not
  hold NaN: ``a < b ? a : b`` is a single vector min instruction, where
  `jnp.minimum`'s NaN propagation costs several (2-4x slower here).
  """
  if len(values) % 2 != 1:
    raise ValueError(f"median_of needs an odd number of arrays, got {len(values)}")
  wires = list(values)
  for i, j, wants_min, wants_max in median_network(len(wires)):
    low, high = wires[i], wires[j]
    less = low < high
    if wants_min:
      wires[i] = jax.lax.select(less, low, high)
    if wants_max:
      wires[j] = jax.lax.select(less, high, low)
  return wires[len(wires) // 2]
