"""Runs one experiment from a config file.

  python -m launch.run --config=configs/<name>.py[:variant] --workdir=runs/<name>
  python -m launch.run --config.num_samples=100     # override any field

This file is intentionally kept short: it parses flags and calls
`jaxdef.experiments.run`, which tests import directly.
"""

from __future__ import annotations

import json
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from jaxdef import experiments

_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "default.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<experiment>).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Resolve the config, name its data and model "
                             "loaders and print the cost estimate; compute nothing.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if _DRY_RUN.value:
    print(config)
    print(json.dumps(experiments.dry_run(config), indent=2))
    return
  workdir = _WORKDIR.value or f"runs/{config.experiment}"
  experiments.run(config, workdir)


if __name__ == "__main__":
  app.run(main)
