"""The training loop: AdamW + cosine decay, a defense on every batch, checkpoints, resume.

One jitted step per batch (gather, defense draw, forward, backward, AdamW
update, BatchNorm statistics); the Python loop only walks the batches.
Randomness comes from one root key ``jax.random.key(seed)``, split by role
and folded with the epoch and the step (``fold_in(fold_in(role, epoch),
step)``), and the data order of epoch e from ``numpy.random.default_rng((seed,
e))``: neither depends on anything but (seed, epoch, step), so a run resumed
from the checkpoint of epoch e repeats exactly what the uninterrupted run
would have done.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import auto as tqdm

from jaxdef import _validate
from jaxdef.models import _io
from jaxdef.train import _checkpoint
from jaxdef.train import _eval
from jaxdef.train import _optim

BUILTIN_METRICS = ("val_accuracy", "val_defended_accuracy", "val_vote_accuracy", "train_accuracy")
# Validation runs in chunks of this many images (one compiled shape).
EVAL_BATCH_SIZE = 1000

EpochCallback = Callable[[int, dict, dict], Mapping[str, float] | None]


class FitResult(NamedTuple):
  """What `fit` returns.

  Attributes:
    variables: the final {"params", "batch_stats", ...}.
    history: one metrics dict per epoch (see `fit`).
    best_path: the best-on-validation variables file (``best.msgpack``,
      readable by `jaxdef.models.load_variables`); None without a workdir or
      validation data.
    best_epoch: the epoch (1-based) of those variables, or None.
  """

  variables: dict
  history: list
  best_path: pathlib.Path | None
  best_epoch: int | None


def _digest(update: Callable[[Any], None]) -> str:
  h = hashlib.blake2b(digest_size=16)
  update(h)
  return h.hexdigest()


def _array_digest(*arrays: Any) -> str:
  def update(h):
    for array in arrays:
      array = np.ascontiguousarray(np.asarray(array))
      h.update(f"{array.dtype}{array.shape}".encode())
      h.update(memoryview(array).cast("B"))
  return _digest(update)


def _variables_digest(variables: Mapping[str, Any]) -> str:
  flat = sorted(_io.flatten(variables).items())
  def update(h):
    for name, leaf in flat:
      h.update(name.encode())
      h.update(_array_digest(leaf).encode())
  return _digest(update)


def _best_epoch(history: list, metric: str | None) -> int | None:
  if metric is None or not history or metric not in history[0]:
    return None
  best = max(range(len(history)), key=lambda i: (history[i][metric], -i))  # first maximum
  return int(history[best]["epoch"])


@functools.lru_cache(maxsize=16)
def _compiled_step(model: nn.Module, defense_fn: Callable | None, mutable: tuple[str, ...],
                   learning_rate: float, total_steps: int, weight_decay: float,
                   warmup_steps: int) -> Callable:
  """The jitted train step, cached so that repeated `fit` calls compile once."""
  tx = _optim.optimizer(learning_rate, total_steps, weight_decay=weight_decay,
                        warmup_steps=warmup_steps)

  def step(params, state, opt_state, images, labels, order, epoch, index, root):
    batch = order[index]
    x, y = images[batch], labels[batch]

    def key_for(role):
      return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(root, role), epoch), index)

    if defense_fn is not None:
      x = defense_fn(key_for(_eval.ROLE_DEFENSE), x)
    rngs = _eval.model_rngs(key_for(_eval.ROLE_MODEL))

    def loss_fn(params):
      variables = {"params": params, **state}
      if mutable:
        logits, new_state = model.apply(variables, x, train=True, mutable=list(mutable),
                                        rngs=rngs)
      else:
        logits, new_state = model.apply(variables, x, train=True, rngs=rngs), {}
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, (logits, dict(new_state))

    (loss, (logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    return params, {**state, **new_state}, opt_state, loss, correct

  return jax.jit(step)


def _data_order(seed: int, epoch: int, total: int, batch_size: int) -> np.ndarray:
  """Indices of epoch `epoch`'s batches, int32 (steps, batch_size); the remainder is dropped."""
  steps = total // batch_size
  order = np.random.default_rng((seed, epoch)).permutation(total)[:steps * batch_size]
  return order.reshape(steps, batch_size).astype(np.int32)


