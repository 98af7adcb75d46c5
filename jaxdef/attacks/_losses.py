"""Attack objectives, written as values the attack *maximises*.

Untargeted attacks ascend the loss of the true label; targeted attacks
descend the loss of the target label, i.e. ascend its negation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PGD_LOSSES = ("ce", "margin")
APGD_LOSSES = ("ce", "dlr")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy, (B, K), (B,) -> (B,)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def _best_other(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The largest logit of a class other than `labels`, (B,)."""
  mask = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  return jnp.max(jnp.where(mask, -jnp.inf, logits), axis=-1)


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """C&W-style margin ``max_{j != y} z_j - z_y``, (B,); > 0 means misclassified."""
  logits = logits.astype(jnp.float32)
  own = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  return _best_other(logits, labels) - own


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Difference of Logits Ratio (Croce & Hein 2020), untargeted, (B,).

  ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)``, pi sorting the
  logits in decreasing order. Needs at least 3 classes.
  """
  logits = logits.astype(jnp.float32)
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]
  own = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  return -(own - _best_other(logits, labels)) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr(logits: jax.Array, true_labels: jax.Array, targets: jax.Array) -> jax.Array:
  """Targeted DLR (Croce & Hein 2020), (B,), to be *maximised* towards the target.

  ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``. Needs at least 4
  classes.
  """
  logits = logits.astype(jnp.float32)
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]
  own = jnp.take_along_axis(logits, true_labels[:, None], axis=-1)[:, 0]
  target = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  return -(own - target) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


def _descend_if(targeted, value: jax.Array) -> jax.Array:
  """-value where targeted, else value; `targeted` a bool or a traced bool scalar."""
  if isinstance(targeted, jax.Array):
    return jnp.where(targeted, -value, value)
  return -value if targeted else value


def objective(logits: jax.Array, labels: jax.Array, loss: str, targeted: bool) -> jax.Array:
  """The per-example value an attack maximises.

  Args:
    logits: (B, K).
    labels: (B,) true labels (untargeted) or target labels (targeted).
    loss: "ce", "margin" or "dlr" (untargeted only; targeted DLR needs the
      true labels as well, see `targeted_dlr`).
    targeted: descend the loss on `labels` instead of ascending it; a bool,
      or a traced bool scalar (one compiled attack serves both modes).

  Returns:
    (B,) float32.
  """
  if loss == "ce":
    return _descend_if(targeted, cross_entropy(logits, labels))
  if loss == "margin":
    # Untargeted: push another class above y. Targeted: push t above all others.
    return _descend_if(targeted, margin(logits, labels))
  if loss == "dlr":
    if isinstance(targeted, jax.Array) or targeted:
      raise ValueError("targeted DLR needs the true labels: use targeted_dlr")
    return dlr(logits, labels)
  raise ValueError(f"loss must be one of ce, margin, dlr; got {loss!r}")
