"""One process per workdir: a lock file, so two runs never interleave their records.

`launch.run` (through `jaxdef.experiments.run`) holds ``workdir/.lock``
while it runs. The file is created whole with `_files.create_exclusively`
(exactly one creator wins, also over NFS; no process ever reads a lock
still being written) and holds the owner's pid, host, start time and
command line. A second process pointed at the workdir stops at once
with a message naming the owner, before it writes anything. A lock whose
owner ran on this host and is gone (killed, crashed) is stale: it is taken
over with a warning naming it. A lock from another host is never presumed
dead: the message says how to remove it by hand.

Processes of one multi-host run (`launch.run --distributed`,
`jax.process_count() > 1`) share their workdir on purpose and coordinate
cell by cell through `_claims`; they take no lock.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import socket
import sys
import warnings

import jax

from jaxdef import _files
from jaxdef.experiments._claims import _pid_alive

LOCK_NAME = ".lock"


def _describe(owner: dict) -> str:
  return (f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')} "
          f"({owner.get('command') or 'unknown command'})")


class WorkdirInUseError(RuntimeError):
  """Another live process holds the workdir (the message names it, and what to do)."""


class WorkdirLock:
  """Exclusive use of `workdir` by this process, as a context manager.

  Raises (on entry):
    WorkdirInUseError: another live process holds the workdir.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / LOCK_NAME
    self.held = False

  def __enter__(self) -> WorkdirLock:
    if jax.process_count() > 1:
      return self  # a multi-host run: `_claims` splits the work
    self.workdir.mkdir(parents=True, exist_ok=True)
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "command": " ".join(sys.argv)}
    for _ in range(3):  # a stale lock is removed once; racing takeovers retry
      if not _files.create_exclusively(self.path, json.dumps(owner)):
        self._take_over_if_stale()
        continue
      self.held = True
      return self
    raise WorkdirInUseError(f"could not lock workdir {self.workdir}: {self.path} keeps reappearing "
                       "(several processes starting on it at once?)")

  def _take_over_if_stale(self) -> None:
    try:
      owner = json.loads(self.path.read_text())
    except FileNotFoundError:
      return  # released meanwhile: try again
    except (ValueError, OSError):
      owner = {}  # damaged: locks are created whole (`_files.create_exclusively`)
    alive = (owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int)
             or _pid_alive(owner["pid"]))
    if owner and alive:
      raise WorkdirInUseError(
          f"workdir {self.workdir} is in use by {_describe(owner)}: two runs on one workdir "
          f"would interleave their records. Wait for that run to finish, pass another "
          f"--workdir, or, if that process is gone (another host's lock is never presumed "
          f"dead), delete {self.path}. Processes of one multi-host run share a workdir "
          f"through --distributed.")
    holder = _describe(owner) if owner else "an unreadable lock file"
    warnings.warn(f"{self.path}: taking over the lock of {holder}, which is no longer running",
                  RuntimeWarning, stacklevel=3)
    self.path.unlink(missing_ok=True)

  def __exit__(self, *exc) -> None:
    if self.held:
      self.path.unlink(missing_ok=True)
      self.held = False
