"""The stochastic classifier F(t_theta(x)) and its aggregated predictions.

Attacks differentiate `logits`, a single random draw; evaluation aggregates
n independent draws (`predict`), computed as vmapped chunks of draws inside
one compiled function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import _sequential
from jaxdef import _validate
from jaxdef import sharding
from jaxdef.defenses import _core as defenses_core

PREDICT_MODES = ("vote", "all", "logits")
REJECTED = -1


def _is_array_pytree(fn: Any) -> bool:
  """True when `fn` is a pytree node whose leaves are all arrays (its weights).

  Such a function (`jaxdef.models.logits_fn`, or ``jax.tree_util.Partial(f,
  variables)``) can travel into compiled code as an argument; anything else
  (a closure, a partial over Python values) stays compile-time structure.
  """
  leaves, treedef = jax.tree_util.tree_flatten(fn)
  if not leaves or (len(leaves) == 1 and leaves[0] is fn):
    return False
  if not all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves):
    return False
  try:
    hash(treedef)
  except TypeError:
    return False
  return True


@jax.tree_util.register_pytree_node_class
class StochasticClassifier:
  """A model behind a stochastic pre-processing defense.

  Args:
    logits_fn: pure ``logits_fn(images) -> logits``, images float (B, H, W, C)
      in [0, 1], logits (B, num_classes). Normalisation belongs inside it.
    defense: a defense or ``(key, images) -> images`` function; None means
      the identity (the undefended model).
    vote_chunk_size: draws evaluated at once by `predict` and `invariance`
      (memory bound: chunk x B forward passes at a time).
    vote_rows_per_call: optional bound on those model rows (draws x images)
      per call: a vote of B images then takes at most max(1, rows // B) draws
      at a time (`jaxdef.memory` picks it per device). None: no bound.
    stochastic_model: True when the model itself is random, ``logits_fn(key,
      images) -> logits`` (stochastic activation pruning,
      `jaxdef.models.stochastic_logits_fn`). Each draw then splits its key
      into a defense key and a model key, so EOT and votes average over both.
  """

  def __init__(self, logits_fn: Callable[..., jax.Array], defense: Any = None, *,
               vote_chunk_size: int = 100, stochastic_model: bool = False,
               vote_rows_per_call: int | None = None):
    if not callable(logits_fn):
      expected = "(key, images) -> logits" if stochastic_model else "images -> logits"
      raise TypeError(
          f"logits_fn must be callable {expected}, got {type(logits_fn).__name__}")
    _validate.check_number(vote_chunk_size, "vote_chunk_size", low=1, integer=True)
    if vote_rows_per_call is not None:
      _validate.check_number(vote_rows_per_call, "vote_rows_per_call", low=1, integer=True)
      vote_rows_per_call = int(vote_rows_per_call)
    self.vote_rows_per_call = vote_rows_per_call
    if stochastic_model not in (True, False):
      raise TypeError(f"stochastic_model must be True or False, got {stochastic_model!r}")
    self.stochastic_model = bool(stochastic_model)
    self.logits_fn = logits_fn
    # Only the missing defense is the identity; a plain function keeps its own name.
    self.defense = (defenses_core.as_defense(lambda key, images: images, name="identity")
                    if defense is None else defenses_core.as_defense(defense))
    self.vote_chunk_size = int(vote_chunk_size)
    self._weights_are_data = _is_array_pytree(logits_fn)
    self._num_classes = {}

  # A pytree: the compiled attacks and votes take the classifier as an
  # argument. When the logits function carries its weights as arrays (see
  # `_is_array_pytree`), those are the leaves, so classifiers that differ
  # only in weights share one compilation; everything else (the defense,
  # a closure) is the structure, compared by identity as before.
  def tree_flatten(self):
    static = (self.defense, self.vote_chunk_size, self.stochastic_model,
              self.vote_rows_per_call)
    if self._weights_are_data:
      return (self.logits_fn,), (None,) + static
    return (), (self.logits_fn,) + static

  @classmethod
  def tree_unflatten(cls, aux, children):
    logits_fn, defense, vote_chunk_size, stochastic_model, vote_rows_per_call = aux
    clf = object.__new__(cls)
    clf.logits_fn = children[0] if logits_fn is None else logits_fn
    clf.defense = defense
    clf.vote_chunk_size = vote_chunk_size
    clf.vote_rows_per_call = vote_rows_per_call
    clf.stochastic_model = stochastic_model
    clf._weights_are_data = logits_fn is None
    clf._num_classes = {}
    return clf

  def __repr__(self) -> str:
    return f"StochasticClassifier(defense={self.defense!r})"

  def logits(self, key: jax.Array, images: jax.Array) -> jax.Array:
    """One random draw: ``logits_fn(defense(key, images))``, differentiable.

    Args:
      key: PRNG key of the draw.
      images: float (B, H, W, C) in [0, 1].

    Returns:
      float (B, num_classes).
    """
    # Inside a trace only the key's and images' shapes and dtypes are checked.
    _validate.check_key(key)
    images = _validate.check_images(images)
    if self.stochastic_model:
      defense_key, model_key = jax.random.split(key)
      return self.logits_fn(model_key, self.defense.fn(defense_key, images))
    return self.model_logits(self.defense.fn(key, images))

  def model_logits(self, images: jax.Array) -> jax.Array:
    """The (deterministic) model alone on defended `images` (B, H, W, C) -> (B, K).

    With several devices each computes its own rows (`jaxdef.sharding.map_rows`),
    also when EOT draws or vote chunks are vmapped around this call.
    """
    return sharding.map_rows(self.logits_fn, images, in_axes=(0,))

  def num_classes(self, images: jax.Array) -> int:
    """The number of classes, from the shape of one abstract evaluation.

    Remembered per image shape and dtype: the abstract evaluation traces the
    whole model (tens of milliseconds), and every attack call asks.
    """
    signature = (tuple(images.shape), str(images.dtype))
    if signature not in self._num_classes:
      shape = jax.eval_shape(self.logits, jax.random.key(0), images).shape
      if len(shape) != 2 or shape[0] != images.shape[0]:
        raise ValueError(f"logits_fn must return logits of shape (batch, classes) = "
                         f"({images.shape[0]}, classes) for images of shape "
                         f"{tuple(images.shape)}, got {shape}")
      self._num_classes[signature] = int(shape[1])
    return self._num_classes[signature]

  def draw_logits(self, key: jax.Array, images: jax.Array, n: int) -> jax.Array:
    """Logits of `n` independent draws, shape (n, B, num_classes).

    Data-parallel over the local devices when there are several (see
    `jaxdef.sharding`); every other prediction goes through here.
    """
    _validate.check_number(n, "n", low=1, integer=True)
    (images,), batch = sharding.put_batch(images)
    key, clf = sharding.put_replicated(key, self)
    return sharding.unpad(_draw_logits(clf, key, images, int(n)), batch, axis=1)

  def predict(self, key: jax.Array, images: jax.Array, n: int = 500, mode: str = "vote"
              ) -> jax.Array:
    """Aggregated prediction over `n` independent draws.

    Modes: "vote" is the majority label (ties go to the lowest label); "all"
    is the label only if all n draws agree, else -1 (rejected); "logits" is
    the argmax of the mean logits.

    Args:
      key: PRNG key (split into n draw keys).
      images: float (B, H, W, C) in [0, 1].
      n: number of draws, >= 1 (the study votes over 500).
      mode: "vote" | "all" | "logits".

    Returns:
      int32 (B,) labels; -1 marks rejection in mode "all".
    """
    _validate.check_choice(mode, "mode", PREDICT_MODES)
    images = self._checked(key, images)
    return aggregate(self.draw_logits(key, images, n), mode)

  def predict_sequential(self, key: jax.Array, images: jax.Array, n: int = 500, *,
                         chunk: int | None = None, error: float = 1e-3, sub_batches: int = 8,
                         skip: jax.Array | None = None) -> _sequential.SequentialVote:
    """Majority vote that stops drawing for an image once its label is decided.

    Draws come `chunk` at a time (draw i is draw i of ``predict(key, images,
    n)``: same key, same batch); after each chunk an image stops when the
    one-sided Clopper-Pearson lower bound of its leading class exceeds the
    upper bound of the runner-up, each bound at level error / ((looks - 1)
    x num_classes), looks = ceil(n / chunk). One compiled `lax.while_loop`,
    which ends when every image has stopped or n draws are spent; within a
    look the model runs only on the undecided images, in passes of
    ceil(B / sub_batches) rows (the defense still transforms the whole
    batch, so that draw i is predict's draw i).

    Guarantee: for each image, whatever its draws' class probabilities p,
    the probability of stopping before n draws with a label l whose p_l is
    below max(p) is at most `error` (union bound over looks and classes).
    An image that never stops returns the full n-draw vote of `predict`
    (ties to the lowest label; bit for bit when the model's rows do not
    depend on the batch they are evaluated in, as on CPU). Agreement with
    the n-draw vote is not guaranteed: the full vote itself can differ from
    argmax p when the top classes are close.

    Args:
      key: PRNG key (split into n draw keys, as in `predict`).
      images: float (B, H, W, C) in [0, 1].
      n: most draws per image, >= 1.
      chunk: draws between looks, in [1, n]; None: min(10, vote_chunk_size,
        n), lowered under `vote_rows_per_call`. Memory: chunk x B defended
        images at a time.
      error: in (0, 1), see the guarantee.
      sub_batches: >= 1; the model evaluates ceil(B / sub_batches) undecided
        images per pass. 1 evaluates the whole batch at every look (as does a
        stochastic model, whose draws depend on the batch it sees).
      skip: optional bool (B,): images whose label is not wanted (say, those
        no success rate counts). They count as decided from the start: no
        draws, label -1, and (with sub_batches > 1) no model evaluations;
        the other images' draws are unchanged.

    Returns:
      A `SequentialVote` (labels, draws, forward_passes): int32 (B,) majority
      labels (-1 where skipped), int32 (B,) draws each image counted (a
      multiple of chunk, or n), and the model evaluations the batch actually
      cost.
    """
    images = self._checked(key, images)
    _validate.check_number(n, "n", low=1, integer=True)
    if chunk is None:
      chunk = draws_per_call(self, min(10, int(n)), images.shape[0])
    _validate.check_number(chunk, "chunk", low=1, high=int(n), integer=True)
    _validate.check_number(error, "error", low=0, high=1, low_inclusive=False,
                           high_inclusive=False)
    _validate.check_number(sub_batches, "sub_batches", low=1, integer=True)
    # Always an array, so that votes with and without skipping share one compilation.
    skip = jnp.zeros(images.shape[:1], bool) if skip is None else jnp.asarray(skip)
    if skip.dtype != jnp.bool_ or skip.shape != images.shape[:1]:
      raise ValueError(f"skip must be a bool array of shape {images.shape[:1]} (one flag per "
                       f"image), got {skip.dtype} {skip.shape}")
    table = _sequential.decision_table(int(n), int(chunk), float(error),
                                       self.num_classes(images))
    (images, skip), batch = sharding.put_batch(images, skip)  # see draw_logits
    key, clf = sharding.put_replicated(key, self)
    rows = -(-images.shape[0] // int(sub_batches))
    labels, draws, forward_passes = _sequential.sequential_vote(
        clf, key, images, jnp.asarray(table), int(n), int(chunk), rows, skip)
    return _sequential.SequentialVote(sharding.unpad(labels, batch), sharding.unpad(draws, batch),
                                      forward_passes)

  def vote_counts(self, key: jax.Array, images: jax.Array, n: int = 500) -> jax.Array:
    """Per-class vote counts over n draws, int32 (B, num_classes)."""
    images = self._checked(key, images)
    logits = self.draw_logits(key, images, n)
    return jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=jnp.int32).sum(0)

  def invariance(self, key: jax.Array, images: jax.Array, n: int = 100) -> jax.Array:
    """Rate at which a single defended draw agrees with the undefended model.

    With a stochastic model the undefended reference is one model draw
    (keyed by `key`) on the clean images.

    Returns:
      float scalar in [0, 1]: the mean over n draws and the B images of
      [argmax logits(draw) == argmax logits_fn(images)].
    """
    images = self._checked(key, images)
    draws = jnp.argmax(self.draw_logits(key, images, n), -1)
    (placed,), batch = sharding.put_batch(images)
    (clf,) = sharding.put_replicated(self)
    clean = jnp.argmax(sharding.unpad(_undefended_logits(clf, key, placed), batch), -1)
    return jnp.mean(draws == clean[None])

  def _checked(self, key, images):
    _validate.check_key(key)
    images = _validate.check_images(images)
    self.num_classes(images)  # refuses a logits_fn that does not return (B, classes)
    return images


def aggregate(draw_logits: jax.Array, mode: str = "vote") -> jax.Array:
  """Aggregates (n, B, K) logits of n draws into labels (B,); see `predict`."""
  _validate.check_choice(mode, "mode", PREDICT_MODES)
  num_draws, num_classes = draw_logits.shape[0], draw_logits.shape[-1]
  if mode == "logits":
    return jnp.argmax(draw_logits.mean(0), -1).astype(jnp.int32)
  counts = jax.nn.one_hot(jnp.argmax(draw_logits, -1), num_classes, dtype=jnp.int32).sum(0)
  label = jnp.argmax(counts, -1).astype(jnp.int32)  # first maximum: lowest label wins ties
  if mode == "all":
    return jnp.where(counts.max(-1) == num_draws, label, REJECTED)
  return label


def draws_per_call(clf: StochasticClassifier, n: int, batch: int) -> int:
  """Vote draws `clf` evaluates at once for a batch of `batch` images (`vote_draws_per_call`)."""
  return vote_draws_per_call(clf.vote_chunk_size, clf.vote_rows_per_call, n, batch)


def vote_draws_per_call(vote_chunk_size: int, vote_rows_per_call: int | None, n: int,
                        batch: int) -> int:
  """Draws of an n-draw vote of `batch` images evaluated at once: `vote_chunk_size`,
  lowered under `vote_rows_per_call` model rows (at least 1 draw), at most n."""
  chunk = min(vote_chunk_size, n)
  if vote_rows_per_call is not None:
    chunk = min(chunk, max(1, vote_rows_per_call // batch))
  return chunk


@functools.partial(jax.jit, static_argnums=3)
def _draw_logits(clf: StochasticClassifier, key, images, n: int) -> jax.Array:
  keys = jax.random.split(key, n)
  draw = lambda k: clf.logits(k, images)
  chunk = draws_per_call(clf, n, images.shape[0])
  if chunk >= n:
    return jax.vmap(draw)(keys)
  return jax.lax.map(draw, keys, batch_size=chunk)


@jax.jit
def _undefended_logits(clf: StochasticClassifier, key, images) -> jax.Array:
  if clf.stochastic_model:
    return clf.logits_fn(jax.random.fold_in(key, 1), images)
  return clf.model_logits(images)
