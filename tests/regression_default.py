"""The embedded default's sweep on the pinned run's models and images (shared by the tests).

`sweep_records(tmp)` attacks the default's 100 fixed Fashion-MNIST test images
with the default run's two trained models (tests/data/default_run/*.msgpack)
using the default config's whole sweep: untargeted and targeted, EOT m = 1
and 5, both step sizes, k = 10, 20, 50, keys and votes included. `weaken`
changes the attack for the experiment that shows the pins catch it.

Regenerate the exact pins (after a change that is meant to change the
numbers, say why in the commit) with

  .venv/bin/python -m tests.regression_default --write
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from configs import default as default_config
from jaxdef import data
from jaxdef import models
from jaxdef.experiments import _kxm
from jaxdef.experiments import _sources
from jaxdef.experiments import _sweep

DATA = pathlib.Path(__file__).resolve().parent / "data" / "default_run"
PINNED = DATA / "pinned.json"
CELL_FIELDS = ("model", "targeted", "m", "alpha_255", "k")


def cell_key(record: dict) -> tuple:
  return tuple(record[field] for field in CELL_FIELDS)


@dataclasses.dataclass
class PinnedProblem:
  """The default run's trained models and fixed images, as the default config sets them up.

  Attributes:
    config: configs/default.py's default variant.
    flax_models: model label ("base", "invariant") -> (Flax module, variables).
    logits_fns: model label -> images -> logits.
    defenses: defense label -> defense.
    images: float32 (100, 28, 28, 1) in [0, 1]; labels, targets: int32 (100,).
  """
  config: object
  flax_models: dict
  logits_fns: dict
  defenses: dict
  images: jax.Array
  labels: np.ndarray
  targets: np.ndarray


def pinned_problem() -> PinnedProblem:
  """Loads tests/data/default_run's models and the default's 100 fixed test images."""
  config = default_config.get_config()
  model, template = models.small_resnet(10, widths=tuple(config.models.base.widths))
  flax_models = {label: (model, models.load_variables(DATA / f"{label}.msgpack", like=template))
                 for label in config.models}
  indices = data.load_subset(DATA / "indices.json", dataset="fashion_mnist", split="test")
  images, labels = data.load_fashion_mnist("test")
  labels = np.asarray(labels[indices], np.int32)
  return PinnedProblem(
      config=config, flax_models=flax_models,
      logits_fns={label: models.logits_fn(*pair) for label, pair in flax_models.items()},
      defenses=_sources.build_defenses(config.defenses),
      images=jnp.asarray(np.asarray(images[indices], np.float32)), labels=labels,
      targets=_sources.targets_for(labels, 10, int(config.data.get("target_label", -1))))


def sweep_records(workdir: pathlib.Path, *, alpha_scale: float = 1.0,
                  step_offset: int = 0) -> list[dict]:
  """The default's 48 cells on the pinned models; alpha_scale / step_offset weaken the attack."""
  problem = pinned_problem()
  config, logits_fns, defenses = problem.config, problem.logits_fns, problem.defenses
  images, labels, targets = problem.images, problem.labels, problem.targets
  spec = _kxm.sweep_spec(config, logits_fns, defenses)
  if alpha_scale != 1.0 or step_offset:
    spec = dataclasses.replace(
        spec, alphas=tuple(a * alpha_scale for a in spec.alphas),
        checkpoints=tuple(k + step_offset for k in spec.checkpoints))
  records = _sweep.run_sweep(spec, _sources.classifiers(config, logits_fns, defenses), images,
                             jnp.asarray(labels), jnp.asarray(targets),
                             jax.random.key(config.seed), workdir, progress=False)
  if alpha_scale != 1.0 or step_offset:  # label the weakened cells as the cells they replace
    for record in records:
      record["alpha_255"] = round(record["alpha_255"] / alpha_scale, 4)
      record["k"] -= step_offset
  return records


def exact_cells(records: list[dict]) -> list[dict]:
  keep = (*CELL_FIELDS, "successes", "denominator", "gradient_computations")
  return sorted(({field: r[field] for field in keep} for r in records), key=cell_key)


def differences(records: list[dict], pinned: list[dict]) -> list[str]:
  found = {cell_key(r): r for r in records}
  out = []
  for cell in pinned:
    record = found.get(cell_key(cell))
    if record is None:
      out.append(f"{cell_key(cell)}: not computed")
    elif (record["successes"], record["denominator"]) != (cell["successes"],
                                                        cell["denominator"]):
      out.append(f"{dict(zip(CELL_FIELDS, cell_key(cell)))}: {record['successes']}/"
                 f"{record['denominator']}, pinned {cell['successes']}/{cell['denominator']}")
  return out


def main(argv: list[str]) -> None:
  with tempfile.TemporaryDirectory() as tmp:
    if "--write" in argv:
      pinned = json.loads(PINNED.read_text())
      pinned["exact_cpu"] = {
          "produced_by": "python -m tests.regression_default --write",
          "date": datetime.date.today().isoformat(), "backend": jax.default_backend(),
          "cells": exact_cells(sweep_records(pathlib.Path(tmp)))}
      PINNED.write_text(json.dumps(pinned, indent=1) + "\n")
      print(f"wrote {len(pinned['exact_cpu']['cells'])} exact cells to {PINNED}")
      return
    # The weakening experiment: how many pinned cells each weaker attack changes.
    pinned = json.loads(PINNED.read_text())["exact_cpu"]["cells"]
    for name, change in (("alpha halved", {"alpha_scale": 0.5}),
                         ("one PGD step fewer", {"step_offset": -1})):
      changed = differences(sweep_records(pathlib.Path(tmp) / name, **change), pinned)
      print(f"{name}: {len(changed)} of {len(pinned)} pinned cells differ")
      for line in changed:
        print("  " + line)


if __name__ == "__main__":
  main(sys.argv[1:])
