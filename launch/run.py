"""Runs one experiment from a config file.

  python -m launch.run --config=configs/<name>.py[:variant] --workdir=runs/<name>
  python -m launch.run --config.num_samples=100     # override any field
  python -m launch.run --distributed ...             # one process per host (SLURM: see
                                                     # launch/slurm_sweep.sh, BUILD.md)

This file is intentionally kept short: it parses flags and calls
`jaxdef.experiments.run`, which tests import directly.
"""

from __future__ import annotations

import json
import pathlib

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from jaxdef import compile_cache
from jaxdef import experiments
from jaxdef import sharding
from launch import _cli

_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "default.py")
with _cli.user_errors():  # reads the config file and applies --config.<field> overrides
  _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<experiment>).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Resolve the config, name its data and model "
                             "loaders and print the cost estimate; compute nothing.")
_DEVICES = flags.DEFINE_string("devices", "auto", "Local devices that batches are sharded over: "
                               "auto (all, when there are several), off, or a number n (the "
                               "first n).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-host run first "
                                 "(jax.distributed.initialize): from SLURM's variables, or from "
                                 "--coordinator_address, --num_processes and --process_id.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "With --distributed outside "
                                   "SLURM: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed outside SLURM: "
                                      "the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed outside SLURM: this "
                                   "process, 0 to num_processes - 1.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Folder of JAX's persistent compilation cache (reruns load the "
    "compiled attacks instead of compiling them), or 'off'. Default: "
    "$JAXDEF_COMPILATION_CACHE, else ~/.cache/jaxdef/xla.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    if _DISTRIBUTED.value:  # before anything starts JAX's backend
      joined = sharding.initialize_distributed(*explicit)
      print(f"distributed: process {joined['process_id']} of {joined['num_processes']} "
            f"(coordinator {joined['coordinator_address']}), {len(jax.local_devices())} local "
            f"{jax.local_devices()[0].platform} device(s)", flush=True)
    elif any(value is not None for value in explicit):
      raise ValueError("--coordinator_address, --num_processes and --process_id need "
                       "--distributed")
    devices = _DEVICES.value
    sharding.set_devices(int(devices) if devices.isdigit() else devices)
    compile_cache.enable(_COMPILATION_CACHE.value)
  except (ValueError, TypeError) as error:
    raise app.UsageError(str(error)) from None
  config = _cli.loaded_config(_CONFIG)
  if _DRY_RUN.value:
    print(config)
    print(json.dumps(experiments.dry_run(config), indent=2))
    return
  workdir = _cli.writable_folder("--workdir", _WORKDIR.value or f"runs/{config.experiment}")
  experiments.run(config, workdir)


if __name__ == "__main__":
  _cli.run(main)
