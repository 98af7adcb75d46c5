"""Claims on a shared workdir: processes split a sweep, each unit computed once; stale claims."""

import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import pytest

from jaxdef import _files
from jaxdef.experiments import _claims
from jaxdef.experiments import _sweep

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_experiments_sweep import _problem  # noqa: E402  (the shared tiny problem)

WORKER = """
import json, pathlib, sys, time
sys.path.insert(0, {tests!r})
import jax
from jaxdef import compile_cache
compile_cache.enable()  # the session's cache: the programs `single` compiled load
from test_experiments_claims import _spec
from test_experiments_sweep import _problem
from jaxdef.experiments import _sweep

workdir, me, other, out = map(pathlib.Path, sys.argv[1:5])
_, clfs, x, y, targets = _problem()
me.touch()
while not other.exists():  # start together
  time.sleep(0.02)
computed = []
records = _sweep.run_sweep(_spec(), clfs, x, y, targets, jax.random.key(0), workdir,
                           progress=False, on_unit=lambda unit: computed.append(unit.name),
                           poll_s=0.1)
out.write_text(json.dumps({{"pid": __import__("os").getpid(), "computed": computed,
                           "records": records}}))
"""


def _spec():
  """Four units (untargeted, m in {1, 2}, two alphas), one work item each."""
  return dataclasses.replace(_problem()[0], targeted=(False,))


def _strip(records):
  return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


def _run(workdir, **options):
  _, clfs, x, y, targets = _problem()
  return _sweep.run_sweep(_spec(), clfs, x, y, targets, jax.random.key(0), workdir,
                          progress=False, **options)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("single"))


def _write_claim(directory, item, generation=0, **owner):
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"{item}.claim{generation}"
  path.write_text(json.dumps({"item": item, "generation": generation, **owner}))
  return path


