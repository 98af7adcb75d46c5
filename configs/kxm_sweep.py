"""The k x m gradient-strength sweep (SPEC.md section 7).

  python -m launch.run --config=configs/kxm_sweep.py[:variant] --workdir=runs/kxm
Variants:
  imagenet (default): torchvision ResNet-50 on 1,000 fixed ImageNet validation
    images behind randomized smoothing (sigma 0.25, 0.5) and noise injection,
    the study's full grid. Needs the weights (--config.models.resnet50.path)
    and the ImageNet validation folder (--config.data.dir); try --dry_run first.
  fashion: the same grid, reduced, on Fashion-MNIST with the small ResNet
    trained here (no download).
  tiny: seconds-long, for tests.
Any field can be overridden, e.g. --config.attack.steps='(10, 20)' --config.attack.votes=100.
"""

from __future__ import annotations

import ml_collections

from configs import _common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "imagenet"
  config = _common.new_config("kxm_sweep")
  _common.add_sanity_check(config)
  config.attack.eps_255 = 8.0  # L-inf budget in 1/255 units
  config.attack.steps = (10, 20, 50, 100, 200, 500, 1000)  # k, one trajectory per (m, alpha)
  config.attack.eots = (1, 5, 10, 20)  # m
  config.attack.alphas_255 = (0.5, 1.0, 2.0, 4.0)  # step sizes in 1/255 units
  config.attack.targeted = (False, True)
  config.attack.votes = 500
  config.attack.vote_chunk_size = 100
  _common.add_vote_rows(config.attack)
  config.attack.eot_chunk_size = 0  # 0: all m draws at once
  # Most images per model call of an attack step, EOT draws chunked under it:
  # "auto" is 256 on a CPU, whose caches favour a few hundred
  # (configs/default.py), and half the device's memory on an accelerator
  # (jaxdef.memory); 0: no limit.
  config.attack.eot_rows_per_call = _common.rows_setting()
  # All alphas of a (model, defense, target mode, m) in one vmapped call: the
  # same iterates as one run per alpha, len(alphas) times one run's memory.
  # Off for ImageNet (4 x a ResNet-50 EOT-20 run of 1,000 images), on below.
  config.attack.batch_alphas = False
  # The study's full votes; True stops each image's vote once its label is
  # decided at vote_error (StochasticClassifier.predict_sequential).
  config.attack.sequential_votes = False
  config.attack.vote_error = 1e-3
  # True attacks (and, with sequential votes, votes on) only the images a
  # success rate counts, each under the draws of a whole-batch attack.
  config.attack.counted_only = False

  if variant == "imagenet":
    # --config.data.dir: the validation folder (class-per-folder) or the tfds
    # data_dir. Targeted attacks aim at the last class, 999.
    _common.set_data(config, "imagenet", num_images=1000)
    config.models = ml_collections.ConfigDict({
        "resnet50": {"source": "torchvision", "depth": 50, "path": ""}})
    config.defenses = ml_collections.ConfigDict({
        "smoothing_025": {"name": "randomized_smoothing", "sigma": 0.25},
        "smoothing_050": {"name": "randomized_smoothing", "sigma": 0.5},
        "noise": {"name": "noise"},
    })
  elif variant in ("fashion", "tiny"):
    # Targeted attacks aim at the last class, 9 (ankle boot).
    _common.set_data(config, "fashion_mnist", num_images=200)
    config.models = ml_collections.ConfigDict({
        "base": {"source": "fashion_small_resnet", "finetune_defense": ""}})
    config.defenses = ml_collections.ConfigDict({
        "smoothing_025": {"name": "randomized_smoothing", "sigma": 0.25},
        "noise": {"name": "noise"},
    })
    # Fashion-MNIST needs a larger budget than ImageNet's 8/255 to be broken.
    config.attack.eps_255 = 16.0
    config.attack.steps = (10, 20, 50, 100)
    config.attack.eots = (1, 5, 10)
    config.attack.alphas_255 = (1.0, 4.0)
    config.attack.votes = 100
    config.attack.batch_alphas = True
    if variant == "tiny":
      config.data.num_images = 8
      config.models = ml_collections.ConfigDict({
          "untrained": {"source": "small_resnet", "widths": (4, 8)}})
      config.defenses = ml_collections.ConfigDict({
          "smoothing_025": {"name": "randomized_smoothing", "sigma": 0.25}})
      config.attack.steps = (1, 3)
      config.attack.eots = (1, 2)
      config.attack.alphas_255 = (2.0, 8.0)
      config.attack.votes = 8
      config.attack.vote_chunk_size = 4
      # 8 images x 2 alphas = 16 rows per draw: the m = 2 cells run one draw at a time.
      config.attack.eot_rows_per_call = 16
  else:
    raise ValueError(f"unknown variant {variant!r} of configs/kxm_sweep.py; "
                     "allowed: imagenet, fashion, tiny")
  return config
