"""Perturbation pictures, trained invariance and the invariance trade-off: tiny runs end to end."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from configs import finetune as finetune_config
from configs import invariance_bart
from configs import invariance_smoothing
from configs import perturbation_pictures
from jaxdef import experiments
from jaxdef.experiments import _invariance
from jaxdef.experiments import _pictures
from jaxdef.reports import tables


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
  # One folder for the module: the tiny base model is trained once and reused.
  return tmp_path_factory.mktemp("models")


def _tiny(module, models_dir, variant="tiny"):
  config = module.get_config(variant)
  config.models_dir = str(models_dir)
  config.progress = False
  return config


def _check_rate(record):
  assert 0 <= record["successes"] <= record["denominator"] <= record["num_images"]
  if record["denominator"]:
    assert record["rate"] == pytest.approx(record["successes"] / record["denominator"])
    assert record["ci_low"] <= record["rate"] <= record["ci_high"]
  else:
    assert math.isnan(record["rate"])
  assert 0 <= record["ci_low"] <= record["ci_high"] <= 1


def _check_sanity(run, summary: str, pairs: set, votes: int) -> None:
  """Every attacked (model, defense) pair was sanity-checked first, at the run's votes."""
  sanity = json.loads((run / "sanity.json").read_text())
  assert {(r["model"], r["defense_label"]) for r in sanity} == pairs
  for record in sanity:
    assert record["num_votes"] == votes and record["random"] and record["finite_logits"]
    assert 0 <= record["vote_correct"] <= record["num_images"]
  assert "## Sanity check before attacking" in summary


def test_pictures_tiny_run(tmp_path, models_dir):
  config = _tiny(perturbation_pictures, models_dir)
  result = experiments.run(config, tmp_path / "run")
  run = tmp_path / "run"
  records = json.loads((run / "records.json").read_text())
  assert len(records) == len(result["records"]) == len(config.attack.settings)
  budgets = {r["k"] * r["m"] for r in records}
  assert len(budgets) == 1 and {r["gradient_computations"] for r in records} == budgets
  assert {r["m"] for r in records} >= {1} and max(r["m"] for r in records) > 1
  eps = config.attack.eps_255 / 255
  for record in records:
    _check_rate(record)
    assert record["num_images"] == config.data.num_images
    assert record["max_abs_delta"] <= eps + 1e-6
    assert 0 <= record["mean_abs_delta_over_eps"] <= 1 + 1e-6
    assert 0 <= record["saturated_fraction"] <= 1
  # One evaluation key for every setting: the same clean votes, the same denominator.
  assert len({r["denominator"] for r in records}) == 1
  for suffix in ("png", "pdf"):
    assert (run / "figures" / f"perturbations__base__smoothing_025.{suffix}").is_file()
  summary = (run / "summary.md").read_text()
  assert not tables.unqualified_rates(summary)
  assert "k=4 x m=1" in summary and "k=2 x m=2" in summary
  assert f"/{records[0]['denominator']}" in summary and "CI" in summary
  _check_sanity(run, summary, {("base", label) for label in config.defenses},
                config.attack.votes)


def test_pictures_normalisation_and_budget_check():
  eps = 0.1
  np.testing.assert_allclose(_pictures.normalised(np.array([-eps, 0.0, eps]), eps),
                             [0.0, 0.5, 1.0])
  config = perturbation_pictures.get_config("tiny")
  config.attack.settings = ((4, 1), (3, 2))
  with pytest.raises(ValueError, match="one budget"):
    _pictures.settings_of(config)
  with pytest.raises(ValueError, match="allowed: fashion, imagenet, tiny"):
    perturbation_pictures.get_config("imagent")


