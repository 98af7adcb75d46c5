"""Expectation over Transformation: gradients averaged over defense draws."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

ObjectiveFn = Callable[[jax.Array], jax.Array]  # logits (B, K) -> values (B,)


def chunk_under(eot: int, rows_per_draw: int, max_rows: int | None,
                chunk_size: int | None = None) -> int:
  """EOT draws to evaluate at once so that one model call sees at most `max_rows` images.

  On a CPU a few hundred rows per call use the caches best (BENCHMARKS.md:
  a 640-row EOT-10 step of the 16-32-64 small ResNet ran 1.3x faster in
  64-row chunks); a GPU wants everything at once (`max_rows` None).

  Args:
    eot: m, draws per step, >= 1.
    rows_per_draw: images one draw evaluates (batch x runs vmapped together).
    max_rows: the most rows per model call; None: no limit.
    chunk_size: an upper bound already chosen (memory); None: m.

  Returns:
    `chunk_size` (or m), lowered when it exceeds `max_rows` to the largest
    divisor of m that fits (equal chunks: one compiled loop body), at least 1.
  """
  chunk = min(chunk_size or eot, eot)
  if max_rows is not None and chunk * rows_per_draw > max_rows:
    fitting = [d for d in range(1, chunk + 1) if eot % d == 0 and d * rows_per_draw <= max_rows]
    chunk = max(fitting, default=1)
  return chunk


def as_chunk_size(chunk: int | None, eot: int) -> int | None:
  """The `chunk_size` argument that evaluates `chunk` of `eot` draws at once.

  None when that is all of them: the chunk size is a static argument of the
  compiled attacks, so one spelling of "all at once" keeps one compilation.
  """
  return None if chunk is None or chunk >= eot else int(chunk)


def eot_value_and_grad(clf, key: jax.Array, images: jax.Array, objective_fn: ObjectiveFn,
                       eot: int, chunk_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Mean objective and mean input-gradient over `eot` independent draws.

  Draw i uses ``jax.random.split(key, eot)[i]``; draws are one vmapped batch
  of eot x B evaluations, or, with `chunk_size`, a scan over chunks of that
  many draws whose sums accumulate (bounded memory, same values up to
  summation order).

  Args:
    clf: a `StochasticClassifier` (its `logits(key, images)` is one draw).
    key: PRNG key of this gradient step.
    images: float (B, H, W, C), the current iterate.
    objective_fn: per-example objective to maximise, logits -> (B,).
    eot: number of draws m >= 1.
    chunk_size: draws evaluated at once; None evaluates all m at once.

  Returns:
    (values, grads): mean objective (B,) and mean gradient (B, H, W, C).
  """
  keys = jax.random.split(key, eot)

  def one_draw(draw_key):
    def total(x):
      values = objective_fn(clf.logits(draw_key, x))
      return values.sum(), values  # images are independent: d(sum)/dx_b = d(value_b)/dx_b

    (_, values), grads = jax.value_and_grad(total, has_aux=True)(images)
    return values, grads

  def summed(chunk_keys):
    values, grads = jax.vmap(one_draw)(chunk_keys)
    return values.sum(0), grads.sum(0)

  if chunk_size is None or chunk_size >= eot:
    values, grads = summed(keys)
  else:
    full_chunks, rest = divmod(eot, chunk_size)

    def accumulate(carry, chunk_keys):
      values, grads = summed(chunk_keys)
      return (carry[0] + values, carry[1] + grads), None

    zeros = (jnp.zeros(images.shape[:1], jnp.float32), jnp.zeros_like(images))
    chunks = keys[:full_chunks * chunk_size].reshape((full_chunks, chunk_size) + keys.shape[1:])
    (values, grads), _ = jax.lax.scan(accumulate, zeros, chunks)
    if rest:
      rest_values, rest_grads = summed(keys[full_chunks * chunk_size:])
      values, grads = values + rest_values, grads + rest_grads
  return values / eot, grads / eot


def eot_value(clf, key: jax.Array, images: jax.Array, objective_fn: ObjectiveFn, eot: int,
              chunk_size: int | None = None) -> jax.Array:
  """Mean objective over `eot` draws (no gradient), (B,); same draws as above."""
  keys = jax.random.split(key, eot)
  draw = lambda draw_key: objective_fn(clf.logits(draw_key, images))
  if chunk_size is None or chunk_size >= eot:
    return jax.vmap(draw)(keys).mean(0)
  return jax.lax.map(draw, keys, batch_size=chunk_size).mean(0)
