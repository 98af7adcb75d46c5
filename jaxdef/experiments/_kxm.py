"""The k x m gradient-strength sweep of SPEC.md section 7 (config `kxm_sweep`).

PGD steps k x EOT samples m x step alpha, best alpha per (k, m), untargeted
and targeted, for every configured model behind every configured defense.
Writes records/ (one JSON per cell), results.csv, summary.md and, per
(model, defense, target mode), a k x m heat map and the success curves
against steps and against gradient computations.
"""

from __future__ import annotations

import pathlib

import jax

from jaxdef.experiments import _records
from jaxdef.experiments import _sanity
from jaxdef.experiments import _sources
from jaxdef.experiments import _sweep
from jaxdef.reports import figures
from jaxdef.reports import tables

CSV_COLUMNS = ("model", "defense", "targeted", "k", "m", "alpha_255", "eps",
               "gradient_computations", "successes", "denominator", "num_images", "num_votes",
               "rate", "ci_low", "ci_high", "nonfinite_images",
               "attack_seconds_whole_trajectory", "vote_seconds", "vote_rule",
               "vote_forward_passes", "vote_draws_mean")


def sweep_spec(config, models, defense_labels) -> _sweep.SweepSpec:
  """The sweep of `config` for `models` (label -> logits function, or just the
  labels: then the row limit is resolved without the models' memory)."""
  attack = config.attack
  logits_fns = {label: fn for label, fn in models.items() if callable(fn)}
  return _sweep.SweepSpec(
      models=tuple(models), defenses=tuple(defense_labels),
      targeted=tuple(bool(t) for t in attack.targeted), eots=tuple(int(m) for m in attack.eots),
      alphas=tuple(float(a) / 255 for a in attack.alphas_255),
      checkpoints=tuple(int(k) for k in attack.steps), eps=float(attack.eps_255) / 255,
      votes=int(attack.votes), eot_chunk_size=attack.get("eot_chunk_size") or None,
      eot_rows_per_call=_sources.eot_rows_per_call(config, logits_fns),
      batch_alphas=attack.get("batch_alphas", False),
      sequential_votes=attack.get("sequential_votes", False),
      vote_error=attack.get("vote_error", 1e-3),
      counted_only=attack.get("counted_only", False))


def sanity_checks(config, classifiers, dataset, workdir: pathlib.Path) -> str:
  """The pre-attack sanity check of every (model, defense) pair, at the sweep's votes.

  See `_sanity.run`; returns its summary section ("" when switched off).
  """
  votes = int(config.attack.votes)
  return _sanity.run(config, {pair: (clf, votes) for pair, clf in classifiers.items()},
                     dataset.images, dataset.labels, workdir)


def summarize(records, workdir: pathlib.Path, title: str, sanity_text: str = "") -> str:
  """Writes results.csv, the figures and summary.md; returns the summary text."""
  _records.write_atomic(workdir / "results.csv", tables.csv(records, CSV_COLUMNS))
  best = _sweep.best_alpha(records)
  lines = [f"# {title}", ""]
  if sanity_text:
    lines += [sanity_text, ""]
  groups = sorted({(r["model"], r["defense"], r["targeted"]) for r in best})
  for model, defense, targeted in groups:
    group = [r for r in best if (r["model"], r["defense"], r["targeted"]) == (model, defense,
                                                                                targeted)]
    mode = "targeted" if targeted else "untargeted"
    name = f"{model}__{defense}__{mode}"
    heading = f"{model} behind {defense}, {mode}"
    heat = figures.success_heatmap(group, workdir / "figures" / f"heatmap__{name}", heading)
    curves = figures.success_curves(group, workdir / "figures" / f"curves__{name}", heading)
    lines += [f"## {heading}", "",
              f"Attack success, best alpha per cell (rows: PGD steps k; columns: EOT m; "
              f"{_sweep.describe_vote(group[0])}; denominators are the initially correct "
              f"images).",
              "", tables.grid(group, "k", "m", row_title="k", column_title="m"), "",
              f"![heat map](figures/{heat.name}) ![curves](figures/{curves.name})", ""]
  summary = "\n".join(lines)
  _records.write_atomic(workdir / "summary.md", summary)
  return summary


def run_kxm_sweep(config, workdir: pathlib.Path) -> dict:
  """Runs (or resumes) the configured sweep; returns {"records", "summary"}."""
  dataset = _sources.load_eval_data(config, workdir)
  logits_fns = _sources.load_models(config, workdir)
  defenses = _sources.build_defenses(config.defenses)
  classifiers = _sources.classifiers(config, logits_fns, defenses)
  spec = sweep_spec(config, logits_fns, defenses)
  sanity_text = sanity_checks(config, classifiers, dataset, workdir)
  records = _sweep.run_sweep(spec, classifiers, dataset.images, dataset.labels, dataset.targets,
                             jax.random.key(config.seed), workdir, progress=config.progress)
  summary = summarize(records, workdir, f"k x m sweep: {dataset.name}", sanity_text)
  print(summary)
  return {"records": records, "summary": summary}
