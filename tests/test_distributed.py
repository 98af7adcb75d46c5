"""Multi-host initialisation (jaxdef.sharding.initialize_distributed), without a cluster.

Argument handling and SLURM detection are checked in this process; one test
starts two local processes that join one JAX run over localhost, each with
two simulated CPU devices that it shards its batches over. Run as a script,
this file is one of those processes.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd
from jaxdef import sharding

SLURM = {"SLURM_JOB_ID": "1234", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
         "SLURM_STEP_NODELIST": "gpu[003-004]"}


@pytest.mark.parametrize("node_list, host", [
    ("node001", "node001"),
    ("node001,host2", "node001"),
    ("node[001-015],host2", "node001"),
    ("node[007,009-015]", "node007"),
    ("gpu-a[09]", "gpu-a09"),
    ("a1,b[1-2]", "a1"),
])
def test_first_slurm_host(node_list, host):
  assert sharding.first_slurm_host(node_list) == host


def test_unreadable_node_list():
  with pytest.raises(ValueError, match="node list"):
    sharding.first_slurm_host("[001-002]")


def test_slurm_arguments_from_the_environment():
  assert sharding.slurm_arguments({}) is None
  assert sharding.slurm_arguments(SLURM) == {
      "coordinator_address": f"gpu003:{61440 + 1234 % 4096}", "num_processes": 2,
      "process_id": 1}
  assert sharding.slurm_arguments(SLURM | {"JAX_COORDINATOR_PORT": "5555"})[
      "coordinator_address"] == "gpu003:5555"
  assert sharding.slurm_arguments(SLURM | {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:7777"})[
      "coordinator_address"] == "10.0.0.1:7777"
  without_step = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}
  assert sharding.slurm_arguments(without_step | {"SLURM_JOB_NODELIST": "n[5-6]"})[
      "coordinator_address"].startswith("n5:")
  with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS"):
    sharding.slurm_arguments(without_step)
  with pytest.raises(ValueError, match="integers"):
    sharding.slurm_arguments(SLURM | {"SLURM_NTASKS": "2(x3)"})


@pytest.mark.parametrize("kwargs, error, match", [
    ({"coordinator_address": "localhost:1234"}, ValueError, "missing: num_processes, process_id"),
    ({"num_processes": 2, "process_id": 0}, ValueError, "missing: coordinator_address"),
    ({"coordinator_address": "localhost", "num_processes": 2, "process_id": 0}, ValueError,
     "'host:port'"),
    ({"coordinator_address": 1234, "num_processes": 2, "process_id": 0}, ValueError,
     "'host:port'"),
    ({"coordinator_address": "localhost:70000", "num_processes": 2, "process_id": 0},
     ValueError, "port must be in"),
    ({"coordinator_address": "localhost:0", "num_processes": 2, "process_id": 0}, ValueError,
     "port must be in"),
    ({"coordinator_address": "h:1", "num_processes": 0, "process_id": 0}, ValueError,
     "num_processes must be >= 1"),
    ({"coordinator_address": "h:1", "num_processes": 2.0, "process_id": 0}, TypeError,
     "num_processes must be an integer"),
    ({"coordinator_address": "h:1", "num_processes": True, "process_id": 0}, TypeError,
     "num_processes must be an integer"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, ValueError,
     r"process_id must be in \[0, 1\]"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": -1}, ValueError,
     r"process_id must be in \[0, 1\]"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 0, "timeout_s": 0},
     ValueError, "timeout_s must be >= 1"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 0,
      "local_device_ids": []}, ValueError, "must not be empty"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 0,
      "local_device_ids": [0, -1]}, ValueError, "local_device_ids"),
])
def test_bad_arguments_are_named(kwargs, error, match):
  with pytest.raises(error, match=match):
    sharding.initialize_distributed(**kwargs)
  assert not jax.distributed.is_initialized()


def test_no_arguments_outside_slurm(monkeypatch):
  for name in SLURM:
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(ValueError, match="not inside a SLURM job"):
    sharding.initialize_distributed()


def test_slurm_values_are_checked(monkeypatch):
  for name, value in (SLURM | {"SLURM_PROCID": "2"}).items():
    monkeypatch.setenv(name, value)
  with pytest.raises(ValueError, match=r"process_id must be in \[0, 1\], got 2"):
    sharding.initialize_distributed()


def test_after_the_backend_started():
  jax.devices()  # starts the backend
  with pytest.raises(RuntimeError, match="before any other JAX call"):
    sharding.initialize_distributed("localhost:1234", 1, 0)
  assert not jax.distributed.is_initialized()


def test_launch_run_flags():
  """--distributed outside SLURM and stray or bad flags stop launch.run with the reason."""
  root = pathlib.Path(__file__).resolve().parent.parent
  env = {k: v for k, v in os.environ.items() if k not in SLURM}
  for args, message in (
      (["--distributed"], "not inside a SLURM job"),
      (["--num_processes=2", "--devices=off"], "need --distributed"),
      (["--devices=all"], "devices must be 'auto', 'off'")):
    done = subprocess.run([sys.executable, "-m", "launch.run", "--dry_run", *args], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and message in done.stdout + done.stderr, (args, done.stderr)


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("localhost", 0))
    return probe.getsockname()[1]


def test_two_local_processes_join_one_run():
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=2").strip())
  processes = [subprocess.Popen([sys.executable, __file__, f"localhost:{port}", str(i)],
                                env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for i in range(2)]
  outputs = []
  for process in processes:
    try:
      stdout, stderr = process.communicate(timeout=300)
    finally:
      if process.poll() is None:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    outputs.append(json.loads(stdout.strip().splitlines()[-1]))
  for i, report in enumerate(outputs):
    assert report["process_count"] == 2 and report["process_index"] == i
    assert report["device_count"] == 4 and report["local_device_count"] == 2
    assert report["sharded_over"] == 2 and report["sharded_equals_one_device"]
    assert report["joined"] == {"coordinator_address": f"localhost:{port}",
                                "num_processes": 2, "process_id": i}


def _process(address: str, process_id: int) -> None:
  """One of the two processes: join, then shard a vote over the 2 local devices."""
  joined = sharding.initialize_distributed(address, 2, process_id, timeout_s=120)
  rng = np.random.default_rng(0)
  weights = jnp.asarray(rng.normal(size=(28 * 28, 10)).astype(np.float32) / 28)
  clf = jd.StochasticClassifier(lambda x: x.reshape(x.shape[0], -1) @ weights,
                                jd.defenses.randomized_smoothing(0.25))
  images = jnp.asarray(rng.uniform(0, 1, (5, 28, 28, 1)).astype(np.float32))
  with sharding.use_devices("off"):
    reference = np.asarray(clf.draw_logits(jax.random.key(0), images, 3))
  sharded = np.asarray(clf.draw_logits(jax.random.key(0), images, 3))
  print(json.dumps({
      "joined": joined, "process_count": jax.process_count(),
      "process_index": jax.process_index(), "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "sharded_over": len(sharding.active_devices()),
      "sharded_equals_one_device": bool(np.array_equal(reference, sharded))}), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  _process(sys.argv[1], int(sys.argv[2]))
