"""The optimiser of the study: AdamW with a cosine-annealed learning rate."""

from __future__ import annotations

import optax

from jaxdef import _validate


def learning_rate_schedule(learning_rate: float, total_steps: int, *,
                           warmup_steps: int = 0) -> optax.Schedule:
  """Cosine annealing from `learning_rate` to 0 over `total_steps`, after an optional warm-up.

  Step t (0-based, counted in optimiser updates) gets
  ``learning_rate * 0.5 * (1 + cos(pi * t / total_steps))`` without warm-up
  (PyTorch's ``CosineAnnealingLR`` stepped once per batch, ``eta_min=0``);
  with warm-up the rate rises linearly from 0 to `learning_rate` over
  `warmup_steps` and then follows the cosine over the remaining steps.

  Args:
    learning_rate: peak learning rate, > 0.
    total_steps: length of the schedule in updates, >= 1 (epochs x batches per epoch).
    warmup_steps: linear warm-up updates, 0 <= warmup_steps < total_steps.

  Returns:
    An optax schedule ``step -> learning rate`` (float32 scalar).
  """
  _validate.check_number(learning_rate, "learning_rate", low=0, low_inclusive=False)
  _validate.check_number(total_steps, "total_steps", low=1, integer=True)
  _validate.check_number(warmup_steps, "warmup_steps", low=0, integer=True)
  if int(warmup_steps) >= int(total_steps):
    raise ValueError(f"warmup_steps must be smaller than total_steps ({total_steps}), "
                     f"got {warmup_steps}")
  if int(warmup_steps) == 0:
    return optax.cosine_decay_schedule(float(learning_rate), int(total_steps))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(learning_rate), warmup_steps=int(warmup_steps),
      decay_steps=int(total_steps), end_value=0.0)


def optimizer(learning_rate: float, total_steps: int, *, weight_decay: float = 0.01,
              warmup_steps: int = 0) -> optax.GradientTransformation:
  """AdamW (beta 0.9, 0.999, eps 1e-8) on the `learning_rate_schedule`.

  Decoupled weight decay applies to every parameter, BatchNorm scales and
  biases included, as ``torch.optim.AdamW`` does by default: the update is
  ``-lr_t * (adam_direction + weight_decay * param)``.

  Args:
    learning_rate: peak learning rate, > 0 (the study: 1e-3).
    total_steps: updates over the whole run, >= 1.
    weight_decay: decoupled weight decay, >= 0 (the study: 0.01).
    warmup_steps: linear warm-up updates, 0 <= warmup_steps < total_steps.

  Returns:
    The optax gradient transformation.
  """
  _validate.check_number(weight_decay, "weight_decay", low=0)
  schedule = learning_rate_schedule(learning_rate, total_steps, warmup_steps=warmup_steps)
  return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=float(weight_decay))
