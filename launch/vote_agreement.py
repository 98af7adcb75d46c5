"""Sequential vs full votes on a sweep's own images: agreement and forward passes saved.

  python -m launch.vote_agreement --workdir=runs/default
  python -m launch.vote_agreement --workdir=runs/default --votes=50,500 --steps=all

Uses the config file (default: the embedded default) with the workdir's
fixed images (indices.json) and the cached models; attacks every sweep unit
again with its own key, votes each batch fully, sequentially and fully with
a second key, and writes vote_agreement.json and vote_agreement.md to the
workdir. The library function is `jaxdef.experiments._vote_agreement.measure`.
"""

from __future__ import annotations

import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from jaxdef.experiments import _vote_agreement
from jaxdef.experiments._workdir_lock import WorkdirLock
from launch import _cli

_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "default.py")
with _cli.user_errors():  # reads the config file and applies --config.<field> overrides
  _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Sweep config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "The run's workdir.")
_VOTES = flags.DEFINE_list("votes", ["50", "500"], "Numbers of draws n to compare at.")
_ERROR = flags.DEFINE_float("error", 1e-3, "Error level of the sequential vote.")
_CHUNK = flags.DEFINE_integer("chunk", 10, "Draws between the sequential vote's looks.")
_STEPS = flags.DEFINE_enum("steps", "last", ["last", "all"],
                           "Adversarial iterates at the largest k only, or at every k.")
_BASELINE = flags.DEFINE_bool("baseline", True, "Also vote again with an independent key.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    votes = [int(n) for n in _VOTES.value]
  except ValueError:
    raise app.UsageError(f"--votes must be integers, got {_VOTES.value}") from None
  config = _cli.loaded_config(_CONFIG)
  workdir = pathlib.Path(_cli.writable_folder("--workdir", _WORKDIR.value))
  # Writes into the run's workdir: not while that run (or another
  # measurement) is still going.
  with WorkdirLock(workdir):
    result = _vote_agreement.measure(
        config, workdir, votes=votes, error=_ERROR.value, chunk=_CHUNK.value,
        steps=_STEPS.value, baseline=_BASELINE.value, progress=config.get("progress", True))
  print(result["markdown"])


if __name__ == "__main__":
  _cli.run(main)
