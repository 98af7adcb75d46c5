"""Projected gradient descent with EOT, compiled end to end.

The whole k-step loop is one `lax.fori_loop` inside one jitted function: no
per-step Python and no host round trip. The step key is
``fold_in(attack_key, step)``, so the first k steps of a longer run are the
same computation as a k-step run: `pgd_trajectory` records the iterate at
several k in one run, equal to separate runs with the same key.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import _validate
from jaxdef import sharding
from jaxdef.attacks import _common
from jaxdef.attacks import _losses
from jaxdef.attacks._eot import eot_value
from jaxdef.attacks._eot import eot_value_and_grad


def _check_checkpoints(checkpoints) -> tuple[int, ...]:
  try:
    values = sorted({int(c) for c in checkpoints})
  except (TypeError, ValueError):
    raise ValueError(f"checkpoints must be a sequence of positive step counts, got "
                     f"{checkpoints!r}") from None
  if not values or values[0] < 1 or any(int(c) != c for c in checkpoints):
    raise ValueError(f"checkpoints must be positive integers, got {checkpoints!r}")
  return tuple(values)


class _SubsetView:
  """The classifier seen through a subset of the batch's rows (see `subset` of
  `pgd_trajectory_results`).

  One draw applies the defense to the whole batch, the attacked rows
  updated, and runs the model on those rows only: row i's defended image is
  the one a whole-batch draw gives it, because a defense treats images
  independently and draws by batch shape. Traced inside `_pgd_run` only.
  """

  def __init__(self, clf, images: jax.Array, subset: jax.Array):
    self.clf, self.images, self.subset = clf, images, subset

  def logits(self, key: jax.Array, rows: jax.Array) -> jax.Array:
    whole = self.images.at[self.subset].set(rows)
    return self.clf.model_logits(self.clf.defense.fn(key, whole)[self.subset])


@functools.partial(jax.jit, static_argnames=(
    "checkpoints", "eot", "norm", "use_random_start", "loss", "eot_chunk_size"))
def _pgd_run(key, images, labels, eps, alpha, subset=None, *, clf, checkpoints, eot, norm,
             targeted, use_random_start, loss, eot_chunk_size):
  """Runs max(checkpoints) steps; returns iterates at the checkpoints.

  With `subset` (int (R,)), only those rows are attacked: the others are
  returned clean, with objective NaN and no non-finite step. `targeted` is
  a traced bool: both modes share the compilation.
  """
  start_key, steps_key = jax.random.split(key)
  x = _common.random_start(start_key, images, eps, norm) if use_random_start else images
  clean, goal, view = images, labels, clf
  if subset is not None:
    x, clean, goal, view = x[subset], images[subset], labels[subset], _SubsetView(
        clf, images, subset)
  objective_fn = lambda logits: _losses.objective(logits, goal, loss, targeted)
  marks = jnp.asarray(checkpoints)
  saved = jnp.zeros((len(checkpoints),) + x.shape, x.dtype)
  first_bad = jnp.full(x.shape[:1], -1, jnp.int32)

  def step(i, state):
    x, saved, first_bad = state
    _, grad = eot_value_and_grad(view, jax.random.fold_in(steps_key, i), x, objective_fn, eot,
                                 eot_chunk_size)
    grad, first_bad = _common.finite_or_zero(grad, i, first_bad)
    x = _common.project(x + alpha * _common.ascent_direction(grad, norm), clean, eps, norm)
    slot = jnp.searchsorted(marks, i + 1)
    saved = jax.lax.cond(marks[jnp.minimum(slot, len(checkpoints) - 1)] == i + 1,
                         lambda s: s.at[slot].set(x), lambda s: s, saved)
    return x, saved, first_bad

  _, saved, first_bad = jax.lax.fori_loop(0, checkpoints[-1], step, (x, saved, first_bad))
  # The objective at each returned point, EOT-averaged with a fresh key.
  final_key = jax.random.fold_in(steps_key, checkpoints[-1])
  objectives = jax.lax.map(
      lambda x_k: eot_value(view, final_key, x_k, objective_fn, eot, eot_chunk_size), saved)
  if subset is not None:
    saved = jnp.broadcast_to(images, (len(checkpoints),) + images.shape).at[:, subset].set(saved)
    objectives = jnp.full((len(checkpoints),) + images.shape[:1], jnp.nan,
                          objectives.dtype).at[:, subset].set(objectives)
    first_bad = jnp.full(images.shape[:1], -1, jnp.int32).at[subset].set(first_bad)
  return saved, objectives, first_bad


def _check_subset(subset, clf, batch: int):
  """`subset` as sorted unique int32 indices into a batch of `batch`, or None."""
  if subset is None:
    return None
  values = np.asarray(subset)
  if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
    raise ValueError(f"subset must be a non-empty 1-D array of image indices, got shape "
                     f"{values.shape} and dtype {values.dtype}")
  if values.min() < 0 or values.max() >= batch or np.unique(values).size != values.size:
    raise ValueError(f"subset must hold distinct indices in [0, {batch - 1}], got "
                     f"{values.tolist()}")
  if clf.stochastic_model:
    raise ValueError("subset needs a deterministic model: a stochastic model's draws "
                     "depend on the rows it sees; attack the whole batch instead")
  return jnp.asarray(np.sort(values), jnp.int32)


def _subset_for_devices(subset):
  """(subset to run, subset to keep after): with several devices, (None, subset).

  A subset of a sharded batch would gather the attacked rows from every
  device at every step; the whole batch is attacked instead (each device its
  own rows), and `_only_kept` returns the other rows as the subset run does.
  """
  if subset is not None and sharding.data_mesh() is not None:
    return None, np.asarray(subset)
  return subset, None


def _only_kept(kept, clean, saved, objectives, first_bad):
  """Rows outside `kept` reset as a subset run leaves them: clean, NaN, -1.

  saved (..., B, H, W, C), objectives (..., B), first_bad numpy (..., B).
  """
  if kept is None:
    return saved, objectives, first_bad
  inside = np.zeros(clean.shape[0], bool)
  inside[kept] = True
  saved = jnp.where(inside.reshape((-1,) + (1,) * (clean.ndim - 1)), saved, clean)
  objectives = jnp.where(inside, objectives, jnp.nan)
  return saved, objectives, np.where(inside, first_bad, -1)


def pgd_trajectory_results(key, clf, images, labels, eps=8 / 255, alpha=1 / 255, steps=None,
                           eot=1, norm="inf", targeted=False, random_start=False, loss="ce", *,
                           checkpoints: Sequence[int] = (10, 20, 50, 100),
                           eot_chunk_size: int | None = None, true_labels=None, subset=None
                           ) -> dict[int, _common.AttackResult]:
  """Like `pgd_trajectory`, returning an `AttackResult` per checkpoint.

  `subset` (int (R,) indices, or None for all) attacks only those images:
  the others come back unchanged with objective NaN. Each attacked image
  gets the iterates of a whole-batch attack with the same key (the defense
  still draws for the whole batch; the model runs on the R rows only), up
  to the last bits of a convolution that sums rows in a batch-size
  dependent order. The sweep uses it to spare images that no success rate
  counts (those the defended classifier gets wrong before the attack).
  """
  checkpoints = _check_checkpoints(checkpoints)
  if steps is not None:
    _validate.check_number(steps, "steps", low=1, integer=True)
  if steps is not None and int(steps) != checkpoints[-1]:
    raise ValueError(f"steps={steps} disagrees with max(checkpoints)={checkpoints[-1]}; "
                     "leave steps out for a trajectory")
  images, labels, _, _ = _common.check_attack_args(
      clf, images, labels, eps=eps, alpha=alpha, steps=checkpoints[-1], eot=eot, norm=norm,
      loss=loss, losses=_losses.PGD_LOSSES, targeted=targeted, true_labels=true_labels,
      eot_chunk_size=eot_chunk_size, key=key, random_start=random_start)
  subset, kept = _subset_for_devices(_check_subset(subset, clf, images.shape[0]))
  clean = images
  # Data-parallel over the local devices when there are several (jit
  # partitions the run from the input shardings); padding rows are dropped.
  (images, labels), batch = sharding.put_batch(images, labels)
  key, clf, subset = sharding.put_replicated(key, clf, subset)
  saved, objectives, first_bad = _pgd_run(
      key, images, labels, jnp.float32(eps), jnp.float32(alpha), subset, clf=clf,
      checkpoints=checkpoints, eot=int(eot), norm=norm, targeted=jnp.bool_(targeted),
      use_random_start=bool(random_start), loss=loss,
      eot_chunk_size=None if eot_chunk_size is None else int(eot_chunk_size))
  saved, objectives = sharding.unpad(saved, batch, 1), sharding.unpad(objectives, batch, 1)
  first_bad = np.asarray(sharding.unpad(first_bad, batch))
  saved, objectives, first_bad = _only_kept(kept, clean, saved, objectives, first_bad)
  params = {"eps": float(eps), "alpha": float(alpha), "norm": norm, "targeted": targeted,
            "random_start": bool(random_start), "loss": loss}
  return _trajectory_results(saved, objectives, first_bad, checkpoints, int(eot), params)


def _trajectory_results(saved, objectives, first_bad, checkpoints, eot: int, params: dict
                        ) -> dict[int, _common.AttackResult]:
  """One run's iterates (K, B, ...) and objectives (K, B) as {k: AttackResult}.

  Reports images whose gradient went non-finite (first_bad: int (B,), -1 if
  never) and credits each k with k x eot gradient computations.
  """
  _common.report_nonfinite("pgd", first_bad)
  return {
      k: _common.AttackResult(
          adversarial=saved[i], attack="pgd", steps=k, eot=eot, strength=k * eot,
          objective=objectives[i], nonfinite_step=np.where(first_bad < k, first_bad, -1),
          params=params)
      for i, k in enumerate(checkpoints)
  }


def pgd_result(key, clf, images, labels, eps=8 / 255, alpha=1 / 255, steps=100, eot=1,
               norm="inf", targeted=False, random_start=False, loss="ce", *,
               eot_chunk_size: int | None = None, true_labels=None) -> _common.AttackResult:
  """Like `pgd`, returning an `AttackResult` (gradient accounting included)."""
  _validate.check_number(steps, "steps", low=1, integer=True)
  return pgd_trajectory_results(
      key, clf, images, labels, eps, alpha, None, eot, norm, targeted, random_start, loss,
      checkpoints=(int(steps),), eot_chunk_size=eot_chunk_size, true_labels=true_labels
  )[int(steps)]


def pgd(key, clf, images, labels, eps=8 / 255, alpha=1 / 255, steps=100, eot=1, norm="inf",
        targeted=False, random_start=False, loss="ce", *, eot_chunk_size: int | None = None,
        true_labels=None) -> jax.Array:
  """PGD with EOT-m against a stochastic classifier (white-box, adaptive).

  Each of the `steps` iterations averages the gradient of the objective
  over `eot` independent defense draws (one vmapped batch of eot x B, or
  chunks of `eot_chunk_size` draws), takes a step of size `alpha` along its
  sign (L-inf) or its L2-normalised direction (L2), and projects onto the
  eps-ball around `images` and onto [0, 1]. Untargeted attacks ascend the
  loss of `labels`; targeted ones descend the loss of `labels` (the
  targets). The returned point is the last iterate.

  Args:
    key: PRNG key (random start, and every step's defense draws).
    clf: the `StochasticClassifier`.
    images: float (B, H, W, C) in [0, 1], clean inputs.
    labels: int (B,): true labels (untargeted) or target labels (targeted).
    eps: radius of the perturbation ball (> 0); 8/255 for the study's L-inf.
    alpha: step size (> 0).
    steps: k >= 1.
    eot: m >= 1 defense draws per gradient.
    norm: "inf" or "2".
    targeted: see above.
    random_start: start from a random point of the ball.
    loss: "ce" (cross-entropy) or "margin" (C&W logit difference).
    eot_chunk_size: evaluate the m draws this many at a time (memory).
    true_labels: optional true labels of a targeted run, to refuse targets
      equal to them.

  Returns:
    Adversarial images, float (B, H, W, C) in [0, 1].
  """
  return pgd_result(key, clf, images, labels, eps, alpha, steps, eot, norm, targeted,
                    random_start, loss, eot_chunk_size=eot_chunk_size,
                    true_labels=true_labels).adversarial


def pgd_trajectory(key, clf, images, labels, eps=8 / 255, alpha=1 / 255, steps=None, eot=1,
                   norm="inf", targeted=False, random_start=False, loss="ce", *,
                   checkpoints: Sequence[int] = (10, 20, 50, 100),
                   eot_chunk_size: int | None = None, true_labels=None) -> dict[int, jax.Array]:
  """One PGD run of max(checkpoints) steps, returning the iterate at each.

  Same arguments as `pgd`; the result at k equals ``pgd(..., steps=k)`` with
  the same key, so the k axis of a k x m sweep costs one run.

  Returns:
    {k: adversarial images after k steps} for every k in `checkpoints`.
  """
  results = pgd_trajectory_results(
      key, clf, images, labels, eps, alpha, steps, eot, norm, targeted, random_start, loss,
      checkpoints=checkpoints, eot_chunk_size=eot_chunk_size, true_labels=true_labels)
  return {k: r.adversarial for k, r in results.items()}


@functools.partial(jax.jit, static_argnames=(
    "checkpoints", "eot", "norm", "use_random_start", "loss", "eot_chunk_size"))
def _pgd_run_batch(keys, images, labels, eps, alphas, subset=None, **settings):
  """`_pgd_run` for A (key, alpha) pairs in one compiled call (vmapped over both).

  Pair i's iterates are those of its own `_pgd_run` call: vmap batches the
  arithmetic, it does not mix the runs. Memory is A times one run's.
  """
  run = lambda key, alpha: _pgd_run(key, images, labels, eps, alpha, subset, **settings)
  return jax.vmap(run)(keys, alphas)


def pgd_trajectory_results_batch(keys, clf, images, labels, alphas, eps=8 / 255, eot=1,
                                 norm="inf", targeted=False, random_start=False, loss="ce", *,
                                 checkpoints: Sequence[int] = (10, 20, 50, 100),
                                 eot_chunk_size: int | None = None, true_labels=None,
                                 subset=None) -> list[dict[int, _common.AttackResult]]:
  """`pgd_trajectory_results` for several step sizes at once, in one compiled call.

  Entry i equals ``pgd_trajectory_results(keys[i], clf, images, labels, eps,
  alphas[i], ...)``: the same iterates, one vmapped run instead of A.

  Args:
    keys: A PRNG keys, one per step size (a key array of shape (A,)).
    alphas: A step sizes (> 0).
    subset: as in `pgd_trajectory_results`.
    other arguments: as in `pgd`.

  Returns:
    A list of A dicts {k: AttackResult}, in the order of `alphas`.
  """
  checkpoints = _check_checkpoints(checkpoints)
  _validate.check_key(keys, "keys")
  if isinstance(alphas, (str, bytes)) or not hasattr(alphas, "__len__"):
    raise TypeError(f"alphas must be a sequence of step sizes (numbers > 0), got {alphas!r}")
  alphas = list(np.ravel(np.asarray(alphas, dtype=object)))
  key_axis = 2 if keys.dtype == jnp.uint32 else 1  # raw uint32[..., 2] keys or typed keys
  if not alphas or keys.ndim != key_axis or keys.shape[0] != len(alphas):
    raise ValueError(f"keys must hold one PRNG key per step size (a key array of shape "
                     f"({len(alphas)},), e.g. jax.random.split(key, {len(alphas)})) and alphas "
                     f"must be non-empty, got keys of shape {tuple(keys.shape)} and "
                     f"{len(alphas)} alphas")
  # The batch is validated once; every other step size against the same rule.
  images, labels, _, _ = _common.check_attack_args(
      clf, images, labels, eps=eps, alpha=alphas[0], steps=checkpoints[-1], eot=eot,
      norm=norm, loss=loss, losses=_losses.PGD_LOSSES, targeted=targeted,
      true_labels=true_labels, eot_chunk_size=eot_chunk_size, random_start=random_start)
  for alpha in alphas[1:]:
    _common.check_step_size(alpha, norm)
  alphas = [float(alpha) for alpha in alphas]
  subset, kept = _subset_for_devices(_check_subset(subset, clf, images.shape[0]))
  clean = images
  (images, labels), batch = sharding.put_batch(images, labels)  # see pgd_trajectory_results
  keys, clf, subset = sharding.put_replicated(keys, clf, subset)
  saved, objectives, first_bad = _pgd_run_batch(
      keys, images, labels, jnp.float32(eps), jnp.asarray(alphas, jnp.float32), subset, clf=clf,
      checkpoints=checkpoints, eot=int(eot), norm=norm, targeted=jnp.bool_(targeted),
      use_random_start=bool(random_start), loss=loss,
      eot_chunk_size=None if eot_chunk_size is None else int(eot_chunk_size))
  saved, objectives = sharding.unpad(saved, batch, 2), sharding.unpad(objectives, batch, 2)
  first_bad = np.asarray(sharding.unpad(first_bad, batch, 1))
  saved, objectives, first_bad = _only_kept(kept, clean, saved, objectives, first_bad)
  return [
      _trajectory_results(
          saved[a], objectives[a], first_bad[a], checkpoints, int(eot),
          {"eps": float(eps), "alpha": alpha, "norm": norm, "targeted": targeted,
           "random_start": bool(random_start), "loss": loss})
      for a, alpha in enumerate(alphas)]
