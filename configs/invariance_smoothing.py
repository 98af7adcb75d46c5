"""The invariance trade-off over randomized smoothing's sigma (SPEC.md section 7).

  python -m launch.run --config=configs/invariance_smoothing.py[:variant] \
      --workdir=runs/invariance_smoothing
Variants:
  imagenette (default): ResNet-34 on ImageNette, the base model and one copy
    fine-tuned per sigma, loaded from saved variables
    (--config.models.base.path=..., --config.models.finetuned_smoothing_025.path=...,
    and the data with --config.data.dir); try --dry_run first.
  fashion: the small ResNet trained here on Fashion-MNIST and fine-tuned per
    sigma (no download).
  tiny: seconds-long, for tests.
Per sigma: invariance, vote accuracy and APGD-200 (no EOT) success of the
model before and after fine-tuning on that sigma.
"""

from __future__ import annotations

import ml_collections

from configs import _common

SIGMAS = {"imagenette": (0.12, 0.25, 0.5, 1.0), "fashion": (0.12, 0.25, 0.5),
          "tiny": (0.25, 0.5)}


def label_of(sigma: float) -> str:
  """sigma 0.25 -> "smoothing_025" (no dots: labels are config keys)."""
  return f"smoothing_{round(100 * sigma):03d}"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "imagenette"
  if variant not in SIGMAS:
    raise ValueError(f"unknown variant {variant!r} of configs/invariance_smoothing.py; "
                     f"allowed: {', '.join(SIGMAS)}")
  defenses = {label_of(s): {"name": "randomized_smoothing", "sigma": s} for s in SIGMAS[variant]}
  return build("invariance_smoothing", "sigma", defenses, variant)


def build(experiment: str, parameter: str, defenses: dict, variant: str
          ) -> ml_collections.ConfigDict:
  """The config of one invariance study; shared with configs/invariance_bart.py.

  Args:
    experiment: "invariance_smoothing" | "invariance_bart".
    parameter: the defense parameter swept ("sigma" | "kappa").
    defenses: label -> defense entry, one per strength.
    variant: "imagenette" | "fashion" | "tiny".
  """
  config = _common.new_config(experiment)
  _common.add_sanity_check(config)
  config.invariance = ml_collections.ConfigDict({"parameter": parameter})
  config.defenses = ml_collections.ConfigDict(defenses)

  config.attack.steps = 200  # APGD-200
  config.attack.eot = 1  # without EOT
  config.attack.loss = "ce"
  config.attack.votes = 500
  config.attack.vote_chunk_size = 100
  _common.add_vote_rows(config.attack)
  config.attack.invariance_draws = 100
  # As in the k x m sweep: True stops each image's vote once its label is
  # decided at vote_error; True attacks (and votes after the attack on) only
  # the images the clean vote got right, the ones a success rate counts.
  config.attack.sequential_votes = False
  config.attack.vote_error = 1e-3
  config.attack.counted_only = False

  if variant == "imagenette":
    _common.set_data(config, "imagenette", num_images=1000)
    config.attack.eps_255 = 8.0
    model = {"source": "variables", "depth": 34, "path": ""}
    # Plain variables files have no per-epoch checkpoints to track.
    config.invariance.track_epochs = False
    config.models = ml_collections.ConfigDict({"base": model})
    for label in defenses:
      config.models[f"finetuned_{label}"] = dict(model)
    return config

  # Robustness during fine-tuning: every epoch's checkpoint is attacked too.
  config.invariance.track_epochs = True
  _common.set_data(config, "fashion_mnist", num_images=500)
  config.attack.eps_255 = 16.0  # Fashion-MNIST needs more than ImageNet's 8/255
  config.attack.votes = 100
  config.attack.vote_chunk_size = 50
  config.attack.invariance_draws = 50
  base = {"source": "fashion_small_resnet", "widths": (8, 16, 32), "epochs": 4,
          "batch_size": 256, "learning_rate": 1e-3, "train_images": 0,
          "finetune_epochs": 2, "finetune_learning_rate": 3e-4}
  if variant == "tiny":
    config.data.num_images = 8
    # 16 updates of batch 64: better than chance, in seconds.
    base.update(widths=(4, 8), epochs=1, train_images=1024, batch_size=64, learning_rate=1e-2,
                finetune_epochs=1)
    config.attack.steps = 3
    config.attack.votes = 8
    config.attack.vote_chunk_size = 8
    config.attack.invariance_draws = 8
  config.models = ml_collections.ConfigDict({"base": dict(base, finetune_defense="")})
  for label in defenses:
    config.models[f"finetuned_{label}"] = dict(base, finetune_defense=label)
  return config
