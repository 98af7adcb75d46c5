"""Trains the Fashion-MNIST small ResNet and its smoothing-fine-tuned copy, and measures both.

  python -m launch.train_fashion --workdir=runs/models
  python -m launch.train_fashion --workdir=runs/models --epochs=10 --finetune_epochs=3

Trains (or loads, when already trained) both models with
`jaxdef.train.fashion_models`, then records in <workdir>/train_fashion.json:
clean accuracy on the 10,000 test images, and the majority vote over
--votes draws of randomized smoothing (sigma --sigma) on --vote_images
fixed test images (indices recorded), for both models, with the training
epochs and wall times. The exported variables are
<workdir>/small_resnet_fashion.msgpack and
<workdir>/small_resnet_fashion_rs0.25.msgpack.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

import jaxdef as jd
from jaxdef import train
from jaxdef.experiments import _records
from jaxdef.experiments._workdir_lock import WorkdirLock
from launch import _cli

_WORKDIR = flags.DEFINE_string("workdir", "runs/models", "Folder of the models and the record.")
_EPOCHS = flags.DEFINE_integer("epochs", 8, "Epochs of the clean base model.")
_FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", 3, "Epochs of fine-tuning.")
_FINETUNE_LR = flags.DEFINE_float("finetune_learning_rate", 3e-4, "Peak fine-tuning rate.")
_SIGMA = flags.DEFINE_float("sigma", 0.25, "Randomized smoothing noise of fine-tuning and votes.")
_VOTES = flags.DEFINE_integer("votes", 100, "Defense draws per image of the vote.")
_VOTE_IMAGES = flags.DEFINE_integer("vote_images", 1000, "Test images of the vote accuracy.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of training, the vote subset and the draws.")

# Images per predict call and draws vmapped at once: bounds memory to ~100 MB.
_VOTE_BATCH = 250
_VOTE_CHUNK = 10


def vote_accuracy(model, variables, images, labels, *, sigma: float, votes: int,
                  key: jax.Array) -> float:
  """Accuracy of ``StochasticClassifier(logits_fn, randomized_smoothing(sigma))`` voting."""
  clf = jd.StochasticClassifier(jd.models.logits_fn(model, variables),
                                jd.defenses.randomized_smoothing(sigma),
                                vote_chunk_size=_VOTE_CHUNK)
  correct = 0
  for index, start in enumerate(range(0, len(labels), _VOTE_BATCH)):
    x = jnp.asarray(images[start:start + _VOTE_BATCH])
    predicted = clf.predict(jax.random.fold_in(key, index), x, n=votes, mode="vote")
    correct += int(np.sum(np.asarray(predicted) == labels[start:start + _VOTE_BATCH]))
  return correct / len(labels)


def run(workdir: str | pathlib.Path, *, epochs: int = 8, finetune_epochs: int = 3,
        finetune_learning_rate: float = 3e-4, sigma: float = 0.25, votes: int = 100,
        vote_images: int = 1000, test_images: int | None = None, seed: int = 0,
        progress: bool = True, **model_kwargs: Any) -> dict:
  """Trains or loads both models, measures them and writes <workdir>/train_fashion.json.

  Clean accuracy is measured on the first `test_images` test images (None:
  all 10,000). `model_kwargs` go to `jaxdef.train.fashion_models` (e.g.
  widths, train_size, validation_size for a quick run). Returns the record.
  """
  started = time.perf_counter()
  pair = train.fashion_models(workdir, epochs=epochs, finetune_epochs=finetune_epochs,
                              sigma=sigma, finetune_learning_rate=finetune_learning_rate,
                              seed=seed, progress=progress, **model_kwargs)
  trained = time.perf_counter()
  images, labels = jd.data.load_fashion_mnist("test", model_kwargs.get("data_dir"))
  subset = np.sort(np.random.default_rng(seed).choice(len(labels), vote_images, replace=False))
  key = jax.random.key(seed)
  record: dict[str, Any] = {"sigma": sigma, "votes": votes,
                            "test_images": len(labels[:test_images]),
                            "vote_image_indices": subset.tolist()}
  for name, variables, log in (("base", pair.base, pair.base_record),
                               ("finetuned", pair.finetuned, pair.finetuned_record)):
    measure_start = time.perf_counter()
    clean = train.evaluate(pair.model, variables, images[:test_images],
                           labels[:test_images])["accuracy"]
    voted = vote_accuracy(pair.model, variables, images[subset], labels[subset],
                          sigma=sigma, votes=votes, key=key)
    history = log["history"]
    record[name] = {
        "path": log["path"],
        "epochs": len(history),
        "best_epoch": log["best_epoch"],
        "train_wall_seconds": sum(h["seconds"] for h in history),
        "val_accuracy": [h["val_accuracy"] for h in history],
        "clean_test_accuracy": clean,
        "vote_accuracy": voted,
        "measure_seconds": time.perf_counter() - measure_start,
    }
    print(f"{name}: clean test accuracy {clean:.4f} ({record['test_images']} images); "
          f"smoothing sigma={sigma} vote accuracy {voted:.4f} ({vote_images} images, n={votes}); "
          f"{len(history)} epochs, {record[name]['train_wall_seconds']:.0f} s of training")
  record["train_or_load_seconds"] = trained - started
  record["total_seconds"] = time.perf_counter() - started
  record["environment"] = {"jax": jax.__version__, "backend": jax.default_backend(),
                           "devices": [str(d) for d in jax.devices()]}
  _records.write_json(pathlib.Path(workdir) / "train_fashion.json", record)
  return record


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  _cli.writable_folder("--workdir", _WORKDIR.value)
  with WorkdirLock(_WORKDIR.value):  # two trainings must not interleave checkpoints
    run(_WORKDIR.value, epochs=_EPOCHS.value, finetune_epochs=_FINETUNE_EPOCHS.value,
        finetune_learning_rate=_FINETUNE_LR.value, sigma=_SIGMA.value, votes=_VOTES.value,
        vote_images=_VOTE_IMAGES.value, seed=_SEED.value)


if __name__ == "__main__":
  _cli.run(main)
