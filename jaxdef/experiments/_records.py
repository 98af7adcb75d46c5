"""The run directory: resolved config, environment and atomically written files."""

from __future__ import annotations

import json
import os
import pathlib
import platform
from typing import Any

import jax

from jaxdef import _files

write_atomic = _files.write_atomic
write_json = _files.write_json


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


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flat(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def config_differences(old: dict, new: dict) -> list[str]:
  """Dotted names of the fields that differ between two config dicts."""
  old_flat, new_flat = _flat(old), _flat(new)
  return sorted(k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k))


def start_run(config, workdir: str | os.PathLike, *, refuse_changes: bool = True
              ) -> pathlib.Path:
  """Creates (or reopens) the run directory and records config and environment.

  A workdir that already holds a run of a different config is refused, so
  results of two configs are never mixed; the same config resumes. With
  ``refuse_changes=False`` (a run made of parts that each guard their own
  folder) the new config is recorded instead.

  Raises:
    ValueError: the workdir holds another config's results.
    _files.FolderNotWritableError: the workdir cannot be created or written
      (an OSError; the message names it).
  """
  workdir = _files.writable_folder(workdir, named="workdir")
  text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
  previous = workdir / "config.json"
  if previous.exists() and refuse_changes:
    try:
      old = json.loads(previous.read_text())
    except ValueError:
      old = None
    new = json.loads(text)
    if old is None or old != new:
      changed = "unreadable" if old is None else ", ".join(config_differences(old, new))
      raise ValueError(
          f"the workdir {workdir} holds results of a different config (changed: {changed}); "
          f"rerun with the same config to resume, or start fresh with another --workdir "
          f"(or delete {workdir})")
  else:
    write_atomic(previous, text)
  write_json(workdir / "environment.json", environment())
  return workdir
