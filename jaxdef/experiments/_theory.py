"""The theory study (config `theory`): the binary Gaussian task of SPEC.md.

Closed forms from `jaxdef.theory` for the undefended, defended, vote and
trained-invariance classifiers, their curves over the threshold k, the
defense's sigma and the number of votes, the paper's worked example (sigma =
1, eps = 1) beside its published figures, numerical checks of its lemmas, and
a Monte-Carlo simulation of every summary and paper row as an independent
check. Robust accuracy is the paper's, conditional on a correct clean
prediction; "accuracy under attack" is the unconditional rate.
Writes theory.json, theory.md and figures/theory_curves{,_sigma,_votes}.{png,pdf}.
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
                   ("accuracy", "benign acc."), ("robust_accuracy", "robust acc. (given correct)"),
                   ("accuracy_under_attack", "acc. under attack"),
                   ("invariance", "R(k)"), ("attack_success_rate", "attack success"),
                   ("mc_accuracy", "benign acc. (MC)"),
                   ("mc_robust_accuracy", "robust acc. (MC)"),
                   ("mc_invariance", "R(k) (MC)")]
PAPER_COLUMNS = [("classifier", "classifier"), ("k", "k"), ("sigma", "sigma"),
                 ("accuracy", "benign acc."), ("paper_accuracy", "paper"),
                 ("robust_accuracy", "robust acc. (given correct)"),
                 ("paper_robust_accuracy", "paper"),
                 ("accuracy_under_attack", "acc. under attack"), ("invariance", "R(k)"),
                 ("mc_robust_accuracy", "robust acc. (MC)"),
                 ("mc_robust_accuracy_stderr", "MC stderr")]
LEMMA_COLUMNS = [("name", "check"), ("statement", "statement"), ("verdict", "holds"),
                 ("evidence", "evidence")]
# Rates measured by the simulation, each stored with its standard error.
MC_RATES = ("accuracy", "robust_accuracy", "accuracy_under_attack", "invariance")
# The curves over sigma (single draw) and over votes (at the config's sigma).
CURVE_SIGMAS = np.linspace(0.0, 3.0, 31)
CURVE_VOTES = theory.COROLLARY_VOTES


def _simulate(row: dict, key: jax.Array, eps: float, num_samples: int) -> None:
  """Adds mc_<rate> and mc_<rate>_stderr of `row`'s classifier to `row`."""
  votes = None if row.get("num_votes", 1) == 1 else row["num_votes"]
  estimate = theory.monte_carlo(key, row["k"], row["sigma"], eps, num_samples=num_samples,
                                num_votes=votes)
  for name in MC_RATES:
    row[f"mc_{name}"] = float(getattr(estimate, name))
    row[f"mc_{name}_stderr"] = float(getattr(estimate, f"{name}_stderr"))
  row["mc_num_correct"] = int(estimate.num_correct)


def theory_results(config) -> dict:
  """Closed-form summary, paper case, lemma checks and curves, with Monte-Carlo checks.

  Returns:
    A JSON-ready dict: "sigma", "eps" (the config's), "summary" (rows of
    `theory.summary` with mc_* estimates), "curves" (over k), "curves_sigma",
    "curves_votes", "paper_case" ({"sigma", "eps", "rows", "misprint"}: the
    rows of `theory.paper_case` with mc_* estimates) and "lemmas"
    (`theory.lemma_checks` at the config's sigma, eps and votes).
  """
  cfg = config.theory
  num_samples = int(cfg.mc_samples)
  summary_key, paper_key = jax.random.split(jax.random.key(config.seed))
  rows = theory.summary(cfg.sigma, cfg.eps, num_votes=int(cfg.num_votes))
  for index, row in enumerate(rows):
    _simulate(row, jax.random.fold_in(summary_key, index), cfg.eps, num_samples)
  paper_rows = theory.paper_case()
  for index, row in enumerate(paper_rows):
    _simulate(row, jax.random.fold_in(paper_key, index), row["eps"], num_samples)
  ks = np.linspace(float(cfg.k_min), float(cfg.k_max), int(cfg.num_k))
  return {
      "sigma": float(cfg.sigma), "eps": float(cfg.eps), "summary": rows,
      "curves": theory.table(ks, cfg.sigma, cfg.eps, num_votes=int(cfg.num_votes)),
      "curves_sigma": theory.table_over_sigma(CURVE_SIGMAS, cfg.eps),
      "curves_votes": theory.table_over_votes(CURVE_VOTES, cfg.sigma, cfg.eps),
      "paper_case": {"sigma": theory.PAPER_CASE["sigma"], "eps": theory.PAPER_CASE["eps"],
                     "rows": paper_rows,
                     "misprint": " ".join(row["note"] for row in paper_rows if row["note"])},
      "lemmas": theory.lemma_checks(cfg.sigma, cfg.eps, num_votes=int(cfg.num_votes)),
  }


def theory_markdown(results: dict) -> str:
  """The summary table, the paper's case beside its published figures, and the lemma table."""
  paper = results["paper_case"]
  lemmas = [{**check, "verdict": "yes" if check["holds"] else "**no**"}
            for check in results["lemmas"]]
  failed = sum(not check["holds"] for check in lemmas)
  return "\n".join([
      f"Binary task x | y ~ N(y, 1), defense x + theta, theta ~ N(1, {results['sigma']:g}^2), "
      f"l-inf budget eps = {results['eps']:g}; closed forms, with Monte-Carlo estimates (MC). "
      "Robust accuracy is the paper's, conditional: the fraction of correctly classified "
      "inputs still correct after the worst-case attack; accuracy under attack counts all "
      "inputs.",
      "", tables.markdown(results["summary"], SUMMARY_COLUMNS), "",
      f"**The paper's case** (Gao et al. 2022, Appendix C; sigma = {paper['sigma']:g}, "
      f"eps = {paper['eps']:g}): closed forms beside the published figures.", "",
      tables.markdown(paper["rows"], PAPER_COLUMNS), "",
      *([f"- {paper['misprint']}.", ""] if paper["misprint"] else []),
      f"**Lemmas and corollaries**, checked numerically ({len(lemmas) - failed} of "
      f"{len(lemmas)} hold):", "",
      tables.markdown(lemmas, LEMMA_COLUMNS)])


def theory_figures(results: dict, workdir: pathlib.Path) -> list[pathlib.Path]:
  """figures/theory_curves (over k), theory_curves_sigma and theory_curves_votes."""
  where = workdir / "figures"
  setting = f"eps = {results['eps']:g}"
  return [
      figures.theory_curves(results["curves"], where / "theory_curves",
                            f"sigma = {results['sigma']:g}, {setting}"),
      figures.theory_curves_sigma(results["curves_sigma"], where / "theory_curves_sigma",
                                  f"single draw, {setting}"),
      figures.theory_curves_votes(results["curves_votes"], where / "theory_curves_votes",
                                  f"majority vote, sigma = {results['sigma']:g}, {setting}"),
  ]


def run_theory(config, workdir: pathlib.Path) -> dict:
  results = theory_results(config)
  _records.write_json(workdir / "theory.json", results)
  paths = theory_figures(results, workdir)
  text = "# Theory: the binary Gaussian task\n\n" + theory_markdown(results) + "\n\n" + "".join(
      f"![{path.stem}](figures/{path.name})\n" for path in paths)
  _records.write_atomic(workdir / "theory.md", text)
  print(text)
  return results
