"""Work claims on a shared workdir, so that several processes split one sweep.

Processes (on one host or several, sharing the workdir over a file system)
run the same sweep. Before computing a work item a process *claims* it by
creating ``claims/<item>.claim<g>`` with `_files.create_exclusively`:
exactly one creator wins (also over NFS), so no item is computed by two
live processes, and no claim is ever seen half-written (a process killed
while claiming leaves no claim to wait for). The file holds the owner's
host, pid, `jax.process_index()`, the generation g and the time; while the
owner lives, a background thread touches the file (its heartbeat, every
`stale_after_s` / 6 seconds).

Recovering a claim whose owner died. A claim is *stale* when
- its owner ran on this host and that pid is gone (a killed or finished
  run: a single process rerunning an interrupted sweep takes its leftovers
  back at once), or
- its heartbeat is older than `stale_after_s` (the owner's host died or
  lost the file system; measured against the file system's own clock, so
  hosts' clocks need not agree).
A stale claim is taken over by creating the next generation,
``<item>.claim<g+1>``, again exclusively: of several processes that see
the same stale claim, one wins. Claims held by this very process (an
earlier call in the same Python process, interrupted) are its own and are
taken back. To discard every claim by hand, stop all processes and delete
``workdir/claims``; the records on disk say what is finished.

Claims are never deleted: the finished records, not the claims, say what
is done, so a claim left behind by a finished item is harmless, and the
claims record which process computed what.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import socket
import threading

import jax

from jaxdef import _files

_GENERATION = re.compile(r"\.claim(\d+)$")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


class Claims:
  """Claims of work items under one directory (see the module docstring).

  Args:
    directory: where claim files live (created), e.g. ``workdir/claims``.
    stale_after_s: a claim whose heartbeat is older than this is taken over.
    heartbeat_s: seconds between heartbeats; None: stale_after_s / 6.
  """

  def __init__(self, directory: str | os.PathLike, *, stale_after_s: float = 600.0,
               heartbeat_s: float | None = None):
    if not stale_after_s > 0:
      raise ValueError(f"stale_after_s must be > 0 seconds, got {stale_after_s!r}")
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.stale_after_s = float(stale_after_s)
    self.heartbeat_s = float(heartbeat_s) if heartbeat_s is not None else stale_after_s / 6
    self.host = socket.gethostname()
    self.pid = os.getpid()
    self.process_index = int(jax.process_index())
    self._clock = self.directory / f".clock.{self.host}.{self.pid}"
    self._held: set[pathlib.Path] = set()
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  # -- reading

  def latest(self, item: str) -> tuple[int, pathlib.Path | None]:
    """(generation, path) of the newest claim of `item`; (-1, None) when unclaimed."""
    newest = (-1, None)
    for path in self.directory.glob(f"{glob_escape(item)}.claim*"):
      match = _GENERATION.search(path.name)
      if match and path.name[:match.start()] == item and int(match.group(1)) > newest[0]:
        newest = (int(match.group(1)), path)
    return newest

  def owner(self, path: pathlib.Path) -> dict:
    """The claim's content; {} while its creator is still writing it (or it is damaged)."""
    try:
      owner = json.loads(path.read_text())
      return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
      return {}

  def is_mine(self, owner: dict) -> bool:
    return owner.get("host") == self.host and owner.get("pid") == self.pid

  def is_stale(self, path: pathlib.Path, owner: dict) -> bool:
    """True when the claim's owner is gone (see the module docstring)."""
    if owner.get("host") == self.host and isinstance(owner.get("pid"), int):
      if not _pid_alive(owner["pid"]):
        return True
    try:
      age = self._now() - path.stat().st_mtime
    except FileNotFoundError:
      return False  # replaced under our feet: look again next time
    return age > self.stale_after_s

  def describe(self, item: str) -> str:
    """'item (host h, pid p, process i)' for messages."""
    _, path = self.latest(item)
    if path is None:
      return f"{item} (unclaimed)"
    owner = self.owner(path)
    return (f"{item} (host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, "
            f"process {owner.get('process_index', '?')})")

  # -- claiming

  def acquire(self, item: str) -> bool:
    """Claims `item`; True when this process now holds it.

    Holds it when it was unclaimed, claimed by this process before, or its
    claim is stale (taken over as the next generation). False when another
    live process holds it, or won the race for it.
    """
    generation, path = self.latest(item)
    if path is None:
      return self._create(item, 0)
    owner = self.owner(path)
    if self.is_mine(owner):
      self._hold(path)
      return True
    if self.is_stale(path, owner):
      return self._create(item, generation + 1)
    return False

  def release(self, item: str) -> None:
    """Stops the heartbeat of `item` (the claim file stays; see the module docstring)."""
    with self._lock:
      self._held = {p for p in self._held if _GENERATION.sub("", p.name) != item}

  def close(self) -> None:
    """Stops the heartbeat thread."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    with self._lock:
      self._held.clear()

  def _create(self, item: str, generation: int) -> bool:
    """Creates the claim, whole; False when another process created it first."""
    path = self.directory / f"{item}.claim{generation}"
    content = {"item": item, "generation": generation, "host": self.host, "pid": self.pid,
               "process_index": self.process_index,
               "time": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    # Drafts start with a dot: `latest`'s pattern never matches one.
    if not _files.create_exclusively(path, json.dumps(content)):
      return False
    self._hold(path)
    return True

  def _hold(self, path: pathlib.Path) -> None:
    os.utime(path)
    with self._lock:
      self._held.add(path)
    if self._thread is None:
      self._stop.clear()
      self._thread = threading.Thread(target=self._beat, name="claims-heartbeat", daemon=True)
      self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      with self._lock:
        held = list(self._held)
      for path in held:
        try:
          os.utime(path)
        except OSError:
          pass  # taken over and gone; its records will show who finished it

  def _now(self) -> float:
    """The file system's current time (a touched probe file's mtime)."""
    self._clock.touch()
    os.utime(self._clock)
    return self._clock.stat().st_mtime


def glob_escape(name: str) -> str:
  """`name` with glob metacharacters escaped (item names are file-safe, but be sure)."""
  return re.sub(r"([*?\[])", r"[\1]", name)
