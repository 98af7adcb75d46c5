"""Faults: two processes on one workdir, stale locks, killed runs, out-of-memory retries."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import pytest

from configs import theory as theory_config
from jaxdef import experiments
from jaxdef.experiments import _workdir_lock

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()  # reaped: the pid is free
  return process.pid


def _write_lock(workdir: pathlib.Path, **owner) -> pathlib.Path:
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / _workdir_lock.LOCK_NAME
  path.write_text(json.dumps({"host": socket.gethostname(), "started": "then",
                              "command": "python -m launch.run", **owner}))
  return path


def test_a_second_launch_on_a_held_workdir_stops_and_touches_nothing(tmp_path):
  workdir = tmp_path / "run"
  # The first process: holds the lock while it lives.
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys, time
          from jaxdef.experiments._workdir_lock import WorkdirLock
          with WorkdirLock({str(workdir)!r}):
            print("locked", flush=True)
            time.sleep(120)
          """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    before = sorted(p.name for p in workdir.iterdir())
    second = subprocess.run(
        [sys.executable, "-m", "launch.run", "--config=configs/theory.py:tiny",
         f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert second.returncode != 0
    assert f"workdir {workdir} is in use by pid {holder.pid}" in second.stderr
    assert "interleave" in second.stderr and "--distributed" in second.stderr
    assert sorted(p.name for p in workdir.iterdir()) == before == [".lock"]
  finally:
    holder.kill()
    holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning_and_released_after(tmp_path):
  workdir = tmp_path / "run"
  pid = _dead_pid()
  lock = _write_lock(workdir, pid=pid)
  config = theory_config.get_config("tiny")
  with pytest.warns(RuntimeWarning, match=f"taking over the lock of pid {pid} on"):
    experiments.run(config, workdir)
  assert (workdir / "config.json").is_file() and not lock.exists()
  lock.write_text('{"pid": 12')  # cut short while being written: no owner to wait for
  with pytest.warns(RuntimeWarning, match="taking over the lock of an unreadable lock file"):
    with _workdir_lock.WorkdirLock(workdir):
      assert json.loads(lock.read_text())["pid"] == os.getpid()
  _write_lock(workdir, pid="garbled")  # an owner it cannot check is not presumed dead
  with pytest.raises(RuntimeError, match="in use by pid garbled"):
    with _workdir_lock.WorkdirLock(workdir):
      pass


def test_live_and_foreign_locks_are_refused(tmp_path):
  workdir = tmp_path / "run"
  _write_lock(workdir, pid=os.getppid())  # alive: our parent
  with pytest.raises(RuntimeError, match=f"in use by pid {os.getppid()}"):
    experiments.run(theory_config.get_config("tiny"), workdir)
  assert sorted(p.name for p in workdir.iterdir()) == [".lock"]
  # Another host's lock: its pid means nothing here, so it is never presumed dead.
  _write_lock(workdir, pid=_dead_pid(), host="elsewhere")
  with pytest.raises(RuntimeError, match="on elsewhere .*another host's lock is never presumed"):
    with _workdir_lock.WorkdirLock(workdir):
      pass


def test_processes_of_one_multi_host_run_share_the_workdir(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  _write_lock(workdir, pid=os.getppid())
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with _workdir_lock.WorkdirLock(workdir) as lock:
    assert not lock.held
  assert (workdir / _workdir_lock.LOCK_NAME).exists()  # the other process's lock stays
