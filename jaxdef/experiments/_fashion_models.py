"""Small ResNets trained on Fashion-MNIST here, cached across runs.

A config model entry with ``source: "fashion_small_resnet"`` names:
  widths: channels per stage (default (16, 32, 64)).
  train_images: train on the first that many images only (0: all 55,000).
  epochs, batch_size, learning_rate: base training (AdamW + cosine).
  finetune_defense: "" for the base model, or a defense label of
    ``config.defenses``: the base model fine-tuned on data through that
    defense (trained invariance), for `finetune_epochs` at
    `finetune_learning_rate`.
Training goes through `jaxdef.train.fit`, whose checkpoints live in
``config.models_dir/<name>``: a finished model is loaded at once, an
interrupted one resumes, and a folder holding another model is refused.
The last 5,000 training images are held out for validation.
"""

from __future__ import annotations

import json
import pathlib
import zlib

import jax

from jaxdef import models
from jaxdef import train


def _split(config, entry):
  """(train, validation) pairs; train_images > 0 keeps only the first that many (smoke runs)."""
  (images, labels), val_data, _ = train.fashion_split(config.data.get("dir") or None)
  subset = int(entry.get("train_images", 0)) or None
  return (images[:subset], labels[:subset]), val_data


def base_name(entry) -> str:
  widths = "-".join(str(int(w)) for w in entry.get("widths", (16, 32, 64)))
  subset = int(entry.get("train_images", 0))
  return (f"fashion_small_resnet_w{widths}{f'_n{subset}' if subset else ''}"
          f"_e{int(entry.get('epochs', 6))}"
          f"_b{int(entry.get('batch_size', 256))}_lr{float(entry.get('learning_rate', 1e-3)):g}")


def trained(label: str, entry, config, *, progress: bool = True):
  """Trains (or loads) the entry's model; returns (model, variables, info).

  `info` holds the training history's last entry and the checkpoint folder.
  """
  widths = tuple(int(w) for w in entry.get("widths", (16, 32, 64)))
  model, initial = models.small_resnet(10, key=jax.random.key(int(config.seed)), widths=widths)
  train_data, val_data = _split(config, entry)
  models_dir = pathlib.Path(config.get("models_dir") or "runs/models")
  base_dir = models_dir / base_name(entry)
  base = train.fit(model, initial, train_data, val_data, epochs=int(entry.get("epochs", 6)),
                   batch_size=int(entry.get("batch_size", 256)),
                   learning_rate=float(entry.get("learning_rate", 1e-3)), seed=int(config.seed),
                   workdir=base_dir, keep_checkpoints=1, progress=progress)
  defense_label = entry.get("finetune_defense", "")
  if not defense_label:
    return model, base.variables, {"dir": str(base_dir), "history": base.history}
  if defense_label not in config.defenses:
    raise ValueError(f"config.models.{label}.finetune_defense must be a label of "
                     f"config.defenses ({', '.join(config.defenses)}), got {defense_label!r}")
  from jaxdef.experiments import _sources

  defense = _sources.build_defenses({defense_label: config.defenses[defense_label]})[defense_label]
  epochs = int(entry.get("finetune_epochs", 2))
  rate = float(entry.get("finetune_learning_rate", 3e-4))
  # The folder names the defense by its label and a digest of its parameters.
  digest = zlib.crc32(json.dumps(defense.describe(), sort_keys=True, default=str).encode())
  tuned_dir = (models_dir / f"{base_name(entry)}__ft_{defense_label}_{digest:08x}"
               f"_e{epochs}_lr{rate:g}")
  tuned = train.finetune(model, base.variables, train_data, val_data, defense=defense,
                         epochs=epochs, learning_rate=rate, seed=int(config.seed),
                         workdir=tuned_dir, keep_checkpoints=1, progress=progress)
  return model, tuned.variables, {"dir": str(tuned_dir), "history": tuned.history}


def logits_fn(label: str, entry, config, workdir):
  del workdir  # models are shared across runs through config.models_dir
  model, variables, _ = trained(label, entry, config, progress=bool(config.get("progress", True)))
  return models.logits_fn(model, variables)
