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
  """'62% (5/8, CI 24-91%)': a rate never printed without its denominator and CI."""
  if not record["denominator"]:
    return "n/a (0/0 initially correct)"
  return (f"{100 * record['rate']:.0f}% ({record['successes']}/{record['denominator']}, "
          f"CI {100 * record['ci_low']:.0f}-{100 * record['ci_high']:.0f}%)")


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
