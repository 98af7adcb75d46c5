"""The embedded default main job (``python -m launch.run`` with no flags).

On Fashion-MNIST from the Debian package, on a CPU:
  1. survey what each defense does to real images (distortion, randomness);
  2. train the small ResNet (or reuse the cached one) and fine-tune a copy
     on randomized-smoothing data (trained invariance);
  3. a reduced k x m x alpha PGD sweep against randomized smoothing for both
     models, untargeted and targeted, judged by the voting classifier;
  4. the theory table of the binary Gaussian task;
  5. findings computed from the records of this run: does EOT help at an
     equal number of gradient computations, and how much robustness did
     trained invariance take back.
Everything lands in the workdir; summary.md holds the report.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from jaxdef.experiments import _defense_survey
from jaxdef.experiments import _kxm
from jaxdef.experiments import _records
from jaxdef.experiments import _sources
from jaxdef.experiments import _sweep
from jaxdef.experiments import _theory
from jaxdef.reports import figures
from jaxdef.reports import tables

SURVEY_COLUMNS = [("label", "defense"), ("mean_abs_change", "mean abs change"),
                  ("psnr_db", "PSNR dB"), ("ssim", "SSIM"),
                  ("std_across_draws", "std across draws"), ("draws_per_second", "draws/s")]


def _survey(config, images, workdir: pathlib.Path) -> tuple[list[dict], str]:
  cfg = config.survey
  survey_images = images[:int(cfg.num_images)]
  defenses = _sources.build_defenses(cfg.defenses)
  records, pictures = _defense_survey.survey(
      defenses, jax.random.fold_in(jax.random.key(config.seed), 0), survey_images,
      int(cfg.num_samples), int(cfg.chunk_size), progress=bool(config.progress))
  _records.write_json(workdir / "defense_survey.json", records)
  figure = figures.defense_samples(pictures, np.asarray(survey_images[0]),
                                   workdir / "figures" / "defense_samples",
                                   per_defense=int(cfg.pictures_per_defense))
  text = "\n".join([
      f"{len(survey_images)} test images, {cfg.num_samples} draws of each defense per image.",
      "", tables.markdown(records, SURVEY_COLUMNS), "", f"![draws](figures/{figure.name})"])
  return records, text


def _accuracies(config, classifiers, dataset) -> list[dict]:
  """Clean and defended (vote) accuracy of every model on the evaluation subset."""
  rows = []
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  for (model, defense), clf in classifiers.items():
    clean = np.asarray(jax.numpy.argmax(clf.logits_fn(dataset.images), -1))
    voted = np.asarray(clf.predict(key, dataset.images, n=int(config.attack.votes)))
    labels = np.asarray(dataset.labels)
    rows.append({"model": model, "defense": defense, "num_images": int(labels.size),
                 "clean_accuracy": float(np.mean(clean == labels)),
                 "vote_accuracy": float(np.mean(voted == labels)),
                 "votes": int(config.attack.votes)})
  return rows


def _rate(record: dict) -> str:
  return tables.rate_with_interval(record)


def eot_findings(best: list[dict]) -> list[str]:
  """Compares cells of equal gradient computations k x m (best alpha each)."""
  lines = []
  groups = sorted({(r["model"], r["defense"], r["targeted"]) for r in best})
  for model, defense, targeted in groups:
    group = [r for r in best if (r["model"], r["defense"], r["targeted"]) == (model, defense,
                                                                                targeted)]
    by_budget: dict[int, list[dict]] = {}
    for r in group:
      by_budget.setdefault(r["gradient_computations"], []).append(r)
    mode = "targeted" if targeted else "untargeted"
    for budget, cells in sorted(by_budget.items()):
      if len({c["m"] for c in cells}) < 2:
        continue
      cells = sorted(cells, key=lambda c: c["m"])
      compared = "; ".join(f"k={c['k']} x m={c['m']}: {_rate(c)}" for c in cells)
      winner = max(cells, key=lambda c: (c["rate"], -c["m"]))
      overlap = all(c["ci_low"] <= winner["rate"] <= c["ci_high"] for c in cells)
      verdict = ("no significant difference (the 95% intervals overlap)" if overlap else
                 f"best with m={winner['m']}")
      lines.append(f"- {model}, {mode}, {budget} gradient computations: {compared} -> "
                   f"{verdict}.")
  return lines


def invariance_findings(best: list[dict], accuracy_rows: list[dict], base: str,
                        tuned: str) -> list[str]:
  """Robust accuracy of the base and the fine-tuned model at the strongest cell."""
  lines = []
  for targeted in sorted({r["targeted"] for r in best}):
    mode = "targeted" if targeted else "untargeted"
    strongest = {}
    for model in (base, tuned):
      cells = [r for r in best if r["model"] == model and r["targeted"] == targeted]
      if cells:
        strongest[model] = max(cells, key=lambda r: (r["rate"], r["gradient_computations"]))
    if len(strongest) < 2:
      continue
    accuracy = {row["model"]: row["vote_accuracy"] for row in accuracy_rows}
    robust = {m: accuracy[m] * (1 - r["rate"]) for m, r in strongest.items()}
    parts = [f"{m}: vote accuracy {accuracy[m]:.1%}, strongest attack (k={r['k']}, m={r['m']}) "
             f"succeeds on {_rate(r)}, robust accuracy {robust[m]:.1%}"
             for m, r in strongest.items()]
    change = robust[tuned] - robust[base]
    lines.append(f"- {mode}: " + "; ".join(parts) + f" -> fine-tuning on the defense changed "
                 f"robust accuracy by {100 * change:+.1f} points and attack success by "
                 f"{100 * (strongest[tuned]['rate'] - strongest[base]['rate']):+.1f} points.")
  return lines


def run_default(config, workdir: pathlib.Path) -> dict:
  """Runs the embedded default; returns its records (see the module docstring)."""
  dataset = _sources.load_eval_data(config, workdir)
  survey_records, survey_text = _survey(config, dataset.images, workdir)

  logits_fns = _sources.load_models(config, workdir)
  defenses = _sources.build_defenses(config.defenses)
  classifiers = _sources.classifiers(config, logits_fns, defenses)
  accuracy_rows = _accuracies(config, classifiers, dataset)
  _records.write_json(workdir / "accuracy.json", accuracy_rows)

  spec = _kxm.sweep_spec(config, logits_fns, defenses)
  sanity_text = _kxm.sanity_checks(config, classifiers, dataset, workdir)
  records = _sweep.run_sweep(spec, classifiers, dataset.images, dataset.labels, dataset.targets,
                             jax.random.key(config.seed), workdir, progress=config.progress)
  sweep_text = _kxm.summarize(records, workdir, "k x m sweep")
  best = _sweep.best_alpha(records)

  theory = _theory.theory_results(config)
  _records.write_json(workdir / "theory.json", theory)
  theory_figure = figures.theory_curves(theory["curves"], workdir / "figures" / "theory_curves",
                                        f"sigma = {theory['sigma']:g}, eps = {theory['eps']:g}")

  model_labels = list(config.models)
  findings = ["## Findings (computed in this run)", "",
              f"Attack: L-inf PGD, eps = {config.attack.eps_255:g}/255, best of "
              f"{len(config.attack.alphas_255)} step sizes per cell; success over the images "
              f"the defended vote classified correctly, {_sweep.describe_vote(records[0])}, "
              f"95% Clopper-Pearson intervals.", "",
              "Does EOT help at an equal number of gradient computations?", "",
              *(eot_findings(best) or ["- no two cells share a budget in this grid."]), ""]
  if len(model_labels) >= 2:
    findings += ["How much robustness did trained invariance take back?", "",
                 *invariance_findings(best, accuracy_rows, model_labels[0], model_labels[1]), ""]
  summary = "\n".join([
      "# jaxdef: embedded default (Fashion-MNIST)", "",
      f"{len(dataset.labels)} fixed test images (indices.json), models: "
      + ", ".join(f"{m} ({config.models[m].source})" for m in model_labels)
      + f"; defenses attacked: {', '.join(defenses)}.", "",
      *findings,
      *([sanity_text] if sanity_text else []),
      "## Accuracy on the evaluation images", "",
      tables.markdown(accuracy_rows, [("model", "model"), ("defense", "defense"),
                                      ("clean_accuracy", "clean acc."),
                                      ("vote_accuracy", "defended vote acc."),
                                      ("votes", "votes")]), "",
      sweep_text.replace("# k x m sweep", "## k x m sweep").replace("\n## ", "\n### "), "",
      "## Theory", "", _theory.theory_markdown(theory), "",
      f"![theory](figures/{theory_figure.name})", "",
      "## Defense survey", "", survey_text, ""])
  _records.write_atomic(workdir / "summary.md", summary)
  print(summary)
  return {"survey": survey_records, "accuracy": accuracy_rows, "records": records,
          "theory": theory, "summary": summary}


__all__ = ("run_default",)
