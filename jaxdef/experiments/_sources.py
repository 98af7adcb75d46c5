"""What an experiment config names: its evaluation data, models and defenses.

Config sections read here:
  data: name ("fashion_mnist" | "imagenet" | "imagenette" | "cifar10"), split,
    num_images, dir (a folder; empty for the default place), source
    ("idx" | "folder" | "tfds"), target_label (the targeted attacks' target;
    -1 = the last class, the study's choice).
  models: label -> {source, ...}; sources: "small_resnet" (random init, for
    smoke runs), "fashion_small_resnet" (trained on Fashion-MNIST with
    `jaxdef.train`, cached), "torchvision" (path, depth), "cohen" (path, arch),
    "variables" (path, depth/arch of a saved msgpack). Every source takes
    `activation` ("relu", the default | "sap" | "kwta") with `sap_ratio` and
    `kwta_ratio` (`jaxdef.models`); a SAP model is random, so its logits
    function is keyed and its classifiers are built with
    ``stochastic_model=True``.
  defenses: label -> {name, **params} of the defense registry, or {factory,
    **params} for a user's defense ("package.module:function" returning a
    callable (key, images) -> images).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

from jaxdef import data
from jaxdef import defenses as defenses_lib
from jaxdef import memory
from jaxdef import models
from jaxdef.classifier import StochasticClassifier

DATASETS = ("fashion_mnist", "imagenet", "imagenette", "cifar10")
MODEL_SOURCES = ("small_resnet", "fashion_small_resnet", "torchvision", "cohen", "variables")
NUM_CLASSES = {"fashion_mnist": 10, "imagenet": 1000, "imagenette": 10, "cifar10": 10}


@dataclasses.dataclass(frozen=True)
class EvalData:
  """The evaluation subset: images float32 (B, H, W, C) in [0, 1], int32 labels."""
  name: str
  images: jax.Array
  labels: jax.Array
  targets: jax.Array  # target labels of targeted attacks
  indices: np.ndarray  # positions in the split


def build_defenses(config_defenses) -> dict[str, defenses_lib.Defense]:
  """Builds the defenses of a config's ``defenses`` section (label -> entry)."""
  return {label: build_defense(entry, f"config.defenses.{label}")
          for label, entry in config_defenses.items()}


def build_defense(entry, where: str) -> defenses_lib.Defense:
  """One defense entry: {name, **params} of the registry, or {factory, **params}
  with ``factory = "package.module:function"`` (a user's defense).

  Args:
    entry: the mapping.
    where: the entry's place in the config, for error messages.
  """
  params = dict(entry)
  name, factory = params.pop("name", None), params.pop("factory", None)
  params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
  if factory:
    try:
      return defenses_lib.from_factory(factory, **params)
    except (ValueError, TypeError) as error:
      raise type(error)(f"{where}.factory: {error}") from None
  if name is None:
    raise ValueError(f"{where} needs a 'name' (one of {', '.join(defenses_lib.available())}) "
                     "or a 'factory' ('package.module:function')")
  return defenses_lib.get(name, **params)


def classifiers(config, logits_fns: dict[str, Any], defenses: dict[str, Any]
                ) -> dict[tuple[str, str], StochasticClassifier]:
  """(model label, defense label) -> the defended classifier, for every pair."""
  return {(m, d): StochasticClassifier(fn, defense,
                                       stochastic_model=is_stochastic(config.models[m]),
                                       **vote_settings(config, fn))
          for m, fn in logits_fns.items() for d, defense in defenses.items()}


DTYPES = {"float32": None, "bfloat16": jax.numpy.bfloat16}


def compute_dtype(config) -> Any:
  """The models' computation dtype from ``config.dtype`` (None: float32, the
  models' own). bfloat16 runs convolutions and BatchNorm in bfloat16; images,
  perturbations, logits and losses stay float32."""
  name = config.get("dtype", "float32")
  if name not in DTYPES:
    raise ValueError(f"config.dtype must be one of {', '.join(map(repr, DTYPES))}, got {name!r}")
  return DTYPES[name]


def stated_memory_bytes(config) -> int | None:
  """``config.device_memory_gb`` in bytes (None when 0 or absent: the device's own)."""
  gigabytes = config.get("device_memory_gb", 0) or 0
  return int(float(gigabytes) * 2**30) if gigabytes else None


def input_shape(config) -> tuple[int, int, int]:
  """(H, W, C) of the config's dataset as the models see it."""
  from jaxdef.experiments import _dry_run

  return _dry_run.INPUT_SHAPES[config.data.name]


