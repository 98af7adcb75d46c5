"""Perturbation pictures: PGD with and without EOT at an equal budget (SPEC.md section 7).

  python -m launch.run --config=configs/perturbation_pictures.py[:variant] \
      --workdir=runs/pictures
Variants:
  fashion (default): the small ResNet trained here on Fashion-MNIST behind
    randomized smoothing (sigma 0.25); PGD k=50 x m=1 against k=10 x m=5.
  imagenet: torchvision ResNet-50 behind randomized smoothing on ImageNet
    validation images, eps 8/255 (needs --config.models.resnet50.path and
    --config.data.dir; try --dry_run first).
  tiny: seconds-long, for tests.
Settings are (k, m) pairs of one budget k x m, e.g.
--config.attack.settings='((20, 1), (4, 5))'.
"""

from __future__ import annotations

import ml_collections

from configs import _common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "fashion"
  config = _common.new_config("perturbation_pictures")
  _common.add_sanity_check(config)
  config.num_pictures = 4  # rows of the picture grid
  _common.set_data(config, "fashion_mnist", num_images=100)

  config.models = ml_collections.ConfigDict({
      "base": {"source": "fashion_small_resnet", "widths": (8, 16, 32), "epochs": 4,
               "finetune_defense": ""}})
  config.defenses = ml_collections.ConfigDict({
      "smoothing_025": {"name": "randomized_smoothing", "sigma": 0.25}})

  config.attack.eps_255 = 16.0  # Fashion-MNIST needs more than ImageNet's 8/255
  config.attack.alpha_255 = 2.0
  config.attack.settings = ((50, 1), (10, 5))  # (k, m) pairs of one budget k x m
  config.attack.random_start = False
  config.attack.votes = 100
  config.attack.vote_chunk_size = 50
  _common.add_vote_rows(config.attack)

  if variant == "imagenet":
    _common.set_data(config, "imagenet", num_images=100)
    config.models = ml_collections.ConfigDict({
        "resnet50": {"source": "torchvision", "depth": 50, "path": ""}})
    config.attack.eps_255 = 8.0
    config.attack.alpha_255 = 1.0
    config.attack.votes = 500
  elif variant == "tiny":
    config.data.num_images = 8
    config.num_pictures = 2
    config.models.base.widths = (4, 8)
    config.models.base.epochs = 1
    config.models.base.train_images = 1024
    config.models.base.batch_size = 64  # 16 updates: better than chance, in seconds
    config.models.base.learning_rate = 1e-2
    config.attack.settings = ((4, 1), (2, 2))
    config.attack.votes = 8
    config.attack.vote_chunk_size = 8
  elif variant != "fashion":
    raise ValueError(f"unknown variant {variant!r} of configs/perturbation_pictures.py; "
                     "allowed: fashion, imagenet, tiny")
  return config
