"""Trained invariance: a base model and copies fine-tuned on each defense (config `finetune`).

Every configured model (typically the base model and one copy fine-tuned
on data through each configured defense) is measured behind every
configured defense on the fixed evaluation images: clean (undefended)
accuracy, defended one-draw accuracy (the mean over draws), majority-vote
accuracy and the rate of invariance (`StochasticClassifier.invariance`: how
often one defended draw agrees with the undefended model). Writes
results.json, results.csv, summary.md and a bar figure (PNG and PDF).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import StochasticClassifier
from jaxdef.classifier import aggregate
from jaxdef.experiments import _fashion_models
from jaxdef.experiments import _records
from jaxdef.experiments import _sources
from jaxdef.reports import figures
from jaxdef.reports import tables

METRICS = (("clean_accuracy", "clean acc."), ("one_draw_accuracy", "defended one-draw acc."),
           ("vote_accuracy", "defended vote acc."), ("invariance", "invariance"))
CSV_COLUMNS = ("model", "finetuned_on", "defense", "num_images", "draws", "clean_accuracy",
               "one_draw_accuracy", "vote_accuracy", "invariance")


def _load(config, workdir: pathlib.Path):
  """Model label -> (logits_fn, training history or None)."""
  loaded = {}
  for label, entry in config.models.items():
    if entry.get("source") == "fashion_small_resnet":
      from jaxdef import models

      model, variables, info = _fashion_models.trained(
          label, entry, config, progress=bool(config.get("progress", True)))
      loaded[label] = (models.logits_fn(model, variables, dtype=_sources.compute_dtype(config)),
                       info["history"])
    else:
      loaded[label] = (_sources.load_model(label, entry, config, workdir), None)
  return loaded


def measure(clf: StochasticClassifier, key: jax.Array, images: jax.Array, labels: jax.Array,
            draws: int) -> dict[str, float]:
  """Clean, one-draw and vote accuracy and invariance of one defended model.

  Args:
    clf: the model behind its defense.
    key: PRNG key (split into the draws' key and the invariance key).
    images: float (B, H, W, C) in [0, 1].
    labels: int (B,).
    draws: defense draws per image (for the one-draw mean, the vote and invariance).

  Returns:
    Rates in [0, 1].
  """
  draw_key, invariance_key = jax.random.split(key)
  draw_logits = clf.draw_logits(draw_key, images, draws)  # (draws, B, classes)
  clean = jnp.argmax(clf.logits_fn(images), -1)
  return {
      "clean_accuracy": float(jnp.mean(clean == labels)),
      "one_draw_accuracy": float(jnp.mean(jnp.argmax(draw_logits, -1) == labels[None])),
      "vote_accuracy": float(jnp.mean(aggregate(draw_logits, "vote") == labels)),
      "invariance": float(clf.invariance(invariance_key, images, draws)),
  }


def bar_figure(rows: list[dict], path, title: str) -> pathlib.Path:
  """One panel per defended metric; groups: defenses, bars: models."""
  plt = figures.pyplot()
  defenses = list(dict.fromkeys(r["defense"] for r in rows))
  model_labels = list(dict.fromkeys(r["model"] for r in rows))
  lookup = {(r["model"], r["defense"]): r for r in rows}
  panels = METRICS[1:]
  figure, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2), sharey=True)
  width = 0.8 / len(model_labels)
  for axis, (metric, label) in zip(axes, panels):
    for index, model in enumerate(model_labels):
      heights = [100 * lookup[(model, d)][metric] for d in defenses]
      axis.bar(np.arange(len(defenses)) + (index - (len(model_labels) - 1) / 2) * width,
               heights, width, label=model)
    axis.set_xticks(range(len(defenses)), defenses, fontsize=7)
    axis.set_title(label, fontsize=9)
    axis.set_ylim(0, 100)
    axis.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("%")
  axes[-1].legend(fontsize=7, title="model", title_fontsize=7)
  figure.suptitle(title, fontsize=9)
  return figures.save(figure, path)


def run_finetune(config, workdir: pathlib.Path) -> dict:
  """Trains (or loads) the models and measures them; returns {"rows", "summary"}."""
  dataset = _sources.load_eval_data(config, workdir)
  defenses = _sources.build_defenses(config.defenses)
  loaded = _load(config, workdir)
  draws = int(config.evaluation.draws)
  key = jax.random.key(int(config.seed))
  rows, histories = [], {}
  for model, (logits_fn, history) in loaded.items():
    histories[model] = history
    for index, (defense_label, defense) in enumerate(defenses.items()):
      clf = StochasticClassifier(logits_fn, defense,
                                 **_sources.vote_settings(config, logits_fn, "evaluation"))
      # The same key per defense for every model: differences between models
      # are not differences between draws.
      rates = measure(clf, jax.random.fold_in(key, index), dataset.images, dataset.labels,
                      draws)
      rows.append({"model": model, "defense": defense_label, "draws": draws,
                   "finetuned_on": config.models[model].get("finetune_defense", "") or "-",
                   "num_images": int(dataset.labels.size), **rates})
  _records.write_json(workdir / "results.json", {"rows": rows, "histories": histories})
  _records.write_atomic(workdir / "results.csv", tables.csv(rows, CSV_COLUMNS))
  figure = bar_figure(rows, workdir / "figures" / "finetune_bars",
                      f"{dataset.name}: {len(dataset.labels)} images, {draws} draws")
  summary = "\n".join([
      f"# Trained invariance: {dataset.name}", "",
      f"{len(dataset.labels)} fixed test images (indices.json); every model behind every "
      f"defense, {draws} defense draws per image. One-draw accuracy is the mean over draws; "
      f"invariance is the rate at which one defended draw agrees with the undefended model.",
      "", tables.markdown(rows, [("model", "model"), ("finetuned_on", "fine-tuned on"),
                                 ("defense", "defense"), *METRICS]), "",
      f"![bars](figures/{figure.name})", ""])
  _records.write_atomic(workdir / "summary.md", summary)
  print(summary)
  return {"rows": rows, "histories": histories, "summary": summary}


__all__ = ("measure", "run_finetune")
