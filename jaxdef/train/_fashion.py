"""The Fashion-MNIST models of the invariance study: a clean small ResNet and a fine-tuned copy.

`fashion_models` trains both once and afterwards loads them: the base
`jaxdef.models.small_resnet` on the Fashion-MNIST training set (the last
5,000 training images held out for validation), and a copy fine-tuned on
images passed through randomized smoothing (trained invariance). Each
trained model is exported as plain variables (``<name>.msgpack``, the
best-on-validation epoch) next to a ``<name>.json`` with its config and
history; the training folders ``<name>/`` hold the per-epoch checkpoints,
so an interrupted call resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import flax.linen as nn
import jax

from jaxdef import _validate
from jaxdef import data
from jaxdef import defenses
from jaxdef import models
from jaxdef.train import _checkpoint
from jaxdef.train import _loop

VALIDATION_SIZE = 5000
BASE_NAME = "small_resnet_fashion"


class FashionModels(NamedTuple):
  """The model and the two trained variable sets of `fashion_models`.

  Attributes:
    model: the `jaxdef.models.small_resnet` module.
    base: variables trained on clean data.
    finetuned: variables fine-tuned on randomized-smoothing data.
    base_record, finetuned_record: {"config", "history", "best_epoch",
      "path"} of each (history: one metrics dict per epoch, with wall times).
  """

  model: nn.Module
  base: dict
  finetuned: dict
  base_record: dict
  finetuned_record: dict


def fashion_split(data_dir: str | None = None, *, validation_size: int = VALIDATION_SIZE,
                  train_size: int | None = None) -> tuple[tuple, tuple, tuple]:
  """Fashion-MNIST as (train, validation, test) pairs of (images, labels).

  Images are float32 (N, 28, 28, 1) in [0, 1], labels int32 (N,).
  Validation is the last `validation_size` training images; `train_size`
  optionally keeps only the first that many of the rest (for quick runs).
  """
  images, labels = data.load_fashion_mnist("train", data_dir)
  test = data.load_fashion_mnist("test", data_dir)
  _validate.check_number(validation_size, "validation_size", low=1, high=len(images) - 1,
                         integer=True)
  cut = len(images) - int(validation_size)
  end = cut if train_size is None else int(_validate.check_number(
      train_size, "train_size", low=1, high=cut, integer=True))
  return (images[:end], labels[:end]), (images[cut:], labels[cut:]), test


def _train_or_load(directory: pathlib.Path, name: str, config: dict, like: dict,
                   train: Any) -> tuple[dict, dict]:
  """Loads ``name.msgpack`` if its ``name.json`` records `config`, else trains and exports."""
  weights, record_path = directory / f"{name}.msgpack", directory / f"{name}.json"
  config = json.loads(json.dumps(config, sort_keys=True))
  if weights.exists() and record_path.exists():
    record = json.loads(record_path.read_text())
    differences = _checkpoint.fingerprint_differences(record.get("config", {}), config)
    if differences:
      raise ValueError(f"{weights} was trained with another config (" + "; ".join(differences)
                       + f"): delete {weights}, {record_path} and {directory / name}/ to "
                       "retrain, or pass another workdir")
    return models.load_variables(weights, like=like), record
  result = train(directory / name)
  variables = result.variables
  if result.best_path is not None:
    variables = models.load_variables(result.best_path, like=like)
  models.save_variables(weights, variables)
  record = {"config": config, "history": result.history, "best_epoch": result.best_epoch,
            "path": str(weights)}
  _checkpoint.write_json(record_path, record)
  return variables, record


def fashion_models(workdir: str | os.PathLike = "runs/models", *, epochs: int = 8,
                   finetune_epochs: int = 3, sigma: float = 0.25, learning_rate: float = 1e-3,
                   finetune_learning_rate: float = 3e-4, batch_size: int = 256, seed: int = 0,
                   widths: Sequence[int] = (16, 32, 64), train_size: int | None = None,
                   validation_size: int = VALIDATION_SIZE, data_dir: str | None = None,
                   progress: bool = True) -> FashionModels:
  """Trains, or loads when already trained, the clean and the smoothing-fine-tuned small ResNet.

  Base: `jaxdef.train.fit` from ``small_resnet(key=jax.random.key(seed))``
  for `epochs` epochs (AdamW, cosine, weight decay 0.01), best epoch by
  clean validation accuracy, saved as ``<workdir>/small_resnet_fashion.msgpack``.
  Fine-tuned: `jaxdef.train.finetune` of the base on randomized smoothing
  (``x + N(0, sigma^2)``, unclipped) for `finetune_epochs` at
  `finetune_learning_rate`, best epoch by one-draw defended validation
  accuracy, saved as ``small_resnet_fashion_rs<sigma>.msgpack``.
  Non-default `widths`, `train_size` or `validation_size` add a suffix to the
  names.

  Args:
    workdir: folder of the exported variables and the training folders.
    epochs, finetune_epochs: training epochs of each model, >= 1.
    sigma: the smoothing noise the copy is fine-tuned on, > 0.
    learning_rate, finetune_learning_rate: peak AdamW learning rates.
    batch_size: images per update.
    seed: seed of the initialisation, data order and defense draws.
    widths: channels of the small ResNet's stages.
    train_size: train on only the first this many training images (tests).
    validation_size: the last this many training images validate.
    data_dir: Fashion-MNIST IDX folder (see `jaxdef.data.load_fashion_mnist`).
    progress: show progress bars.

  Returns:
    `FashionModels`.

  Raises:
    ValueError: exported variables in `workdir` were trained with another
      config (delete them, as the message says, or pass another workdir).
  """
  _validate.check_number(sigma, "sigma", low=0, low_inclusive=False)
  train_data, val_data, _ = fashion_split(data_dir, train_size=train_size,
                                          validation_size=validation_size)
  widths = tuple(int(w) for w in widths)
  model, initial = models.small_resnet(key=jax.random.key(int(seed)), widths=widths)
  directory = pathlib.Path(workdir)
  suffix = "" if widths == (16, 32, 64) else "_w" + "-".join(map(str, widths))
  suffix += "" if train_size is None else f"_n{int(train_size)}"
  suffix += "" if validation_size == VALIDATION_SIZE else f"_v{int(validation_size)}"
  base_config = {"model": repr(model), "seed": seed, "epochs": epochs, "batch_size": batch_size,
                 "learning_rate": learning_rate, "weight_decay": 0.01,
                 "train_size": len(train_data[1]), "validation_size": len(val_data[1])}
  base, base_record = _train_or_load(
      directory, BASE_NAME + suffix, base_config, initial,
      lambda folder: _loop.fit(model, initial, train_data, val_data, epochs=epochs,
                               batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                               workdir=folder, progress=progress))
  defense = defenses.randomized_smoothing(sigma)
  tuned_config = {"base": base_config, "defense": defense.describe(),
                  "epochs": finetune_epochs, "learning_rate": finetune_learning_rate}
  finetuned, finetuned_record = _train_or_load(
      directory, f"{BASE_NAME}{suffix}_rs{float(sigma):g}", tuned_config, initial,
      lambda folder: _loop.finetune(model, base, train_data, val_data, defense=defense,
                                    epochs=finetune_epochs, batch_size=batch_size,
                                    learning_rate=finetune_learning_rate, seed=seed,
                                    workdir=folder, progress=progress))
  return FashionModels(model, base, finetuned, base_record, finetuned_record)
