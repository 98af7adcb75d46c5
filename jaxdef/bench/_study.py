"""Whole-study time: the embedded default's k x m sweep, the reference way vs the jaxdef way.

The *reference way* is how the original PyTorch + ART study computes the
same cells: one separate attack per k (k steps from scratch), EOT as a
Python loop of m single-draw gradient calls per step with a host round trip
each (NumPy in, NumPy out, update and projection on the host), and a full
vote of n single-draw forward passes, each its own call, for every cell.
`reference_way` runs it on any `engine` giving those single-draw calls:
`JaxReferenceEngine` (jitted JAX functions, so that the ratio isolates the
engine of the sweep) or `jaxdef.bench._torch.ReferenceEngine` (PyTorch).

The JAX engine draws exactly the keys `jaxdef.experiments._sweep.run_sweep`
draws (a trajectory's iterate at k equals a k-step run with the same key),
so the two ways must report the same success count in every cell where the
sweep votes in full; `compare` checks it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxdef import attacks
from jaxdef import data
from jaxdef import models
from jaxdef.attacks import _losses
from jaxdef.classifier import StochasticClassifier
from jaxdef.experiments import _fashion_models
from jaxdef.experiments import _kxm
from jaxdef.experiments import _sources
from jaxdef.experiments import _sweep

# SweepSpec fields that make the sweep do less work, when this jaxdef has them.
FAST_SETTINGS = {"batch_alphas": True, "sequential_votes": True, "counted_only": True}
# Settings that must not change any number (sequential votes may change a
# vote whose margin is within the stated error).
EXACT_SETTINGS = {"batch_alphas": True}
NUM_CLASSES = 10  # Fashion-MNIST


def available_settings(wanted: dict[str, Any]) -> dict[str, Any]:
  """The entries of `wanted` that are fields of this jaxdef's `SweepSpec`."""
  fields = {field.name for field in dataclasses.fields(_sweep.SweepSpec)}
  return {name: value for name, value in wanted.items() if name in fields}


@dataclasses.dataclass
class Study:
  """The sweep to time and everything it runs on.

  Attributes:
    spec: the config's sweep (`jaxdef_way` sets its fast fields; the reference way
      always votes in full).
    classifiers: (model label, defense label) -> defended classifier.
    flax_models: model label -> (Flax module, variables).
    sigmas: defense label -> randomized-smoothing sigma (None: not smoothing).
    images: float32 (B, 28, 28, 1) in [0, 1]; labels, targets: int32 (B,).
    key: the sweep's root key.
    models_note: which models these are, for the report.
  """
  spec: _sweep.SweepSpec
  classifiers: dict[tuple[str, str], StochasticClassifier]
  flax_models: dict[str, tuple[Any, dict]]
  sigmas: dict[str, float | None]
  images: np.ndarray
  labels: np.ndarray
  targets: np.ndarray
  key: jax.Array
  models_note: str


def _trained_models(workdir: pathlib.Path) -> tuple[ml_collections.ConfigDict, dict, np.ndarray]:
  """The config, cached trained models and image indices of a finished default run."""
  path = workdir / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"--study_workdir={workdir} has no config.json: pass the workdir "
                            "of a finished `python -m launch.run` (e.g. runs/default)")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  models_dir = pathlib.Path(config.get("models_dir") or "runs/models")
  flax_models = {}
  for label, entry in config.models.items():
    if entry.get("source") != "fashion_small_resnet":
      raise ValueError(f"--study_workdir: model {label} has source {entry.get('source')!r}; "
                       "only the default's 'fashion_small_resnet' models are supported")
    name = _fashion_models.base_name(entry)
    tuned = entry.get("finetune_defense", "")
    found = (list(models_dir.glob(f"{name}__ft_{tuned}_*")) if tuned
             else [models_dir / name] if (models_dir / name).is_dir() else [])
    if not found:
      wanted = f"{name}__ft_{tuned}_*" if tuned else name
      raise FileNotFoundError(f"--study_workdir={workdir}: the trained model {label} is not "
                              f"in {models_dir} (looked for {wanted}); run `python -m "
                              "launch.run` there first")
    model, variables, _ = _fashion_models.trained(label, entry, config, progress=False)
    flax_models[label] = (model, variables)
  indices = data.load_subset(workdir / "indices.json", dataset=config.data.name,
                             split=config.data.split)
  return config, flax_models, indices


