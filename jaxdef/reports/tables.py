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
