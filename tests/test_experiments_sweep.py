"""The resumable k x m sweep: records, resume after interruption, batched alphas, sequential
votes, compile counts, best alpha, configs."""

import collections
import dataclasses
import functools
import json
import pathlib
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd
from configs import default as default_config
from configs import kxm_sweep
from jaxdef import _sequential
from jaxdef import classifier
from jaxdef import experiments
from jaxdef.attacks import _pgd
from jaxdef.experiments import _kxm
from jaxdef.experiments import _sources
from jaxdef.experiments import _sweep
from jaxdef.experiments import _vote_agreement
from jaxdef.reports import tables

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEIGHTS = np.random.default_rng(0).normal(size=(4 * 4 * 1, 3)).astype(np.float32)


def linear_logits(images):
  return images.reshape(images.shape[0], -1) @ WEIGHTS


@functools.cache
def _problem():
  """One shared problem: the same classifier object, so tests share compiled code."""
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


def _strip(records):
  """Records without timings and batch sizes: what must not depend on how the work was split."""
  return [{k: v for k, v in r.items() if "seconds" not in k and k != "alphas_in_call"}
          for r in records]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  """The uninterrupted one-unit-at-a-time sweep with full votes: (workdir, records)."""
  spec, clfs, x, y, targets = _problem()
  workdir = tmp_path_factory.mktemp("whole")
  records = _sweep.run_sweep(spec, clfs, x, y, targets, jax.random.key(0), workdir,
                             progress=False)
  return workdir, records


def _interrupted_then_resumed(spec, workdir, stop_after):
  """Runs until `stop_after` units are done, raises, reruns; returns (records, first, rest)."""
  _, clfs, x, y, targets = _problem()
  key = jax.random.key(0)
  finished = []

  def stop(unit):
    finished.append(unit.name)
    if len(finished) == stop_after:
      raise Interrupt

  with pytest.raises(Interrupt):
    _sweep.run_sweep(spec, clfs, x, y, targets, key, workdir, progress=False, on_unit=stop)
  assert len(list((workdir / "records").glob("*.json"))) == stop_after * len(spec.checkpoints)
  resumed_units = []
  resumed = _sweep.run_sweep(spec, clfs, x, y, targets, key, workdir, progress=False,
                             on_unit=lambda u: resumed_units.append(u.name))
  return resumed, finished, resumed_units


def test_records_resume_and_equal_an_uninterrupted_sweep(whole, tmp_path):
  spec = _problem()[0]
  _, records = whole
  assert len(records) == len(spec.units()) * len(spec.checkpoints) == 16
  for record in records:
    assert record["gradient_computations"] == record["k"] * record["m"]
    assert record["denominator"] == 6 and record["num_votes"] == 5
    assert record["ci_low"] <= record["rate"] <= record["ci_high"]
    assert record["vote_rule"] == "full" and record["vote_forward_passes"] == 5 * 6
    assert record["alphas_in_call"] == 1
  resumed, finished, resumed_units = _interrupted_then_resumed(spec, tmp_path / "cut", 3)
  assert len(resumed_units) == len(spec.units()) - 3 and not set(resumed_units) & set(finished)
  assert _strip(resumed) == _strip(records)


def test_batched_alphas_give_the_same_records_and_resume_mid_group(whole, tmp_path):
  spec = dataclasses.replace(_problem()[0], batch_alphas=True)
  assert [len(units) for _, units in spec.groups()] == [2, 2, 2, 2]
  # Three units: the second group is cut after its first alpha and finished alone.
  resumed, finished, resumed_units = _interrupted_then_resumed(spec, tmp_path / "cut", 3)
  assert len(resumed_units) == len(spec.units()) - 3 and not set(resumed_units) & set(finished)
  assert _strip(resumed) == _strip(whole[1])
  assert sorted({r["alphas_in_call"] for r in resumed}) == [1, 2]