def _dead_pid():
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_two_processes_share_a_sweep_and_compute_each_unit_once(single, tmp_path):
  workdir = tmp_path / "shared"
  script = tmp_path / "worker.py"
  script.write_text(WORKER.format(tests=str(ROOT / "tests")))
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  workers = []
  for me, other in (("a", "b"), ("b", "a")):
    workers.append(subprocess.Popen(
        [sys.executable, str(script), str(workdir), str(tmp_path / f"ready_{me}"),
         str(tmp_path / f"ready_{other}"), str(tmp_path / f"out_{me}.json")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for worker in workers:
    _, stderr = worker.communicate(timeout=600)
    assert worker.returncode == 0, stderr[-3000:]
  outputs = [json.loads((tmp_path / f"out_{me}.json").read_text()) for me in "ab"]

  units = [unit.name for unit in _spec().units()]
  computed = outputs[0]["computed"] + outputs[1]["computed"]
  assert sorted(computed) == sorted(units)  # every unit once, by one of the two
  # One claim per work item, never taken over, held by the process that computed it.
  for item, (unit,) in _spec().groups():
    (claim,) = (workdir / "claims").glob(f"{item}.claim*")
    owner = json.loads(claim.read_text())
    assert claim.name.endswith(".claim0") and owner["host"] == socket.gethostname()
    assert owner["process_index"] == 0
    assert unit.name in next(o["computed"] for o in outputs if o["pid"] == owner["pid"])
  for output in outputs:
    assert _strip(output["records"]) == _strip(single)
  print(f"split: {len(outputs[0]['computed'])} + {len(outputs[1]['computed'])} units")


def test_stale_claims_are_taken_over_by_exactly_one_process(tmp_path):
  directory = tmp_path / "claims"
  claims = _claims.Claims(directory, stale_after_s=60)
  try:
    # Left by a dead process of this host (an interrupted run): taken back at once.
    _write_claim(directory, "dead", host=socket.gethostname(), pid=_dead_pid())
    assert claims.acquire("dead")
    assert json.loads((directory / "dead.claim1").read_text())["pid"] == os.getpid()
    # This process's own claim (an earlier, interrupted call): still its own, no new file.
    assert claims.acquire("dead") and claims.latest("dead")[0] == 1
    # Another host's live claim is respected until its heartbeat is too old.
    fresh = _write_claim(directory, "remote", host="elsewhere", pid=1)
    assert not claims.acquire("remote")
    assert "host elsewhere" in claims.describe("remote")
    old = time.time() - 120
    os.utime(fresh, (old, old))
    # Two processes see the same stale claim: the next generation goes to one of them.
    rivals = [_claims.Claims(directory, stale_after_s=60) for _ in range(2)]
    for name, rival in zip(("host-a", "host-b"), rivals):
      rival.host = name
    assert [rival.is_stale(fresh, rival.owner(fresh)) for rival in rivals] == [True, True]
    assert [rival._create("remote", 1) for rival in rivals] == [True, False]
    assert not claims.acquire("remote")  # host-a's fresh claim now
    assert json.loads((directory / "remote.claim1").read_text())["host"] == "host-a"
    for rival in rivals:
      rival.close()
  finally:
    claims.close()
  with pytest.raises(ValueError, match="stale_after_s must be > 0"):
    _claims.Claims(directory, stale_after_s=0)


def test_heartbeat_keeps_a_held_claim_fresh_until_released(tmp_path):
  claims = _claims.Claims(tmp_path, stale_after_s=0.6)  # a beat every 0.1 s
  try:
    assert claims.acquire("item")
    path = claims.latest("item")[1]
    old = time.time() - 100
    os.utime(path, (old, old))
    deadline = time.time() + 10  # a beat is due within 0.1 s; a loaded machine may lag
    while abs(path.stat().st_mtime - old) < 1 and time.time() < deadline:
      time.sleep(0.05)
    assert time.time() - path.stat().st_mtime < 1
    claims.release("item")
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert abs(path.stat().st_mtime - old) < 1  # no beat once released
  finally:
    claims.close()


def test_a_live_claim_is_waited_for_then_a_stale_one_recomputed(single, tmp_path, capsys):
  workdir = tmp_path / "run"
  item = _spec().groups()[1][0]
  claim = _write_claim(workdir / "claims", item, host="elsewhere", pid=1)
  with pytest.raises(TimeoutError, match=f"{item} \\(host elsewhere, pid 1"):
    _run(workdir, wait_timeout_s=0.5, poll_s=0.1, message_every_s=0)
  assert f"claimed by other processes: {item} (host elsewhere" in capsys.readouterr().err
  done = {path.name.split("__k")[0] for path in (workdir / "records").glob("*.json")}
  assert done == {unit.name for unit in _spec().units()} - {item}
  old = time.time() - 120
  os.utime(claim, (old, old))  # its owner stopped beating: taken over, computed here
  assert _strip(_run(workdir, claim_stale_s=60, poll_s=0.1)) == _strip(single)
  assert json.loads((workdir / "claims" / f"{item}.claim1").read_text())["pid"] == os.getpid()


def test_a_process_killed_while_claiming_leaves_no_claim_to_wait_for(tmp_path, monkeypatch):
  # Killed between creating the claim and writing its owner, a process used
  # to leave an empty claim that every rerun waited on for stale_after_s.
  directory = tmp_path / "claims"
  dying = _claims.Claims(directory, stale_after_s=600)

  def killed(*args, **kwargs):
    raise SystemExit("killed mid-write")

  monkeypatch.setattr(_files.os, "fsync", killed)
  with pytest.raises(SystemExit):
    dying.acquire("item")
  monkeypatch.undo()
  assert dying.latest("item") == (-1, None)
  rerun = _claims.Claims(directory, stale_after_s=600)
  try:
    assert rerun.acquire("item")  # at once, not after 600 s
    assert rerun.owner(rerun.latest("item")[1])["pid"] == os.getpid()
    assert sorted(p.name for p in directory.iterdir() if "clock" not in p.name) == ["item.claim0"]
  finally:
    rerun.close()
    dying.close()


def test_without_hard_links_claims_are_created_in_place(tmp_path, monkeypatch):
  def no_links(source, target):
    raise PermissionError(1, "Operation not permitted")

  monkeypatch.setattr(_files.os, "link", no_links)
  first, second = (_claims.Claims(tmp_path, stale_after_s=600) for _ in range(2))
  second.host = "elsewhere"  # a rival on another host
  try:
    assert first.acquire("item") and not second.acquire("item")
    assert first.owner(first.latest("item")[1])["host"] == first.host
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(("draft", "claim0"))] == [
        "item.claim0"]
  finally:
    first.close()
    second.close()
