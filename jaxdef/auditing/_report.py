"""The audit's report: numbers, verdicts and red flags, as markdown, JSON and figures."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import numpy as np

from jaxdef.auditing import _stats
from jaxdef.auditing._budgets import Budget
from jaxdef.reports import tables

SIGNIFICANCE = 0.05  # level of the paired tests behind the verdicts
VOTE_ACCURACY_DROP = 0.05  # a vote accuracy this far below the undefended one is a red flag


@dataclasses.dataclass
class AuditReport:
  """What `jaxdef.audit` measured and concluded.

  Rates are records with successes, denominator, rate, ci_low, ci_high
  (95%), num_votes and gradient_computations (see `_stats.rate`).

  Attributes:
    settings: eps, norm, the budget, the defense, the number of images.
    budget: the `Budget` spent.
    sanity: the pre-attack `SanityReport` as a dict.
    utility: undefended, single-draw and vote accuracy, and the rate of
      invariance R, each a rate record.
    runs: one record per attack run, in the order run: PGD without EOT at
      each step size, APGD-CE, APGD-DLR, then PGD with EOT (m > 1).
    eot_cells: per m, the best step size's run (the k x m comparison).
    worst_case: "success" (images broken by at least one run, over the
      initially correct) and "robust_accuracy" (images no run broke, over
      all images).
    verdicts: (question, answer) pairs computed from the numbers above.
    red_flags: problems that make the robustness figures untrustworthy.
    seconds: the audit's wall time (this call; a resumed audit counts only
      what it computed).
  """
  settings: dict[str, Any]
  budget: Budget
  sanity: dict[str, Any]
  utility: dict[str, Any]
  runs: list[dict[str, Any]]
  eot_cells: list[dict[str, Any]]
  worst_case: dict[str, Any]
  verdicts: list[tuple[str, str]]
  red_flags: list[str]
  seconds: float

  def to_json(self) -> str:
    """The report as JSON (NaN as null), broken images listed per run."""
    def clean(value):
      if isinstance(value, float) and not math.isfinite(value):
        return None
      if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
      if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
      return value
    return json.dumps(clean(dataclasses.asdict(self)), indent=1, sort_keys=True)

  def to_markdown(self, figures: dict[str, str] | None = None) -> str:
    """The report as markdown; `figures` (title -> relative path) are linked."""
    return _markdown(self, figures or {})

  def save_figures(self, directory) -> dict[str, pathlib.Path]:
    """Writes the figures (PNG and PDF) under `directory`; returns title -> PNG path."""
    from jaxdef.reports import figures

    directory = pathlib.Path(directory)
    return {
        "Attack success per run": figures.audit_runs(self.runs, directory / "audit_runs",
                                                     _title(self)),
        "EOT at an equal number of gradient queries": figures.audit_eot(
            self.eot_cells, directory / "audit_eot", _title(self)),
    }


def _title(report: AuditReport) -> str:
  settings = report.settings
  return (f"{settings['defense']}, eps = {_eps(settings)}, budget '{report.budget.name}' "
          f"({report.budget.queries} queries per run)")


def _eps(settings: dict) -> str:
  eps = settings["eps"]
  if settings["norm"] == "inf":
    return f"{eps * 255:.3g}/255 (L-inf)"
  return f"{eps:.3g} (L2)"


def _best(records: list[dict]) -> dict:
  """The run with the most successes (the first on ties)."""
  return max(records, key=lambda r: r["successes"])


def _broken(record: dict, num_images: int) -> np.ndarray:
  mask = np.zeros(num_images, bool)
  mask[np.asarray(record["broken_images"], int)] = True
  return mask


def build_report(*, settings: dict, budget: Budget, sanity: dict, utility: dict,
                 runs: list[dict], seconds: float) -> AuditReport:
  """Computes the worst case, the verdicts and the red flags from the step records."""
  num_images = settings["num_images"]
  counted = utility["vote_accuracy"]["successes"]
  eot_cells = [_best([r for r in runs if r["attack"] == "pgd" and r["m"] == m])
               for m in sorted({r["m"] for r in runs if r["attack"] == "pgd"})]
  broken_any = np.zeros(num_images, bool)
  for record in runs:
    broken_any |= _broken(record, num_images)
  total_gradients = sum(r["gradient_computations"] for r in runs)
  worst_case = {
      "success": _stats.rate(int(broken_any.sum()), counted, votes=budget.votes,
                             gradients=total_gradients),
      "robust_accuracy": _stats.rate(counted - int(broken_any.sum()), num_images,
                                     votes=budget.votes, gradients=total_gradients),
  }
  verdicts = [_eot_verdict(runs, eot_cells, num_images),
              _disappearing(runs, worst_case, num_images, counted)]
  return AuditReport(settings=settings, budget=budget, sanity=sanity,
                     utility={k: v for k, v in utility.items() if not k.endswith("_labels")},
                     runs=runs, eot_cells=eot_cells, worst_case=worst_case, verdicts=verdicts,
                     red_flags=_red_flags(sanity, utility), seconds=round(seconds, 1))


def _eot_verdict(runs: list[dict], eot_cells: list[dict], num_images: int) -> tuple[str, str]:
  question = "Does EOT add anything beyond standard attacks at an equal number of queries?"
  with_eot = [cell for cell in eot_cells if cell["m"] > 1]
  standard = [r for r in runs if r["m"] == 1]
  if not with_eot or not standard:
    return question, "not measured (the budget has no EOT run, or no run without EOT)"
  eot, plain = _best(with_eot), _best(standard)
  if not eot["denominator"]:
    return question, "not measured (no image was classified correctly before the attack)"
  test = _stats.paired_test(_broken(eot, num_images), _broken(plain, num_images))
  numbers = (f"Best EOT run ({eot['label']}): {tables.rate_with_interval(eot)}; best standard "
             f"run ({plain['label']}): {tables.rate_with_interval(plain)}; images only EOT "
             f"broke: {test['only_first']}, only the standard run broke: "
             f"{test['only_second']}, exact McNemar p = {test['p_value']:.3g}")
  if test["p_value"] < SIGNIFICANCE and test["only_first"] > test["only_second"]:
    answer = ("yes: EOT breaks significantly more images at the same number of gradient "
              "queries, so the defense's randomness does resist standard attacks (the paper "
              "finds this only for strongly random defenses, at a large cost in utility)")
  elif test["p_value"] < SIGNIFICANCE:
    answer = ("no, the reverse: standard attacks break significantly more images than EOT at "
              "the same number of queries (more steps beat more draws)")
  else:
    answer = ("no significant difference: EOT adds nothing the standard attacks did not "
              "already do at this budget (the paper's finding for most stochastic defenses)")
  return question, f"{answer}. {numbers}. Best runs are picked on these images, both sides alike."


def _disappearing(runs: list[dict], worst_case: dict, num_images: int, counted: int
                  ) -> tuple[str, str]:
  question = "How much of the apparent robustness disappears under the strongest attacks?"
  if not counted:
    return question, "nothing to measure: no image was classified correctly before the attack"
  weakest = min(runs, key=lambda r: r["successes"])
  apparent = _stats.rate(counted - weakest["successes"], num_images,
                         votes=weakest["num_votes"],
                         gradients=weakest["gradient_computations"])
  worst = worst_case["robust_accuracy"]
  drop = apparent["rate"] - worst["rate"]
  share = drop / apparent["rate"] if apparent["rate"] > 0 else float("nan")
  strongest = _best(runs)
  return question, (
      f"robust accuracy under the weakest run ({weakest['label']}): "
      f"{tables.rate_with_interval(apparent)}; under the per-image worst case of all "
      f"{len(runs)} runs: {tables.rate_with_interval(worst)}. {100 * drop:.1f} points"
      + ("" if math.isnan(share) else f" ({100 * share:.0f}% of it)")
      + f" disappear; the strongest single run is {strongest['label']}.")


def _red_flags(sanity: dict, utility: dict) -> list[str]:
  flags = []
  if not sanity["random"] and not sanity["undefended"]:
    flags.append("not random: different keys gave identical defended images and logits, so "
                 "votes and EOT are pointless; evaluate it as the deterministic defense it is")
  if sanity["zero_gradient_fraction"] >= 0.5:
    flags.append(f"gradient masking: the gradient is exactly zero for "
                 f"{sanity['zero_gradient_images']} of {sanity['num_images']} images at the "
                 "clean inputs (a non-differentiable step without BPDA?); attack success here "
                 "is a lower bound and the robust accuracy an overestimate")
  if sanity["nonfinite_gradient_images"]:
    flags.append(f"non-finite gradients for {sanity['nonfinite_gradient_images']} images")
  if not sanity["finite_logits"]:
    flags.append(f"{sanity['nonfinite_logits']} non-finite logits on clean images")
  if sanity["looks_like_probabilities"]:
    flags.append("the model seems to return probabilities, not logits: losses are nearly "
                 "flat and attacks stall")
  undefended, vote = utility["undefended_accuracy"], utility["vote_accuracy"]
  test = utility["vote_vs_undefended"]
  if (undefended["rate"] - vote["rate"] >= VOTE_ACCURACY_DROP
      and test["p_value"] < SIGNIFICANCE):
    flags.append(
        f"robustness bought with errors: the vote's accuracy "
        f"{tables.rate_with_interval(vote)} is {100 * (undefended['rate'] - vote['rate']):.0f} "
        f"points below the undefended model's {tables.rate_with_interval(undefended)} "
        f"(exact McNemar p = {test['p_value']:.3g}); images the defense gets wrong cannot be "
        "attacked, so its success rates leave them out")
  return flags


def _rate_row(name: str, record: dict) -> dict:
  return {"what": name, "value": tables.rate_with_interval(record)}


def _markdown(report: AuditReport, figure_paths: dict[str, str]) -> str:
  settings, budget, sanity, utility = (report.settings, report.budget, report.sanity,
                                       report.utility)
  lines = [
      f"# Audit of {settings['defense']}", "",
      f"eps = {_eps(settings)}, {'targeted' if settings['targeted'] else 'untargeted'}, "
      f"{settings['num_images']} images; budget '{budget.name}': {budget.queries} gradient "
      f"queries per image for each of {budget.attack_runs} attack runs "
      f"({budget.gradients_per_image} per attacked image in all), predictions judged by a "
      f"{budget.votes}-vote majority; {report.seconds:g} s.", "",
      "Every rate: count/denominator, exact 95% Clopper-Pearson interval (rates over single "
      "draws: a normal interval over images), the votes (or draws) behind each prediction "
      "and the gradient computations per image.", ""]
  if report.red_flags:
    lines += ["## Red flags", ""] + [f"- {flag}" for flag in report.red_flags] + [""]
  lines += ["## Verdicts", ""]
  for question, answer in report.verdicts:
    lines += [f"- **{question}** {answer}"]
  lines += ["", f"Robust accuracy (per-image worst case over every run): "
            f"{tables.rate_with_interval(report.worst_case['robust_accuracy'])}; attack "
            f"success of the ensemble: {tables.rate_with_interval(report.worst_case['success'])}.",
            ""]
  lines += ["## 1. Sanity before attacking", "",
            tables.markdown([{"check": "random across keys", "result": sanity["random"]},
                             {"check": "finite logits", "result": sanity["finite_logits"]},
                             {"check": "logits, not probabilities",
                              "result": not sanity["looks_like_probabilities"]},
                             {"check": "images with an exactly zero gradient",
                              "result": f"{sanity['zero_gradient_images']} of "
                                        f"{sanity['num_images']}"}],
                            [("check", "check"), ("result", "result")]), ""]
  lines += ["## 2. Utility and invariance", "",
            tables.markdown([_rate_row("undefended accuracy", utility["undefended_accuracy"]),
                             _rate_row("single-draw accuracy", utility["single_draw_accuracy"]),
                             _rate_row("vote accuracy", utility["vote_accuracy"]),
                             _rate_row("rate of invariance R = Pr[F(t(x)) = F(x)]",
                                       utility["invariance"])],
                            [("what", "measure"), ("value", "rate")]), "",
            "R near 1: the model ignores the defense's randomness, so the defense behaves "
            "almost like a deterministic one and EOT has little to average; a low R costs "
            "accuracy (the paper's trade-off, Section 5).", ""]
  lines += ["## 3-4. Attacks (standard first, then EOT at the same number of queries)", "",
            "Success over the images the vote classified correctly.", "",
            tables.markdown([{"run": r["label"], "success": tables.rate_with_interval(r),
                              "seconds": r["seconds"]} for r in report.runs],
                            [("run", "run"), ("success", "success"),
                             ("seconds", "seconds")]), "",
            "Best step size per m (k x m = "
            f"{budget.queries}):", "",
            tables.markdown([{"m": c["m"], "k": c["k"], "run": c["label"],
                              "success": tables.rate_with_interval(c)}
                             for c in report.eot_cells],
                            [("m", "m"), ("k", "k"), ("run", "best run"),
                             ("success", "success")]), ""]
  if figure_paths:
    lines += ["## Figures", ""] + [f"![{title}]({path})" for title, path in
                                   figure_paths.items()] + [""]
  return "\n".join(lines)
