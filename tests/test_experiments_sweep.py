"""The resumable k x m sweep: records, resume after interruption, best alpha, configs."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd
from configs import kxm_sweep
from jaxdef import experiments
from jaxdef.experiments import _sweep

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEIGHTS = np.random.default_rng(0).normal(size=(4 * 4 * 1, 3)).astype(np.float32)


def linear_logits(images):
  return images.reshape(images.shape[0], -1) @ WEIGHTS


def _problem():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(0.2, 0.8, (6, 4, 4, 1)).astype(np.float32))
  y = jnp.argmax(linear_logits(x), -1).astype(jnp.int32)  # all initially correct
  targets = jnp.where(y == 2, 0, 2).astype(jnp.int32)
  clf = jd.StochasticClassifier(linear_logits, jd.defenses.randomized_smoothing(0.05))
  spec = _sweep.SweepSpec(models=("linear",), defenses=("rs",), targeted=(False, True),
                          eots=(1, 2), alphas=(0.01, 0.04), checkpoints=(1, 3), eps=0.1,
                          votes=5)
  return spec, {("linear", "rs"): clf}, x, y, targets


class Interrupt(Exception):
  pass


def test_records_resume_and_equal_an_uninterrupted_sweep(tmp_path):
  spec, clfs, x, y, targets = _problem()
  key = jax.random.key(0)
  whole = _sweep.run_sweep(spec, clfs, x, y, targets, key, tmp_path / "whole", progress=False)
  assert len(whole) == len(spec.units()) * len(spec.checkpoints) == 16
  for record in whole:
    assert record["gradient_computations"] == record["k"] * record["m"]
    assert record["denominator"] == 6 and record["num_votes"] == 5
    assert record["ci_low"] <= record["rate"] <= record["ci_high"]

  finished = []

  def stop_after_three(unit):
    finished.append(unit.name)
    if len(finished) == 3:
      raise Interrupt

  with pytest.raises(Interrupt):
    _sweep.run_sweep(spec, clfs, x, y, targets, key, tmp_path / "cut", progress=False,
                     on_unit=stop_after_three)
  assert len(list((tmp_path / "cut" / "records").glob("*.json"))) == 3 * 2
  resumed_units = []
  resumed = _sweep.run_sweep(spec, clfs, x, y, targets, key, tmp_path / "cut", progress=False,
                             on_unit=lambda u: resumed_units.append(u.name))
  assert len(resumed_units) == len(spec.units()) - 3 and not set(resumed_units) & set(finished)
  strip = lambda rs: [{k: v for k, v in r.items() if "seconds" not in k} for r in rs]
  assert strip(resumed) == strip(whole)


def test_corrupt_record_is_reported_and_recomputed(tmp_path):
  spec, clfs, x, y, targets = _problem()
  key = jax.random.key(0)
  first = _sweep.run_sweep(spec, clfs, x, y, targets, key, tmp_path, progress=False)
  victim = _sweep.cell_path(tmp_path, spec.units()[1], 3)
  victim.write_text(victim.read_text()[:20])  # truncated mid-write by a crash
  redone = []
  with pytest.warns(RuntimeWarning, match=victim.name):
    second = _sweep.run_sweep(spec, clfs, x, y, targets, key, tmp_path, progress=False,
                              on_unit=lambda u: redone.append(u.name))
  assert redone == [spec.units()[1].name]
  assert [r["successes"] for r in second] == [r["successes"] for r in first]


def test_best_alpha_keeps_the_highest_rate_and_the_smaller_alpha_on_ties():
  base = {"model": "m", "defense": "d", "targeted": False, "m": 1, "k": 10}
  records = [dict(base, alpha=0.01, rate=0.5), dict(base, alpha=0.02, rate=0.7),
             dict(base, alpha=0.03, rate=0.7), dict(base, k=20, alpha=0.02, rate=float("nan")),
             dict(base, k=20, alpha=0.01, rate=0.1)]
  best = _sweep.best_alpha(records)
  assert [(r["k"], r["alpha"]) for r in best] == [(10, 0.02), (20, 0.01)]


def test_tiny_config_end_to_end_writes_tables_and_figures(tmp_path):
  config = kxm_sweep.get_config("tiny")
  config.progress = False
  result = experiments.run(config, tmp_path)
  cells = len(config.attack.steps) * len(config.attack.eots) * len(config.attack.alphas_255) * 2
  assert len(result["records"]) == cells
  for name in ("config.json", "environment.json", "indices.json", "results.csv", "summary.md"):
    assert (tmp_path / name).is_file(), name
  figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
  assert "heatmap__untrained__smoothing_025__targeted.png" in figures
  assert "curves__untrained__smoothing_025__untargeted.pdf" in figures
  lines = (tmp_path / "results.csv").read_text().splitlines()
  assert len(lines) == cells + 1 and lines[0].startswith("model,defense,targeted,k,m")
  summary = (tmp_path / "summary.md").read_text()
  assert "| k \\ m | 1 | 2 |" in summary and "CI" in summary

  config.attack.votes = 9  # another config: refused, nothing overwritten
  before = (tmp_path / "results.csv").read_text()
  with pytest.raises(ValueError, match="different config \\(changed: attack.votes\\)"):
    experiments.run(config, tmp_path)
  assert (tmp_path / "results.csv").read_text() == before


def _launch(workdir, *extra):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  command = [sys.executable, "-m", "launch.run", "--config=configs/kxm_sweep.py:tiny",
             "--config.progress=False", "--config.attack.steps=(1, 2, 4)", f"--workdir={workdir}",
             *extra]
  return command, env


def test_sigkill_midway_then_rerun_gives_the_uninterrupted_table(tmp_path):
  command, env = _launch(tmp_path / "killed")
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
  records = tmp_path / "killed" / "records"
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if records.is_dir() and len(list(records.glob("*.json"))) >= 3:
      break
    time.sleep(0.05)
  assert process.poll() is None, process.stderr.read().decode()[-2000:]
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  partial = len(list(records.glob("*.json")))
  assert 3 <= partial < 24
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  command, env = _launch(tmp_path / "whole")
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  def table(run):
    rows = (tmp_path / run / "results.csv").read_text().splitlines()
    header = rows[0].split(",")
    keep = [i for i, name in enumerate(header) if "seconds" not in name]
    return [[row.split(",")[i] for i in keep] for row in rows]

  assert table("killed") == table("whole")


@pytest.mark.parametrize("variant", ["imagenet", "fashion"])
def test_full_size_configs_dry_run(variant, capsys):
  config = kxm_sweep.get_config(variant)
  report = experiments.dry_run(config)
  assert report["units"] == len(_sweep_units(config))
  assert report["image_gradients"] > 0 and report["defended_forward_passes"] > 0
  if variant == "imagenet":
    assert "path not set" in report["models"]["resnet50"]
    # ResNet-50: about 8.2 GFLOPs per 224 x 224 forward pass (XLA's count).
    flops = report["tflop_resnet50"] * 1e12 / (3 * report["image_gradients"]
                                              + report["defended_forward_passes"])
    assert 7.5e9 < flops < 9e9
  json.dumps(report)


def _sweep_units(config):
  from jaxdef.experiments import _kxm

  return _kxm.sweep_spec(config, config.models, config.defenses).units()


def test_bad_config_entries_are_named(tmp_path):
  config = kxm_sweep.get_config("tiny")
  config.models.untrained.source = "hub"
  with pytest.raises(ValueError, match="config.models.untrained.source must be one of"):
    experiments.dry_run(config)
  config = kxm_sweep.get_config("tiny")
  config.defenses.smoothing_025.name = "smothing"
  with pytest.raises(ValueError, match="smothing"):
    experiments.dry_run(config)
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    kxm_sweep.get_config("huge")
