"""Perturbation pictures, fine-tuning and the invariance trade-off: settings, cells, a tiny run.

The invariance and pictures experiments run end to end as parts of the tiny
reproduction (tests/test_reproduction.py), BaRT included.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import check_rate

from configs import finetune as finetune_config
from configs import invariance_bart
from configs import invariance_smoothing
from configs import perturbation_pictures
from jaxdef import experiments
from jaxdef.experiments import _invariance
from jaxdef.experiments import _pictures


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


def test_finetune_tiny_run(tmp_path):
  config = finetune_config.get_config("tiny")
  config.models_dir = str(tmp_path / "models")
  config.progress = False
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
  check_rate(noisy)


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
