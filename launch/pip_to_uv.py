"""The package sources pip is configured with, as uv arguments (used by launch/setup.sh).

`launch/setup.sh` installs the requirements with uv when it can: on a fresh
2-core machine 41-65 s against pip's 96 s (BENCHMARKS.md, 2026-12-06). uv must
look where pip looks, so this reads pip's own settings (`pip config list`:
pip.conf files and PIP_* environment variables, in pip's precedence) and
prints the matching uv arguments, one per line. uv also takes the best
version over all indexes, as pip does, rather than the first index's.

  .venv/bin/python launch/pip_to_uv.py
"""

from __future__ import annotations

import ast
import subprocess
import sys

# pip setting -> uv option; settings that hold several values separate them by spaces.
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "find-links": "--find-links", "constraint": "--constraint", "no-index": "--no-index"}
# pip's precedence, highest first: environment variables, the install command's section, global.
SCOPES = (":env:", "install", "global")
_TRUE = ("1", "true", "yes", "on")


def uv_arguments(config_lines: list[str]) -> list[str]:
  """uv arguments for the lines of `pip config list` (``scope.key='value'`` each)."""
  chosen: dict[str, tuple[int, str]] = {}  # key -> (precedence, value)
  for line in config_lines:
    name, equals, value = line.strip().partition("=")
    scope, _, key = name.rpartition(".")
    if not equals or scope not in SCOPES or key not in OPTIONS:
      continue
    if value[:1] in ("'", '"'):
      value = ast.literal_eval(value)
    rank = SCOPES.index(scope)
    if key not in chosen or rank < chosen[key][0]:
      chosen[key] = (rank, value)
  arguments = ["--index-strategy", "unsafe-best-match"]
  for key, (_, value) in chosen.items():
    if key == "no-index":
      arguments += [OPTIONS[key]] if value.strip().lower() in _TRUE else []
    else:
      for item in value.split():
        arguments += [OPTIONS[key], item]
  return arguments


def main() -> None:
  listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], check=True,
                          capture_output=True, text=True).stdout
  print("\n".join(uv_arguments(listed.splitlines())))


if __name__ == "__main__":
  main()
