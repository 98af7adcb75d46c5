"""Experiments of SPEC.md section 7, each run from a config."""

from __future__ import annotations

import os

from jaxdef.experiments import _records
from jaxdef.experiments import _schema
from jaxdef.experiments._audit import run_audit
from jaxdef.experiments._default import run_default
from jaxdef.experiments._dry_run import describe
from jaxdef.experiments._finetune import run_finetune
from jaxdef.experiments._invariance import run_invariance
from jaxdef.experiments._kxm import run_kxm_sweep
from jaxdef.experiments._lack_of_randomness import run_lack_of_randomness
from jaxdef.experiments._pictures import run_pictures
from jaxdef.experiments._reproduce import run_reproduce
from jaxdef.experiments._theory import run_theory
from jaxdef.experiments._workdir_lock import WorkdirInUseError
from jaxdef.experiments._workdir_lock import WorkdirLock

EXPERIMENTS = {
    "audit": run_audit,
    "default": run_default,
    "finetune": run_finetune,
    "invariance_bart": run_invariance,
    "invariance_smoothing": run_invariance,
    "kxm_sweep": run_kxm_sweep,
    "lack_of_randomness": run_lack_of_randomness,
    "perturbation_pictures": run_pictures,
    "reproduce": run_reproduce,
    "theory": run_theory,
}


def run(config, workdir: str | os.PathLike):
  """Runs `config.experiment` writing its records and figures to `workdir`.

  Holds ``workdir/.lock`` meanwhile: a second process on the same workdir
  stops with a message naming this one (see `_workdir_lock`).
  """
  name = config.get("experiment")
  if name not in EXPERIMENTS:
    raise ValueError(f"config.experiment must be one of {', '.join(sorted(EXPERIMENTS))}; "
                     f"got {name!r}")
  _schema.check_fields(config)
  with WorkdirLock(workdir):
    # A reproduce run's parts each refuse a changed config in their own
    # folder; parts not run yet may change (a plan cut to fit a budget).
    run_dir = _records.start_run(config, workdir, refuse_changes=name != "reproduce")
    return EXPERIMENTS[name](config, run_dir)


def dry_run(config) -> dict:
  """Resolves `config` and returns what it would load and cost; computes nothing."""
  name = config.get("experiment")
  if name not in EXPERIMENTS:
    raise ValueError(f"config.experiment must be one of {', '.join(sorted(EXPERIMENTS))}; "
                     f"got {name!r}")
  _schema.check_fields(config)
  if name == "reproduce":
    from jaxdef.experiments import _reproduce

    return _reproduce.describe(config)
  if name == "audit":
    from jaxdef.experiments import _audit

    return _audit.describe(config)
  return describe(config)


__all__ = ("WorkdirInUseError", "dry_run", "run")
