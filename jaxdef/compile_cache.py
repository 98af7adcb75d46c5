"""JAX's persistent compilation cache, for runs that compile the same programs again.

A sweep compiles one attack per EOT sample count and one vote (seconds each
on a CPU); a rerun, a resumed run or a second config over the same models
compiles exactly the same programs. With the cache on, XLA stores each
compiled executable under a key of the program, the device and the
compiler version, and a later process loads it instead of compiling.
Numbers are unchanged: the executable is the one the compiler would build.
"""

from __future__ import annotations

import gc
import os
import pathlib

import jax

ENV = "JAXDEF_COMPILATION_CACHE"
DEFAULT = pathlib.Path("~/.cache/jaxdef/xla")
# Compilations faster than this are not worth a file (the many tiny eager ops).
MIN_COMPILE_SECONDS = 0.5


def enable(directory: str | os.PathLike | None = None) -> pathlib.Path | None:
  """Turns the persistent cache on for this process; returns its folder (None: off).

  Args:
    directory: the cache folder (created); "off" disables the cache; None
      takes $JAXDEF_COMPILATION_CACHE, else ~/.cache/jaxdef/xla.

  Raises:
    ValueError: the folder cannot be created or written (names it).
  """
  chosen = directory if directory is not None else os.environ.get(ENV) or DEFAULT
  if str(chosen) == "off":
    return None
  path = pathlib.Path(chosen).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise ValueError(f"compilation cache folder {path} cannot be created ({error.strerror}); "
                     f"pass another folder or 'off' (flag --compilation_cache, or ${ENV})"
                     ) from None
  if not os.access(path, os.W_OK):
    raise ValueError(f"compilation cache folder {path} is not writable; pass another folder "
                     f"or 'off' (flag --compilation_cache, or ${ENV})")
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path


# Linux caps the memory mappings of one process (vm.max_map_count, 65530 by
# default). XLA's CPU backend maps about three areas (code, constants, data)
# for every kernel it compiles, and JAX keeps every executable of the process
# in its caches, so a long sweep or a test session compiling thousands of
# programs reaches the cap; LLVM then fails with "Cannot allocate memory" and
# the process crashes mid-compile. Measured: the tiny reproduction alone
# reached 31,773 mappings (tests/test_reproduction.py, one process).
MAP_COUNT_FILE = "/proc/self/maps"
MAP_LIMIT_FILE = "/proc/sys/vm/max_map_count"
# Share of the cap at which the executables are dropped: leaves the largest
# single part of a run (a few thousand kernels) room to compile.
RELEASE_AT_FRACTION = 0.5


def memory_mappings() -> tuple[int, int] | None:
  """(mappings of this process, the kernel's cap), or None where /proc does not say."""
  try:
    with open(MAP_LIMIT_FILE) as limit_file:
      limit = int(limit_file.read())
    with open(MAP_COUNT_FILE, "rb") as maps:
      count = sum(1 for _ in maps)
  except (OSError, ValueError):
    return None
  return count, limit


def release_if_crowded(fraction: float = RELEASE_AT_FRACTION) -> bool:
  """Drops JAX's compiled programs when this process nears the mapping cap.

  Called between cells and parts of long runs: the next cell compiles what
  it needs again (or loads it from the persistent cache), which costs
  seconds, while reaching the cap costs the run. Returns True when it
  released them.
  """
  mappings = memory_mappings()
  if mappings is None or mappings[0] < fraction * mappings[1]:
    return False
  release()
  return True


def release() -> None:
  """Drops every compiled program JAX holds (and with them their mappings)."""
  jax.clear_caches()
  gc.collect()
