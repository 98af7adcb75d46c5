"""Small ResNets trained on Fashion-MNIST here, cached across runs.

A config model entry with ``source: "fashion_small_resnet"`` names:
  widths: channels per stage (default (16, 32, 64)).
  train_images: train on the first that many images only (0: all 55,000).
  epochs, batch_size, learning_rate: base training (AdamW + cosine).
  finetune_defense: "" for the base model, or a defense label of
    ``config.defenses``: the base model fine-tuned on data through that
    defense (trained invariance), for `finetune_epochs` at
    `finetune_learning_rate`.
  activation: "relu" (default) | "sap" | "kwta", with `sap_ratio` and
    `kwta_ratio`. A k-WTA model is trained with k-WTA (its own cached
    folder, named with the ratio), as Xiao et al. train theirs. SAP has no
    weights of its own: Dhillon et al. apply it to a trained network, so a
    "sap" entry evaluates the cached ReLU weights of the same training
    settings with SAP swapped in (shared, trained once).
Training goes through `jaxdef.train.fit`, whose checkpoints live in
``config.models_dir/<name>``: a finished model is loaded at once, an
interrupted one resumes, and a folder holding another model is refused.
The last 5,000 training images are held out for validation.
"""

from __future__ import annotations

import json
import pathlib
import zlib
from typing import Any

import jax

from jaxdef import _files
from jaxdef import models
from jaxdef import train
from jaxdef.models import _activations


def _split(config, entry):
  """(train, validation) pairs; train_images > 0 keeps only the first that many (smoke runs)."""
  (images, labels), val_data, _ = train.fashion_split(config.data.get("dir") or None)
  subset = int(entry.get("train_images", 0)) or None
  return (images[:subset], labels[:subset]), val_data


def _training_activation(entry) -> dict:
  """The activation the weights are trained with: k-WTA for k-WTA, else ReLU."""
  if entry.get("activation", "relu") == "kwta":
    return {"activation": "kwta",
            "kwta_ratio": float(entry.get("kwta_ratio", _activations.KWTA_RATIO))}
  return {"activation": "relu"}


def base_name(entry) -> str:
  widths = "-".join(str(int(w)) for w in entry.get("widths", (16, 32, 64)))
  subset = int(entry.get("train_images", 0))
  trained_with = _training_activation(entry)
  kwta = (f"_kwta{trained_with['kwta_ratio']:g}" if trained_with["activation"] == "kwta" else "")
  return (f"fashion_small_resnet{kwta}_w{widths}{f'_n{subset}' if subset else ''}"
          f"_e{int(entry.get('epochs', 6))}"
          f"_b{int(entry.get('batch_size', 256))}_lr{float(entry.get('learning_rate', 1e-3)):g}")


def trained(label: str, entry, config, *, progress: bool = True):
  """Trains (or loads) the entry's model; returns (model, variables, info).

  `info` holds the training history and the checkpoint folder ("history",
  "dir"); for a fine-tuned entry also the base model's variables
  ("base_variables"), the starting point of the fine-tuning.
  """
  from jaxdef.experiments import _sources

  widths = tuple(int(w) for w in entry.get("widths", (16, 32, 64)))
  evaluated = _sources.activation_of(label, entry)
  model, initial = models.small_resnet(10, key=jax.random.key(int(config.seed)), widths=widths,
                                       **_training_activation(entry))
  train_data, val_data = _split(config, entry)
  models_dir = pathlib.Path(config.get("models_dir") or "runs/models")
  base_dir = models_dir / base_name(entry)
  # Parts of a reproduction run at once share models: one trains, the others wait.
  with _files.held_exclusively(base_dir.with_name(base_dir.name + ".lock")):
    base = train.fit(model, initial, train_data, val_data, epochs=int(entry.get("epochs", 6)),
                     batch_size=int(entry.get("batch_size", 256)),
                     learning_rate=float(entry.get("learning_rate", 1e-3)),
                     seed=int(config.seed), workdir=base_dir, keep_checkpoints=1,
                     progress=progress)
  defense_label = entry.get("finetune_defense", "")
  if not defense_label:
    return (model.clone(**evaluated), base.variables,
            {"dir": str(base_dir), "history": base.history})
  if defense_label not in config.defenses:
    raise ValueError(f"config.models.{label}.finetune_defense must be a label of "
                     f"config.defenses ({', '.join(config.defenses)}), got {defense_label!r}")
  defense = _sources.build_defenses({defense_label: config.defenses[defense_label]})[defense_label]
  epochs = int(entry.get("finetune_epochs", 2))
  rate = float(entry.get("finetune_learning_rate", 3e-4))
  # The folder names the defense by its label and a digest of its parameters.
  digest = zlib.crc32(json.dumps(defense.describe(), sort_keys=True, default=str).encode())
  tuned_dir = (models_dir / f"{base_name(entry)}__ft_{defense_label}_{digest:08x}"
               f"_e{epochs}_lr{rate:g}")
  with _files.held_exclusively(tuned_dir.with_name(tuned_dir.name + ".lock")):
    tuned = train.finetune(model, base.variables, train_data, val_data, defense=defense,
                           epochs=epochs, learning_rate=rate, seed=int(config.seed),
                           workdir=tuned_dir, progress=progress)  # every epoch kept: tracked
  return (model.clone(**evaluated), tuned.variables,
          {"dir": str(tuned_dir), "history": tuned.history, "base_variables": base.variables})


def epoch_variables(label: str, entry, config, *, progress: bool = True
                    ) -> tuple[Any, list[tuple[int, dict]]]:
  """The fine-tuned entry's model and its variables after every fine-tuning epoch.

  Returns (model, [(epoch, variables), ...]) with epoch 0 the base model the
  fine-tuning started from, then 1..finetune_epochs from the per-epoch
  checkpoints (trains or resumes first when they are not all there).

  Raises:
    ValueError: the entry is not fine-tuned, or a checkpoint is missing (a
      model cached by an older jaxdef that kept only the last epoch).
  """
  if not entry.get("finetune_defense", ""):
    raise ValueError(f"config.models.{label} is not fine-tuned (finetune_defense is empty): "
                     "there are no fine-tuning epochs to track")
  model, _, info = trained(label, entry, config, progress=progress)
  found = dict(train.list_checkpoints(info["dir"]))
  wanted = range(1, int(entry.get("finetune_epochs", 2)) + 1)
  missing = [epoch for epoch in wanted if epoch not in found]
  if missing:
    raise ValueError(f"{info['dir']} lacks the checkpoints of fine-tuning epochs "
                     f"{', '.join(map(str, missing))} (kept only the last): delete the folder to "
                     "fine-tune again with every epoch kept")
  base = info["base_variables"]
  tracked = [(0, base)]
  tracked += [(epoch, train.load_checkpoint(found[epoch], variables_like=base).variables)
              for epoch in wanted]
  return model, tracked


def logits_fn(label: str, entry, config, workdir):
  """``images -> logits``, or ``(key, images) -> logits`` for a SAP entry."""
  from jaxdef.experiments import _sources

  del workdir  # models are shared across runs through config.models_dir
  model, variables, _ = trained(label, entry, config, progress=bool(config.get("progress", True)))
  if _sources.is_stochastic(entry):
    return models.stochastic_logits_fn(model, variables, dtype=_sources.compute_dtype(config))
  return models.logits_fn(model, variables, dtype=_sources.compute_dtype(config))
