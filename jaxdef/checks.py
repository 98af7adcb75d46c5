"""Pre-attack sanity checks: is this evaluation able to mean anything?

Before spending hours of gradient computations, check the three things that
most often make a robustness number worthless (the failure modes behind
auto-attack's ``checks.py``, Carlini et al. 2019 and Tramer et al. 2020):

* the model returns probabilities, not logits: cross-entropy of a softmax
  output is nearly flat, so gradient attacks stall and the defense looks
  robust (`looks_like_probabilities`, `ProbabilitiesWarning`);
* the "stochastic" defense is not random across keys: EOT and voting then
  average copies of one value and buy nothing (`DeterministicDefenseWarning`;
  the undefended classifier, ``defense=None``, is the legitimate exception);
* the gradient of the attack objective is exactly zero at the clean images:
  a non-differentiable step (quantization, rounding) without BPDA masks the
  gradient and PGD cannot move (`GradientMaskingWarning`).

`sanity_check` runs them all in a handful of draws and one EOT gradient,
also measuring the clean accuracy of a single draw and of the vote, and
returns a `SanityReport` for the run's record. Every warning is a
`SanityWarning` (a `UserWarning`), so ``warnings.simplefilter("error",
jaxdef.checks.SanityWarning)`` turns them into errors.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import _validate
from jaxdef.attacks import _common
from jaxdef.attacks import _losses
from jaxdef.attacks._eot import eot_value_and_grad

# auto-attack flags an output as probabilities when every row sums to one
# within a tolerance; 1e-4 allows for float32 softmax rounding.
PROBABILITY_TOLERANCE = 1e-4
# A defense named so is the undefended model: determinism is expected.
UNDEFENDED_NAMES = ("identity",)


class SanityWarning(UserWarning):
  """Base class of the warnings of `jaxdef.checks`."""


class ProbabilitiesWarning(SanityWarning):
  """The classifier's outputs look like probabilities, not logits."""


class DeterministicDefenseWarning(SanityWarning):
  """A defense gave identical outputs for different keys."""


class GradientMaskingWarning(SanityWarning):
  """The attack objective's gradient is exactly zero for many images."""


class NonFiniteLogitsWarning(SanityWarning):
  """The classifier returned NaN or inf logits on clean images."""


def _row_sum_error(outputs: np.ndarray) -> float:
  return float(np.max(np.abs(outputs.sum(-1) - 1.0)))


def looks_like_probabilities(logits: Any, tolerance: float = PROBABILITY_TOLERANCE) -> bool:
  """Whether a classifier's outputs look like a probability distribution.

  Args:
    logits: float (B, K) (or (..., K)) outputs of a classifier, finite.
    tolerance: how far a row sum may be from 1, >= 0.

  Returns:
    True when every value lies in [0, 1] and every row sums to 1 within
    `tolerance`: softmax outputs, which attacks built for logits handle
    badly. Logits of a real model almost never satisfy both.
  """
  if not hasattr(logits, "shape") or not hasattr(logits, "dtype"):
    raise TypeError(f"logits must be an array of shape (batch, classes), got "
                    f"{type(logits).__name__}")
  if logits.ndim < 1 or logits.size == 0:
    raise ValueError(f"logits must be a non-empty array of shape (batch, classes), got shape "
                     f"{tuple(logits.shape)}")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
  _validate.check_number(tolerance, "tolerance", low=0)
  outputs = np.asarray(logits, np.float64)
  if not np.all(np.isfinite(outputs)):
    return False
  in_unit_interval = outputs.min() >= 0.0 and outputs.max() <= 1.0
  return bool(in_unit_interval and _row_sum_error(outputs) <= tolerance)


