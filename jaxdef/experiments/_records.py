"""The run directory: resolved config, environment and atomically written files."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import tempfile
from typing import Any

import jax


def write_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` through a temp file and a rename.

  A reader (or a resumed run) sees the old file or the new one, never half.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path: str | os.PathLike, value: Any) -> None:
  write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def environment() -> dict[str, Any]:
  """What the numbers were measured on."""
  import flax
  import numpy

  return {
      "jax": jax.__version__,
      "flax": flax.__version__,
      "numpy": numpy.__version__,
      "python": platform.python_version(),
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "machine": platform.machine(),
  }


def start_run(config, workdir: str | os.PathLike) -> pathlib.Path:
  """Creates the run directory and records the resolved config and environment."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  write_atomic(workdir / "config.json", config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  write_json(workdir / "environment.json", environment())
  return workdir
