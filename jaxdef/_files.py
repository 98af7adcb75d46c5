"""Atomic file writes shared by records, checkpoints and converted weights."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import tempfile
from typing import Any


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes `data` (text or bytes) to `path` through a temp file and a rename.

  The temporary file lives in the same folder, so the rename is atomic: a
  reader (or a resumed run) sees the old file or the new one, never half,
  and a crash mid-write leaves only a ``.<name>.*.tmp`` file behind.
  """
  path = pathlib.Path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  except OSError as error:
    raise OSError(error.errno, f"cannot write {path} ({error.strerror or error}); "
                  "pass a writable --workdir") from error
  try:
    with os.fdopen(handle, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as error:
    if os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(error, OSError):
      # A full disk or a vanished folder: say which file, keep the errno; the
      # previous version of `path`, if any, is untouched.
      raise OSError(error.errno, f"cannot write {path} ({error.strerror or error}); the "
                    "previous file, if any, is unchanged") from error
    raise


def write_json(path: str | os.PathLike, value: Any) -> None:
  """Writes `value` as indented, key-sorted JSON, atomically."""
  write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def held_exclusively(path: str | os.PathLike):
  """Holds an exclusive lock on the file `path` (created), waiting for it if taken.

  For work several processes of one machine may start at once and must do
  once (training a model into a shared folder): the second waits, then finds
  the work done. The kernel drops the lock when its holder dies, so a killed
  process never leaves it taken.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


class FolderNotWritableError(OSError, ValueError):
  """A folder the user named cannot be created or written (bad input: also a ValueError)."""


def writable_folder(path: str | os.PathLike, *, named: str = "workdir") -> pathlib.Path:
  """Creates the folder `path` (and its parents) and checks it can be written.

  Args:
    path: the folder.
    named: how the user gave it, for the message ("workdir", "--workdir").

  Raises:
    FolderNotWritableError: it cannot be created or is not writable; the
      message names it as `named` gave it.
  """
  folder = pathlib.Path(path).expanduser()
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise FolderNotWritableError(
        f"{named}={path}: cannot create the folder ({error.strerror or error})") from None
  if not os.access(folder, os.W_OK):
    raise FolderNotWritableError(f"{named}={path}: the folder is not writable")
  return folder
