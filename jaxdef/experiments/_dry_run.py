"""`--dry_run`: resolve a config, name its loaders and estimate its cost.

Nothing is loaded or computed beyond abstract shapes, so a full-size config
(ImageNet, ResNet-50, the study's grid) can be checked on a laptop.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdef import classifier
from jaxdef import memory
from jaxdef import models
from jaxdef.attacks import _eot
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


# The device a dry run states when config.device_memory_gb is 0: one 80 GB
# accelerator (an H100 or A100 80GB).
DRY_RUN_DEVICE_GB = 80


def _largest_eot(config) -> int:
  """The most EOT draws per step any attack of the config takes."""
  attack = config.attack
  if "eots" in attack:
    return max(int(m) for m in attack.eots)
  if "eot" in attack:
    return int(attack.eot)
  if config.experiment == "lack_of_randomness":
    from jaxdef.experiments import _lack_of_randomness

    return max(max([row.eot] + [m for _, _, m, _ in row.settings])
               for row in _lack_of_randomness.rows_of(config))
  if "settings" in attack:
    return max(int(m) for _, m in attack.settings)
  return 1


def _largest_votes(config, section: str) -> int:
  """The most draws one prediction of the config votes over."""
  settings = config[section]
  counts = [int(settings.get(name, 0) or 0) for name in ("votes", "invariance_draws", "draws")]
  if config.experiment == "lack_of_randomness":
    from jaxdef.experiments import _lack_of_randomness

    counts += [row.votes for row in _lack_of_randomness.rows_of(config)]
  return max(counts + [1])


def _row_costs(entry, config) -> tuple[memory.RowCost, memory.RowCost] | None:
  """(attack-step, vote) row costs of the model entry from abstract shapes."""
  model, shape = _model_for(entry, config.data.name)
  if model is None or entry.get("activation") == "sap":
    return None
  dtype = _sources.compute_dtype(config)
  if dtype is not None:
    model = model.clone(dtype=dtype)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)),
                                                train=False))
  apply = lambda v, images: model.apply(v, images, train=False)
  key = (repr(model), config.data.name)
  build = lambda: (apply, variables)
  return (memory.cached_row_cost(key, build, shape, gradient=True),
          memory.cached_row_cost(key, build, shape, gradient=False))


def memory_plan(config) -> dict[str, Any]:
  """The largest attack and vote programs of the config and their memory on a stated device.

  Rows: images x step sizes in one call x EOT draws per call (an attack
  step), draws per call x images (a vote, invariance or sanity call), after
  the config's row limits are resolved for a device of
  ``config.device_memory_gb`` GB (`DRY_RUN_DEVICE_GB` when 0). Bytes: XLA's
  `memory_analysis` of the model's gradient and forward pass on this
  machine's backend (`jaxdef.memory.row_cost`), at the dataset's input size.
  """
  device_gb = float(config.get("device_memory_gb", 0) or DRY_RUN_DEVICE_GB)
  device_bytes = int(device_gb * 2**30)
  attack = config.attack if "attack" in config else {}
  section = "evaluation" if config.experiment == "finetune" else "attack"
  images = int(config.data.num_images)
  if config.experiment == "perturbation_pictures":
    images = min(images, int(config.num_pictures))
  in_call = len(attack.alphas_255) if attack.get("batch_alphas", False) else 1
  eot = _largest_eot(config) if config.experiment != "finetune" else 0
  plan: dict[str, Any] = {"device_gb": device_gb, "models": {}}
  for label, entry in config.get("models", {}).items():
    costs = _row_costs(entry, config)
    if costs is None:
      plan["models"][label] = "not estimated (stochastic model or CIFAR ResNet-110)"
      continue
    gradient, forward = costs
    programs = {}
    if eot:
      limit = _sources.attack_rows_limit(config, gradient, device_bytes)
      rows_per_draw = images * in_call
      chunk = _eot.chunk_under(eot, rows_per_draw, limit, attack.get("eot_chunk_size") or None)
      programs["attack_step"] = (chunk * rows_per_draw, gradient)
    draws = classifier.vote_draws_per_call(
        int(config[section].vote_chunk_size),
        _sources.vote_rows_limit(config, forward, device_bytes, section),
        _largest_votes(config, section), images)
    programs["vote"] = (draws * images, forward)
    described = {name: {"rows": rows, "estimated_gb": round(cost.bytes_for(rows) / 2**30, 1)}
                 for name, (rows, cost) in programs.items()}
    largest = max(described, key=lambda name: described[name]["estimated_gb"])
    plan["models"][label] = {
        "gradient_row_mb": round(gradient.per_row / 2**20, 1),
        "forward_row_mb": round(forward.per_row / 2**20, 1),
        **described, "largest": largest,
        "fits": described[largest]["estimated_gb"] <= device_gb}
  return plan


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
  if config.experiment != "theory" and config.get("models"):
    report["memory"] = memory_plan(config)
  return report