def fit(model: nn.Module, variables: Mapping[str, Any], train_data: tuple[Any, Any],
        val_data: tuple[Any, Any] | None = None, *, epochs: int, batch_size: int = 256,
        learning_rate: float = 1e-3, weight_decay: float = 0.01, warmup_epochs: float = 0.0,
        defense: Any = None, val_votes: int = 0, best_metric: str = "val_accuracy",
        seed: int = 0, workdir: str | os.PathLike | None = None,
        keep_checkpoints: int | None = None, on_epoch_end: EpochCallback | None = None,
        progress: bool = True) -> FitResult:
  """Trains (or fine-tunes) a model with AdamW and cosine decay, resumably.

  Every epoch visits the training set in a fresh order drawn from (seed,
  epoch), in ``len(train) // batch_size`` batches (the remainder is left
  out for that epoch, keeping one compiled shape). With a `defense`, every
  training batch passes through a new draw of it (its own key per step, so
  each image gets fresh randomness): trained invariance, SPEC section 6.
  BatchNorm uses batch statistics and updates its running averages.

  After each epoch: validation accuracy (clean; with a defense also one
  defended draw per image and, with `val_votes`, the majority vote over
  that many draws), then, with a `workdir`, a checkpoint
  ``epoch_{epoch:03d}.msgpack`` (variables, optimiser state, epoch, step,
  data-order state, history; written atomically), ``best.msgpack`` when
  `best_metric` improved, and ``history.json``. A later call with the same
  arguments and workdir resumes from the newest readable checkpoint (an
  unreadable one is reported and skipped) and ends with bit-identical
  variables to an uninterrupted run on the same machine; a finished run
  returns at once. A workdir holding checkpoints of another model, other
  initial variables, data or config is refused.

  Args:
    model: a Flax module called as ``model.apply(variables, images,
      train=bool)``, e.g. from `jaxdef.models.small_resnet`.
    variables: its initial {"params", "batch_stats", ...} (random or trained).
    train_data: (images float (N, H, W, C) in [0, 1], int labels (N,)).
    val_data: the same for validation, or None (no validation, no best
      checkpoint).
    epochs: passes over the training set, >= 1 (the cosine spans all of them).
    batch_size: images per update, 1 <= batch_size <= N (the study: 256).
    learning_rate: peak AdamW learning rate, > 0 (the study: 1e-3).
    weight_decay: decoupled weight decay, >= 0 (the study: 0.01).
    warmup_epochs: linear warm-up before the cosine, in epochs, in [0, epochs).
    defense: None, a defense name (`jaxdef.defenses.available()`) or a
      ``(key, images) -> images`` function applied to every training batch.
    val_votes: draws per validation image for "val_vote_accuracy" (0 skips
      it; needs a defense; costs val_votes forward passes per image).
    best_metric: the history entry whose maximum selects ``best.msgpack``:
      one of BUILTIN_METRICS or a name returned by `on_epoch_end`.
    seed: root of the data order and of every random draw, >= 0.
    workdir: folder for checkpoints and history; None keeps nothing on disk.
    keep_checkpoints: keep only the newest this many epoch checkpoints
      (None: all of them, as the invariance study attacks several epochs).
    on_epoch_end: optional ``fn(epoch, variables, metrics) -> dict | None``
      called after validation; returned numbers join the epoch's metrics
      (e.g. robust accuracy tracked during fine-tuning).
    progress: show a tqdm bar per epoch with the running loss and accuracy.

  Returns:
    `FitResult` (variables, history, best_path, best_epoch). Each history
    entry holds "epoch", "step", "learning_rate" (of the epoch's last
    update), "train_loss" and "train_accuracy" (means over the epoch's
    batches, defended, BatchNorm in training mode), the validation
    accuracies, "train_seconds" and "seconds".

  Raises:
    TypeError, ValueError: bad arguments (named), or a workdir holding
      checkpoints of a different run.
  """
  variables = _eval.check_model(model, variables)
  train_images, train_labels = _eval.check_data(train_data, "train_data")
  val = None if val_data is None else _eval.check_data(val_data, "val_data")
  classes = _eval.num_classes(model, variables, train_images)
  _eval.check_labels(train_labels, classes, "train_data")
  if val is not None:
    if val[0].shape[1:] != train_images.shape[1:]:
      raise ValueError(f"val_data images must have the shape of train_data images "
                       f"{tuple(train_images.shape[1:])}, got {tuple(val[0].shape[1:])}")
    _eval.check_labels(val[1], classes, "val_data")
  total = train_images.shape[0]
  _validate.check_number(epochs, "epochs", low=1, integer=True)
  _validate.check_number(batch_size, "batch_size", low=1, integer=True)
  if int(batch_size) > total:
    raise ValueError(f"batch_size must be at most the number of training images ({total}), "
                     f"got {batch_size}")
  _validate.check_number(learning_rate, "learning_rate", low=0, low_inclusive=False)
  _validate.check_number(weight_decay, "weight_decay", low=0)
  _validate.check_number(warmup_epochs, "warmup_epochs", low=0)
  if warmup_epochs >= epochs:
    raise ValueError(f"warmup_epochs must be smaller than epochs ({epochs}), got {warmup_epochs}")
  _validate.check_number(seed, "seed", low=0, integer=True)
  _validate.check_number(val_votes, "val_votes", low=0, integer=True)
  if keep_checkpoints is not None:
    _validate.check_number(keep_checkpoints, "keep_checkpoints", low=1, integer=True)
  defense = _eval.as_defense(defense)
  if val_votes and defense is None:
    raise ValueError("val_votes > 0 needs a defense (majority vote over defense draws)")
  if on_epoch_end is not None and not callable(on_epoch_end):
    raise TypeError(f"on_epoch_end must be callable (epoch, variables, metrics) -> dict | None, "
                    f"got {type(on_epoch_end).__name__}")
  if not isinstance(best_metric, str):
    raise TypeError(f"best_metric must be a metric name, got {best_metric!r}")
  needs = {"val_defended_accuracy": (defense is not None, "a defense"),
           "val_vote_accuracy": (val_votes > 0, "val_votes > 0")}
  if best_metric in needs and not needs[best_metric][0]:
    raise ValueError(f"best_metric {best_metric!r} needs {needs[best_metric][1]}")
  if best_metric not in BUILTIN_METRICS and on_epoch_end is None:
    raise ValueError(f"best_metric must be one of {', '.join(BUILTIN_METRICS)} (or a metric "
                     f"returned by on_epoch_end); got {best_metric!r}")
  selects_best = val is not None or not best_metric.startswith("val_")

  epochs, batch_size, seed = int(epochs), int(batch_size), int(seed)
  steps_per_epoch = total // batch_size
  total_steps = epochs * steps_per_epoch
  warmup_steps = int(round(float(warmup_epochs) * steps_per_epoch))
  if warmup_steps >= total_steps:
    raise ValueError(f"warmup_epochs={warmup_epochs} leaves no step for the cosine decay "
                     f"({total_steps} steps in all)")
  tx = _optim.optimizer(learning_rate, total_steps, weight_decay=weight_decay,
                        warmup_steps=warmup_steps)
  schedule = _optim.learning_rate_schedule(learning_rate, total_steps, warmup_steps=warmup_steps)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  opt_state = tx.init(params)
  root = jax.random.key(seed)
  eval_key = jax.random.fold_in(root, _eval.ROLE_EVAL)

  fingerprint = {
      "model": repr(model),
      "initial_variables": _variables_digest(variables),
      "train_data": {"size": total, "digest": _array_digest(train_images, train_labels)},
      "val_data": None if val is None else {"size": int(val[0].shape[0]),
                                            "digest": _array_digest(*val)},
      "defense": None if defense is None else defense.describe(),
      "epochs": epochs, "batch_size": batch_size, "learning_rate": float(learning_rate),
      "weight_decay": float(weight_decay), "warmup_steps": warmup_steps, "seed": seed,
      "val_votes": int(val_votes), "best_metric": best_metric, "optimizer": "adamw+cosine",
  }
  data_order = {"seed": seed, "generator": "numpy.random.default_rng((seed, epoch))"
                ".permutation(N)[:steps * batch_size]", "steps_per_epoch": steps_per_epoch}
  history: list = []
  start_epoch = 0
  workdir = None if workdir is None else pathlib.Path(workdir)
  if workdir is not None:
    checkpoint = _checkpoint.latest_checkpoint(
        workdir, fingerprint=fingerprint, opt_state_like=opt_state,
        variables_like={"params": params, **state})
    if checkpoint is not None:
      params = checkpoint.variables["params"]
      state = {k: v for k, v in checkpoint.variables.items() if k != "params"}
      opt_state, history, start_epoch = checkpoint.opt_state, checkpoint.history, checkpoint.epoch
      if progress:
        tqdm.tqdm.write(f"resuming from {checkpoint.path} (epoch {start_epoch}/{epochs})")

  def best_path_and_epoch():
    best = _best_epoch(history, best_metric) if selects_best else None
    path = None if workdir is None or best is None else workdir / _checkpoint.BEST_NAME
    return path, best

  step_fn = _compiled_step(model, None if defense is None else defense.fn, tuple(sorted(state)),
                           float(learning_rate), total_steps, float(weight_decay), warmup_steps)
  train_images = jax.device_put(train_images)
  train_labels = jax.device_put(train_labels)

  for epoch in range(start_epoch + 1, epochs + 1):
    started = time.perf_counter()
    order = jnp.asarray(_data_order(seed, epoch, total, batch_size))
    losses, corrects = [], []
    report_every = max(1, steps_per_epoch // 50)
    with tqdm.tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", disable=not progress,
                   dynamic_ncols=True, mininterval=1.0) as bar:
      for index in range(steps_per_epoch):
        params, state, opt_state, loss, correct = step_fn(
            params, state, opt_state, train_images, train_labels, order, epoch, index, root)
        losses.append(loss)
        corrects.append(correct)
        if (index + 1) % report_every == 0 or index + 1 == steps_per_epoch:
          recent = jax.device_get((losses[-report_every:], corrects[-report_every:]))
          bar.set_postfix(loss=f"{np.mean(recent[0]):.4f}",
                          acc=f"{np.sum(recent[1]) / (report_every * batch_size):.3f}",
                          refresh=False)
        bar.update(1)
      metrics: dict[str, Any] = {
          "epoch": epoch,
          "step": epoch * steps_per_epoch,
          "learning_rate": float(schedule(epoch * steps_per_epoch - 1)),
          "train_loss": float(np.mean(jax.device_get(losses))),
          "train_accuracy": float(np.sum(jax.device_get(corrects))) / (steps_per_epoch
                                                                      * batch_size),
          "train_seconds": time.perf_counter() - started,
      }
      current = {"params": params, **state}
      if val is not None:
        scores = _eval.accuracies(model, current, val[0], val[1], defense=defense,
                                  votes=int(val_votes), key=eval_key,
                                  batch_size=EVAL_BATCH_SIZE)
        metrics.update({f"val_{name}": value for name, value in scores.items()})
      if on_epoch_end is not None:
        extra = on_epoch_end(epoch, current, dict(metrics))
        if extra is not None:
          metrics.update({str(k): float(v) for k, v in dict(extra).items()})
      if selects_best and best_metric not in metrics:
        raise ValueError(f"best_metric {best_metric!r} is not among the epoch's metrics "
                         f"({', '.join(sorted(metrics))})")
      metrics["seconds"] = time.perf_counter() - started
      history.append(metrics)
      shown = {k: f"{v:.4f}" for k, v in metrics.items() if k.startswith(("train_l", "val_"))}
      bar.set_postfix(shown, refresh=True)
    if workdir is not None:
      _checkpoint.save_checkpoint(
          _checkpoint.epoch_path(workdir, epoch), variables=current, opt_state=opt_state,
          epoch=epoch, step=epoch * steps_per_epoch, history=history, fingerprint=fingerprint,
          data_order=data_order)
      best_path, best_epoch = best_path_and_epoch()
      if best_epoch == epoch:
        _io.save_variables(best_path, current)
      _checkpoint.write_json(workdir / _checkpoint.HISTORY_NAME, {
          "history": history, "best_epoch": best_epoch, "best_metric": best_metric,
          "config": json.loads(json.dumps(fingerprint, sort_keys=True))})
      _checkpoint.prune_checkpoints(workdir, keep_checkpoints)

  best_path, best_epoch = best_path_and_epoch()
  return FitResult({"params": params, **state}, history, best_path, best_epoch)


