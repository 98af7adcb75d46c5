"""Rates in reports always carry their denominator, interval, votes and gradients."""

from jaxdef import attacks
from jaxdef.reports import tables


def _record(successes, denominator, **extra):
  rate = attacks.success_rate([1] * denominator + [0] * 2, [0] * successes + [1] * (
      denominator - successes) + [0] * 2, [1] * denominator + [2] * 2, num_votes=50)
  return dict(rate.as_dict(), **extra)


def test_rate_text_has_count_interval_votes_and_gradients():
  record = _record(5, 8, gradient_computations=20)
  low, high = attacks.clopper_pearson(5, 8)
  assert tables.rate_with_interval(record) == (
      f"62% (5/8, 95% CI {100 * low:.0f}-{100 * high:.0f}%; 50 votes, 20 gradients)")
  sequential = tables.rate_with_interval(dict(record, vote_rule="sequential"))
  assert sequential.endswith("; <=50 votes, 20 gradients)")
  empty = tables.rate_with_interval(_record(0, 0, gradient_computations=3))
  assert empty == "n/a (0/0 initially correct; 50 votes, 3 gradients)"
  for text in (tables.rate_with_interval(record), sequential, empty):
    assert not tables.unqualified_rates(f"before {text} after")


def test_unqualified_rates_are_found():
  bare = "success 62% (5/8) and 62% (5/8, 95% CI 24-91%) and n/a (0/0)"
  assert len(tables.unqualified_rates(bare)) == 3
  full = tables.rate_with_interval(_record(5, 8, gradient_computations=20))
  assert tables.unqualified_rates(f"{full}; but 10% (1/10, CI 0-45%)") == [
      "10% (1/10, CI 0-45%)"]