def warn_if_probabilities(logits: Any, where: str = "the classifier") -> bool:
  """Emits a `ProbabilitiesWarning` when `looks_like_probabilities`; returns that."""
  if not looks_like_probabilities(logits):
    return False
  warnings.warn(
      f"{where} seems to return probabilities (every output in [0, 1], every row summing to "
      "1), not logits. The attacks' losses expect logits: cross-entropy of a softmax output "
      "is nearly flat, so attacks stall and robustness is overestimated. Return the "
      "pre-softmax outputs from logits_fn.", ProbabilitiesWarning, stacklevel=3)
  return True


@dataclasses.dataclass(frozen=True)
class SanityReport:
  """What `sanity_check` found, with the numbers behind each finding.

  Attributes:
    defense: the defense's name and parameters, as the classifier shows it.
    num_images: B, the images checked.
    num_draws: independent draws compared for randomness and averaged for
      the single-draw accuracy.
    undefended: the defense is the identity (determinism is expected).
    defense_random: some draw's defended images differ from the first's.
    defense_max_difference: largest absolute pixel difference between the
      first draw's defended images and another draw's (0 when not random).
    logits_max_difference: the same for the logits (a stochastic model can
      be random behind a deterministic defense).
    looks_like_probabilities: see `looks_like_probabilities` (first draw).
    logits_min, logits_max: range of the logits over all draws.
    row_sum_max_error: largest |sum of a row - 1| over the first draw.
    nonfinite_logits: NaN or inf values among all draws' logits.
    finite_logits: nonfinite_logits == 0.
    gradient_eot: EOT draws averaged in the gradient check.
    zero_gradient_images: images whose EOT gradient of the margin objective
      (max other logit - true logit) is exactly zero everywhere.
    zero_gradient_fraction: zero_gradient_images / num_images, in [0, 1].
    nonfinite_gradient_images: images whose gradient has NaN or inf.
    mean_abs_gradient: mean |gradient| over the finite images' pixels.
    single_draw_correct: correct predictions summed over the num_draws draws.
    single_draw_accuracy: single_draw_correct / (num_draws x num_images).
    num_votes: draws of the majority vote.
    vote_correct: images the majority vote labels correctly.
    vote_accuracy: vote_correct / num_images.
    warnings: the messages of the warnings emitted.
    warning_categories: the class name of each warning (same order), e.g.
      "GradientMaskingWarning".
  """
  defense: str
  num_images: int
  num_draws: int
  undefended: bool
  defense_random: bool
  defense_max_difference: float
  logits_max_difference: float
  looks_like_probabilities: bool
  logits_min: float
  logits_max: float
  row_sum_max_error: float
  nonfinite_logits: int
  finite_logits: bool
  gradient_eot: int
  zero_gradient_images: int
  zero_gradient_fraction: float
  nonfinite_gradient_images: int
  mean_abs_gradient: float
  single_draw_correct: int
  single_draw_accuracy: float
  num_votes: int
  vote_correct: int
  vote_accuracy: float
  warnings: tuple[str, ...] = ()
  warning_categories: tuple[str, ...] = ()

  @property
  def random(self) -> bool:
    """Whether draws differ at all, in the defended images or the logits."""
    return self.defense_random or self.logits_max_difference > 0

  def as_dict(self) -> dict[str, Any]:
    """A JSON-friendly dict (plain Python numbers, lists for tuples, None for NaN/inf)."""
    record = {key: (None if isinstance(value, float) and not np.isfinite(value) else value)
              for key, value in dataclasses.asdict(self).items()}
    record["warnings"] = list(self.warnings)
    record["warning_categories"] = list(self.warning_categories)
    record["random"] = self.random
    return record


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _measure(clf, key, images, labels, num_draws: int, num_votes: int, eot: int):
  """Every number of `sanity_check` in one compiled program (one compilation per check).

  Returns:
    (spread, draws, grads, votes): max |defense(k_i) - defense(k_0)|, scalar;
    logits of num_draws draws (num_draws, B, K); the EOT-`eot` margin
    gradient (B, H, W, C); the majority vote of num_votes draws (B,).
  """
  from jaxdef import classifier

  spread_key, draws_key, gradient_key, vote_key = jax.random.split(key, 4)
  spread_keys = jax.random.split(spread_key, num_draws)
  first = clf.defense.fn(spread_keys[0], images)
  # One other draw at a time: two defended batches in memory, not num_draws.
  spread = jax.lax.map(
      lambda k: jnp.max(jnp.abs(clf.defense.fn(k, images) - first)).astype(jnp.float32),
      spread_keys[1:]).max()
  draws = classifier._draw_logits(clf, draws_key, images, num_draws)
  # The margin (max other logit - true logit) and not cross-entropy: on a
  # confident model the softmax saturates to exactly one-hot in float32 and
  # the CE gradient underflows to zero with no masking at all.
  objective = lambda logits: _losses.objective(logits, labels, "margin", False)
  _, grads = eot_value_and_grad(clf, gradient_key, images, objective, eot)
  # The vote of `predict(vote_key, images, n=num_votes)`, draw for draw.
  votes = classifier.aggregate(classifier._draw_logits(clf, vote_key, images, num_votes), "vote")
  return spread, draws, grads, votes