def test_finetune_tiny_run(tmp_path, models_dir):
  config = _tiny(finetune_config, models_dir)
  result = experiments.run(config, tmp_path / "run")
  run = tmp_path / "run"
  rows = result["rows"]
  assert {r["model"] for r in rows} == {"base", "finetuned_smoothing_025"}
  assert len(rows) == len(config.models) * len(config.defenses)
  for row in rows:
    for key in ("clean_accuracy", "one_draw_accuracy", "vote_accuracy", "invariance"):
      assert 0 <= row[key] <= 1, key
      # Rates over 16 images (x draws): multiples of 1/16 for per-image ones.
    assert row["clean_accuracy"] * 16 == pytest.approx(round(row["clean_accuracy"] * 16))
    assert row["vote_accuracy"] * 16 == pytest.approx(round(row["vote_accuracy"] * 16))
  # The base model's clean accuracy does not depend on the defense; fine-tuning changed it.
  with open(run / "results.csv") as f:
    assert len(list(csv.DictReader(f))) == len(rows)
  saved = json.loads((run / "results.json").read_text())
  assert len(saved["histories"]["finetuned_smoothing_025"]) == 1  # one fine-tuning epoch
  for suffix in ("png", "pdf"):
    assert (run / "figures" / f"finetune_bars.{suffix}").is_file()
  assert "finetuned_smoothing_025" in (run / "summary.md").read_text()
  with pytest.raises(ValueError, match="allowed: fashion, tiny"):
    finetune_config.get_config("imagenet")


# BaRT's draws take minutes to compile on two CPU cores (training step, votes and
# APGD for two models); the smoothing study runs the same code path by default.
SLOW = pytest.mark.skipif(not os.environ.get("JAXDEF_SLOW_TESTS"),
                          reason="minutes on a CPU; set JAXDEF_SLOW_TESTS=1")


@pytest.mark.parametrize("module", [invariance_smoothing,
                                    pytest.param(invariance_bart, marks=SLOW)],
                         ids=["smoothing", "bart"])
def test_invariance_tiny_run(tmp_path, models_dir, module):
  config = _tiny(module, models_dir)
  result = experiments.run(config, tmp_path / "run")
  run = tmp_path / "run"
  records = result["records"]
  parameter = config.invariance.parameter
  expected = sorted(float(e[parameter]) for e in config.defenses.values())
  assert len(records) == 2 * len(config.defenses)
  for role in ("before", "after"):
    assert sorted(r["strength"] for r in records if r["role"] == role) == expected
  for record in records:
    _check_rate(record)
    assert record["num_images"] == config.data.num_images
    assert record["num_votes"] == config.attack.votes
    assert record["steps"] == config.attack.steps and record["eot"] == 1
    assert record["gradient_computations"] == config.attack.steps
    assert record["vote_accuracy"] == pytest.approx(record["denominator"] / record["num_images"])
    assert record["robust_accuracy"] == pytest.approx(
        (record["denominator"] - record["successes"]) / record["num_images"])
    assert 0 <= record["invariance"] <= 1 and 0 <= record["clean_accuracy"] <= 1
    if record["role"] == "before":
      assert record["model"] == "base"
    else:
      assert record["model"] == f"finetuned_{record['defense']}"
  # The base model's clean accuracy is one number whatever the defense.
  assert len({r["clean_accuracy"] for r in records if r["role"] == "before"}) == 1
  # Robustness during fine-tuning: epoch 0 is the base model's cell, the last
  # epoch's checkpoint is the fine-tuned model measured with the same draws.
  assert config.invariance.track_epochs
  tracked = list(csv.DictReader((run / "epochs.csv").open()))
  epochs = int(next(iter(config.models.values())).finetune_epochs)
  assert len(tracked) == (epochs + 1) * len(config.defenses)
  measured = ("successes", "denominator", "invariance", "clean_accuracy", "vote_accuracy")
  for record in records:
    role_epoch = 0 if record["role"] == "before" else epochs
    row = next(r for r in tracked
               if r["defense"] == record["defense"] and int(r["epoch"]) == role_epoch)
    for field in measured:
      assert float(row[field]) == pytest.approx(record[field]), (record["role"], field)
  # The last epoch's cell is the "after" record itself, not written twice.
  assert len(list((run / "records").glob("*.json"))) == len(records) + (epochs - 1) * len(
      config.defenses)
  for suffix in ("png", "pdf"):
    assert (run / "figures" / f"invariance_tradeoff.{suffix}").is_file()
    assert (run / "figures" / f"invariance_epochs.{suffix}").is_file()
  assert f"{parameter} sweep" in (run / "summary.md").read_text()
  assert not tables.unqualified_rates((run / "summary.md").read_text())
  assert "During fine-tuning" in (run / "summary.md").read_text()
  _check_sanity(run, (run / "summary.md").read_text(),
                {(r["model"], r["defense"]) for r in records}, config.attack.votes)
  # A rerun resumes from the records: nothing recomputed, the same numbers.
  again = experiments.run(config, tmp_path / "run")
  strip = lambda rs: [{k: v for k, v in r.items() if k != "success"} for r in rs]
  assert strip(again["records"]) == strip(records)