def _deterministic(logits_fn) -> bool:
  """A `jaxdef.models.logits_fn` without random layers: its memory can be estimated."""
  return getattr(logits_fn, "stochastic", None) is False


def _row_cost(config, logits_fn, gradient: bool):
  """A function returning the model's `memory.RowCost` (compiled only when called)."""
  apply = lambda fn, images: fn(images)
  # The architecture (module and dtype) and the weights' shapes fix the memory.
  leaves, structure = jax.tree_util.tree_flatten(logits_fn)
  key = (structure, tuple((leaf.shape, str(leaf.dtype)) for leaf in leaves), config.data.name)
  return lambda: memory.cached_row_cost(key, lambda: (apply, logits_fn), input_shape(config),
                                        gradient=gradient)


def vote_rows_limit(config, cost, memory_bytes: int | None, section: str = "attack"
                    ) -> int | None:
  """``config.<section>.vote_rows_per_call`` resolved (`memory.rows_per_call`):
  "auto" is no bound on a CPU and half the device's memory on an accelerator.
  `cost`: the model's forward `memory.RowCost`, a function returning it, or None."""
  return memory.rows_per_call(config[section].get("vote_rows_per_call", memory.AUTO), cost,
                              on_cpu=None, memory_bytes=memory_bytes,
                              name=f"config.{section}.vote_rows_per_call")


def attack_rows_limit(config, cost, memory_bytes: int | None) -> int | None:
  """``config.attack.eot_rows_per_call`` resolved for one model: "auto" is 256
  rows on a CPU and half the device's memory on an accelerator. `cost`: the
  model's gradient `memory.RowCost`, a function returning it, or None."""
  return memory.rows_per_call(config.attack.get("eot_rows_per_call", memory.AUTO), cost,
                              on_cpu=memory.CPU_ROWS_PER_CALL, memory_bytes=memory_bytes,
                              name="config.attack.eot_rows_per_call")


def vote_settings(config, logits_fn, section: str = "attack") -> dict[str, Any]:
  """`StochasticClassifier` keywords of votes: ``vote_chunk_size`` draws at a
  time, at most ``vote_rows_per_call`` model rows (`vote_rows_limit`)."""
  cost = _row_cost(config, logits_fn, gradient=False) if _deterministic(logits_fn) else None
  return {"vote_chunk_size": int(config[section].vote_chunk_size),
          "vote_rows_per_call": vote_rows_limit(config, cost, stated_memory_bytes(config),
                                                section)}


def eot_rows_per_call(config, logits_fns: dict[str, Any]) -> int | None:
  """``config.attack.eot_rows_per_call`` resolved for all `logits_fns`: the
  smallest of their limits (`attack_rows_limit`). When no model's memory can
  be estimated, "auto" on an accelerator (or a stated device) is no limit:
  the sweep's out-of-memory retry then finds the size."""
  stated = stated_memory_bytes(config)
  estimable = [fn for fn in logits_fns.values() if _deterministic(fn)]
  if not estimable:
    on_device = stated is not None or jax.default_backend() != "cpu"
    if config.attack.get("eot_rows_per_call", memory.AUTO) == memory.AUTO and on_device:
      return None
    return attack_rows_limit(config, None, stated)
  limits = [attack_rows_limit(config, _row_cost(config, fn, gradient=True), stated)
            for fn in estimable]
  limits = [rows for rows in limits if rows is not None]
  return min(limits) if limits else None


def activation_of(label: str, entry) -> dict[str, Any]:
  """The entry's activation settings as keyword arguments of the model constructors.

  Raises:
    ValueError: an unknown activation or a ratio out of range (names the field).
  """
  activation = entry.get("activation", "relu")
  if activation not in models.ACTIVATIONS:
    raise ValueError(f"config.models.{label}.activation must be one of "
                     f"{', '.join(models.ACTIVATIONS)}; got {activation!r}")
  settings = {"activation": activation}
  for field in ("kwta_ratio", "sap_ratio"):
    if field in entry:
      value = entry[field]
      high = 1 if field == "kwta_ratio" else None
      if not isinstance(value, (int, float)) or value <= 0 or (high and value > high):
        raise ValueError(f"config.models.{label}.{field} must be in (0, {high or 'inf'}], "
                         f"got {value!r}")
      settings[field] = float(value)
  return settings


def is_stochastic(entry) -> bool:
  """Whether the entry's model is random (SAP): its logits_fn takes (key, images)."""
  return entry.get("activation", "relu") == "sap"


def _pure_fn(model, variables, stochastic: bool, dtype: Any = None):
  return (models.stochastic_logits_fn if stochastic else models.logits_fn)(model, variables,
                                                                          dtype=dtype)


