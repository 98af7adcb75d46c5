"""Faults: two processes on one workdir, stale locks, killed runs, out-of-memory retries."""

import collections
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd
from configs import theory as theory_config
from jaxdef import _files
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


def test_the_other_launchers_stop_on_a_held_workdir_too(tmp_path):
  # Each writes its workdir (models and checkpoints, a run's vote agreement,
  # benchmark results): all three, started together, must stop at once.
  workdir = tmp_path / "held"
  lock = _write_lock(workdir, pid=os.getpid())
  before = lock.read_text()
  launches = [subprocess.Popen([sys.executable, "-m", f"launch.{name}", f"--workdir={workdir}"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
              for name in ("train_fashion", "vote_agreement", "bench")]
  for launch in launches:
    _, error = launch.communicate(timeout=300)
    assert launch.returncode != 0
    assert f"workdir {workdir} is in use by pid {os.getpid()}" in error, error[-2000:]
  assert sorted(p.name for p in workdir.iterdir()) == [".lock"] and lock.read_text() == before


def test_a_stale_lock_is_taken_over_with_a_warning_and_released_after(tmp_path):
  workdir = tmp_path / "run"
  pid = _dead_pid()
  lock = _write_lock(workdir, pid=pid)
  config = theory_config.get_config("tiny")
  with pytest.warns(RuntimeWarning, match=f"taking over the lock of pid {pid} on"):
    experiments.run(config, workdir)
  assert (workdir / "config.json").is_file() and not lock.exists()
  lock.write_text('{"pid": 12')  # damaged: no owner to wait for
  with pytest.warns(RuntimeWarning, match="taking over the lock of an unreadable lock file"):
    with _workdir_lock.WorkdirLock(workdir):
      assert json.loads(lock.read_text())["pid"] == os.getpid()
  _write_lock(workdir, pid="garbled")  # an owner it cannot check is not presumed dead
  with pytest.raises(RuntimeError, match="in use by pid garbled"):
    with _workdir_lock.WorkdirLock(workdir):
      pass


def test_a_process_killed_while_locking_leaves_no_lock(tmp_path, monkeypatch):
  # The lock is written whole, then linked into place: a second process
  # never reads a lock still being written and takes it for a dead one's.
  workdir = tmp_path / "run"

  def killed(*args, **kwargs):
    raise SystemExit("killed mid-write")

  monkeypatch.setattr(_files.os, "fsync", killed)
  with pytest.raises(SystemExit):
    with _workdir_lock.WorkdirLock(workdir):
      pass
  monkeypatch.undo()
  assert list(workdir.iterdir()) == []  # no lock, no draft
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # taken without a takeover
    with _workdir_lock.WorkdirLock(workdir) as lock:
      assert lock.held and json.loads(lock.path.read_text())["pid"] == os.getpid()


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
  spec = dataclasses.replace(spec, targeted=(False, True))  # two attack calls of each shape
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
    assert record["vote_split"] == 4
  # The split that fitted is remembered: one failing attack (m=4: chunks 4, 2, then 1)
  # and one failing vote (splits 1, 2, then 4) in the whole run, not one per cell.
  # The split that fitted is remembered for the rest of the run: the untargeted m=4 call
  # fails at chunks 4 and 2, the targeted one starts at 1; only the first vote fails.
  for record in retried:
    failed = record["m"] == 4 and not record["targeted"]
    assert record["attack_oom_retries"] == (2 if failed else 0), record["unit"]
    assert record["vote_oom_retries"] == 0
  assert calls["vote"] == 3 + len(retried)  # the clean vote at splits 1, 2, 4; then one each
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


# --- SIGKILL at random points, several times: resume loses nothing and trusts nothing partial

SWEEP_CHILD = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp, numpy as np
    from jaxdef import compile_cache
    compile_cache.enable()  # the test session's cache: restarts do not recompile
    sys.path.insert(0, {tests!r})
    import test_faults
    spec, clfs, x, y, targets = test_faults._killable_problem()
    from jaxdef.experiments import _sweep
    _sweep.run_sweep(spec, clfs, x, y, targets, jax.random.key(0), sys.argv[1], progress=False,
                     on_unit=lambda unit: time.sleep(0.15))  # slow units: time to be killed
""")


def _killable_problem():
  spec, clfs, x, y, targets = _sweep_problem()
  return (dataclasses.replace(spec, targeted=(False, True), eots=(1, 2), alphas=(0.01, 0.02, 0.04),
                              batch_alphas=False), clfs, x, y, targets)


def _records(workdir: pathlib.Path) -> dict[str, tuple[str, int]]:
  """name -> (text, mtime_ns) of every record file."""
  return {p.name: (p.read_text(), p.stat().st_mtime_ns)
          for p in (workdir / _sweep.RECORDS_DIR).rglob("*.json")}


def test_a_sweep_killed_three_times_resumes_to_the_uninterrupted_records(tmp_path):
  spec, clfs, x, y, targets = _killable_problem()
  total = len(spec.units()) * len(spec.checkpoints)
  workdir = tmp_path / "killed"
  command = [sys.executable, "-c", SWEEP_CHILD.format(tests=str(ROOT / "tests")), str(workdir)]
  rng = np.random.default_rng(7)
  seen: dict[str, tuple[str, int]] = {}
  kills = 0
  for start in range(3):
    # stderr to a file, not a pipe nobody reads: a full pipe would block the child.
    log = tmp_path / f"child{start}.log"
    with log.open("w") as stderr:
      process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    # Kill once a random number of new records exist, a random moment later
    # (mid-unit, mid-vote or mid-write).
    wanted = len(seen) + int(rng.integers(1, 5))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
      if len(list((workdir / _sweep.RECORDS_DIR).rglob("*.json"))) >= wanted:
        break
      time.sleep(0.01)
    time.sleep(float(rng.uniform(0, 0.2)))
    if process.poll() is None:
      process.kill()
      kills += 1
    process.wait()
    assert process.returncode in (0, -signal.SIGKILL), log.read_text()[-3000:]
    records = _records(workdir)
    for name, (text, mtime) in records.items():
      json.loads(text)  # no partial record: every file on disk is whole
      if name in seen:  # a finished record is never rewritten
        assert (text, mtime) == seen[name], name
    seen = records
  assert kills >= 2 and len(seen) < total
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  final = _records(workdir)
  assert len(final) == total and all(final[n] == seen[n] for n in seen)
  whole = _sweep.run_sweep(spec, clfs, x, y, targets, jax.random.key(0), tmp_path / "whole",
                           progress=False)
  strip = lambda r: {k: v for k, v in r.items() if "seconds" not in k}
  resumed = {name: strip(json.loads(text)) for name, (text, _) in final.items()}
  order = lambda records: sorted(records, key=lambda r: (r["unit"], r["k"]))
  assert order(resumed.values()) == order(strip(r) for r in whole)


def test_resuming_a_half_written_unit_keeps_its_finished_records(tmp_path):
  spec, clfs, x, y, targets = _sweep_problem()
  whole = _sweep.run_sweep(spec, clfs, x, y, targets, jax.random.key(0), tmp_path,
                           progress=False)
  unit = spec.units()[0]
  first, last = (_sweep.cell_path(tmp_path, unit, k) for k in spec.checkpoints)
  kept = (first.read_text(), first.stat().st_mtime_ns)
  last.unlink()  # killed between the unit's two records
  resumed = _sweep.run_sweep(spec, clfs, x, y, targets, jax.random.key(0), tmp_path,
                             progress=False)
  assert (first.read_text(), first.stat().st_mtime_ns) == kept
  # Only the unit's own alpha is recomputed, so alphas_in_call may differ.
  strip = lambda records: [{k: v for k, v in r.items()
                            if "seconds" not in k and k != "alphas_in_call"} for r in records]
  assert strip(resumed) == strip(whole)


# Fine-tuning: besides the data order, every step draws the defense and the
# validation votes draw too; all of it must come back the same after a kill.
TRAIN_CHILD = textwrap.dedent("""
    import sys
    import jax
    from jaxdef import compile_cache, data, defenses, models, train
    compile_cache.enable()
    images, labels = data.load_fashion_mnist("train")
    model, variables = models.small_resnet(widths=(8, 16), key=jax.random.key(0))
    result = train.finetune(model, variables, (images[:1024], labels[:1024]),
                            (images[1024:1280], labels[1024:1280]),
                            defense=defenses.randomized_smoothing(0.1), val_votes=3, epochs=3,
                            batch_size=8, learning_rate=3e-3, seed=3, progress=False,
                            workdir=sys.argv[1])
    models.save_variables(sys.argv[1] + "/final.msgpack", result.variables)
""")


def test_finetuning_killed_mid_epoch_resumes_bit_identically(tmp_path):
  from jaxdef import models
  from jaxdef.train import _checkpoint

  def run(workdir, kill_after_first_epoch):
    log = workdir.with_suffix(".log")
    with log.open("w") as stderr:  # a file, not a pipe nobody reads while it runs
      process = subprocess.Popen([sys.executable, "-c", TRAIN_CHILD, str(workdir)], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    if kill_after_first_epoch:
      deadline = time.time() + 300
      while time.time() < deadline and not _checkpoint.epoch_path(workdir, 1).exists():
        time.sleep(0.01)
      time.sleep(0.3)  # into the second epoch (128 steps of 8 images)
      assert process.poll() is None, f"training ended before it could be killed: " \
                                     f"{log.read_text()[-3000:]}"
      process.kill()
      process.wait()
      assert not (workdir / "final.msgpack").exists()
      assert [e for e, _ in _checkpoint.list_checkpoints(workdir)] == [1]
      return
    process.wait(timeout=600)
    assert process.returncode == 0, log.read_text()[-3000:]

  run(tmp_path / "killed", kill_after_first_epoch=True)
  first = _checkpoint.epoch_path(tmp_path / "killed", 1)
  written = (first.read_bytes(), first.stat().st_mtime_ns)
  run(tmp_path / "killed", kill_after_first_epoch=False)
  # It resumed from epoch 1 (not from scratch, which would rewrite that checkpoint).
  assert (first.read_bytes(), first.stat().st_mtime_ns) == written
  run(tmp_path / "whole", kill_after_first_epoch=False)
  killed, whole = (models.load_variables(tmp_path / run / "final.msgpack")
                   for run in ("killed", "whole"))
  for a, b in zip(jax.tree.leaves(killed), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  last = [_checkpoint.load_checkpoint(_checkpoint.epoch_path(tmp_path / run, 3))
          for run in ("killed", "whole")]
  for a, b in zip(jax.tree.leaves(last[0].opt_state), jax.tree.leaves(last[1].opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the optimizer state too
  strip = lambda history: [{k: v for k, v in h.items() if "seconds" not in k} for h in history]
  assert strip(last[0].history) == strip(last[1].history)
  assert [h["epoch"] for h in last[0].history] == [1, 2, 3]
  assert all("val_vote_accuracy" in h for h in last[0].history)  # the votes were compared
