"""Sequential majority voting: stop drawing once an image's vote is decided.

The full vote (`StochasticClassifier.predict`) spends n draws on every
image, although most images are classified the same way by nearly every
draw. Here draws come in chunks of `chunk`; after each chunk (a *look*) an
image whose leading class is separated from the runner-up by exact
Clopper-Pearson bounds stops counting, the next looks run the model only on
the images still undecided, and the loop ends when every image has stopped
or n draws are spent.

The rule. Let t be the draws an image has seen at a look, a the leader's
count and b the runner-up's. The image is decided when

    lower(a, t) > upper(b, t),

with lower / upper the one-sided Clopper-Pearson bounds (beta quantiles)
at level ``error / ((looks - 1) * num_classes)``; the last look, after draw
n, stops every image anyway and returns the full vote.

Why this is valid: the draws of one image are i.i.d. with class
probabilities p; let c* be a most probable class. If the rule stops early
with a leader l whose p_l < p_c*, then lower(a_l) > upper(a_c*) forces
p_l < lower(a_l) or p_c* > upper(a_c*): at that look either the lower
bound of a class other than c* or the upper bound of c* missed. Each such
miss has probability at most the level, and there are (looks - 1) x
num_classes of them over the early looks, so the union bound gives the
guarantee stated in `StochasticClassifier.predict_sequential`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import sharding


def looks_of(num_votes: int, chunk: int) -> int:
  """Number of looks: one after every chunk, the last one after draw n."""
  return -(-num_votes // chunk)


def per_bound_level(error: float, num_votes: int, chunk: int, num_classes: int) -> float:
  """One-sided level of each Clopper-Pearson bound: error / (early looks x classes).

  Early looks are those before the n-th draw (at least one counted, so the
  level stays defined when chunk >= n and no early stop can happen).
  """
  return error / (max(looks_of(num_votes, chunk) - 1, 1) * num_classes)


@functools.lru_cache(maxsize=32)
def decision_table(num_votes: int, chunk: int, error: float, num_classes: int) -> np.ndarray:
  """Smallest deciding leader count, per look and runner-up count.

  Args:
    num_votes: n, the most draws an image gets.
    chunk: draws between looks.
    error: the error level of the whole procedure, in (0, 1).
    num_classes: K, the number of labels.

  Returns:
    int32 (looks, n + 1): entry [j, b] is the smallest leader count a with
    lower(a, t_j) > upper(b, t_j), t_j = min((j + 1) * chunk, n) draws; n + 1
    where no count decides (including b > t_j, which cannot occur).
  """
  from scipy import stats  # here, not at the top: 0.5 s of every command's start

  level = per_bound_level(error, num_votes, chunk, num_classes)
  looks = looks_of(num_votes, chunk)
  table = np.full((looks, num_votes + 1), num_votes + 1, np.int32)
  for look in range(looks):
    seen = min((look + 1) * chunk, num_votes)
    counts = np.arange(seen + 1)
    # Exact one-sided bounds; count 0 has lower bound 0 and count t upper bound 1.
    with np.errstate(invalid="ignore", divide="ignore"):
      lower = np.where(counts == 0, 0.0, stats.beta.ppf(level, counts, seen - counts + 1))
      upper = np.where(counts == seen, 1.0,
                       stats.beta.ppf(1 - level, counts + 1, seen - counts))
    # lower() increases with the count, so the first count beyond upper(b) decides.
    need = np.searchsorted(lower, upper, side="right")
    table[look, :seen + 1] = np.where(need <= seen, need, num_votes + 1)
  return table


class SequentialVote(NamedTuple):
  """What `StochasticClassifier.predict_sequential` returns.

  Attributes:
    labels: int32 (B,), the majority label of each image.
    draws: int32 (B,), draws each image counted before it stopped (a
      multiple of the chunk, or n).
    forward_passes: int32 scalar, model evaluations actually computed for
      the batch (undecided rows in whole passes, padding rows included).
  """
  labels: jax.Array
  draws: jax.Array
  forward_passes: jax.Array


def _leader_and_runner_up(counts: jax.Array, needed: jax.Array) -> jax.Array:
  """Whether each row's leading count reaches `needed[runner-up count]`, (B,) bool.

  counts: int (B, K). A zero column gives a runner-up count of 0 when there
  is one class. Row-wise max and mask rather than `lax.top_k`, which XLA
  gathers whole onto every device when the batch is sharded.
  """
  padded = jnp.pad(counts, ((0, 0), (0, 1)))
  leader = jnp.argmax(padded, -1)
  runner_up = jnp.where(jnp.arange(padded.shape[1]) == leader[:, None], -1, padded).max(-1)
  return padded.max(-1) >= needed[runner_up]


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def sequential_vote(clf, key: jax.Array, images: jax.Array, table: jax.Array, num_votes: int,
                    chunk: int, rows: int, skip: jax.Array | None = None) -> SequentialVote:
  """The compiled loop behind `StochasticClassifier.predict_sequential`.

  Draw i uses ``jax.random.split(key, num_votes)[i]`` on the whole batch,
  exactly as `predict` does, so an image that never stops gets the full
  vote's counts. The last chunk is padded with repeated keys whose votes
  are masked out. With rows < B, each look applies the defense to the whole
  batch (draw i must see the batch `predict` sees) and runs the model only
  on the undecided images, `rows` at a time: the model must treat rows
  independently (any eval-mode network does; a stochastic model does not,
  and gets rows = B).

  Returns:
    A `SequentialVote`.
  """
  looks = table.shape[0]
  keys = jax.random.split(key, num_votes)
  padding = looks * chunk - num_votes  # < chunk <= num_votes
  if padding:
    keys = jnp.concatenate([keys, keys[:padding]])
  keys = keys.reshape((looks, chunk) + keys.shape[1:])
  batch = images.shape[0]
  rows = min(rows, batch)
  num_classes = jax.eval_shape(clf.logits, keys[0, 0], images).shape[-1]

  def chunk_votes(look, logits):
    """(chunk, R, K) logits -> (R, K) vote counts of the chunk's real draws."""
    valid = (look * chunk + jnp.arange(chunk) < num_votes).astype(jnp.int32)
    votes = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.int32)
    return (votes * valid[:, None, None]).sum(0)

  def whole_batch(look, counts, decided):
    logits = jax.vmap(lambda draw_key: clf.logits(draw_key, images))(keys[look])
    counts = jnp.where(decided[:, None], counts, counts + chunk_votes(look, logits))
    return counts, jnp.int32(chunk * batch)

  def undecided_only(look, counts, decided):
    defended = jax.vmap(lambda draw_key: clf.defense.fn(draw_key, images))(keys[look])
    # With several devices each compacts and evaluates its own undecided rows.
    counts, cost = sharding.map_rows(_passes, look, defended, counts, decided,
                                     in_axes=(None, 1, 0, 0), out_axes=(0, 0))
    return counts, cost.sum()

  def _passes(look, defended, counts, decided):
    """The model on the undecided rows of this batch (all, or one device's), in passes."""
    local_batch = decided.shape[0]
    local_rows = -(-rows * local_batch // batch)
    passes_needed = -(-local_batch // local_rows)
    # Undecided images first; the tail of the last pass is masked out.
    order = jnp.argsort(decided.astype(jnp.int8), stable=True)
    order = jnp.pad(order, (0, passes_needed * local_rows - local_batch))
    active = local_batch - decided.sum()
    passes = (active + local_rows - 1) // local_rows

    def one_pass(index, counts):
      picked = jax.lax.dynamic_slice(order, (index * local_rows,), (local_rows,))
      inputs = defended[:, picked]
      logits = clf.logits_fn(inputs.reshape((chunk * local_rows,) + inputs.shape[2:]))
      votes = chunk_votes(look, logits.reshape(chunk, local_rows, num_classes))
      real = index * local_rows + jnp.arange(local_rows) < active
      return counts.at[picked].add(votes * real[:, None].astype(jnp.int32))

    counts = jax.lax.fori_loop(0, passes, one_pass, counts)
    return counts, (passes * chunk * local_rows).astype(jnp.int32)[None]

  evaluate = whole_batch if rows >= batch or clf.stochastic_model else undecided_only

  def body(state):
    look, counts, draws, decided, spent = state
    counts, cost = evaluate(look, counts, decided)
    draws = jnp.where(decided, draws, jnp.minimum((look + 1) * chunk, num_votes))
    decided = decided | _leader_and_runner_up(counts, table[look])
    return look + 1, counts, draws, decided, spent + cost

  # Skipped images start decided: no draw is counted or (in passes) computed for them.
  skipped = jnp.zeros((batch,), bool) if skip is None else skip
  state = (jnp.int32(0), jnp.zeros((batch, num_classes), jnp.int32),
           jnp.zeros((batch,), jnp.int32), skipped, jnp.int32(0))
  _, counts, draws, _, spent = jax.lax.while_loop(
      lambda s: (s[0] < looks) & ~jnp.all(s[3]), body, state)
  # First maximum: ties (possible only after all n draws) go to the lowest label, as in `predict`.
  labels = jnp.where(skipped, -1, jnp.argmax(counts, -1)).astype(jnp.int32)
  return SequentialVote(labels, draws, spent)
