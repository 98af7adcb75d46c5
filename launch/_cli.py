"""How every `launch/` entry point reports a user's mistake: one line, exit status 2.

A wrong value, an unknown config field, a missing config file, an unwritable
workdir, a workdir another run holds or a data set that is not installed is
the user's to fix, and the message names what to fix; the traceback above it
is noise. Such errors print ``error: <message>`` on stderr and exit 2 (the
status absl and argparse use for usage errors). ``--verbose`` (or
``JAXDEF_VERBOSE=1``) shows the traceback instead. Any other exception is a
bug and keeps its traceback.

  with _cli.user_errors():  # config files are read and overridden here
    _CONFIG = config_flags.DEFINE_config_file("config", ...)
  ...
  if __name__ == "__main__":
    _cli.run(main)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from collections.abc import Iterator

from absl import app
from absl import flags
from absl import logging as absl_logging

from jaxdef import _files
from jaxdef.experiments import WorkdirInUseError

VERBOSE_ENV = "JAXDEF_VERBOSE"
TRACEBACK = "Traceback (most recent call last):"
USAGE_ERROR_STATUS = 2
# Errors that mean bad input when they leave an entry point's main: the
# library validates arguments with ValueError and names paths in its OSErrors.
EXPECTED = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            IsADirectoryError, PermissionError, app.UsageError, flags.Error, WorkdirInUseError)

flags.DEFINE_bool("verbose", False, "Show the traceback of an error in the input (config, "
                  f"flags, paths, data) instead of one line; also ${VERBOSE_ENV}=1.")


def verbose(argv: list[str] | None = None) -> bool:
  """--verbose on the command line (read before flags are parsed) or $JAXDEF_VERBOSE."""
  argv = sys.argv if argv is None else argv
  flag = any(arg in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1")
             for arg in argv[1:])
  return flag or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def one_line(error: BaseException) -> str:
  """The error's message on one line (a KeyError's own text, not its repr)."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]  # ml_collections wraps its KeyError in an AttributeError
  if isinstance(error, KeyError) and error.args:
    return _unknown_field(str(error.args[0]))
  text = str(error) or type(error).__name__
  text = text.replace("Pass --helpshort or --helpfull to see help on flags.", "")
  if TRACEBACK in text:  # a config file's error, as absl embeds it: keep its last line
    before, after = text.split(TRACEBACK, 1)
    text = before + [line for line in after.splitlines() if line.strip()][-1]
  return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _unknown_field(text: str) -> str:
  """ml_collections' "'name'\\nDid you mean ..." as "unknown config field ...; did you mean"."""
  name, *hint = [line.strip() for line in text.splitlines() if line.strip()]
  name = name.strip("'\"")
  typed = [arg.split("=")[0] for arg in sys.argv[1:]
           if arg.startswith("--") and "." in arg.split("=")[0]
           and arg.split("=")[0].split(".")[-1] == name]
  where = f"{typed[0]} names" if typed else "the config has"
  return " ".join([f"{where} no field {name!r}" + ("." if hint else ""), *hint])


def fail(error: BaseException) -> None:
  """Prints ``error: <message>`` on stderr and exits 2."""
  print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
  sys.exit(USAGE_ERROR_STATUS)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """Turns any exception inside into one line and exit 2 (unless verbose).

  For the module-level flag definitions: ml_collections reads the config
  file and applies the --config.<field> overrides while the flag is
  defined, so every exception there is about the user's config or flags
  (an unknown field comes as ml_collections' KeyError/AttributeError with
  its did-you-mean hint, which is kept).
  """
  try:
    yield
  except Exception as error:  # noqa: BLE001 - all of it is the user's input
    if verbose():
      raise
    fail(error)


def run(main: Callable[[list[str]], None]) -> None:
  """Parses the flags and calls main(argv), reporting bad input as one line."""
  def parse(argv: list[str]) -> list[str]:
    try:
      remaining = flags.FLAGS(argv)
    except flags.Error as error:
      if verbose(argv):
        raise
      fail(error)
    if not any(arg.split("=")[0] in ("-v", "--verbosity") for arg in argv[1:]):
      # absl's default (INFO) would print JAX's backend probing on stderr.
      absl_logging.set_verbosity(absl_logging.WARNING)
    return remaining

  def guarded(argv: list[str]) -> None:
    try:
      main(argv)
    except EXPECTED as error:
      if verbose():
        raise
      fail(error)

  app.run(guarded, flags_parser=parse)


def writable_folder(flag: str, path: str) -> str:
  """Creates the folder a flag names; ValueError naming the flag when it cannot be written."""
  _files.writable_folder(path, named=flag)
  return path


def loaded_config(holder: flags.FlagHolder) -> object:
  """The config a config_flags flag holds; ValueError naming the flag when it did not load.

  ml_collections defers a config file's load error until the config is
  first read; this reads it at once and says which file and why.
  """
  value = holder.value
  error = getattr(value, "_error", None) if type(value).__name__ == "_ErrorConfig" else None
  if error is None:
    return value
  given = flags.FLAGS[holder.name].config_filename
  path = given.split(":")[0]
  if not os.path.exists(path):
    raise ValueError(f"--{holder.name}={given}: no such file {path!r} (configs are "
                     "configs/<name>.py[:variant])")
  raise ValueError(f"--{holder.name}={given}: the file could not be loaded: {one_line(error)}")
