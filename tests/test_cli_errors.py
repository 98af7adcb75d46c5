"""Every `launch/` entry point: a user's mistake is one line on stderr and exit 2.

Each case runs the entry point as a user would, as `__main__` in a process
of its own, and checks the exit status, that stderr is exactly one line
starting "error:" and naming the field, flag or path, that no traceback is
printed and that nothing was written; `--verbose` (and JAXDEF_VERBOSE=1)
brings the traceback back.

The cases' processes are forked from one that has imported the third-party
libraries (JAX above all, about 1.5 s of every start); the `--verbose`
tests and the bug's traceback start a fresh interpreter, as a user does.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
UNCREATABLE = "/proc/jaxdef-cannot-create-this"


def _launch(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  """`python -m module args` in a fresh interpreter."""
  environment = {**os.environ, "PYTHONPATH": str(ROOT), "JAXDEF_VERBOSE": "", **(env or {})}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=environment,
                        capture_output=True, text=True, timeout=300)


# Reads one request per line ({"module", "args", "env", "stdout", "stderr"}),
# forks, runs the module as __main__ in the child with its output in the two
# files, and answers the child's exit status. jaxdef itself is not imported
# before the fork: the child reads its environment as a fresh process does.
_FORK_SERVER = """
import json, os, runpy, sys, traceback
import absl.app, absl.flags, flax, jax, ml_collections, numpy, optax, scipy  # noqa: F401
for line in sys.stdin:
  request = json.loads(line)
  pid = os.fork()
  if pid == 0:
    code = 1
    try:
      for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
      os.environ.update(request["env"])
      sys.argv = [request["module"], *request["args"]]
      runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
      code = 0
    except SystemExit as stop:  # as the interpreter itself treats it
      if stop.code is None or isinstance(stop.code, int):
        code = stop.code or 0
      else:
        print(stop.code, file=sys.stderr)
    except BaseException:
      traceback.print_exc()
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
  _, status = os.waitpid(pid, 0)
  print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@pytest.fixture(scope="module")
def forked_launch(tmp_path_factory):
  """Like `_launch`, each call a process forked from one warm interpreter."""
  environment = {**os.environ, "PYTHONPATH": str(ROOT), "JAXDEF_VERBOSE": ""}
  server = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], cwd=ROOT, env=environment,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  outputs = tmp_path_factory.mktemp("forked_launch")

  def launch(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    out, err = outputs / "stdout", outputs / "stderr"
    request = {"module": module, "args": list(args), "env": env or {}, "stdout": str(out),
               "stderr": str(err)}
    server.stdin.write(json.dumps(request) + "\n")
    server.stdin.flush()
    answer = server.stdout.readline()
    assert answer, "the fork server died"
    return subprocess.CompletedProcess([module, *args], json.loads(answer)["returncode"],
                                       out.read_text(), err.read_text())

  yield launch
  server.stdin.close()
  server.wait(timeout=60)


def _held_workdir(path: pathlib.Path) -> str:
  """A workdir whose lock a live process on this host holds (pid 1 never exits)."""
  path.mkdir()
  (path / ".lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname(),
                                          "started": "earlier", "command": "another run"}))
  return str(path)


def _assert_one_line(done: subprocess.CompletedProcess, *named: str) -> str:
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
  assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
  assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
  for text in named:
    assert text in lines[0], (text, lines[0])
  return lines[0]


