"""The theory study (config `theory`): the binary Gaussian task of SPEC.md.

Closed forms from `jaxdef.theory` for the undefended, defended, vote and
trained-invariance classifiers, their curves over the threshold k, and a
Monte-Carlo simulation of every summary row as an independent check.
Writes theory.json, theory.md and figures/theory_curves.{png,pdf}.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from jaxdef import theory
from jaxdef.experiments import _records
from jaxdef.reports import figures
from jaxdef.reports import tables

SUMMARY_COLUMNS = [("classifier", "classifier"), ("k", "k"), ("num_votes", "votes"),
                   ("accuracy", "benign acc."), ("robust_accuracy", "robust acc."),
                   ("invariance", "R(k)"), ("attack_success_rate", "attack success"),
                   ("mc_accuracy", "benign acc. (MC)"), ("mc_robust_accuracy", "robust acc. (MC)"),
                   ("mc_invariance", "R(k) (MC)")]


def theory_results(config) -> dict:
  """Closed-form summary and curves, with a Monte-Carlo value for each row."""
  cfg = config.theory
  rows = theory.summary(cfg.sigma, cfg.eps, num_votes=int(cfg.num_votes))
  key = jax.random.key(config.seed)
  for index, row in enumerate(rows):
    votes = None if row["num_votes"] == 1 else row["num_votes"]
    estimate = theory.monte_carlo(jax.random.fold_in(key, index), row["k"], row["sigma"],
                                  cfg.eps, num_samples=int(cfg.mc_samples), num_votes=votes)
    for name in ("accuracy", "robust_accuracy", "invariance"):
      row[f"mc_{name}"] = float(getattr(estimate, name))
      row[f"mc_{name}_stderr"] = float(getattr(estimate, f"{name}_stderr"))
  ks = np.linspace(float(cfg.k_min), float(cfg.k_max), int(cfg.num_k))
  curves = theory.table(ks, cfg.sigma, cfg.eps, num_votes=int(cfg.num_votes))
  return {"sigma": float(cfg.sigma), "eps": float(cfg.eps), "summary": rows, "curves": curves}


def theory_markdown(results: dict) -> str:
  return "\n".join([
      f"Binary task x | y ~ N(y, 1), defense x + theta, theta ~ N(1, {results['sigma']:g}^2), "
      f"l-inf budget eps = {results['eps']:g}; closed forms, with Monte-Carlo estimates (MC).",
      "", tables.markdown(results["summary"], SUMMARY_COLUMNS)])


def run_theory(config, workdir: pathlib.Path) -> dict:
  results = theory_results(config)
  _records.write_json(workdir / "theory.json", results)
  figure = figures.theory_curves(results["curves"], workdir / "figures" / "theory_curves",
                                 f"sigma = {results['sigma']:g}, eps = {results['eps']:g}")
  text = "# Theory: the binary Gaussian task\n\n" + theory_markdown(results) + (
      f"\n\n![curves](figures/{figure.name})\n")
  _records.write_atomic(workdir / "theory.md", text)
  print(text)
  return results
