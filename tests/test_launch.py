"""One end-to-end run of the launcher on the tiny default config."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import default as default_config
from jaxdef import experiments

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_default_tiny_run_writes_its_records(tmp_path):
  config = default_config.get_config("tiny")
  result = experiments.run(config, tmp_path)
  for name in ("config.json", "environment.json", "indices.json", "defense_survey.json",
               "summary.md", "defense_samples.png", "defense_samples.pdf"):
    assert (tmp_path / name).is_file(), name
  survey = json.loads((tmp_path / "defense_survey.json").read_text())
  assert [r["label"] for r in survey] == [r["label"] for r in result["survey"]]
  for record in survey:
    assert record["num_samples"] == config.num_samples
    assert record["std_across_draws"] > 0  # every configured defense is random
    assert record["draws_per_second"] > 0
  bart = next(r for r in survey if r["label"] == "bart_2")
  assert 0 <= bart["value_range"][0] <= bart["value_range"][1] <= 1
  indices = json.loads((tmp_path / "indices.json").read_text())["indices"]
  assert len(indices) == config.data.num_images == len(set(indices))
  summary = (tmp_path / "summary.md").read_text()
  assert "bart_2" in summary and "not yet available" in summary


def test_unknown_variant_and_experiment_are_named(tmp_path):
  with pytest.raises(ValueError, match="unknown variant 'huge'.*tiny"):
    default_config.get_config("huge")
  config = default_config.get_config("tiny")
  config.experiment = "nope"
  with pytest.raises(ValueError, match="config.experiment must be one of default"):
    experiments.run(config, tmp_path)


def test_launcher_command_line_with_overrides(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  command = [sys.executable, "-m", "launch.run", "--config=configs/default.py:tiny",
             "--config.num_samples=3", f"--workdir={tmp_path}"]
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["num_samples"] == 3