def _cell_attack(**fast):
  attack = invariance_smoothing.get_config("tiny").attack
  attack.update(steps=10, votes=40, invariance_draws=4, eps_255=8.0, **fast)
  return attack


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_counted_only_cell_attacks_fewer_images_for_the_same_counts(fashion_mlp, targeted):
  import jax

  from jaxdef import StochasticClassifier
  from jaxdef import defenses
  from jaxdef.experiments import _sweep

  images = jax.numpy.asarray(fashion_mlp.test_images[:40])
  labels = jax.numpy.asarray(fashion_mlp.test_labels[:40])
  targets = (labels + 1) % 10 if targeted else None
  key = jax.random.key(5)
  # A deterministic classifier: APGD on a subset is APGD on the whole batch's
  # rows, so the counts must agree exactly.
  plain = StochasticClassifier(fashion_mlp.logits_fn, None)
  whole = _invariance.measure_cell(plain, key, images, labels, _cell_attack(), targets)
  fast = _invariance.measure_cell(
      plain, key, images, labels,
      _cell_attack(counted_only=True, sequential_votes=True), targets)
  for field in ("successes", "denominator", "invariance", "clean_accuracy"):
    assert fast[field] == whole[field], field
  assert 0 < whole["denominator"] < 40
  bucket = _sweep.SUBSET_BUCKET
  assert whole["attacked_images"] == 40
  assert fast["attacked_images"] == -(-whole["denominator"] // bucket) * bucket
  assert (whole["vote_rule"], fast["vote_rule"]) == ("full", "sequential")
  # A random defense: the counted images only, fewer model evaluations, a rate.
  clf = StochasticClassifier(fashion_mlp.logits_fn, defenses.randomized_smoothing(sigma=0.25))
  noisy_whole = _invariance.measure_cell(clf, key, images, labels, _cell_attack(), targets)
  noisy = _invariance.measure_cell(
      clf, key, images, labels, _cell_attack(counted_only=True, sequential_votes=True), targets)
  assert noisy["attacked_images"] == -(-noisy["denominator"] // bucket) * bucket < 40
  assert noisy["vote_forward_passes"] < noisy_whole["vote_forward_passes"] == 2 * 40 * 40
  _check_rate(noisy)


def test_invariance_config_checks():
  config = invariance_smoothing.get_config("imagenette")
  config.invariance.track_epochs = True
  with pytest.raises(ValueError, match="track_epochs=False"):
    experiments.dry_run(config)
  config = invariance_smoothing.get_config("tiny")
  del config.models["finetuned_smoothing_050"]
  with pytest.raises(ValueError, match="finetuned_smoothing_050"):
    _invariance.check_models(config)
  assert invariance_smoothing.label_of(0.12) == "smoothing_012"
  with pytest.raises(ValueError, match="allowed: imagenette, fashion, tiny"):
    invariance_bart.get_config("imagenet")


@pytest.mark.parametrize("module,variant", [
    (invariance_smoothing, "imagenette"), (invariance_bart, "imagenette"),
    (invariance_smoothing, "fashion"), (invariance_bart, "fashion"),
    (perturbation_pictures, "imagenet"), (perturbation_pictures, "fashion"),
    (finetune_config, "fashion"), (invariance_bart, "tiny")])
def test_full_size_dry_runs_resolve(module, variant):
  config = module.get_config(variant)
  report = experiments.dry_run(config)
  assert report["experiment"] == config.experiment
  assert set(report["models"]) == set(config.models)
  assert set(report["defenses"]) == set(config.defenses)
  if variant == "imagenette":
    assert "imagenette" in report["data"]
    assert all(e.depth == 34 for e in config.models.values())
    assert len(config.defenses) == (6 if module is invariance_bart else 4)
