"""The audit experiment: `jaxdef.audit` on a configured model, defense and data."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from jaxdef import _files
from jaxdef import auditing
from jaxdef import defenses as defenses_lib
from jaxdef.classifier import StochasticClassifier
from jaxdef.experiments import _sources


def build_defense(config) -> defenses_lib.Defense:
  """``config.defense``: a registry name or a factory path, params as a JSON object."""
  entry = config.defense
  text = entry.get("params", "") or "{}"
  try:
    params = json.loads(text)
  except ValueError as error:
    raise ValueError(f"config.defense.params must be a JSON object of keyword parameters, "
                     f"e.g. '{{\"sigma\": 0.25}}'; got {text!r} ({error})") from None
  if not isinstance(params, dict):
    raise ValueError(f"config.defense.params must be a JSON object of keyword parameters, "
                     f"e.g. '{{\"sigma\": 0.25}}'; got {text!r}")
  chosen = ({"factory": entry.factory} if entry.get("factory") else {"name": entry.name})
  return _sources.build_defense({**chosen, **params}, "config.defense")


def _budget(config) -> auditing.Budget:
  name = config.audit.budget
  if name not in auditing.BUDGETS:
    raise ValueError(f"config.audit.budget must be one of {', '.join(auditing.BUDGETS)}; "
                     f"got {name!r}")
  return auditing.BUDGETS[name]


def describe(config) -> dict:
  """What `run_audit` would run and its largest cost, without computing anything."""
  budget = _budget(config)
  defense = build_defense(config)
  num_images = int(config.data.num_images)
  return {"experiment": "audit", "model": dict(config.models.model),
          "defense": repr(defense), "budget": budget.name,
          "attack_runs": budget.attack_runs, "queries_per_run": budget.queries,
          # Only initially correct images are attacked: this is the most.
          "image_gradients": budget.gradients_per_image * num_images,
          "num_images": num_images}


def run_audit(config, workdir: pathlib.Path) -> dict:
  """Runs (or resumes) the audit; writes audit.md, audit.json and figures/."""
  budget = _budget(config)
  defense = build_defense(config)
  entry = config.models.model
  dataset = _sources.load_eval_data(config, workdir)
  try:
    logits_fn = _sources.load_model("model", entry, config, workdir)
  except (ValueError, OSError) as error:
    where = f" ({entry.path})" if entry.get("path") else ""
    raise ValueError(f"config.models.model{where}: {error}") from None
  clf = StochasticClassifier(logits_fn, defense, stochastic_model=_sources.is_stochastic(entry),
                             **_sources.vote_settings(config, logits_fn))
  report = auditing.audit(
      jax.random.key(int(config.seed)), clf, dataset.images, dataset.labels,
      eps=(float(config.attack.eps_255) / 255 if config.attack.norm == "inf"
           else float(config.attack.eps_l2)),
      norm=config.attack.norm, budget=budget,
      targeted=np.asarray(dataset.targets) if config.audit.targeted else None,
      workdir=workdir / "audit", eot_chunk_size=int(config.attack.eot_chunk_size) or None,
      progress=bool(config.progress))
  figures = report.save_figures(workdir / "figures")
  summary = report.to_markdown({title: str(path.relative_to(workdir))
                                for title, path in figures.items()})
  _files.write_atomic(workdir / "audit.md", summary)
  _files.write_atomic(workdir / "audit.json", report.to_json())
  print(summary)
  return {"report": report, "summary": summary}