# (module, arguments, texts the one line must name); "{tmp}" is a fresh folder,
# "{held}" a workdir another live run holds.
CASES = {
    # launch.run: the main entry point, every mistake the issue names.
    "run: bad field value": (
        "launch.run", ["--config=configs/theory.py:tiny", "--config.theory.eps=-1",
                       "--workdir={tmp}/run"], ["config.theory.eps"]),
    "run: field of the wrong type": (
        "launch.run", ["--config=configs/theory.py:tiny", "--config.theory.num_k=many",
                       "--workdir={tmp}/run"], ["--config.theory.num_k=many"]),
    "run: unknown field, with its did-you-mean hint": (
        "launch.run", ["--config.attack.eps_25=1", "--workdir={tmp}/run"],
        ["--config.attack.eps_25", 'Did you mean "eps_255"']),
    "run: unknown variant": (
        "launch.run", ["--config=configs/default.py:huge", "--workdir={tmp}/run"],
        ["unknown variant 'huge'", "allowed: tiny"]),
    "run: missing config file": (
        "launch.run", ["--config=configs/nope.py", "--workdir={tmp}/run"],
        ["--config=configs/nope.py", "no such file"]),
    "run: workdir that cannot be created": (
        "launch.run", ["--config=configs/theory.py:tiny", f"--workdir={UNCREATABLE}"],
        [f"--workdir={UNCREATABLE}"]),
    "run: workdir held by another run": (
        "launch.run", ["--config=configs/theory.py:tiny", "--workdir={held}"],
        ["is in use by pid 1", "another run"]),
    "run: missing data set": (
        "launch.run", ["--config=configs/default.py:tiny", "--workdir={tmp}/run"],
        ["Fashion-MNIST", "dataset-fashion-mnist", "JAXDEF_FASHION_MNIST_DIR"]),
    "run: unknown flag": ("launch.run", ["--workdri=x"], ["workdri"]),
    # launch.train_fashion
    "train_fashion: bad flag value": (
        "launch.train_fashion", ["--epochs=many", "--workdir={tmp}/run"], ["--epochs"]),
    "train_fashion: workdir that cannot be created": (
        "launch.train_fashion", [f"--workdir={UNCREATABLE}"], [f"--workdir={UNCREATABLE}"]),
    "train_fashion: workdir held by another run": (
        "launch.train_fashion", ["--workdir={held}"], ["is in use by pid 1"]),
    "train_fashion: missing data set": (
        "launch.train_fashion", ["--workdir={tmp}/run"], ["Fashion-MNIST"]),
    # launch.vote_agreement
    "vote_agreement: unknown field": (
        "launch.vote_agreement", ["--config.attack.stepz=3", "--workdir={tmp}/run"],
        ["--config.attack.stepz"]),
    "vote_agreement: missing config file": (
        "launch.vote_agreement", ["--config=configs/nope.py", "--workdir={tmp}/run"],
        ["no such file"]),
    "vote_agreement: bad flag value": (
        "launch.vote_agreement", ["--votes=50,many", "--workdir={tmp}/run"], ["--votes"]),
    "vote_agreement: workdir held by another run": (
        "launch.vote_agreement", ["--workdir={held}"], ["is in use by pid 1"]),
    # launch.bench
    "bench: bad flag value": ("launch.bench", ["--eot=1,ten", "--workdir={tmp}/run"], ["--eot"]),
    "bench: unknown study config field": (
        "launch.bench", ["--study_config.attack.stepz=3", "--workdir={tmp}/run"],
        ["--study_config.attack.stepz"]),
    "bench: workdir that cannot be created": (
        "launch.bench", [f"--workdir={UNCREATABLE}"], [f"--workdir={UNCREATABLE}"]),
    # the two A/B benchmarks take no arguments
    "bench_kwta: unexpected argument": ("launch.bench_kwta", ["now"], ["unexpected arguments"]),
    "bench_conv_layout: unknown flag": ("launch.bench_conv_layout", ["--fast"], ["fast"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_mistake_is_one_line_and_exit_status_2(case, tmp_path, forked_launch):
  module, args, named = CASES[case]
  env = {}
  if "missing data set" in case:  # an empty folder, and no tensorflow-datasets copy either
    (tmp_path / "empty").mkdir()
    env = {"JAXDEF_FASHION_MNIST_DIR": str(tmp_path / "empty"),
           "TFDS_DATA_DIR": str(tmp_path / "empty")}
  held = _held_workdir(tmp_path / "held") if "{held}" in " ".join(args) else ""
  args = [arg.format(tmp=tmp_path, held=held) for arg in args]
  done = forked_launch(module, *args, env=env)
  _assert_one_line(done, *named)
  if "missing data set" not in case:  # found only once the run has started
    assert not (tmp_path / "run" / "config.json").exists()  # refused before writing
  if held:
    assert json.loads((tmp_path / "held" / ".lock").read_text())["pid"] == 1  # lock kept


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_verbose_restores_the_traceback(how, tmp_path):
  args = ["--config=configs/theory.py:tiny", "--config.theory.eps=-1", f"--workdir={tmp_path}"]
  if how == "flag":
    done = _launch("launch.run", *args, "--verbose")
  else:
    done = _launch("launch.run", *args, env={"JAXDEF_VERBOSE": "1"})
  assert done.returncode != 0
  assert "Traceback (most recent call last)" in done.stderr
  assert "config.theory.eps" in done.stderr


def test_a_bug_keeps_its_traceback(tmp_path):
  """An exception that is not about the input (here a TypeError inside a run) is not hidden."""
  script = tmp_path / "entry.py"
  script.write_text(
      "from launch import _cli\n"
      "def main(argv):\n"
      "  raise TypeError('a bug, not a mistake')\n"
      "_cli.run(main)\n")
  done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(ROOT), JAXDEF_VERBOSE=""),
                        timeout=300)
  assert done.returncode == 1
  assert "Traceback (most recent call last)" in done.stderr
  assert "a bug, not a mistake" in done.stderr
