"""The theory study and the embedded default's findings, end to end on tiny sizes."""

import json

import numpy as np

from configs import default as default_config
from configs import theory as theory_config
from jaxdef import experiments
from jaxdef import theory
from jaxdef.experiments import _default
from jaxdef.reports import tables


def test_theory_run_agrees_with_its_monte_carlo(tmp_path):
  config = theory_config.get_config("tiny")
  experiments.run(config, tmp_path)
  results = json.loads((tmp_path / "theory.json").read_text())
  for name in ("theory_curves", "theory_curves_sigma", "theory_curves_votes"):
    assert (tmp_path / "figures" / f"{name}.png").is_file(), name
  assert len(results["curves"]) == config.theory.num_k
  paper = results["paper_case"]
  for row in results["summary"] + paper["rows"]:
    for name in ("accuracy", "robust_accuracy", "accuracy_under_attack", "invariance"):
      error = row[f"mc_{name}_stderr"]
      assert abs(row[name] - row[f"mc_{name}"]) <= 4 * error + 1e-9, (row["classifier"], name)
  undefended = results["summary"][0]
  np.testing.assert_allclose(undefended["accuracy"], float(theory.accuracy(1.0, 0.0)))
  # The paper's case: conditional robust accuracy beside the published figures.
  assert (paper["sigma"], paper["eps"]) == (1.0, 1.0)
  for row in paper["rows"]:
    assert row["agrees_with_paper"], row
    assert abs(row["robust_accuracy"] - row["paper_robust_accuracy"]) <= 5e-4
  assert "67.7%" in paper["misprint"] and "70.36%" in paper["misprint"]
  assert results["lemmas"] and all(
      set(check) == {"name", "statement", "holds", "evidence"} for check in results["lemmas"])
  assert {row["k"] for row in results["curves_sigma"]} == {0.0, 1.0}
  assert sorted({row["num_votes"] for row in results["curves_votes"]}) == list(range(1, 102, 2))
  text = (tmp_path / "theory.md").read_text()
  assert "The paper's case" in text and "Observation 1 prints 67.7%" in text
  assert "| Lemma 1 |" in text and "| Corollary 3 |" in text


def _cell(model, targeted, k, m, successes, denominator, low, high):
  return {"model": model, "defense": "d", "targeted": targeted, "k": k, "m": m,
          "gradient_computations": k * m, "successes": successes, "denominator": denominator,
          "rate": successes / denominator, "ci_low": low, "ci_high": high, "alpha": 0.01}


def test_eot_findings_compare_equal_budgets_only():
  best = [_cell("a", False, 50, 1, 40, 50, 0.66, 0.9), _cell("a", False, 10, 5, 10, 50, 0.1, 0.34),
          _cell("a", False, 20, 1, 30, 50, 0.45, 0.74)]
  lines = _default.eot_findings(best)
  assert len(lines) == 1
  assert "50 gradient computations" in lines[0] and "best with m=1" in lines[0]
  assert "40/50" in lines[0] and "10/50" in lines[0]
  overlapping = [_cell("a", True, 50, 1, 20, 50, 0.26, 0.55), _cell("a", True, 10, 5, 22, 50,
                                                                     0.3, 0.59)]
  assert "no significant difference" in _default.eot_findings(overlapping)[0]


def test_invariance_findings_use_this_runs_numbers():
  best = [_cell("base", False, 50, 1, 45, 50, 0.78, 0.97),
          _cell("tuned", False, 50, 1, 20, 50, 0.26, 0.55)]
  accuracy = [{"model": "base", "vote_accuracy": 0.5}, {"model": "tuned", "vote_accuracy": 0.8}]
  (line,) = _default.invariance_findings(best, accuracy, "base", "tuned")
  # robust accuracy: 0.5 * (1 - 0.9) = 5% vs 0.8 * (1 - 0.4) = 48%
  assert "robust accuracy 5.0%" in line and "robust accuracy 48.0%" in line
  assert "+43.0 points" in line and "-50.0 points" in line


def test_default_tiny_run_writes_summary_figures_and_records(tmp_path):
  config = default_config.get_config("tiny")
  config.models_dir = str(tmp_path / "models")
  config.progress = False
  result = experiments.run(config, tmp_path / "run")
  run = tmp_path / "run"
  for name in ("config.json", "environment.json", "indices.json", "defense_survey.json",
               "accuracy.json", "results.csv", "theory.json", "summary.md"):
    assert (run / name).is_file(), name
  figures = {p.name for p in (run / "figures").iterdir()}
  assert {"defense_samples.png", "theory_curves.png",
          "heatmap__invariant__smoothing_025__untargeted.png"} <= figures
  cells = 2 * 2 * len(config.attack.steps) * len(config.attack.eots) * 2
  assert len(result["records"]) == cells
  summary = (run / "summary.md").read_text()
  assert not tables.unqualified_rates(summary)  # every rate: count, CI, votes, gradients
  assert "Does EOT help at an equal number of gradient computations?" in summary
  assert "How much robustness did trained invariance take back?" in summary
  assert "k=3 x m=1" in summary and "k=1 x m=3" in summary  # the equal-budget pair
  # Fine-tuning happened and is cached: a second run trains nothing and agrees.
  assert {p.name.split("__")[-1].split("_")[0] for p in (tmp_path / "models").iterdir()} >= {"ft"}
  again = experiments.run(config, tmp_path / "run")
  assert [r["successes"] for r in again["records"]] == [r["successes"] for r in result["records"]]