def setup(config: ml_collections.ConfigDict, *, num_images: int,
          study_workdir: str | None = None) -> Study:
  """The default's sweep on `num_images` of its images.

  Args:
    config: the embedded default's config (``configs/default.py``).
    num_images: evaluate the first `num_images` of the default's fixed test
      images (its 100 by default).
    study_workdir: a finished default run: its trained models and images;
      None builds random-init small ResNets of the config's widths (the
      same numbers of gradients and forward passes; success rates differ).
  """
  if study_workdir:
    config, flax_models, indices = _trained_models(pathlib.Path(study_workdir))
    note = f"trained models of {study_workdir} ({', '.join(flax_models)})"
  else:
    flax_models = {}
    for i, (label, entry) in enumerate(config.models.items()):
      widths = tuple(int(w) for w in entry.get("widths", (16, 32, 64)))
      flax_models[label] = models.small_resnet(10, key=jax.random.key(config.seed + i),
                                               widths=widths)
    indices = None
    widths = "-".join(str(w) for w in flax_models[next(iter(flax_models))][0].widths)
    note = (f"random-init small ResNets ({', '.join(flax_models)}; widths {widths}), not "
            "trained: same numbers of gradients and forward passes as trained ones")
  if config.data.name != "fashion_mnist":
    raise ValueError(f"the study benchmark runs the Fashion-MNIST default, got data "
                     f"{config.data.name!r}")
  images, labels = data.load_fashion_mnist(config.data.split, config.data.get("dir") or None)
  if indices is None:  # the default run's own choice: a function of (size, count, seed)
    indices = data.choose_subset(len(labels), int(config.data.num_images), seed=config.seed)
  if not 1 <= num_images <= len(indices):
    raise ValueError(f"study_images must be in [1, {len(indices)}] (the default's evaluation "
                     f"images), got {num_images}")
  indices = np.asarray(indices)[:num_images]
  images = np.asarray(images[indices], np.float32)
  labels = np.asarray(labels[indices], np.int32)
  targets = _sources.targets_for(labels, 10, int(config.data.get("target_label", -1)))
  defenses = _sources.build_defenses(config.defenses)
  logits_fns = {label: models.logits_fn(model, variables)
                for label, (model, variables) in flax_models.items()}
  sigmas = {label: (float(entry.sigma) if entry.name == "randomized_smoothing"
                    and not entry.get("clip", False) else None)
            for label, entry in config.defenses.items()}
  return Study(spec=_kxm.sweep_spec(config, logits_fns, defenses),
               classifiers=_sources.classifiers(config, logits_fns, defenses),
               flax_models=flax_models, sigmas=sigmas, images=images, labels=labels,
               targets=targets, key=jax.random.key(config.seed), models_note=note)


def clean_key(root: jax.Array, pair: tuple[str, str]) -> jax.Array:
  """The key of a pair's clean vote, as `run_sweep` derives it."""
  return jax.random.fold_in(root, zlib.crc32(f"clean/{pair}".encode()) & 0x7FFFFFFF)


class JaxReferenceEngine:
  """Single-draw JAX calls of one defended classifier, drawing `run_sweep`'s keys.

  Each gradient or vote call is one jitted single-draw computation on a
  NumPy batch, returning NumPy: the reference way's calls, in JAX.
  """

  def __init__(self, clf: StochasticClassifier):
    def gradient(key, x, goal, targeted):
      objective = lambda x: _losses.objective(clf.logits(key, x), goal, "ce", targeted).sum()
      return jax.grad(objective)(x)

    self._gradient = jax.jit(gradient, static_argnums=3)
    self._predict = jax.jit(lambda key, x: jnp.argmax(clf.logits(key, x), -1))

  def attack_draws(self, attack_key: jax.Array, step: int, eot: int) -> list[jax.Array]:
    # `_pgd_run`: start_key, steps_key = split(key); step i draws split(fold_in(steps_key, i), m).
    steps_key = jax.random.split(attack_key)[1]
    return list(jax.random.split(jax.random.fold_in(steps_key, step), eot))

  def vote_draws(self, vote_key: jax.Array, votes: int) -> list[jax.Array]:
    return list(jax.random.split(vote_key, votes))  # `StochasticClassifier.predict`'s draws

  def gradient(self, draw: jax.Array, x: np.ndarray, goal: np.ndarray, targeted: bool
               ) -> np.ndarray:
    return np.asarray(self._gradient(draw, x, goal, bool(targeted)))

  def predict(self, draw: jax.Array, x: np.ndarray) -> np.ndarray:
    return np.asarray(self._predict(draw, x))


def reference_vote(engine: Any, draws: list[Any], images: np.ndarray, num_classes: int
                   ) -> np.ndarray:
  """Majority vote from one call per draw; ties go to the lowest label (as jaxdef's)."""
  counts = np.zeros((images.shape[0], num_classes), np.int64)
  rows = np.arange(images.shape[0])
  for draw in draws:
    counts[rows, engine.predict(draw, images)] += 1
  return counts.argmax(1).astype(np.int32)


