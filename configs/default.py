"""The embedded default: Fashion-MNIST from the Debian package, no download.

Launch (all set-up included, from a fresh clone):
  bash launch/setup.sh && .venv/bin/python -m launch.run
which is the same as
  .venv/bin/python -m launch.run --config=configs/default.py --workdir=runs/default
Variants: `configs/default.py:tiny` is a short run for tests (a model
trained for a few hundred steps, a 2 x 2 grid).

Sizes are chosen for two CPU cores: the models are cached in models_dir
(a rerun skips training), and the sweep resumes cell by cell.
"""

from __future__ import annotations

import ml_collections

from configs import _common
from configs import theory as theory_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = _common.new_config("default")
  _common.add_sanity_check(config)
  # Targeted attacks aim at the last class, 9 (ankle boot).
  _common.set_data(config, "fashion_mnist", num_images=100)

  # The small ResNet, and a copy fine-tuned on the attacked defense's data.
  # 3 epochs at 3e-3 and one fine-tuning epoch keep the whole job under 15
  # minutes on two CPU cores (measured: see README); the fine-tuned copy's
  # defended validation accuracy no longer rose in a second epoch.
  base = {"source": "fashion_small_resnet", "widths": (8, 16, 32), "epochs": 3,
          "batch_size": 256, "learning_rate": 3e-3}
  config.models = ml_collections.ConfigDict({
      "base": dict(base, finetune_defense=""),
      "invariant": dict(base, finetune_defense="smoothing_025", finetune_epochs=1,
                        finetune_learning_rate=3e-4),
  })
  config.defenses = ml_collections.ConfigDict({
      "smoothing_025": {"name": "randomized_smoothing", "sigma": 0.25},
  })

  # Fashion-MNIST models need a larger budget than ImageNet's 8/255 to be broken.
  config.attack.eps_255 = 16.0
  config.attack.steps = (10, 20, 50)  # k: one trajectory per (m, alpha)
  config.attack.eots = (1, 5)  # m: k=50 x m=1 and k=10 x m=5 cost the same
  config.attack.alphas_255 = (2.0, 6.0)
  config.attack.targeted = (False, True)
  config.attack.votes = 50
  config.attack.vote_chunk_size = 50
  _common.add_vote_rows(config.attack)
  config.attack.eot_chunk_size = 0
  # Most images per model call of an attack step; the EOT draws are chunked
  # under it. "auto" is 256 on a CPU (the invariant model's EOT-5 cells, 80
  # images x 2 alphas x 5 draws = 800 rows, run one draw at a time: on a
  # 2-core CPU an 800-row call ran at 4,129 image-gradients/s, a 160-row one
  # at 4,914, BENCHMARKS.md) and half the device's memory on an accelerator
  # (jaxdef.memory); the success counts do not depend on it beyond the
  # summation order of the EOT mean. 0: no limit.
  config.attack.eot_rows_per_call = _common.rows_setting()
  # Both alphas of a (model, target mode, m) in one compiled call: the same
  # iterates as one run per alpha (bit for bit on CPU), twice one run's memory.
  config.attack.batch_alphas = True
  # Votes stop per image once the label is decided at error 1e-3. On the
  # default run's 5,000 voted images (clean, and every sweep cell's iterates)
  # they agreed with the full 50-vote (and 500-vote) result on every image and
  # spent 17% (62%) fewer forward passes, where two full votes with different
  # keys agree on 93% (98%) (`python -m launch.vote_agreement --steps=all`).
  config.attack.sequential_votes = True
  config.attack.vote_error = 1e-3
  # Attack and vote only on the images a success rate counts (the defended
  # classifier's clean vote is right on them): each sees the draws of a
  # whole-batch attack, so the counts are the same up to convolution
  # rounding, and the base model's 79% wrong images cost nothing.
  config.attack.counted_only = True

  config.theory = theory_config.theory_section()

  # The defense survey: what each defense does to the images.
  config.survey = ml_collections.ConfigDict()
  config.survey.num_images = 16
  config.survey.num_samples = 50
  config.survey.chunk_size = 25
  config.survey.pictures_per_defense = 6
  config.survey.defenses = ml_collections.ConfigDict({
      "smoothing_025": {"name": "randomized_smoothing", "sigma": 0.25},
      "noise": {"name": "noise"},
      "gaussian_blur": {"name": "gaussian_blur"},
      "median_blur": {"name": "median_blur"},
      "swirl": {"name": "swirl", "radius_range": (10, 200)},
      "quantization": {"name": "quantization"},
      "fft": {"name": "fft"},
      "bart_3": {"name": "bart", "kappa": 3},
      "bart_6": {"name": "bart", "kappa": 6},
  })

  if arg == "tiny":
    config.data.num_images = 8
    for entry in config.models.values():
      entry.widths = (4, 8)
      entry.epochs = 1
      entry.train_images = 2048
      entry.batch_size = 256
    config.models.invariant.finetune_epochs = 1
    config.attack.steps = (1, 3)
    config.attack.eots = (1, 3)
    config.attack.votes = 8
    config.attack.vote_chunk_size = 8
    config.theory.mc_samples = 20_000
    config.theory.num_k = 9
    config.survey.num_images = 4
    config.survey.num_samples = 8
    config.survey.chunk_size = 4
    config.survey.defenses = ml_collections.ConfigDict({
        "smoothing_025": {"name": "randomized_smoothing", "sigma": 0.25},
        "bart_2": {"name": "bart", "kappa": 2},
    })
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/default.py; allowed: tiny")
  return config
