"""Rates with their uncertainty, as the audit reports them."""

from __future__ import annotations

import numpy as np

from jaxdef.attacks import clopper_pearson

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def rate(count: int, total: int, *, votes: int, gradients: int, **extra) -> dict:
  """count / total with its exact 95% Clopper-Pearson interval (independent images).

  Returns:
    A record in the shape `jaxdef.reports.tables.rate_with_interval` prints:
    successes, denominator, rate (NaN for 0/0), ci_low, ci_high, num_votes,
    gradient_computations, and `extra`.
  """
  low, high = clopper_pearson(int(count), int(total))
  return {"successes": int(count), "denominator": int(total),
          "rate": count / total if total else float("nan"), "ci_low": low, "ci_high": high,
          "num_votes": int(votes), "gradient_computations": int(gradients), **extra}


def clustered_rate(per_image: np.ndarray, *, draws: int) -> dict:
  """The rate of (image, draw) pairs that hold, with a 95% interval over images.

  The draws of one image are not independent trials (they share the image),
  so the interval is the normal one for the mean of the per-image rates,
  mean +- 1.96 sd / sqrt(B), clipped to [0, 1]: an approximation, fair for
  tens of images or more.

  Args:
    per_image: int (B,): pairs that hold per image, each in [0, draws].
    draws: draws per image, >= 1.
  """
  per_image = np.asarray(per_image, np.float64)
  fractions = per_image / draws
  mean = float(fractions.mean())
  spread = float(fractions.std(ddof=1)) if fractions.size > 1 else 0.0
  half = Z_95 * spread / np.sqrt(fractions.size)
  return {"successes": int(per_image.sum()), "denominator": int(draws * per_image.size),
          "rate": mean, "ci_low": max(0.0, mean - half), "ci_high": min(1.0, mean + half),
          "num_votes": int(draws), "gradient_computations": 0, "vote_rule": "draws",
          "interval": "normal, over images"}


def paired_test(first: np.ndarray, second: np.ndarray) -> dict:
  """Exact McNemar test of two paired per-image outcomes (bool arrays of one length).

  Returns:
    {"only_first", "only_second", "p_value"}: the discordant counts and the
    two-sided exact binomial p-value of "each discordant image is equally
    likely to go either way" (1.0 with no discordant images).
  """
  from scipy import stats  # here, not at the top: 0.5 s of every command's start

  first, second = np.asarray(first, bool), np.asarray(second, bool)
  only_first, only_second = int((first & ~second).sum()), int((second & ~first).sum())
  discordant = only_first + only_second
  p_value = (1.0 if discordant == 0
             else float(stats.binomtest(only_first, discordant, 0.5).pvalue))
  return {"only_first": only_first, "only_second": only_second, "p_value": p_value}
