"""Verdicts on the paper's findings, computed from two measured rates and their intervals.

A rate is a record with "rate", "ci_low", "ci_high" (95% Clopper-Pearson,
fractions in [0, 1]) and "denominator". Two intervals *separate* when one's
lower end lies above the other's upper end; that is the report's test of
significance (conservative: separated 95% intervals imply a two-sided
difference at well below 5%).
"""

from __future__ import annotations

from typing import Any

from jaxdef.attacks import clopper_pearson

REPRODUCED = "reproduced"
SAME_NOT_SIGNIFICANT = "same direction, not significant"
OPPOSITE_SIGNIFICANT = "not reproduced (opposite, significant)"
OPPOSITE_NOT_SIGNIFICANT = "opposite direction, not significant"
NO_DIFFERENCE = "no difference"
NO_DATA = "no data (an empty denominator)"


def separate(a: dict[str, Any], b: dict[str, Any]) -> bool:
  """True when the two 95% intervals do not overlap."""
  return a["ci_low"] > b["ci_high"] or b["ci_low"] > a["ci_high"]


def _empty(*records) -> bool:
  return any(not r.get("denominator") for r in records)


def direction(expected_higher: dict[str, Any], expected_lower: dict[str, Any]) -> str:
  """The verdict on a finding "the first rate is higher than the second".

  Returns one of REPRODUCED (higher, intervals separate),
  SAME_NOT_SIGNIFICANT, OPPOSITE_SIGNIFICANT, OPPOSITE_NOT_SIGNIFICANT,
  NO_DIFFERENCE (equal rates) or NO_DATA.
  """
  if _empty(expected_higher, expected_lower):
    return NO_DATA
  difference = expected_higher["rate"] - expected_lower["rate"]
  if difference == 0:
    return NO_DIFFERENCE
  significant = separate(expected_higher, expected_lower)
  if difference > 0:
    return REPRODUCED if significant else SAME_NOT_SIGNIFICANT
  return OPPOSITE_SIGNIFICANT if significant else OPPOSITE_NOT_SIGNIFICANT


def no_gap(reference: dict[str, Any], challenger: dict[str, Any], what: str) -> str:
  """The verdict on a finding "the challenger does about as well as the reference".

  Reproduced unless the reference is significantly higher (then the
  challenger fell short). `what` names the reference in the verdict, e.g.
  "EOT".
  """
  if _empty(reference, challenger):
    return NO_DATA
  if reference["rate"] > challenger["rate"] and separate(reference, challenger):
    return f"not reproduced ({what} significantly higher)"
  if challenger["rate"] > reference["rate"] and separate(reference, challenger):
    return f"reproduced (significantly higher than {what})"
  return "reproduced (no significant gap)"


def proportion(count: int, total: int) -> dict[str, Any]:
  """A rate record for count / total with its 95% Clopper-Pearson interval."""
  low, high = clopper_pearson(int(count), int(total))
  return {"successes": int(count), "denominator": int(total),
          "rate": count / total if total else float("nan"), "ci_low": low, "ci_high": high}


def percent(record: dict[str, Any]) -> str:
  """'62% (5/8, 95% CI 24-91%)', or 'n/a (0/0)'."""
  if not record.get("denominator"):
    return "n/a (0/0)"
  return (f"{100 * record['rate']:.0f}% ({record['successes']}/{record['denominator']}, "
          f"95% CI {100 * record['ci_low']:.0f}-{100 * record['ci_high']:.0f}%)")
