"""Atomic file writes shared by records, checkpoints and converted weights."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import tempfile
from typing import Any


def _write_synced(file: Any, data: str | bytes) -> None:
  """Writes `data` to the open `file` and waits until it is on disk."""
  file.write(data)
  file.flush()
  os.fsync(file.fileno())


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
      _write_synced(f, data.encode() if isinstance(data, str) else data)
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


# What `os.link` raises on a file system without hard links (some FUSE and
# SMB mounts); `create_exclusively` then creates the file in place.
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


def create_exclusively(path: str | os.PathLike, text: str) -> bool:
  """Creates `path` holding `text` unless it exists; True when this call created it.

  Of several processes creating the same path at once exactly one succeeds
  (also over NFS), and no one ever sees the file half-written: the text is
  written whole under a private draft name, then hard-linked into place
  (`os.link` fails when the path exists). A process killed while writing
  leaves only its ``.<name>.*.draft`` file. A file created empty by
  `O_EXCL` and filled afterwards would, if its creator died in between,
  name no owner, so no one could tell that its owner was gone.

  On a file system without hard links the file is created with `O_EXCL`
  and then written, which keeps the exclusivity but not the whole-or-nothing
  content.
  """
  path = pathlib.Path(path)
  handle, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".draft")
  try:
    with os.fdopen(handle, "w") as file:
      os.fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide the owner from other users
      _write_synced(file, text)
    try:
      os.link(draft, path)
      return True
    except FileExistsError:
      return False
    except OSError as error:
      if error.errno not in _NO_HARD_LINKS:
        raise
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(draft)
  try:
    handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(handle, "w") as file:
    _write_synced(file, text)
  return True


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
