"""Trained invariance: the base model and copies fine-tuned on each defense (SPEC.md section 7).

  python -m launch.run --config=configs/finetune.py[:variant] --workdir=runs/finetune
Variants:
  fashion (default): the small ResNet trained here on Fashion-MNIST and a
    copy fine-tuned on randomized smoothing (sigma 0.25) and on BaRT
    (kappa 2); each model measured behind each defense.
  tiny: seconds-long, for tests.
Models are cached in config.models_dir (a rerun skips training). A model
entry fine-tunes on the defense labelled by its `finetune_defense`.
"""

from __future__ import annotations

import ml_collections

from configs import _common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "fashion"
  config = _common.new_config("finetune")
  _common.set_data(config, "fashion_mnist", num_images=1000)

  config.defenses = ml_collections.ConfigDict({
      "smoothing_025": {"name": "randomized_smoothing", "sigma": 0.25},
      "bart_2": {"name": "bart", "kappa": 2},
  })
  base = {"source": "fashion_small_resnet", "widths": (8, 16, 32), "epochs": 4,
          "batch_size": 256, "learning_rate": 1e-3, "train_images": 0,
          "finetune_epochs": 2, "finetune_learning_rate": 3e-4}

  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.draws = 100  # defense draws per image
  config.evaluation.vote_chunk_size = 50
  _common.add_vote_rows(config.evaluation)

  if variant == "tiny":
    config.data.num_images = 16
    # 16 updates of batch 64: better than chance, in seconds.
    base.update(widths=(4, 8), epochs=1, train_images=1024, batch_size=64, learning_rate=1e-2,
                finetune_epochs=1)
    config.defenses = ml_collections.ConfigDict({
        "smoothing_025": {"name": "randomized_smoothing", "sigma": 0.25}})
    config.evaluation.draws = 8
    config.evaluation.vote_chunk_size = 8
  elif variant != "fashion":
    raise ValueError(f"unknown variant {variant!r} of configs/finetune.py; "
                     "allowed: fashion, tiny")
  config.models = ml_collections.ConfigDict({"base": dict(base, finetune_defense="")})
  for label in config.defenses:
    config.models[f"finetuned_{label}"] = dict(base, finetune_defense=label)
  return config
