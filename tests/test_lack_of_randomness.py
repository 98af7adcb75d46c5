"""The "odds are odd" detector and the lack-of-randomness study, on tiny sizes."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import train_mlp

from jaxdef import attacks
from jaxdef import detection
from jaxdef.classifier import StochasticClassifier
from jaxdef.reports import tables

NUM_CLASSES = 4


def _mlp_params(seed=0, inputs=16, hidden=12):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(inputs, hidden)).astype(np.float32) / np.sqrt(inputs),
          rng.normal(size=hidden).astype(np.float32) * 0.1,
          rng.normal(size=(hidden, NUM_CLASSES)).astype(np.float32) / np.sqrt(hidden))


def _jax_mlp(params):
  w1, b1, w2 = (jnp.asarray(p) for p in params)
  return lambda images: jnp.tanh(images.reshape(images.shape[0], -1) @ w1 + b1) @ w2


def _numpy_mlp(params, images):
  """Any leading axes: (..., B, H, W, C) -> (..., B, K)."""
  w1, b1, w2 = (p.astype(np.float64) for p in params)
  flat = images.reshape(*images.shape[:-3], -1).astype(np.float64)
  return np.tanh(flat @ w1 + b1) @ w2


def _images(count, seed=1):
  return np.random.default_rng(seed).uniform(size=(count, 4, 4, 1)).astype(np.float32)


def _numpy_statistic(params, images, noise):
  """Loop-free numpy reference of g_{y,z} over the same noise draws."""
  clean = _numpy_mlp(params, images)  # (B, K)
  noisy = _numpy_mlp(params, images[None] + noise)  # (n, B, K)
  predicted = clean.argmax(-1)
  rows = np.arange(len(images))
  g = (noisy - noisy[:, rows, predicted][..., None]).mean(0) - (clean - clean[rows, predicted][:,
                                                                                              None])
  return g, predicted


def test_statistic_and_fit_match_a_numpy_reference():
  params, images = _mlp_params(), _images(64)
  key = jax.random.key(3)
  g, predicted = detection.statistic(key, _jax_mlp(params), jnp.asarray(images), sigma=0.3,
                                     num_noise=16)
  noise = np.asarray(detection.noise_draws(key, jnp.asarray(images), sigma=0.3, num_noise=16))
  g_ref, predicted_ref = _numpy_statistic(params, images, noise)
  np.testing.assert_array_equal(np.asarray(predicted), predicted_ref)
  np.testing.assert_allclose(np.asarray(g), g_ref, atol=2e-5)
  assert np.all(np.asarray(g)[np.arange(64), predicted_ref] == 0)

  stats = detection.fit(key, _jax_mlp(params), jnp.asarray(images), sigma=0.3, num_noise=16,
                        fpr=0.1)
  counts = np.bincount(predicted_ref, minlength=NUM_CLASSES)
  np.testing.assert_array_equal(np.asarray(stats.class_counts), counts)
  rows = np.arange(64)
  for y in np.flatnonzero(counts >= 2):
    mine = predicted_ref == y
    np.testing.assert_allclose(np.asarray(stats.mean)[y], g_ref[mine].mean(0), atol=2e-5)
    np.testing.assert_allclose(np.asarray(stats.std)[y],
                               np.maximum(g_ref[mine].std(0), detection.MIN_STD), atol=2e-5)
  standard = (g_ref - np.asarray(stats.mean)[predicted_ref]) / np.asarray(stats.std)[
      predicted_ref]
  standard[rows, predicted_ref] = -np.inf
  expected_flags = (standard > np.asarray(stats.thresholds)[predicted_ref]).any(-1)
  flags = detection.flags(key, _jax_mlp(params), stats, jnp.asarray(images))
  assert flags.dtype == jnp.bool_ and flags.shape == (64,)
  # Same key as the fit: exactly the fitting statistic (up to float rounding at the threshold).
  assert np.mean(np.asarray(flags) != expected_flags) <= 2 / 64


@pytest.mark.full_optimization  # "at most fpr" holds to the last bit of the fitted quantile
def test_false_positive_rate_on_clean_fitting_data_is_about_the_target():
  params, images = _mlp_params(seed=4), jnp.asarray(_images(400, seed=5))
  fn = _jax_mlp(params)
  stats = detection.fit(jax.random.key(0), fn, images, sigma=0.2, num_noise=32, fpr=0.1)
  detector = detection.OddsDetector(fn, stats)
  same_draws = np.asarray(detector.flags(jax.random.key(0), images)).mean()
  fresh_draws = np.asarray(detector.flags(jax.random.key(1), images)).mean()
  # The quantile of each class's scores: at most fpr on the fitting draws,
  # short of it by at most one image per class.
  assert 0.1 - NUM_CLASSES / 400 <= same_draws <= 0.1 + 1e-9
  assert 0.03 <= fresh_draws <= 0.2  # fresh noise: the same rate up to sampling error


def test_large_eps_adversarial_examples_are_flagged_more_often_than_clean():
  model = train_mlp(epochs=1, hidden=64)
  fit_images = jnp.asarray(model.test_images[:200])
  stats = detection.fit(jax.random.key(0), model.logits_fn, fit_images, sigma=0.1, num_noise=32,
                        fpr=0.05)
  images = jnp.asarray(model.test_images[200:300])
  labels = jnp.asarray(model.test_labels[200:300])
  adversarial = attacks.pgd(jax.random.key(1), StochasticClassifier(model.logits_fn), images,
                            labels, eps=0.1, alpha=0.01, steps=30)
  detector = detection.OddsDetector(model.logits_fn, stats)
  clean_rate = np.asarray(detector.flags(jax.random.key(2), images)).mean()
  adversarial_rate = np.asarray(detector.flags(jax.random.key(2), adversarial)).mean()
  assert adversarial_rate >= clean_rate + 0.1, (clean_rate, adversarial_rate)


def test_detector_is_deterministic_per_key_and_jits():
  params, images = _mlp_params(), jnp.asarray(_images(32))
  fn = _jax_mlp(params)
  stats = detection.fit(jax.random.key(0), fn, images, sigma=0.3, num_noise=8, fpr=0.2)
  detector = detection.OddsDetector(fn, stats)
  first = np.asarray(detector.scores(jax.random.key(5), images))
  np.testing.assert_array_equal(first, np.asarray(detector.scores(jax.random.key(5), images)))
  assert not np.array_equal(first, np.asarray(detector.scores(jax.random.key(6), images)))
  jitted = jax.jit(lambda key, x: detection.flags(key, fn, stats, x))
  np.testing.assert_array_equal(np.asarray(jitted(jax.random.key(5), images)), first > 0)
  # The statistics are a pytree: they can be passed through jit as an argument.
  through = jax.jit(lambda s, key, x: detection.scores(key, fn, s, x))(stats, jax.random.key(5),
                                                                       images)
  np.testing.assert_allclose(np.asarray(through), first, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"sigma": 0.0}, r"sigma must be in \(0"),
    ({"sigma": -1.0}, r"sigma must be in \(0"),
    ({"num_noise": 0}, r"num_noise must be in \[1"),
    ({"fpr": 0.0}, r"fpr must be in \(0, 1\)"),
    ({"fpr": 1.0}, r"fpr must be in \(0, 1\)"),
])
def test_bad_detector_settings_are_named(kwargs, match):
  settings = {"sigma": 0.1, "num_noise": 4, "fpr": 0.05, **kwargs}
  with pytest.raises(ValueError, match=match):
    detection.fit(jax.random.key(0), _jax_mlp(_mlp_params()), jnp.asarray(_images(8)),
                  **settings)
  with pytest.raises(TypeError, match="stats must be OddsStatistics"):
    detection.OddsDetector(_jax_mlp(_mlp_params()), {"mean": 0})



# --- the study ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  from configs import lack_of_randomness
  from jaxdef import experiments

  config = lack_of_randomness.get_config("tiny")
  config.progress = False
  workdir = tmp_path_factory.mktemp("lack_of_randomness")
  result = experiments.run(config, workdir)
  return config, workdir, result


def test_tiny_run_writes_records_table_summary_and_figure(tiny_run):
  import csv

  config, workdir, result = tiny_run
  records = result["records"]
  steps = tuple(config.attack.steps)
  assert len(records) == len(config.rows) * 2 * len(steps)
  assert len(list((workdir / "records").glob("*.json"))) == len(records)
  for label, row in config.rows.items():
    mine = [r for r in records if r["defense"] == label]
    published = sorted((r for r in mine if r["setting"] == "published"), key=lambda r: r["k"])
    eot1 = sorted((r for r in mine if r["setting"] == "eot1"), key=lambda r: r["k"])
    assert [r["k"] for r in published] == list(steps)
    assert all(r["m"] == row.eot for r in published) and all(r["m"] == 1 for r in eot1)
    # Equal budgets: EOT-1 runs k x m steps of one draw.
    assert [r["budget"] for r in eot1] == [r["budget"] for r in published]
    assert [r["gradient_computations"] for r in published] == [k * row.eot for k in steps]
    for r in mine:
      assert 0 <= r["successes"] <= r["denominator"] <= r["num_images"] == 6
      assert r["successes"] <= r["misclassified"]
      assert r["num_votes"] == row.votes
      if r["denominator"]:
        assert r["ci_low"] <= r["rate"] <= r["ci_high"]
      if row.defense != "odds_are_odd":
        assert r["flagged"] == r["clean_flagged"] == 0
  with open(workdir / "results.csv") as handle:
    table = list(csv.DictReader(handle))
  assert len(table) == len(records) and "gradient_computations" in table[0]
  summary = (workdir / "summary.md").read_text()
  assert not tables.unqualified_rates(summary)
  assert "| defense | setting | k | m | k x m | success (count/denominator, 95% CI)" in summary
  assert "published EOT-3" in summary and "EOT-1 (same budget)" in summary
  assert (workdir / "figures" / "eot_vs_eot1.png").stat().st_size > 0
  assert (workdir / "figures" / "eot_vs_eot1.pdf").stat().st_size > 0
  # Every row's attacked classifier was sanity-checked first, at the row's votes.
  sanity = {r["defense_label"]: r for r in json.loads((workdir / "sanity.json").read_text())}
  assert sanity.keys() == set(config.rows)
  for label, row in config.rows.items():
    assert sanity[label]["model"] == row.model and sanity[label]["num_votes"] == row.votes
    # Each row's attack is random: its defense, SAP's activations, or the
    # gradient noise k-WTA and odds-are-odd are attacked through.
    assert sanity[label]["random"], label
  assert "## Sanity check before attacking" in summary


def test_rerun_skips_finished_cells(tiny_run, monkeypatch):
  from jaxdef import experiments
  from jaxdef.experiments import _lack_of_randomness
  from jaxdef.experiments import _sanity

  config, workdir, result = tiny_run
  stamps = {p.name: p.stat().st_mtime_ns for p in (workdir / "records").glob("*.json")}

  def no_attack(*args, **kwargs):
    raise AssertionError("a finished cell was recomputed")

  monkeypatch.setattr(_lack_of_randomness.attacks, "pgd_trajectory_results", no_attack)
  # The sanity records of the first run are reused, not recomputed.
  monkeypatch.setattr(_sanity.checks, "sanity_check", no_attack)
  again = experiments.run(config, workdir)
  assert again["records"] == result["records"]
  assert {p.name: p.stat().st_mtime_ns for p in (workdir / "records").glob("*.json")} == stamps
  # One missing cell: only its unit runs again (and must succeed).
  monkeypatch.undo()
  missing = sorted((workdir / "records").glob("*.json"))[0]
  missing.unlink()
  ran = []
  experiments_run = _lack_of_randomness.run_rows

  def counting(*args, **kwargs):
    return experiments_run(*args, on_unit=ran.append, **kwargs)

  monkeypatch.setattr(_lack_of_randomness, "run_rows", counting)
  experiments.run(config, workdir)
  assert len(ran) == 1 and missing.exists()


def test_counted_only_attacks_fewer_images_for_the_same_records(tiny_run, tmp_path):
  from configs import lack_of_randomness
  from jaxdef import experiments
  from jaxdef.experiments import _sweep

  config, _, result = tiny_run
  config = config.copy_and_resolve_references()
  config.attack.counted_only = True
  # Two rows are enough: a deterministic model whose wrong images are skipped
  # and SAP, a random model attacked whole. Every row's keys are named by the
  # row, so its records do not depend on the others.
  rows = lack_of_randomness.SAMPLE_ROWS
  lack_of_randomness.keep_rows(config, rows)
  # The tiny models get some images wrong: those are not attacked.
  fast = experiments.run(config, tmp_path / "fast")["records"]
  fields = ("unit", "k", "successes", "denominator", "misclassified", "flagged",
            "nonfinite_images")
  whole = [r for r in result["records"] if r["defense"] in rows]
  assert {r["defense"] for r in fast} == set(rows)
  assert [[r[f] for f in fields] for r in fast] == [[r[f] for f in fields] for r in whole]
  for record in fast:
    if record["defense"] == "sap":  # a random model is attacked whole
      assert record["attacked_images"] == record["num_images"]
    else:
      padded = -(-record["denominator"] // _sweep.SUBSET_BUCKET) * _sweep.SUBSET_BUCKET
      assert record["attacked_images"] == min(record["num_images"], max(padded, 4))
  assert {r["attacked_images"] for r in result["records"]} == {6}
  assert any(r["attacked_images"] < 6 for r in fast)


def test_full_size_default_dry_runs_with_cost():
  from configs import lack_of_randomness
  from jaxdef import experiments

  config = lack_of_randomness.get_config()
  report = experiments.dry_run(config)
  assert report["experiment"] == "lack_of_randomness"
  assert set(report["rows"]) == {"random_crop", "resize_pad", "sap", "kwta", "odds_are_odd"}
  assert all("path not set" in text for text in report["models"].values())
  assert report["units"] == 10 and report["cells"] == 10 * len(config.attack.steps)
  # Published EOT-m over max(k) steps plus EOT-1 over max(k) x m steps, per image.
  expected = sum(2 * row.eot * max(config.attack.steps) * config.data.num_images
                 for row in config.rows.values())
  assert report["image_gradients"] == expected
  assert report["tflop"] > 0 and report["defended_forward_passes"] > 0
  assert lack_of_randomness.get_config("fashion").rows.random_crop.eot == 30
  with pytest.raises(ValueError, match="unknown variant 'huge'.*tiny"):
    lack_of_randomness.get_config("huge")


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.rows.sap.update(defense="dropout"),
     r"config.rows.sap.defense must be one of random_crop, resize_pad, sap, kwta, odds_are_odd"),
    (lambda c: c.models.base_sap.update(activation="gelu"),
     r"config.models.base_sap.activation must be one of relu, sap, kwta; got 'gelu'"),
    (lambda c: c.rows.kwta.update(model="base"),
     r"config.rows.kwta: defense 'kwta' needs a model with activation 'kwta'"),
    (lambda c: c.rows.sap.update(model="nope"), r"config.rows.sap.model must be a label"),
    (lambda c: c.rows.resize_pad.update(eot=1), r"config.rows.resize_pad.eot .* >= 2"),
    (lambda c: c.rows.kwta.params.update(crop_size=3), r"config.rows.kwta.params has crop_size"),
])
def test_bad_rows_and_activations_are_named(edit, match, tmp_path):
  from configs import lack_of_randomness
  from jaxdef import experiments

  config = lack_of_randomness.get_config("tiny")
  edit(config)
  with pytest.raises(ValueError, match=match):
    experiments.dry_run(config)
  with pytest.raises(ValueError, match=match):
    experiments.run(config, tmp_path)
