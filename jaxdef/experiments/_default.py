"""The embedded default main job (``python -m launch.run`` with no flags)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from jaxdef import data
from jaxdef.experiments import _defense_survey
from jaxdef.experiments import _records
from jaxdef.reports import figures
from jaxdef.reports import tables


def run_default(config, workdir: pathlib.Path) -> dict:
  """Surveys the configured defenses on Fashion-MNIST test images.

  Writes to `workdir`: indices.json (the evaluation subset),
  defense_survey.json, summary.md and defense_samples.png.

  Returns:
    {"survey": records}.
  """
  images, labels = data.load_fashion_mnist(config.data.split, config.data.dir or None)
  rng = np.random.default_rng(config.seed)
  indices = np.sort(rng.choice(len(images), size=config.data.num_images, replace=False))
  _records.write_json(workdir / "indices.json",
                      {"dataset": "fashion_mnist", "split": config.data.split,
                       "indices": indices.tolist()})
  images = jax.numpy.asarray(images[indices])

  root = jax.random.key(config.seed)
  survey_key = jax.random.fold_in(root, 0)
  defenses = _defense_survey.build_defenses(config.defenses)
  records, pictures = _defense_survey.survey(
      defenses, survey_key, images, config.num_samples, config.chunk_size)
  _records.write_json(workdir / "defense_survey.json", records)
  figure_path = figures.defense_samples(
      pictures, np.asarray(images[0]), workdir / "defense_samples",
      per_defense=config.pictures_per_defense)

  lines = [
      "# jaxdef: embedded default (Fashion-MNIST)",
      "",
      f"{config.data.num_images} test images (indices in indices.json), "
      f"{config.num_samples} draws of each defense per image.",
      "",
      "## Defenses",
      "",
      tables.markdown(records, [
          ("label", "defense"), ("mean_abs_change", "mean abs change"),
          ("std_across_draws", "std across draws"), ("draws_per_second", "draws/s"),
          ("compile_s", "compile s")]),
      "",
      f"Samples: {figure_path.name}",
      "",
      "## Attacks",
      "",
      "Attacks on the defended classifier: not yet available (issue 3).",
  ]
  summary = "\n".join(lines) + "\n"
  _records.write_atomic(workdir / "summary.md", summary)
  print(summary)
  return {"survey": records}
