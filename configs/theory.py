"""The theory study: the binary Gaussian task (SPEC.md section 7).

  python -m launch.run --config=configs/theory.py --workdir=runs/theory
Closed forms and Monte-Carlo checks; seconds on a CPU.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = "theory"
  config.seed = 0
  config.progress = True
  config.theory = theory_section()
  if arg == "tiny":
    config.theory.mc_samples = 20_000
    config.theory.num_k = 9
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/theory.py; allowed: tiny")
  return config


def theory_section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "sigma": 1.0,  # std of the defense's theta ~ N(1, sigma^2)
      "eps": 0.5,  # l-inf budget of the adversary
      "num_votes": 15,  # votes of the majority-vote rows
      "mc_samples": 200_000,  # Monte-Carlo samples per row
      "k_min": -1.0, "k_max": 3.0, "num_k": 41,  # curves over the threshold k
  })
