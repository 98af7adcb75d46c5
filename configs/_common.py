"""The parts every experiment config shares: the top-level fields and the data section."""

from __future__ import annotations

import ml_collections

# Where each dataset's evaluation images come from by default.
_DEFAULTS = {
    "fashion_mnist": {"source": "idx", "split": "test"},  # the Debian package's IDX files
    "imagenet": {"source": "folder", "split": "validation"},  # or "tfds"
    "imagenette": {"source": "folder", "split": "validation"},  # or "tfds"
    "cifar10": {"source": "tfds", "split": "test"},
}


def new_config(experiment: str) -> ml_collections.ConfigDict:
  """A config with the fields every experiment has and empty data and attack sections."""
  config = ml_collections.ConfigDict()
  config.experiment = experiment
  config.seed = 0
  config.progress = True
  config.models_dir = "runs/models"  # models trained here, shared across runs
  config.data = ml_collections.ConfigDict()
  config.attack = ml_collections.ConfigDict()
  return config


def add_sanity_check(config: ml_collections.ConfigDict) -> None:
  """Adds ``config.sanity_check`` (on) to a config of an experiment that attacks.

  The pre-attack sanity check of every (model, defense) pair (jaxdef.checks):
  defense randomness across keys, logits not probabilities, non-zero
  gradients, clean accuracy of one draw and of the vote; -> sanity.json and
  a summary.md section. False skips it.
  """
  config.sanity_check = True


def set_data(config: ml_collections.ConfigDict, name: str, num_images: int) -> None:
  """Fills ``config.data`` for `num_images` fixed images of dataset `name`.

  ``dir`` stays empty: the default place (Fashion-MNIST: $JAXDEF_FASHION_MNIST_DIR
  or the Debian package's folder); ImageNet-size data needs --config.data.dir.
  ``target_label`` -1 makes targeted attacks aim at the last class.
  """
  config.data.name = name
  config.data.source = _DEFAULTS[name]["source"]
  config.data.split = _DEFAULTS[name]["split"]
  config.data.dir = ""
  config.data.num_images = num_images
  config.data.target_label = -1
