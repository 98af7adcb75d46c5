"""jaxdef.audit: the study's protocol on a user's classifier, its report and its command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import audit_user_defenses
import jax
import numpy as np
import pytest

import jaxdef as jd
from jaxdef.auditing import _stats
from jaxdef.reports import tables

# The SAP model's sampling and a second JAX process compile for minutes and
# gigabytes on two CPU cores; beside the tiny reproduction in the other CI
# worker they ran the machine out of memory (a worker crashed in LLVM).

# Few queries and votes: the protocol's every step, in seconds.
TINY = jd.auditing.Budget("tiny", queries=10, eots=(1, 5), alpha_fractions=(1 / 4, 1 / 10),
                          votes=9, draws=6)


def _images(fashion_mlp, count=40):
  return fashion_mlp.test_images[:count], fashion_mlp.test_labels[:count]


@pytest.fixture(scope="module")
def smoothing_audit(fashion_mlp, tmp_path_factory):
  images, labels = _images(fashion_mlp)
  clf = jd.StochasticClassifier(fashion_mlp.logits_fn, jd.defenses.randomized_smoothing(0.25))
  workdir = tmp_path_factory.mktemp("audit")
  report = jd.audit(jax.random.key(0), clf, images, labels, eps=16 / 255, budget="quick",
                    workdir=workdir, progress=False)
  return clf, images, labels, workdir, report


def test_smoothing_audit_counts_add_up(smoothing_audit):
  clf, images, labels, workdir, report = smoothing_audit
  counted = report.utility["vote_accuracy"]["successes"]
  voted = np.asarray(json.loads((workdir / "records" / "utility.json").read_text())[
      "vote_labels"])
  assert (voted == labels).sum() == counted
  assert report.utility["vote_accuracy"]["denominator"] == 40 and 0 < counted < 40
  plan = jd.auditing.plan(jd.auditing.BUDGETS["quick"], 10)
  assert [r["name"] for r in report.runs] == [run.name for run in plan]
  assert [r["label"] for r in report.runs[:4]] == [
      "PGD k=100 m=1 alpha=eps/4", "PGD k=100 m=1 alpha=eps/10", "APGD-CE k=100",
      "APGD-DLR k=100"]
  broken = set()
  for run in report.runs:
    assert run["denominator"] == counted and run["gradient_computations"] == 100
    assert run["k"] * run["m"] == 100 and run["successes"] == len(run["broken_images"])
    assert run["ci_low"] <= run["rate"] <= run["ci_high"]
    # Only initially correct images are attacked, so only they can be broken.
    assert all(voted[i] == labels[i] for i in run["broken_images"])
    broken |= set(run["broken_images"])
  # The per-image worst case: an image is robust only if every run failed on it.
  assert report.worst_case["success"]["successes"] == len(broken)
  assert report.worst_case["robust_accuracy"]["successes"] == counted - len(broken)
  assert report.worst_case["robust_accuracy"]["gradient_computations"] == 800
  for m, cell in zip((1, 5, 10), report.eot_cells):
    same_m = [r for r in report.runs if r["attack"] == "pgd" and r["m"] == m]
    assert cell["m"] == m and cell["successes"] == max(r["successes"] for r in same_m)


def test_smoothing_audit_verdicts_match_the_default_run(smoothing_audit):
  _, _, _, _, report = smoothing_audit
  # The default run's finding for smoothing at sigma 0.25 (README): no EOT
  # gain at an equal number of queries; a random, differentiable defense.
  verdicts = dict(report.verdicts)
  eot = verdicts["Does EOT add anything beyond standard attacks at an equal number of queries?"]
  assert eot.startswith("no significant difference"), eot
  assert report.red_flags == []
  assert report.sanity["random"] and report.sanity["zero_gradient_images"] == 0
  invariance = report.utility["invariance"]
  assert 0.5 < invariance["rate"] < 1 and invariance["denominator"] == 40 * 20


def test_report_markdown_json_and_figures(smoothing_audit, tmp_path):
  _, _, _, _, report = smoothing_audit
  figures = report.save_figures(tmp_path / "figures")
  for path in figures.values():
    assert path.stat().st_size > 0 and path.with_suffix(".pdf").stat().st_size > 0
  text = report.to_markdown({title: str(path) for title, path in figures.items()})
  assert tables.unqualified_rates(text) == []
  for heading in ("## Verdicts", "## 1. Sanity before attacking", "## 2. Utility and invariance",
                  "## 3-4. Attacks", "## Figures"):
    assert heading in text
  assert text.count("votes, 100 gradients)") >= len(report.runs)
  parsed = json.loads(report.to_json())
  assert parsed["worst_case"]["robust_accuracy"]["successes"] == (
      report.worst_case["robust_accuracy"]["successes"])
  assert parsed["budget"]["queries"] == 100


def test_rerun_resumes_from_the_records(smoothing_audit, monkeypatch):
  clf, images, labels, workdir, report = smoothing_audit
  refuse = lambda *args, **kwargs: pytest.fail("a finished step was computed again")
  monkeypatch.setattr(jd.attacks, "apgd_result", refuse)
  monkeypatch.setattr(jd.auditing._protocol._pgd, "pgd_trajectory_results_batch", refuse)
  monkeypatch.setattr(jd.checks, "sanity_check", refuse)
  again = jd.audit(jax.random.key(0), clf, images, labels, eps=16 / 255, budget="quick",
                   workdir=workdir, progress=False)
  assert again.runs == report.runs and again.worst_case == report.worst_case
  assert again.verdicts == report.verdicts
  with pytest.raises(ValueError, match="other settings .*eps"):
    jd.audit(jax.random.key(0), clf, images, labels, eps=8 / 255, budget="quick",
             workdir=workdir, progress=False)


def test_rounding_without_bpda_is_flagged(fashion_mlp):
  images, labels = _images(fashion_mlp, 16)
  clf = jd.StochasticClassifier(fashion_mlp.logits_fn, audit_user_defenses.rounding())
  report = jd.audit(jax.random.key(1), clf, images, labels, eps=16 / 255, budget=TINY,
                    progress=False)
  flags = " ".join(report.red_flags)
  assert "not random" in flags and "gradient masking" in flags
  # Nothing to follow: no run breaks anything (the gradient is zero).
  assert all(r["successes"] == 0 for r in report.runs)


def test_stochastic_model_sap(fashion_mlp):
  images, labels = _images(fashion_mlp, 12)
  # One stage: SAP's sampling compiles per layer, and one layer makes the point.
  model, variables = jd.models.small_resnet(10, key=jax.random.key(0), widths=(4,),
                                            activation="sap")
  logits_fn = jd.models.stochastic_logits_fn(model, variables)
  clf = jd.StochasticClassifier(logits_fn, None, stochastic_model=True)
  # An untrained model: its own labels are the ones to keep.
  labels = np.asarray(clf.predict(jax.random.key(2), images, n=9))
  report = jd.audit(jax.random.key(1), clf, images, labels, eps=16 / 255, budget="smoke",
                    progress=False)
  assert report.sanity["random"] and "not random" not in " ".join(report.red_flags)
  assert report.settings["stochastic_model"]
  assert len(report.runs) == 4 and report.utility["vote_accuracy"]["denominator"] == 12


def test_paired_test_and_clustered_rate_against_hand_computations():
  first = np.array([True] * 8 + [False] * 1 + [True] * 5 + [False] * 6)
  second = np.array([False] * 8 + [True] * 1 + [True] * 5 + [False] * 6)
  # Two-sided exact binomial, 8 of 9 discordant: 2 x (C(9,8) + C(9,9)) / 2^9.
  test = _stats.paired_test(first, second)
  assert (test["only_first"], test["only_second"]) == (8, 1)
  assert test["p_value"] == pytest.approx(2 * (9 + 1) / 512)
  per_image = np.array([4, 2, 0, 4])
  rate = _stats.clustered_rate(per_image, draws=4)
  fractions = per_image / 4
  half = 1.959963984540054 * np.std(fractions, ddof=1) / 2
  assert rate["rate"] == pytest.approx(0.625)
  assert rate["ci_low"] == pytest.approx(0.625 - half)
  assert rate["ci_high"] == pytest.approx(min(1, 0.625 + half))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"budget": "fast"}, ValueError, "budget must be one of quick, standard, thorough"),
    ({"eps": 8}, ValueError, "8/255"),
    ({"norm": "1"}, ValueError, "norm"),
    ({"targeted": True}, ValueError, "which class"),
    ({"targeted": 12}, ValueError, "targeted"),
])
def test_bad_arguments_are_named(fashion_mlp, kwargs, error, match):
  images, labels = _images(fashion_mlp, 4)
  clf = jd.StochasticClassifier(fashion_mlp.logits_fn, jd.defenses.randomized_smoothing(0.25))
  arguments = {"eps": 16 / 255, "budget": TINY, **kwargs}
  with pytest.raises(error, match=match):
    jd.audit(jax.random.key(0), clf, images, labels, progress=False, **arguments)
  with pytest.raises(TypeError, match="StochasticClassifier"):
    jd.audit(jax.random.key(0), fashion_mlp.logits_fn, images, labels, eps=0.1)


def _tiny_config(tmp_path, **defense):
  from configs import audit

  config = audit.get_config("tiny")
  config.models_dir = str(tmp_path / "models")
  config.progress = False
  config.defense.update(defense)
  return config


@pytest.mark.parametrize("defense,error,match", [
    ({"factory": "no_such_module:make"}, ValueError,
     r"config.defense.factory: defense factory 'no_such_module:make': cannot import"),
    ({"factory": "audit_user_defenses:missing"}, ValueError, "has no 'missing'"),
    ({"factory": "audit_user_defenses:not_a_defense", "params": "{}"}, TypeError,
     "returned an object of type 'int', not a callable"),
    ({"factory": "audit_user_defenses:uniform_noise", "params": '{"sigma": 1}'}, TypeError,
     "refused the parameters {'sigma': 1}"),
    ({"factory": "audit_user_defenses"}, ValueError, "'package.module:function'"),
    ({"params": "sigma=0.5"}, ValueError, "config.defense.params must be a JSON object"),
])
def test_bad_defense_entries_are_one_line_errors(tmp_path, defense, error, match):
  from jaxdef import experiments

  with pytest.raises(error, match=match) as raised:
    experiments.dry_run(_tiny_config(tmp_path, **defense))
  assert "\n" not in str(raised.value)


def test_checkpoint_that_does_not_fit_is_named(tmp_path):
  import torch
  import torchvision

  from jaxdef import experiments

  path = tmp_path / "resnet18.pth"
  torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
  config = _tiny_config(tmp_path)
  config.models.model.update(source="torchvision", path=str(path), depth=34)
  with pytest.raises(ValueError, match=r"config.models.model \(.*resnet18.pth\): state_dict "
                                       r"does not fit ResNet-34") as raised:
    experiments.run(config, tmp_path / "run")
  assert "\n" not in str(raised.value)


def test_user_defense_by_import_path_on_the_command_line(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.path.join(root, "tests")]))
  workdir = tmp_path / "run"
  done = subprocess.run(
      [sys.executable, "-m", "launch.run", "--config=configs/audit.py:tiny",
       f"--workdir={workdir}", f"--config.models_dir={tmp_path / 'models'}",
       "--config.progress=False", "--config.models.model.source=small_resnet",
       "--config.defense.factory=audit_user_defenses:uniform_noise",
       '--config.defense.params={"strength": 0.2}'],
      cwd=root, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  text = (workdir / "audit.md").read_text()
  assert text.startswith("# Audit of audit_user_defenses:uniform_noise(strength=0.2)")
  assert tables.unqualified_rates(text) == []
  report = json.loads((workdir / "audit.json").read_text())
  assert report["sanity"]["random"] and len(report["runs"]) == 4  # the smoke budget
  assert (workdir / "figures" / "audit_runs.png").stat().st_size > 0