def test_counted_only_gives_the_whole_batch_counts_for_less_work(tmp_path):
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.uniform(0.2, 0.8, (20, 4, 4, 1)).astype(np.float32))
  y = np.asarray(jnp.argmax(linear_logits(x), -1)).astype(np.int32)
  y[::2] = (y[::2] + 1) % 3  # half the images start wrong: no rate counts them
  targets = np.where(y == 2, 0, 2).astype(np.int32)
  spec, clfs, _, _, _ = _problem()
  spec = dataclasses.replace(spec, batch_alphas=True, sequential_votes=True, votes=30)
  runs = {}
  for counted_only in (False, True):
    runs[counted_only] = _sweep.run_sweep(
        dataclasses.replace(spec, counted_only=counted_only), clfs, x, jnp.asarray(y),
        jnp.asarray(targets), jax.random.key(0), tmp_path / str(counted_only), progress=False)
  counts = lambda records: [(r["unit"], r["k"], r["successes"], r["denominator"])
                            for r in records]
  assert counts(runs[True]) == counts(runs[False])
  denominators = {r["denominator"] for r in runs[True]}
  assert max(denominators) <= 10 and min(denominators) > 0
  # The counted images, padded to a multiple of SUBSET_BUCKET; the votes skip the rest.
  bucket = _sweep.SUBSET_BUCKET
  assert {r["attacked_images"] for r in runs[True]} == {
      max(bucket, -(-max(denominators) // bucket) * bucket)}
  assert {r["attacked_images"] for r in runs[False]} == {20}
  spent = lambda records: sum(r["vote_forward_passes"] for r in records)
  assert spent(runs[True]) < spent(runs[False])


def test_corrupt_record_is_reported_and_recomputed(whole, tmp_path):
  spec, clfs, x, y, targets = _problem()
  key = jax.random.key(0)
  shutil.copytree(whole[0], tmp_path, dirs_exist_ok=True)
  first = whole[1]
  victim = _sweep.cell_path(tmp_path, spec.units()[1], 3)
  victim.write_text(victim.read_text()[:20])  # truncated mid-write by a crash
  redone = []
  with pytest.warns(RuntimeWarning, match=victim.name):
    second = _sweep.run_sweep(spec, clfs, x, y, targets, key, tmp_path, progress=False,
                              on_unit=lambda u: redone.append(u.name))
  assert redone == [spec.units()[1].name]
  assert [r["successes"] for r in second] == [r["successes"] for r in first]


PGD_STATIC = ("checkpoints", "eot", "norm", "use_random_start", "loss", "eot_chunk_size")


def _counted(jitted, traces, name, max_traces, **static):
  """A fresh jit of `jitted`'s function counting its traces; chex fails past `max_traces`."""
  function = jitted.__wrapped__

  def counting(*args, **kwargs):
    traces[name] += 1
    return function(*args, **kwargs)

  functools.update_wrapper(counting, function)
  return jax.jit(chex.assert_max_traces(counting, max_traces), **static)


def _weighted_linear(weights, images):
  return images.reshape(images.shape[0], -1) @ weights


def test_one_compilation_per_m_whatever_k_alpha_target_mode_and_model(tmp_path, monkeypatch):
  spec = dataclasses.replace(_problem()[0], batch_alphas=True, sequential_votes=True,
                             votes=40, checkpoints=(1, 2, 3), alphas=(0.01, 0.02, 0.04),
                             models=("linear", "other"))
  _, clfs, x, y, targets = _problem()
  defense = clfs[("linear", "rs")].defense
  # Two models of one architecture whose weights are data (a jax Partial over an
  # array is a pytree of arrays, as `jaxdef.models.logits_fn` is): they
  # share every compilation.
  other_weights = np.random.default_rng(5).normal(size=WEIGHTS.shape).astype(np.float32)
  clfs = {("linear", "rs"): jd.StochasticClassifier(
              jax.tree_util.Partial(_weighted_linear, jnp.asarray(WEIGHTS)), defense),
          ("other", "rs"): jd.StochasticClassifier(
              jax.tree_util.Partial(_weighted_linear, jnp.asarray(other_weights)), defense)}
  modes = len(spec.eots)  # the target mode is data, as are the weights
  traces = collections.Counter()
  monkeypatch.setattr(_pgd, "_pgd_run",
                      _counted(_pgd._pgd_run, traces, "run", modes, static_argnames=PGD_STATIC))
  monkeypatch.setattr(_pgd, "_pgd_run_batch", _counted(_pgd._pgd_run_batch, traces, "batch",
                                                       modes, static_argnames=PGD_STATIC))
  monkeypatch.setattr(_sequential, "sequential_vote", _counted(
      _sequential.sequential_vote, traces, "vote", 1, static_argnums=(4, 5, 6)))
  monkeypatch.setattr(classifier, "_draw_logits", _counted(
      classifier._draw_logits, traces, "full vote", 0, static_argnums=3))
  key = jax.random.key(0)
  records = _sweep.run_sweep(spec, clfs, x, y, targets, key, tmp_path, progress=False)
  # 72 cells (2 models x 3 k x 2 m x 3 alpha x 2 modes), 2 + 2 traces of the
  # attack (one per m), one of the vote: none more for a second model or mode.
  assert len(records) == 72
  assert traces == {"run": modes, "batch": modes, "vote": 1}

  # A cell's record is what the public functions give with the unit's keys
  # (a unit of the second model, which ran on the first model's compilation).
  unit = [u for u in spec.units() if u.model == "other"][4]
  clf = clfs[("other", "rs")]
  record = next(r for r in records if r["unit"] == unit.name and r["k"] == 2)
  attack_key, vote_key = jax.random.split(unit.key(key))
  goal = targets if unit.targeted else y
  iterate = jd.attacks.pgd_trajectory(attack_key, clf, x, goal, eps=spec.eps, alpha=unit.alpha,
                                      eot=unit.eot, targeted=unit.targeted,
                                      checkpoints=spec.checkpoints)[2]
  labels, draws, spent = clf.predict_sequential(jax.random.fold_in(vote_key, 2), iterate, 40,
                                                chunk=10)
  clean = clf.predict_sequential(_sweep.clean_vote_key(key, ("other", "rs")), x, 40,
                                 chunk=10).labels
  rate = jd.attacks.success_rate(clean, labels, y, targets if unit.targeted else None,
                                 num_votes=40)
  assert (record["successes"], record["denominator"]) == (rate.successes, rate.denominator)
  assert record["vote_forward_passes"] == int(spent) >= int(np.sum(draws))
  assert record["vote_draws_mean"] == pytest.approx(float(np.mean(draws)), abs=1e-3)
  assert record["vote_rule"] == "sequential" and record["vote_error"] == 1e-3
  assert record["alphas_in_call"] == 3
  spent = sum(r["vote_forward_passes"] for r in records)
  assert spent <= 40 * 6 * len(records)
  print(f"sequential votes: {spent} of {40 * 6 * len(records)} forward passes")


@pytest.mark.parametrize("chunk_size, rows_limit, eot, rows, expected", [
    (None, None, 5, 1000, 5),  # no limit: all draws at once
    (None, 512, 5, 48, 5),  # 240 rows fit
    (None, 512, 5, 160, 1),  # 800 rows do not; 5 has no divisor between 1 and 5
    (None, 512, 10, 100, 5),  # the largest divisor of 10 that fits
    (None, 512, 10, 600, 1),  # not even one draw fits: one at a time
    (4, 512, 10, 10, 4),  # an explicit chunk size is kept when it fits
    (8, 100, 10, 20, 5),  # and lowered to a fitting divisor when not
])
def test_eot_chunk_keeps_model_calls_under_the_row_limit(chunk_size, rows_limit, eot, rows,
                                                         expected):
  spec = _sweep.SweepSpec(models=("m",), defenses=("d",), targeted=(False,), eots=(eot,),
                          alphas=(0.01,), checkpoints=(1,), eps=0.1, votes=1,
                          eot_chunk_size=chunk_size, eot_rows_per_call=rows_limit)
  assert spec.eot_chunk(eot, rows) == expected


@pytest.mark.parametrize("field, value", [("eot_rows_per_call", 0), ("eot_rows_per_call", 2.5),
                                          ("eot_chunk_size", True)])
def test_sweep_spec_refuses_bad_chunk_settings(field, value):
  with pytest.raises(ValueError, match=f"{field} must be None or an integer >= 1"):
    _sweep.SweepSpec(models=("m",), defenses=("d",), targeted=(False,), eots=(1,),
                     alphas=(0.01,), checkpoints=(1,), eps=0.1, votes=1, **{field: value})


def test_best_alpha_keeps_the_highest_rate_and_the_smaller_alpha_on_ties():
  base = {"model": "m", "defense": "d", "targeted": False, "m": 1, "k": 10}
  records = [dict(base, alpha=0.01, rate=0.5), dict(base, alpha=0.02, rate=0.7),
             dict(base, alpha=0.03, rate=0.7), dict(base, k=20, alpha=0.02, rate=float("nan")),
             dict(base, k=20, alpha=0.01, rate=0.1)]
  best = _sweep.best_alpha(records)
  assert [(r["k"], r["alpha"]) for r in best] == [(10, 0.02), (20, 0.01)]


def test_bfloat16_config_runs_the_models_in_bfloat16(tmp_path):
  """config.dtype reaches the models; images, logits and records stay float32."""
  config = kxm_sweep.get_config("tiny")
  config.dtype = "bfloat16"
  fn = _sources.load_model("untrained", config.models.untrained, config, tmp_path)
  assert fn.model.dtype == jnp.bfloat16
  assert fn(jnp.zeros((2, 28, 28, 1))).dtype == jnp.float32
  config.attack.targeted = (False,)
  config.attack.eots = (1,)
  config.progress = False
  records = experiments.run(config, tmp_path / "run")["records"]
  assert records and all(0 <= r["rate"] <= 1 for r in records)


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
  # eot_rows_per_call = 16 and 8 images x 2 alphas per call: EOT-2 runs one draw at a time.
  assert {(r["m"], r["eot_chunk_size_used"]) for r in result["records"]} == {(1, None), (2, 1)}
  summary = (tmp_path / "summary.md").read_text()
  assert "| k \\ m | 1 | 2 |" in summary and "CI" in summary
  assert not tables.unqualified_rates(summary)
  # The pre-attack sanity check (on by default) is part of the record.
  sanity = json.loads((tmp_path / "sanity.json").read_text())
  assert [(r["model"], r["defense_label"]) for r in sanity] == [("untrained", "smoothing_025")]
  assert {"random", "looks_like_probabilities", "finite_logits", "zero_gradient_fraction",
          "single_draw_accuracy", "vote_accuracy", "num_votes", "warnings"} <= set(sanity[0])
  assert sanity[0]["random"] and sanity[0]["num_votes"] == config.attack.votes
  assert "## Sanity check before attacking" in summary

  # The agreement measurement replays the sweep: with n = 8 <= one look, the
  # sequential vote is the full vote, image for image.
  measured = _vote_agreement.measure(config, tmp_path, votes=(8,), baseline=False,
                                     progress=False)
  rows = {r["kind"]: r for r in measured["summary"]}
  assert rows["clean"]["num_images"] == 8 and rows["adversarial"]["num_images"] == 8 * 8
  assert rows["all"]["agreement"] == 1.0 and rows["all"]["saved"] == 0.0
  saved = json.loads((tmp_path / "vote_agreement.json").read_text())
  assert len(saved["batches"]) == 1 + 8 and saved["settings"]["steps"] == "last"
  assert "| 8 | adversarial | 64 | 100.00% |" in (tmp_path / "vote_agreement.md").read_text()

  config.attack.votes = 9  # another config: refused, nothing overwritten
  before = (tmp_path / "results.csv").read_text()
  with pytest.raises(ValueError, match="different config \\(changed: attack.votes\\)"):
    experiments.run(config, tmp_path)
  assert (tmp_path / "results.csv").read_text() == before


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


def test_configs_choose_batched_alphas_and_the_vote():
  spec = lambda config: _kxm.sweep_spec(config, config.models, config.defenses)
  assert spec(kxm_sweep.get_config("tiny")).batch_alphas
  assert spec(kxm_sweep.get_config("fashion")).batch_alphas
  assert not spec(kxm_sweep.get_config("imagenet")).batch_alphas  # memory
  default = default_config.get_config()
  assert spec(default).batch_alphas
  assert spec(default).sequential_votes == default.attack.sequential_votes
  assert spec(default).counted_only and not spec(kxm_sweep.get_config("fashion")).counted_only
  default.attack.sequential_votes = True
  default.attack.vote_error = 1e-2
  assert spec(default).sequential_votes and spec(default).vote_error == 1e-2
  default.attack.vote_error = 1.5
  with pytest.raises(ValueError, match="vote_error must be a number in \\(0, 1\\), got 1.5"):
    spec(default)
  with pytest.raises(TypeError, match="batch_alphas must be True or False"):
    dataclasses.replace(spec(kxm_sweep.get_config("tiny")), batch_alphas="yes")
