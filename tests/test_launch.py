"""The launcher: configs by path and variant, overrides, unknown names, dry runs."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import default as default_config
from jaxdef import defenses
from jaxdef import experiments

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _launch(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, "-m", "launch.run", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def test_unknown_variant_and_experiment_are_named(tmp_path):
  with pytest.raises(ValueError, match="unknown variant 'huge'.*tiny"):
    default_config.get_config("huge")
  config = default_config.get_config("tiny")
  config.experiment = "nope"
  with pytest.raises(ValueError, match="config.experiment must be one of audit, default"):
    experiments.run(config, tmp_path)


def test_launcher_command_line_with_overrides(tmp_path):
  done = _launch("--config=configs/theory.py:tiny", "--config.theory.eps=0.25",
                 f"--workdir={tmp_path}")
  assert done.returncode == 0, done.stderr[-3000:]
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["theory"]["eps"] == 0.25
  assert json.loads((tmp_path / "theory.json").read_text())["eps"] == 0.25


def test_default_config_dry_run_names_loaders_and_cost():
  done = _launch("--dry_run")
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout[done.stdout.index("{\n"):])
  assert report["experiment"] == "default"
  assert report["models"] == {"base": "fashion_small_resnet", "invariant": "fashion_small_resnet"}
  assert report["image_gradients"] == 2 * 2 * 2 * (1 + 5) * 50 * 100


def test_bench_writes_throughput_records(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  done = subprocess.run(
      [sys.executable, "-m", "launch.bench", f"--workdir={tmp_path}", "--batch=4", "--steps=1",
       "--eot=1,2", "--votes=4", "--defense=smoothing", "--widths=4-8", "--resnets=",
       "--notorch", "--nostudy", "--flops=off", "--bart_rates=off"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = json.loads((tmp_path / "bench.json").read_text())["results"]
  assert {r["engine"] for r in rows} == {"jaxdef"}  # --notorch
  assert [(r["kind"], r.get("eot")) for r in rows] == [("pgd", 1), ("pgd", 2), ("vote", None)]
  assert all(r["defense"] == "randomized_smoothing(0.25)" for r in rows)
  assert rows[0]["image_gradients_per_second"] > 0 and rows[2]["forward_passes_per_second"] > 0
  assert "image-gradients/s" in (tmp_path / "bench.md").read_text()


def test_gpu_bench_smoke_runs_the_gpu_command_on_this_machine(tmp_path):
  # The CPU smoke mode of the GPU command: its code path end to end, tiny sizes.
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHON=sys.executable)
  done = subprocess.run(["bash", "launch/gpu_bench.sh", "--smoke", str(tmp_path)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((tmp_path / "bench.json").read_text())
  ours = [r for r in result["results"] if r["engine"] == "jaxdef"]
  assert {(r["model_label"], r["kind"], r.get("eot")) for r in ours} == {
      ("resnet18 32x32", "pgd", 2), ("resnet18 32x32", "vote", None)}
  assert all(r["batch"] == 1 for r in ours) and ours[0]["image_gradients_per_second"] > 0
  # ResNet-18's 11 distinct convolutions, each timed in both formulations.
  shapes = result["conv_shapes"]
  assert len(shapes) == 11 and all(s["x_shape"][0] == 1 for s in shapes)
  assert all(s["seconds"]["xla_forward"] > 0 and s["seconds"]["unfold_gradient"] > 0
             for s in shapes)
  (size,) = result["bart_rates"]["sizes"]
  assert (size["side"], size["batch"], list(size["bart"])) == (28, 2, ["1"])
  assert set(size["transforms"]) == {name for name, _ in defenses.BART_TRANSFORMS}
  first = size["transforms"][defenses.BART_TRANSFORMS[0][0]]
  assert size["bart"]["1"]["ratio"] == pytest.approx(
      size["bart"]["1"]["seconds_per_draw"] / first["seconds_per_draw"])
  report = (tmp_path / "bench.md").read_text()
  assert "## Convolutions one by one" in report and "resnet18 32x32" in report


def test_gpu_bench_without_a_gpu_says_how_to_get_one(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHON=sys.executable)
  done = subprocess.run(["bash", "launch/gpu_bench.sh", str(tmp_path)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and "JAX sees no GPU" in done.stderr and "--smoke" in done.stderr
  assert not (tmp_path / "bench.json").exists()


def test_setup_gives_uv_the_package_sources_pip_is_configured_with():
  from launch import pip_to_uv

  listed = ["global.find-links='/opt/wheels /more/wheels'",
            "global.extra-index-url='file:///opt/pypi/simple'",
            "install.extra-index-url='https://mirror.example/simple'",  # beats global
            "global.constraint='/etc/constraints.txt'",
            "global.cert='/etc/ssl/certs/ca-certificates.crt'",  # not a package source
            ":env:.find-links='/env/wheels'",  # PIP_FIND_LINKS beats every file
            "global.no-index='false'", "garbage without an equals sign"]
  arguments = pip_to_uv.uv_arguments(listed)
  pairs = list(zip(arguments[::2], arguments[1::2]))
  assert pairs == [("--index-strategy", "unsafe-best-match"), ("--find-links", "/env/wheels"),
                   ("--extra-index-url", "https://mirror.example/simple"),
                   ("--constraint", "/etc/constraints.txt")]
  assert pip_to_uv.uv_arguments([":env:.no-index='1'"])[-1] == "--no-index"
  # This machine's own settings come through `pip config list` (empty is fine).
  done = subprocess.run([sys.executable, "launch/pip_to_uv.py"], cwd=ROOT, capture_output=True,
                        text=True, timeout=60, check=True)
  assert done.stdout.splitlines()[:2] == ["--index-strategy", "unsafe-best-match"]
