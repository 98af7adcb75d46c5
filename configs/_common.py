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
  # The models' computation dtype: "float32" or "bfloat16" (convolutions and
  # BatchNorm; images, perturbations, logits and losses stay float32).
  config.dtype = "float32"
  # Device memory in GB that "auto" row limits fill half of; 0: the device's
  # own (a CPU has no limit). --dry_run states 80 when this is 0.
  config.device_memory_gb = 0.0
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


def rows_setting(value: str | int = "auto") -> ml_collections.FieldReference:
  """A rows-per-call field that takes "auto" or an integer (here and on the command line)."""
  return ml_collections.FieldReference(value, field_type=object)


def add_vote_rows(section: ml_collections.ConfigDict) -> None:
  """Adds ``vote_rows_per_call = "auto"`` to the section that sets ``vote_chunk_size``.

  The most model rows (draws x images) one vote, invariance or sanity call
  evaluates: "auto" is no bound on a CPU (``vote_chunk_size`` draws at a
  time, as before) and half the device's memory on an accelerator
  (`jaxdef.memory`); 0 is no bound; an integer is kept.
  """
  section.vote_rows_per_call = rows_setting()


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
