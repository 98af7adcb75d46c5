"""Experiments of SPEC.md section 7, each run from a config."""

from __future__ import annotations

import os

from jaxdef.experiments import _records
from jaxdef.experiments._default import run_default

_EXPERIMENTS = {"default": run_default}


def run(config, workdir: str | os.PathLike):
  """Runs `config.experiment` writing its records and figures to `workdir`."""
  name = config.get("experiment")
  if name not in _EXPERIMENTS:
    raise ValueError(f"config.experiment must be one of {', '.join(sorted(_EXPERIMENTS))}; "
                     f"got {name!r}")
  run_dir = _records.start_run(config, workdir)
  return _EXPERIMENTS[name](config, run_dir)


__all__ = ("run",)