def reference_unit(engine: Any, unit: _sweep.Unit, spec: _sweep.SweepSpec, images: np.ndarray,
                   labels: np.ndarray, targets: np.ndarray, clean_labels: np.ndarray,
                   unit_key: jax.Array) -> list[dict]:
  """The cells of one unit the reference way: a fresh k-step attack and a full vote per k."""
  attack_key, vote_key = jax.random.split(unit_key)
  goal = targets if unit.targeted else labels
  eps, alpha = np.float32(spec.eps), np.float32(unit.alpha)
  records = []
  for k in sorted(spec.checkpoints):
    x = images.copy()
    for step in range(k):
      grad = np.zeros_like(images)
      for draw in engine.attack_draws(attack_key, step, unit.eot):
        grad += engine.gradient(draw, x, goal, unit.targeted)
      grad /= np.float32(unit.eot)
      grad[~np.isfinite(grad).all(axis=(1, 2, 3))] = 0.0  # as jaxdef: a bad gradient is zeroed
      # jaxdef's L-inf step and projection, in the same float32 operations.
      x = np.clip(images + np.clip(x + alpha * np.sign(grad) - images, -eps, eps), 0.0, 1.0)
    adversarial = reference_vote(engine, engine.vote_draws(jax.random.fold_in(vote_key, k),
                                                           spec.votes), x, NUM_CLASSES)
    rate = attacks.success_rate(clean_labels, adversarial, labels,
                                targets if unit.targeted else None, num_votes=spec.votes)
    records.append({"unit": unit.name, "model": unit.model, "defense": unit.defense,
                    "targeted": unit.targeted, "k": int(k), "m": unit.eot, "alpha": unit.alpha,
                    "gradient_computations": int(k) * unit.eot, **rate.as_dict()})
  return records


def reference_way_counts(spec: _sweep.SweepSpec, num_images: int,
                         units: list[_sweep.Unit] | None = None) -> dict[str, int]:
  """Image-gradients, defended forward passes and single-draw calls of the reference way.

  Each unit reruns the attack for every k (sum(k) steps of m draws) and
  votes n times per k; each pair votes n times on the clean images.
  """
  units = spec.units() if units is None else units
  pairs = len({(u.model, u.defense) for u in units})
  steps = sum(spec.checkpoints)
  gradient_calls = sum(steps * u.eot for u in units)
  vote_calls = (pairs + len(units) * len(spec.checkpoints)) * spec.votes
  return {"image_gradients": gradient_calls * num_images,
          "forward_passes": vote_calls * num_images, "calls": gradient_calls + vote_calls}


def sample_units(spec: _sweep.SweepSpec) -> list[_sweep.Unit]:
  """One unit per EOT count m (the first of each in the sweep's order)."""
  chosen: dict[int, _sweep.Unit] = {}
  for unit in spec.units():
    chosen.setdefault(unit.eot, unit)
  return list(chosen.values())


def reference_way(study: Study, make_engine: Callable[[tuple[str, str]], Any], *,
                  units: list[_sweep.Unit] | None = None, progress: bool = True,
                  label: str = "reference way") -> dict[str, Any]:
  """Runs the reference way on `units` (default all) of the study; times it.

  Returns:
    {"seconds", "records", "unit_seconds" (unit name -> s), "clean_seconds"
    (pair -> s), "image_gradients", "forward_passes", "calls" (single-draw
    calls made), "units_run"}.
  """
  spec, images = study.spec, study.images
  units = spec.units() if units is None else units
  engines, clean, clean_seconds, unit_seconds, records = {}, {}, {}, {}, []
  start = time.perf_counter()
  for unit in tqdm(units, desc=label, unit="unit", disable=not progress):
    pair = (unit.model, unit.defense)
    if pair not in engines:
      engines[pair] = make_engine(pair)
      began = time.perf_counter()
      clean[pair] = reference_vote(engines[pair],
                                   engines[pair].vote_draws(clean_key(study.key, pair),
                                                            spec.votes), images, NUM_CLASSES)
      clean_seconds[str(pair)] = time.perf_counter() - began
    began = time.perf_counter()
    records += reference_unit(engines[pair], unit, spec, images, study.labels, study.targets,
                              clean[pair], unit.key(study.key))
    unit_seconds[unit.name] = time.perf_counter() - began
  return {"seconds": time.perf_counter() - start, "records": records,
          "unit_seconds": unit_seconds, "clean_seconds": clean_seconds,
          **reference_way_counts(spec, images.shape[0], units), "units_run": len(units)}


