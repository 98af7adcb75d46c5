"""The embedded default: Fashion-MNIST from the Debian package, no download.

Launch (all set-up included, from a fresh clone):
  bash launch/setup.sh && .venv/bin/python -m launch.run
which is the same as
  .venv/bin/python -m launch.run --config=configs/default.py --workdir=runs/default
Variants: `configs/default.py:tiny` is a seconds-long run for tests.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = "default"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "fashion_mnist"
  config.data.split = "test"
  config.data.num_images = 16
  config.data.dir = ""  # empty: $JAXDEF_FASHION_MNIST_DIR or the Debian package's folder

  # Each entry: a registered defense name and its parameters.
  config.defenses = ml_collections.ConfigDict({
      "smoothing_025": {"name": "randomized_smoothing", "sigma": 0.25},
      "smoothing_050": {"name": "randomized_smoothing", "sigma": 0.5},
      "noise": {"name": "noise"},
      "gaussian_blur": {"name": "gaussian_blur"},
      "median_blur": {"name": "median_blur"},
      "swirl": {"name": "swirl", "radius_range": (10, 200)},
      "quantization": {"name": "quantization"},
      "fft": {"name": "fft"},
      "bart_3": {"name": "bart", "kappa": 3},
      "bart_6": {"name": "bart", "kappa": 6},
  })
  config.num_samples = 100  # draws per image in the defense survey
  config.chunk_size = 50  # draws computed at once (memory bound)
  config.pictures_per_defense = 6

  if arg == "tiny":
    config.data.num_images = 4
    config.num_samples = 8
    config.chunk_size = 4
    config.defenses = ml_collections.ConfigDict({
        "smoothing_025": {"name": "randomized_smoothing", "sigma": 0.25},
        "bart_2": {"name": "bart", "kappa": 2},
    })
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/default.py; allowed: tiny")
  return config
