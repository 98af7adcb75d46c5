"""The invariance trade-off over BaRT's kappa = 1..6 (SPEC.md section 7).

  python -m launch.run --config=configs/invariance_bart.py[:variant] \
      --workdir=runs/invariance_bart
Variants:
  imagenette (default): ResNet-34 on ImageNette, kappa 1..6, the base model
    and one copy fine-tuned per kappa, loaded from saved variables
    (--config.models.base.path=..., --config.models.finetuned_kappa_3.path=...,
    and the data with --config.data.dir); try --dry_run first.
  fashion: the small ResNet trained here on Fashion-MNIST and fine-tuned per
    kappa in 1..3 (noise, Gaussian blur, median blur: the first BaRT
    transforms, small on 28 x 28 images).
  tiny: seconds-long, for tests (kappa 1 only: BaRT's compile time grows
    with kappa, and the smoothing study's tiny variant tests the sweep).
Per kappa: invariance, vote accuracy and APGD-200 (no EOT) success of the
model before and after fine-tuning on that kappa.
"""

from __future__ import annotations

import ml_collections

from configs import invariance_smoothing

KAPPAS = {"imagenette": (1, 2, 3, 4, 5, 6), "fashion": (1, 2, 3), "tiny": (1,)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "imagenette"
  if variant not in KAPPAS:
    raise ValueError(f"unknown variant {variant!r} of configs/invariance_bart.py; "
                     f"allowed: {', '.join(KAPPAS)}")
  defenses = {f"kappa_{k}": {"name": "bart", "kappa": k} for k in KAPPAS[variant]}
  return invariance_smoothing.build("invariance_bart", "kappa", defenses, variant)
