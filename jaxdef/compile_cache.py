"""JAX's persistent compilation cache, for runs that compile the same programs again.

A sweep compiles one attack per EOT sample count and one vote (seconds each
on a CPU); a rerun, a resumed run or a second config over the same models
compiles exactly the same programs. With the cache on, XLA stores each
compiled executable under a key of the program, the device and the
compiler version, and a later process loads it instead of compiling.
Numbers are unchanged: the executable is the one the compiler would build.
"""

from __future__ import annotations

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