def finetune(model: nn.Module, variables: Mapping[str, Any], train_data: tuple[Any, Any],
             val_data: tuple[Any, Any] | None = None, *, defense: Any, epochs: int,
             best_metric: str = "val_defended_accuracy", **kwargs: Any) -> FitResult:
  """Fine-tunes trained variables on data passed through a defense (trained invariance).

  `fit` starting from `variables` with a defense drawn afresh for every
  training image; the best checkpoint is chosen by the defended
  (one-draw) validation accuracy by default. A copy is trained: the
  `variables` passed in are not modified.

  Args:
    model, variables: the trained model, e.g. the clean Fashion-MNIST baseline.
    train_data, val_data: see `fit`.
    defense: required: a defense name or ``(key, images) -> images``
      function, e.g. ``jaxdef.defenses.randomized_smoothing(0.25)``.
    epochs: fine-tuning epochs (the study: 30).
    best_metric: see `fit`.
    **kwargs: any other argument of `fit` (learning_rate, workdir, ...).

  Returns:
    `FitResult`, see `fit`.
  """
  if defense is None:
    raise ValueError("finetune needs a defense (a name or a (key, images) -> images function); "
                     "use fit to train on clean data")
  return fit(model, variables, train_data, val_data, defense=defense, epochs=epochs,
             best_metric=best_metric, **kwargs)
