"""Plain-text tables of records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cell(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def markdown(records: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
  """A markdown table: one row per record, `columns` as (key, header) pairs."""
  header = "| " + " | ".join(title for _, title in columns) + " |"
  rule = "|" + "|".join("---" for _ in columns) + "|"
  rows = ["| " + " | ".join(_cell(r.get(key)) for key, _ in columns) + " |" for r in records]
  return "\n".join([header, rule, *rows])


def csv(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  """CSV text of `records` with the given columns (RFC 4180 quoting)."""
  import csv as csv_lib
  import io

  buffer = io.StringIO()
  writer = csv_lib.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore",
                              lineterminator="\n")
  writer.writeheader()
  writer.writerows(records)
  return buffer.getvalue()


def rate_with_interval(record: dict[str, Any]) -> str:
  """'62% (5/8, 95% CI 24-91%; 50 votes, 50 gradients)': a rate never printed alone.

  The denominator (initially correct images), the exact Clopper-Pearson
  interval, the votes behind each prediction ("<= n" for a sequential vote,
  which stops early per image; "n draws" for a rate over single draws) and
  the gradient computations per image of the attack; the last two when the
  record holds them.
  """
  if not record["denominator"]:
    text = "n/a (0/0 initially correct"
  else:
    text = (f"{100 * record['rate']:.0f}% ({record['successes']}/{record['denominator']}, "
            f"95% CI {100 * record['ci_low']:.0f}-{100 * record['ci_high']:.0f}%")
  cost = []
  if record.get("num_votes") is not None:
    sequential = record.get("vote_rule") == "sequential"
    unit = "draws" if record.get("vote_rule") == "draws" else "votes"
    cost.append(f"{'<=' if sequential else ''}{record['num_votes']} {unit}")
  if record.get("gradient_computations") is not None:
    cost.append(f"{record['gradient_computations']} gradients")
  return text + ("; " + ", ".join(cost) if cost else "") + ")"


# A success rate as `rate_with_interval` writes it, and anything that looks like
# the start of one ("62% (5/8"), to find rates printed without their context.
RATE_PATTERN = (r"(?:\d+% \(\d+/\d+, 95% CI \d+-\d+%|n/a \(0/0 initially correct)"
                r"; (?:<=)?\d+ (?:votes|draws), \d+ gradients\)")
RATE_START_PATTERN = r"\d+% \(\d+/\d+|n/a \(0/0"


def unqualified_rates(text: str) -> list[str]:
  """The rates in `text` printed without denominator, CI, votes and gradients.

  Returns:
    Each offending snippet (empty when every rate is fully qualified).
  """
  import re

  qualified = {m.start() for m in re.finditer(RATE_PATTERN, text)}
  return [text[m.start():m.start() + 40] for m in re.finditer(RATE_START_PATTERN, text)
          if m.start() not in qualified]


def grid(records: Sequence[dict[str, Any]], rows_key: str, columns_key: str,
         cell=rate_with_interval, row_title: str | None = None,
         column_title: str | None = None) -> str:
  """A markdown grid: one row per value of `rows_key`, one column per `columns_key`."""
  rows = sorted({r[rows_key] for r in records})
  columns = sorted({r[columns_key] for r in records})
  lookup = {(r[rows_key], r[columns_key]): r for r in records}
  head = f"{row_title or rows_key} \\ {column_title or columns_key}"
  lines = ["| " + " | ".join([head] + [str(c) for c in columns]) + " |",
           "|" + "|".join("---" for _ in range(len(columns) + 1)) + "|"]
  for row in rows:
    cells = [cell(lookup[(row, c)]) if (row, c) in lookup else "-" for c in columns]
    lines.append("| " + " | ".join([str(row)] + cells) + " |")
  return "\n".join(lines)
