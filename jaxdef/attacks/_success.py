"""Attack success rates, judged by the defended (voting) classifier."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxdef import _validate


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95
                    ) -> tuple[float, float]:
  """Exact (Clopper-Pearson) two-sided binomial confidence interval.

  Returns:
    (low, high) in [0, 1]; (0, 1) when there are no trials.
  """
  if trials < 0 or not 0 <= successes <= trials:
    raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  if trials == 0:
    return 0.0, 1.0
  from scipy import stats  # here, not at the top: 0.5 s of every command's start

  tail = (1 - confidence) / 2
  low = 0.0 if successes == 0 else stats.beta.ppf(tail, successes, trials - successes + 1)
  high = 1.0 if successes == trials else stats.beta.ppf(1 - tail, successes + 1,
                                                        trials - successes)
  return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class SuccessRate:
  """Attack success over the initially correct images, with its uncertainty.

  Attributes:
    successes: initially correct images the attack broke.
    denominator: images the defended classifier got right before the attack.
    num_images: all evaluated images.
    num_votes: draws per aggregated prediction.
    rate: successes / denominator (NaN when the denominator is 0).
    ci_low, ci_high: 95% Clopper-Pearson interval of the rate.
    targeted: whether success means "labelled as the target".
    gradient_computations: the attack's gradient computations per image
      (k x m for PGD), when the caller gave them.
  """
  successes: int
  denominator: int
  num_images: int
  num_votes: int
  rate: float
  ci_low: float
  ci_high: float
  targeted: bool
  gradient_computations: int | None = None

  def __str__(self) -> str:
    gradients = ("" if self.gradient_computations is None
                 else f", {self.gradient_computations} gradients per image")
    return (f"{self.rate:.1%} ({self.successes}/{self.denominator} initially correct, "
            f"95% CI [{self.ci_low:.1%}, {self.ci_high:.1%}], {self.num_votes} votes"
            f"{gradients})")

  def as_dict(self) -> dict:
    """The fields as a dict; gradient_computations only when known (records hold their own)."""
    record = dataclasses.asdict(self)
    if record["gradient_computations"] is None:
      del record["gradient_computations"]
    return record


def success_rate(clean_predictions, adversarial_predictions, labels, targets=None, *,
                 num_votes: int, confidence: float = 0.95,
                 gradient_computations: int | None = None) -> SuccessRate:
  """Success over the initially correct subset from aggregated predictions.

  Args:
    clean_predictions: int (B,) defended predictions on clean images.
    adversarial_predictions: int (B,) defended predictions on adversarial ones.
    labels: int (B,) true labels.
    targets: int (B,) target labels of a targeted attack, else None.
    num_votes: draws behind each prediction (recorded with the rate).
    confidence: of the Clopper-Pearson interval.
    gradient_computations: the attack's gradient computations per image,
      reported with the rate (optional).
  """
  _validate.check_number(num_votes, "num_votes", low=1, integer=True)
  named = {"clean_predictions": clean_predictions,
           "adversarial_predictions": adversarial_predictions, "labels": labels}
  if targets is not None:
    named["targets"] = targets
  for name, value in named.items():
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer):
      raise TypeError(f"{name} must be integer class labels, got dtype {array.dtype}")
    if array.size == 0:
      raise ValueError(f"{name} must not be empty: a success rate needs at least one image")
  clean, adversarial, labels = (np.asarray(a) for a in
                                (clean_predictions, adversarial_predictions, labels))
  if not clean.shape == adversarial.shape == labels.shape or clean.ndim != 1:
    raise ValueError(f"predictions and labels must be 1-D of one length, got {clean.shape}, "
                     f"{adversarial.shape}, {labels.shape}")
  correct = clean == labels
  if targets is None:
    broken = correct & (adversarial != labels)
  else:
    targets = np.asarray(targets)
    if targets.shape != labels.shape:
      raise ValueError(f"targets must have shape {labels.shape}, got {targets.shape}")
    broken = correct & (adversarial == targets)
  successes, denominator = int(broken.sum()), int(correct.sum())
  low, high = clopper_pearson(successes, denominator, confidence)
  return SuccessRate(successes=successes, denominator=denominator, num_images=int(labels.size),
                     num_votes=int(num_votes),
                     rate=successes / denominator if denominator else float("nan"),
                     ci_low=low, ci_high=high, targeted=targets is not None,
                     gradient_computations=(None if gradient_computations is None
                                            else int(gradient_computations)))


def evaluate(clf, key: jax.Array, clean_images, adversarial_images, labels, targets=None, *,
             num_votes: int = 500, mode: str = "vote",
             gradient_computations: int | None = None) -> SuccessRate:
  """Votes on clean and adversarial images and returns the success rate.

  Both predictions use `num_votes` draws with independent keys. Pass the
  attack's `gradient_computations` per image (``result.strength``) to have
  them reported with the rate.
  """
  _validate.check_number(num_votes, "num_votes", low=1, integer=True)
  _validate.check_key(key)
  _validate.check_images(clean_images, "clean_images")
  _validate.check_images(adversarial_images, "adversarial_images")
  clean_key, adversarial_key = jax.random.split(key)
  clean = clf.predict(clean_key, clean_images, n=num_votes, mode=mode)
  adversarial = clf.predict(adversarial_key, adversarial_images, n=num_votes, mode=mode)
  return success_rate(clean, adversarial, labels, targets, num_votes=num_votes,
                      gradient_computations=gradient_computations)
