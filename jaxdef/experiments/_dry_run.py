"""`--dry_run`: resolve a config, name its loaders and estimate its cost.

Nothing is loaded or computed beyond abstract shapes, so a full-size config
(ImageNet, ResNet-50, the study's grid) can be checked on a laptop.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdef import models
from jaxdef.experiments import _sources

INPUT_SHAPES = {"fashion_mnist": (28, 28, 1), "imagenet": (224, 224, 3),
                "imagenette": (224, 224, 3), "cifar10": (32, 32, 3)}


def _model_for(entry, dataset: str):
  num_classes = _sources.NUM_CLASSES[dataset]
  shape = INPUT_SHAPES[dataset]
  source = entry.get("source")
  if source in ("small_resnet", "fashion_small_resnet"):
    widths = tuple(entry.get("widths", (16, 32, 64)))
    return models.ResNet(stage_sizes=(1,) * len(widths), block="basic", num_classes=num_classes,
                         widths=widths, stem="cifar", mean=(0.5,), std=(1.0,)), shape
  if source == "cohen" and str(entry.get("arch", "")).startswith("cifar"):
    return None, shape  # ResNet-110's cost is not estimated
  depth = int(entry.get("depth", 50))
  blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
  return models.ResNet(stage_sizes=blocks, block="basic" if depth < 50 else "bottleneck",
                       num_classes=num_classes), shape


def forward_flops(entry, dataset: str) -> float | None:
  """FLOPs of one image's forward pass, from XLA's cost analysis of abstract shapes."""
  model, shape = _model_for(entry, dataset)
  if model is None:
    return None
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)),
                                                train=False))
  lowered = jax.jit(lambda v, images: model.apply(v, images, train=False)).lower(variables, x)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) or None


def describe(config) -> dict[str, Any]:
  """What the config would load and compute; printed by ``launch.run --dry_run``."""
  data_cfg = config.data
  if data_cfg.name not in _sources.DATASETS:
    raise ValueError(f"config.data.name must be one of {', '.join(_sources.DATASETS)}; "
                     f"got {data_cfg.name!r}")
  report = {
      "experiment": config.experiment,
      "data": (f"{data_cfg.name} split {data_cfg.split!r} via {data_cfg.get('source', 'idx')}"
               f" from {data_cfg.get('dir') or 'the default place'}, "
               f"{data_cfg.num_images} fixed images (seed {config.seed})"),
      "models": {}, "defenses": {},
  }
  for label, entry in config.get("models", {}).items():
    source = entry.get("source")
    if source not in _sources.MODEL_SOURCES:
      raise ValueError(f"config.models.{label}.source must be one of "
                       f"{', '.join(_sources.MODEL_SOURCES)}; got {source!r}")
    _sources.activation_of(label, entry)
    path = entry.get("path", None)
    note = "" if path is None else (f" from {path}" if path else
                                     f" (path not set: --config.models.{label}.path=...)")
    report["models"][label] = f"{source}{note}"
  for label, defense in _sources.build_defenses(config.get("defenses", {})).items():
    report["defenses"][label] = repr(defense)
  if config.experiment in ("invariance_smoothing", "invariance_bart"):
    from jaxdef.experiments import _invariance

    _invariance.check_models(config)
    _invariance.check_tracking(config)
    report["track_epochs"] = bool(config.invariance.get("track_epochs", False))
  if config.experiment == "lack_of_randomness":
    from jaxdef.experiments import _lack_of_randomness

    estimate = _lack_of_randomness.cost(config)
    report.update(estimate)
    report["rows"] = {row.label: f"{row.defense} on {row.model}, published EOT-{row.eot}, "
                                 f"{row.votes} votes"
                      for row in _lack_of_randomness.rows_of(config)}
    flops = {label: forward_flops(entry, data_cfg.name) for label, entry in config.models.items()}
    if all(flops.values()):
      # A gradient costs about 3 forward passes; resizing defenses' larger
      # inputs are not counted (an estimate at the dataset's input size).
      report["tflop"] = round(sum((3 * g + f) * flops[row.model]
                                  for row, g, f in _lack_of_randomness.row_costs(config)) / 1e12, 1)
  if "attack" in config and "eots" in config.attack:
    from jaxdef.experiments import _kxm

    spec = _kxm.sweep_spec(config, report["models"], report["defenses"])
    n = int(data_cfg.num_images)
    gradients = spec.gradient_computations(n)
    forwards = spec.forward_passes(n)
    report["units"] = len(spec.units())
    report["cells"] = len(spec.units()) * len(spec.checkpoints)
    report["image_gradients"] = gradients
    report["defended_forward_passes"] = forwards
    for label, entry in config.models.items():
      flops = forward_flops(entry, data_cfg.name)
      if flops:
        # A gradient costs about 3 forward passes (forward + backward).
        report[f"tflop_{label}"] = round((3 * gradients + forwards) * flops / 1e12, 1)
  return report
