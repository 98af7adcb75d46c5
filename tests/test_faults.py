"""Faults: two processes on one workdir, stale locks, killed runs, out-of-memory retries."""

import collections
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd
from configs import theory as theory_config
from jaxdef import experiments
from jaxdef.attacks import _pgd
from jaxdef.experiments import _sweep
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


# --- out of memory: halve the chunk, retry, record it; never a half-written cell ----------

WEIGHTS = np.random.default_rng(0).normal(size=(4 * 4 * 1, 3)).astype(np.float32)


def _linear_logits(images):
  return images.reshape(images.shape[0], -1) @ WEIGHTS


def _sweep_problem():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(0.2, 0.8, (6, 4, 4, 1)).astype(np.float32))
  y = jnp.argmax(_linear_logits(x), -1).astype(jnp.int32)
  targets = jnp.where(y == 2, 0, 2).astype(jnp.int32)
  clf = jd.StochasticClassifier(_linear_logits, jd.defenses.randomized_smoothing(0.05))
  spec = _sweep.SweepSpec(models=("linear",), defenses=("rs",), targeted=(False,), eots=(1, 4),
                          alphas=(0.01, 0.04), checkpoints=(1, 3), eps=0.1, votes=20,
                          batch_alphas=True, sequential_votes=True)
  return spec, {("linear", "rs"): clf}, x, y, targets


def _exhausted():
  return jax.errors.JaxRuntimeError(
      "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1073741824 bytes.")


def test_out_of_memory_halves_the_chunks_and_records_it(tmp_path, monkeypatch):
  spec, clfs, x, y, targets = _sweep_problem()
  clean_run = _sweep.run_sweep(spec, clfs, x, y, targets, jax.random.key(0), tmp_path / "ok",
                               progress=False)
  attack, predict = _pgd.pgd_trajectory_results_batch, jd.StochasticClassifier.predict_sequential
  calls = collections.Counter()

  def tight_attack(*args, eot, eot_chunk_size=None, **kwargs):
    calls["attack"] += 1
    if eot > 1 and (eot_chunk_size or eot) > 1:  # only one EOT draw at a time fits
      raise _exhausted()
    return attack(*args, eot=eot, eot_chunk_size=eot_chunk_size, **kwargs)

  def tight_vote(self, *args, sub_batches=8, **kwargs):
    calls["vote"] += 1
    if sub_batches < 32:  # only passes of a quarter of the rows fit
      raise _exhausted()
    return predict(self, *args, sub_batches=sub_batches, **kwargs)

  monkeypatch.setattr(_pgd, "pgd_trajectory_results_batch", tight_attack)
  monkeypatch.setattr(jd.StochasticClassifier, "predict_sequential", tight_vote)
  with pytest.warns(RuntimeWarning, match="out of memory; retrying with"):
    retried = _sweep.run_sweep(spec, clfs, x, y, targets, jax.random.key(0),
                               tmp_path / "tight", progress=False)
  counts = lambda records: [(r["unit"], r["k"], r["successes"], r["denominator"])
                            for r in records]
  assert counts(retried) == counts(clean_run)
  for record in retried:
    m = record["m"]
    assert record["eot_chunk_size_used"] == (None if m == 1 else 1)
    assert record["attack_oom_retries"] == (0 if m == 1 else 2)  # m=4: chunks 4, 2, then 1
    assert record["vote_split"] == 4 and record["vote_oom_retries"] == 2
  assert all(r["attack_oom_retries"] == 0 and r["vote_split"] == 1 for r in clean_run)


def test_out_of_memory_everywhere_stops_with_the_cell_and_writes_nothing(tmp_path, monkeypatch):
  spec, clfs, x, y, targets = _sweep_problem()

  def no_memory(*args, **kwargs):
    raise _exhausted()

  monkeypatch.setattr(_pgd, "pgd_trajectory_results_batch", no_memory)
  with pytest.raises(MemoryError, match=r"attack of linear__rs__untargeted__m1.*\(1\)"):
    _sweep.run_sweep(spec, clfs, x, y, targets, jax.random.key(0), tmp_path, progress=False)
  assert not list((tmp_path / _sweep.RECORDS_DIR).rglob("*.json"))

  def other_failure(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("INTERNAL: something else")

  monkeypatch.setattr(_pgd, "pgd_trajectory_results_batch", other_failure)
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL: something else"):
    _sweep.run_sweep(spec, clfs, x, y, targets, jax.random.key(0), tmp_path, progress=False)
