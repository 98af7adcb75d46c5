"""AutoPGD (Croce & Hein, ICML 2020) with EOT, compiled end to end.

APGD is PGD with momentum and a step size that adapts per image: it starts
at 2 eps and is halved at checkpoints when the objective stopped rising,
each halving restarting from the best point found so far. As in AutoAttack's
apgd-ce, apgd-dlr and apgd-t, one run of N steps evaluates N gradients.

Against a stochastic defense every objective value and gradient is the
EOT-m mean over `eot` defense draws, and the step-size checks and the best
point use that mean, not the loss of the last single draw (AutoAttack's
randomized mode judges progress by one draw, which is mostly noise).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import _validate
from jaxdef import sharding
from jaxdef.attacks import _common
from jaxdef.attacks import _losses
from jaxdef.attacks._eot import eot_value_and_grad


@functools.cache
def checkpoint_schedule(steps: int) -> tuple[int, ...]:
  """The step-size checkpoints w_j = ceil(p_j N) of an N-step run.

  p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): the
  intervals shrink by 3% of N down to 6% of N. Computed in exact hundredths
  (0.41 * 100 in floats would round up to 42). Values that coincide for
  small N are merged, so consecutive checkpoints are strictly increasing.

  Returns:
    (0, w_1, w_2, ...), every w_j <= steps; (0, 22, 41, 57, 70, 80, 87, 93,
    99) for steps = 100.
  """
  previous, current = 0, 22  # p_j in hundredths
  marks = [0]
  while -(-current * steps // 100) <= steps:
    mark = -(-current * steps // 100)  # ceil of an exact fraction
    if mark > marks[-1]:
      marks.append(mark)
    previous, current = current, current + max(current - previous - 3, 6)
  return tuple(marks)


def _objective_fn(labels, true_labels, loss, targeted):
  if loss == "dlr" and targeted:
    return lambda logits: _losses.targeted_dlr(logits, true_labels, labels)
  return lambda logits: _losses.objective(logits, labels, loss, targeted)


@functools.partial(jax.jit, static_argnames=(
    "steps", "eot", "norm", "targeted", "use_random_start", "loss", "eot_chunk_size"))
def _apgd_run(key, images, labels, true_labels, eps, rho, momentum, *, clf, steps, eot, norm,
              targeted, use_random_start, loss, eot_chunk_size):
  """Runs `steps` gradient evaluations; returns (x_max, f_max, first_bad)."""
  start_key, steps_key = jax.random.split(key)
  objective_fn = _objective_fn(labels, true_labels, loss, targeted)
  x0 = _common.random_start(start_key, images, eps, norm) if use_random_start else images
  x0 = x0.astype(images.dtype)

  # Per step: is it a checkpoint, and how many steps since the previous one.
  marks = checkpoint_schedule(steps)
  is_check, interval = np.zeros(steps, bool), np.zeros(steps, np.float32)
  for previous, mark in zip(marks[:-1], marks[1:]):
    if mark < steps:  # a checkpoint at the last evaluation could change nothing
      is_check[mark], interval[mark] = True, mark - previous
  is_check, interval = jnp.asarray(is_check), jnp.asarray(interval)

  batch = images.shape[0]
  per_image = lambda v: v.reshape((batch,) + (1,) * (images.ndim - 1))
  zeros_b = jnp.zeros(batch, jnp.float32)
  state = dict(
      x=x0, x_prev=x0, f_from=jnp.full(batch, -jnp.inf), eta=per_image(2.0 * eps * (zeros_b + 1)),
      ups=zeros_b, x_max=x0, g_max=jnp.zeros_like(x0), f_max=jnp.full(batch, -jnp.inf),
      f_max_at_check=jnp.full(batch, -jnp.inf), reduced_at_check=jnp.ones(batch, bool),
      first_bad=jnp.full(batch, -1, jnp.int32))

  def step(i, s):
    # Evaluation i is at x_i: it scores the move that produced x_i and
    # supplies the gradient of the next move, so a step costs one EOT call.
    f, g = eot_value_and_grad(clf, jax.random.fold_in(steps_key, i), s["x"], objective_fn, eot,
                              eot_chunk_size)
    g, first_bad = _common.finite_or_zero(g, i, s["first_bad"])
    f = jnp.where(jnp.isnan(f), -jnp.inf, f)  # a NaN objective is never progress
    # Condition 1 counts moves that raised f; f_from is -inf at i = 0.
    ups = s["ups"] + ((f > s["f_from"]) & (i > 0))
    better = f > s["f_max"]
    x_max = jnp.where(per_image(better), s["x"], s["x_max"])
    g_max = jnp.where(per_image(better), g, s["g_max"])
    f_max = jnp.where(better, f, s["f_max"])

    # Checkpoint (AutoAttack's semantics): halve where f rose in at most a
    # fraction rho of the interval's moves, or where the step was not just
    # halved and f_max has not improved since the previous checkpoint.
    check = is_check[i]
    oscillating = ups <= rho * interval[i]
    stalled = (~s["reduced_at_check"]) & (s["f_max_at_check"] >= f_max)
    reduce = check & (oscillating | stalled)
    eta = jnp.where(per_image(reduce), s["eta"] / 2, s["eta"])
    # A halved image restarts from its best point (with that point's
    # gradient), and its momentum restarts there as well.
    x = jnp.where(per_image(reduce), x_max, s["x"])
    x_prev = jnp.where(per_image(reduce), x_max, s["x_prev"])
    g = jnp.where(per_image(reduce), g_max, g)
    f_from = jnp.where(reduce, f_max, f)

    # The move: a projected gradient step z, then momentum on x_k - x_{k-1}.
    z = _common.project(x + eta * _common.ascent_direction(g, norm), images, eps, norm)
    a = jnp.where(i == 0, 1.0, momentum)
    x_next = _common.project(x + a * (z - x) + (1 - a) * (x - x_prev), images, eps, norm)
    x_next = x_next.astype(images.dtype)  # eta is float32; keep the loop carry's dtype
    return dict(
        x=x_next, x_prev=x, f_from=f_from, eta=eta, ups=jnp.where(check, 0.0, ups),
        x_max=x_max, g_max=g_max, f_max=f_max,
        f_max_at_check=jnp.where(check, f_max, s["f_max_at_check"]),
        reduced_at_check=jnp.where(check, reduce, s["reduced_at_check"]), first_bad=first_bad)

  # The last move's point is never evaluated: steps evaluations in all.
  state = jax.lax.fori_loop(0, steps, step, state)
  return state["x_max"], state["f_max"], state["first_bad"]


def apgd_result(key, clf, images, labels, eps=8 / 255, steps=200, eot=1, norm="inf",
                targeted=False, loss="ce", *, true_labels=None, eot_chunk_size: int | None = None,
                rho: float = 0.75, momentum: float = 0.75, random_start: bool = True
                ) -> _common.AttackResult:
  """Like `apgd`, returning an `AttackResult` (gradient accounting included).

  `objective` is the EOT-averaged objective f_max of the returned point, as
  measured during the run (with EOT, the maximum of noisy means: re-evaluate
  with fresh draws for an unbiased value); -inf for an image whose objective
  was NaN at every step (its returned point is then the start).
  """
  _validate.check_key(key)
  images, labels, true_labels, num_classes = _common.check_attack_args(
      clf, images, labels, eps=eps, steps=steps, eot=eot, norm=norm, loss=loss,
      losses=_losses.APGD_LOSSES, targeted=targeted, true_labels=true_labels,
      eot_chunk_size=eot_chunk_size, random_start=random_start)
  _validate.check_number(rho, "rho", low=0, high=1)
  _validate.check_number(momentum, "momentum", low=0, high=1)
  if loss == "dlr":
    needed = 4 if targeted else 3
    if num_classes < needed:
      raise ValueError(f"{'targeted ' if targeted else ''}DLR loss needs at least {needed} "
                       f"classes (it divides by a gap between sorted logits), the model has "
                       f"{num_classes}; use loss='ce'")
    if targeted and true_labels is None:
      raise ValueError("targeted DLR loss needs true_labels (the true classes, whose logit it "
                       "pushes below the target's); pass true_labels=... or use loss='ce'")
  # Data-parallel over the local devices when there are several (see
  # jaxdef.sharding); padding rows are dropped from the outputs.
  (images, labels, true_labels), batch = sharding.put_batch(
      images, labels, labels if true_labels is None else true_labels)
  key, clf = sharding.put_replicated(key, clf)
  x_max, f_max, first_bad = _apgd_run(
      key, images, labels, true_labels, jnp.float32(eps),
      jnp.float32(rho), jnp.float32(momentum), clf=clf, steps=int(steps), eot=int(eot),
      norm=norm, targeted=targeted, use_random_start=bool(random_start), loss=loss,
      eot_chunk_size=None if eot_chunk_size is None else int(eot_chunk_size))
  x_max, f_max = sharding.unpad(x_max, batch), sharding.unpad(f_max, batch)
  first_bad = np.asarray(sharding.unpad(first_bad, batch))
  _common.report_nonfinite("apgd", first_bad)
  params = {"eps": float(eps), "norm": norm, "targeted": targeted, "loss": loss,
            "rho": float(rho), "momentum": float(momentum), "random_start": bool(random_start)}
  return _common.AttackResult(
      adversarial=x_max, attack="apgd", steps=int(steps), eot=int(eot),
      strength=int(steps) * int(eot), objective=f_max, nonfinite_step=first_bad, params=params)


def apgd(key, clf, images, labels, eps=8 / 255, steps=200, eot=1, norm="inf", targeted=False,
         loss="ce", **kwargs) -> jax.Array:
  """AutoPGD with EOT-m against a stochastic classifier (white-box, adaptive).

  Per image: start at a random point of the eps-ball (or the clean image)
  with step size eta = 2 eps; the first move is a projected step along the
  sign (L-inf) or L2-normalised gradient, later ones mix that step with the
  previous move (momentum 0.75). At checkpoints ceil(p_j N) (see
  `checkpoint_schedule`) eta is halved and the image restarts from its best
  point if the objective rose in at most a fraction rho of the moves since
  the last checkpoint, or if eta was not halved there and the best value has
  not improved since. Every gradient and value is the mean over `eot`
  defense draws (step i uses ``fold_in(steps key, i)``).

  Args:
    key: PRNG key (random start, and every step's defense draws).
    clf: the `StochasticClassifier`.
    images: float (B, H, W, C) in [0, 1], clean inputs.
    labels: int (B,): true labels (untargeted) or target labels (targeted).
    eps: radius of the perturbation ball (> 0).
    steps: N >= 1 gradient evaluations (AutoAttack's default: 100).
    eot: m >= 1 defense draws per gradient.
    norm: "inf" or "2".
    targeted: ascend the objective towards `labels` (the targets).
    loss: "ce" (cross-entropy; targeted: -CE of the target) or "dlr"
      (Difference of Logits Ratio; >= 3 classes, targeted >= 4 and
      `true_labels`).
    **kwargs: true_labels (required by targeted DLR; refuses targets equal
      to them), eot_chunk_size (draws evaluated at once, for memory), rho
      (0.75), momentum (0.75), random_start (True).

  Returns:
    The best point found (highest EOT-averaged objective), float
    (B, H, W, C) in [0, 1] inside the eps-ball; never scored below the start.
  """
  return apgd_result(key, clf, images, labels, eps, steps, eot, norm, targeted, loss,
                     **kwargs).adversarial