def sanity_check(clf, key: jax.Array, images: Any, labels: Any, *, num_votes: int = 100,
                 eot: int = 1, num_draws: int = 4, zero_gradient_threshold: float = 0.5,
                 warn: bool = True) -> SanityReport:
  """Checks a defended classifier before attacking it; warns on what is wrong.

  Cost: `num_draws` defense draws compared pairwise and their forward
  passes, one EOT-`eot` gradient, and one vote of `num_votes` draws, all on
  the B images.

  Args:
    clf: a `jaxdef.StochasticClassifier`.
    key: PRNG key (split for the draws, the gradient and the vote).
    images: float (B, H, W, C) in [0, 1], the evaluation images.
    labels: int (B,) true labels in [0, num_classes).
    num_votes: draws of the majority vote, >= 1.
    eot: defense draws averaged in the gradient check, >= 1.
    num_draws: draws compared for randomness, >= 2.
    zero_gradient_threshold: warn of gradient masking when at least this
      fraction of images has an exactly zero gradient, in (0, 1].
    warn: emit the warnings (always recorded in the report).

  Returns:
    A `SanityReport`.

  Warns:
    ProbabilitiesWarning, DeterministicDefenseWarning (not for the
    undefended model), GradientMaskingWarning, NonFiniteLogitsWarning.
  """
  from jaxdef.classifier import StochasticClassifier

  if not isinstance(clf, StochasticClassifier):
    raise TypeError(f"clf must be a jaxdef.StochasticClassifier, got {type(clf).__name__}")
  _validate.check_key(key)
  images = _validate.check_images(images)
  _validate.check_number(num_votes, "num_votes", low=1, integer=True)
  _validate.check_number(eot, "eot", low=1, integer=True)
  _validate.check_number(num_draws, "num_draws", low=2, integer=True)
  _validate.check_number(zero_gradient_threshold, "zero_gradient_threshold", low=0, high=1,
                         low_inclusive=False)
  if not isinstance(warn, bool):
    raise TypeError(f"warn must be True or False, got {warn!r}")
  num_classes = clf.num_classes(images)
  labels = _common.check_labels(labels, "labels", images.shape[0], num_classes)
  num_images = int(images.shape[0])
  spread, draws, grads, votes = _measure(clf, key, images, labels, int(num_draws),
                                         int(num_votes), int(eot))
  defense_spread = float(spread)
  draws = np.asarray(draws, np.float64)
  finite = np.isfinite(draws)
  nonfinite_logits = int((~finite).sum())
  finite_values = draws[finite] if finite.any() else np.zeros(1)
  with np.errstate(invalid="ignore"):
    logits_spread = float(np.nan_to_num(np.max(np.abs(draws - draws[:1])), nan=np.inf))
  probabilities = looks_like_probabilities(draws[0])
  single_correct = int((draws.argmax(-1) == np.asarray(labels)[None]).sum())

  flat = np.asarray(grads).reshape(num_images, -1)
  finite_rows = np.all(np.isfinite(flat), axis=1)
  zero_rows = finite_rows & np.all(flat == 0, axis=1)
  mean_abs = float(np.abs(flat[finite_rows]).mean()) if finite_rows.any() else float("nan")
  vote_correct = int((np.asarray(votes) == np.asarray(labels)).sum())

  undefended = getattr(clf.defense, "name", None) in UNDEFENDED_NAMES
  messages = []
  if probabilities:
    messages.append((ProbabilitiesWarning, (
        f"{clf!r}: the model seems to return probabilities (every output in [0, 1], rows "
        f"summing to 1 within {PROBABILITY_TOLERANCE:g}), not logits. The attacks' losses "
        "expect logits: cross-entropy of a softmax output is nearly flat, attacks stall and "
        "robustness is overestimated. Return the pre-softmax outputs from logits_fn.")))
  if defense_spread == 0 and not undefended:
    messages.append((DeterministicDefenseWarning, (
        f"{clf!r}: {num_draws} different keys gave identical defended images: the defense is "
        "not random, so EOT (averaging gradients over draws) and majority voting are "
        "pointless for it; attack it with plain PGD (eot=1) and a single prediction.")))
  if nonfinite_logits:
    messages.append((NonFiniteLogitsWarning, (
        f"{clf!r}: {nonfinite_logits} of {draws.size} logits on the clean images are NaN or "
        "inf; check the model and the defense (log of 0, division by 0, unclipped input).")))
  zero_fraction = float(zero_rows.mean())
  if zero_fraction >= zero_gradient_threshold:
    messages.append((GradientMaskingWarning, (
        f"{clf!r}: the EOT-{eot} gradient of the attack objective is exactly zero for "
        f"{int(zero_rows.sum())} of {num_images} images ({zero_fraction:.0%}) at the clean "
        "inputs: gradient masking. A non-differentiable step (quantization, rounding, "
        "argmax) without BPDA, or jax.lax.stop_gradient, leaves PGD nothing to follow and "
        "robustness is overestimated; wrap such steps with jaxdef.bpda.")))
  if warn:
    for category, message in messages:
      warnings.warn(message, category, stacklevel=2)

  return SanityReport(
      defense=repr(clf.defense), num_images=num_images, num_draws=int(num_draws),
      undefended=bool(undefended), defense_random=defense_spread > 0,
      defense_max_difference=defense_spread, logits_max_difference=logits_spread,
      looks_like_probabilities=probabilities, logits_min=float(finite_values.min()),
      logits_max=float(finite_values.max()),
      row_sum_max_error=(_row_sum_error(draws[0]) if np.all(np.isfinite(draws[0]))
                         else float("nan")),
      nonfinite_logits=nonfinite_logits, finite_logits=nonfinite_logits == 0,
      gradient_eot=int(eot), zero_gradient_images=int(zero_rows.sum()),
      zero_gradient_fraction=zero_fraction,
      nonfinite_gradient_images=int((~finite_rows).sum()), mean_abs_gradient=mean_abs,
      single_draw_correct=single_correct,
      single_draw_accuracy=single_correct / (int(num_draws) * num_images),
      num_votes=int(num_votes), vote_correct=vote_correct,
      vote_accuracy=vote_correct / num_images,
      warnings=tuple(message for _, message in messages),
      warning_categories=tuple(category.__name__ for category, _ in messages))


__all__ = (
    "DeterministicDefenseWarning",
    "GradientMaskingWarning",
    "NonFiniteLogitsWarning",
    "ProbabilitiesWarning",
    "SanityReport",
    "SanityWarning",
    "looks_like_probabilities",
    "sanity_check",
    "warn_if_probabilities",
)