def extrapolate(measured: dict[str, Any], spec: _sweep.SweepSpec) -> float:
  """Seconds of the whole reference way from a run of `sample_units` (one unit per m).

  Units of equal m cost the same (same steps, draws and votes); every pair
  pays one clean vote, at the mean measured cost.
  """
  per_m = {}
  for unit in spec.units():
    if unit.name in measured["unit_seconds"]:
      per_m[unit.eot] = measured["unit_seconds"][unit.name]
  missing = sorted({u.eot for u in spec.units()} - set(per_m))
  if missing:
    raise ValueError(f"no measured unit with m in {missing} to extrapolate from")
  clean = float(np.mean(list(measured["clean_seconds"].values())))
  pairs = len(spec.models) * len(spec.defenses)
  return pairs * clean + sum(per_m[unit.eot] for unit in spec.units())


def jaxdef_way(study: Study, workdir: pathlib.Path, settings: dict[str, Any], *,
               progress: bool = True) -> dict[str, Any]:
  """Times `run_sweep` on a fresh `workdir` with `settings` (SweepSpec fields)."""
  workdir = pathlib.Path(workdir)
  shutil.rmtree(workdir, ignore_errors=True)
  spec = dataclasses.replace(study.spec, **settings)
  start = time.perf_counter()
  records = _sweep.run_sweep(spec, study.classifiers, jnp.asarray(study.images),
                             jnp.asarray(study.labels), jnp.asarray(study.targets), study.key,
                             workdir, progress=progress)
  seconds = time.perf_counter() - start
  num_images = study.images.shape[0]
  forwards = None
  if records and "vote_forward_passes" in records[0]:
    # The clean vote of each pair, then every cell's vote, as actually spent.
    clean = {(r["model"], r["defense"]): r["clean_vote_forward_passes"] for r in records}
    forwards = sum(clean.values()) + sum(r["vote_forward_passes"] for r in records)
  # Gradients computed: one trajectory of max(k) steps per unit, on the
  # images it attacked (all of them unless counted_only spared some).
  longest = {}
  for r in records:
    longest[r["unit"]] = max(longest.get(r["unit"], 0),
                             r["k"] * r["m"] * r.get("attacked_images", num_images))
  gradients = sum(longest.values()) if records else spec.gradient_computations(num_images)
  return {"seconds": seconds, "records": records, "settings": settings,
          "image_gradients": gradients,
          "forward_passes": forwards if forwards is not None else spec.forward_passes(num_images)}


def compare(jaxdef_records: list[dict], reference_records: list[dict]) -> dict[str, Any]:
  """Cells where both ways report the same (successes, denominator)."""
  reference = {(r["unit"], r["k"]): (r["successes"], r["denominator"]) for r in reference_records}
  cells = [{"unit": r["unit"], "k": r["k"], "jaxdef": [r["successes"], r["denominator"]],
            "reference": list(reference[(r["unit"], r["k"])])}
           for r in jaxdef_records if (r["unit"], r["k"]) in reference]
  mismatches = [cell for cell in cells if cell["jaxdef"] != cell["reference"]]
  return {"cells_compared": len(cells), "cells_identical": len(cells) - len(mismatches),
          "mismatches": mismatches, "cells": cells}


def torch_engines(study: Study, *, seed: int = 0) -> Callable[[tuple[str, str]], Any]:
  """Engine factory of the reference way in PyTorch: the study's weights copied into torch.

  Each model's Flax variables are loaded into `_torch.SmallResNet` (checked
  against the Flax logits) behind randomized smoothing in torch.

  Raises:
    ValueError: a defense is not unclipped randomized smoothing (the only
      defense written in torch here), or the copied logits disagree.
  """
  from jaxdef.bench import _torch

  _torch.torch_module().manual_seed(seed)

  def make(pair: tuple[str, str]) -> Any:
    model_label, defense_label = pair
    sigma = study.sigmas.get(defense_label)
    if sigma is None:
      raise ValueError(f"the PyTorch reference way supports unclipped randomized smoothing only; "
                       f"defense {defense_label!r} is not")
    flax_model, variables = study.flax_models[model_label]
    network = _torch.small_resnet(flax_model.widths, num_classes=NUM_CLASSES,
                                  blocks_per_stage=int(flax_model.stage_sizes[0]),
                                  mean=flax_model.mean, std=flax_model.std)
    _torch.load_flax(network, variables)
    error = _torch.parity_error(network, study.classifiers[pair].logits_fn, study.images[:8])
    if error > _torch.PARITY_TOLERANCE:
      raise ValueError(f"the torch copy of {model_label} disagrees with the Flax model: relative "
                       f"logit error {error:.2e} > {_torch.PARITY_TOLERANCE:g}")
    return _torch.ReferenceEngine(_torch.smoothed(network.to(_torch.device()), sigma))

  return make