def targets_for(labels: np.ndarray, num_classes: int, target_label: int) -> np.ndarray:
  """The study's targets: one fixed class (default the last); images of that
  class target class 0 instead, so no target equals a true label."""
  target = num_classes - 1 if target_label < 0 else int(target_label)
  if not 0 <= target < num_classes:
    raise ValueError(f"config.data.target_label must be in [-1, {num_classes - 1}], "
                     f"got {target_label}")
  fallback = 0 if target != 0 else 1
  return np.where(labels == target, fallback, target).astype(np.int32)


def _load_split(cfg):
  """A lazy source of the configured split (`jaxdef.data.Source`)."""
  if cfg.name not in DATASETS:
    raise ValueError(f"config.data.name must be one of {', '.join(DATASETS)}; got {cfg.name!r}")
  source = cfg.get("source", "idx")
  directory = cfg.get("dir") or None
  if cfg.name == "fashion_mnist":
    return data.ArraySource(*data.load_fashion_mnist(cfg.split, directory))
  if source == "folder":
    if not directory:
      raise ValueError(f"config.data.dir must name the class-per-folder directory of "
                       f"{cfg.name} ({cfg.split}) when config.data.source is 'folder'")
    class_names = data.imagenet_class_names() if cfg.name in ("imagenet", "imagenette") else None
    return data.ImageFolder(directory, class_names=class_names)
  if source != "tfds":
    raise ValueError(f"config.data.source must be 'folder' or 'tfds' for {cfg.name}, "
                     f"got {source!r}")
  if cfg.name == "imagenet":
    return data.imagenet_validation(data_dir=directory)
  if cfg.name == "imagenette":
    return data.imagenette(cfg.split, data_dir=directory)
  return data.cifar10(cfg.split, data_dir=directory)


def load_eval_data(config, workdir: pathlib.Path) -> EvalData:
  """Loads the configured split, picks the fixed subset and records its indices."""
  cfg = config.data
  source = _load_split(cfg)
  count = int(cfg.num_images)
  if not 1 <= count <= len(source):
    raise ValueError(f"config.data.num_images must be in [1, {len(source)}], got {count}")
  # Chosen once by seed and written next to the results, so a rerun (or a
  # resumed run) evaluates exactly the same images.
  indices = data.fixed_subset(workdir / "indices.json", dataset=cfg.name, split=cfg.split,
                              num_items=len(source), size=count, seed=int(config.seed))
  images, labels = data.load_arrays(source, indices)
  labels = np.asarray(labels, np.int32)
  targets = targets_for(labels, NUM_CLASSES[cfg.name], int(cfg.get("target_label", -1)))
  return EvalData(cfg.name, jax.numpy.asarray(images), jax.numpy.asarray(labels),
                  jax.numpy.asarray(targets), np.asarray(indices))


def load_models(config, workdir: pathlib.Path) -> dict[str, Any]:
  """Model label -> pure ``logits_fn(images) -> logits``."""
  fns = {}
  for label, entry in config.models.items():
    fns[label] = load_model(label, entry, config, workdir)
  return fns


def load_model(label: str, entry, config, workdir: pathlib.Path):
  source = entry.get("source")
  if source not in MODEL_SOURCES:
    raise ValueError(f"config.models.{label}.source must be one of {', '.join(MODEL_SOURCES)}; "
                     f"got {source!r}")
  num_classes = NUM_CLASSES[config.data.name]
  act = activation_of(label, entry)
  stochastic = is_stochastic(entry)
  if source == "small_resnet":
    model, variables = models.small_resnet(num_classes, key=jax.random.key(config.seed),
                                           widths=tuple(entry.get("widths", (16, 32, 64))), **act)
    return _pure_fn(model, variables, stochastic, compute_dtype(config))
  if source == "torchvision":
    depth = int(entry.depth)
    model, _ = models.resnet(depth, num_classes, **act)
    return _pure_fn(model, models.from_torchvision(entry.path, depth=depth), stochastic,
                    compute_dtype(config))
  if source == "cohen":
    arch = entry.get("arch") or None
    variables = models.from_cohen_checkpoint(entry.path, arch=arch)
    model, _ = (models.cifar_resnet(110, **act) if (arch or "").startswith("cifar")
                else models.resnet(50, 1000, **act))
    return _pure_fn(model, variables, stochastic, compute_dtype(config))
  if source == "variables":
    model, like = models.resnet(int(entry.depth), num_classes, **act)
    return _pure_fn(model, models.load_variables(entry.path, like=like), stochastic,
                    compute_dtype(config))
  from jaxdef.experiments import _fashion_models

  return _fashion_models.logits_fn(label, entry, config, workdir)
