"""Audit one stochastic defense with the study's protocol (jaxdef.audit).

  python -m launch.run --config=configs/audit.py
  python -m launch.run --config=configs/audit.py --config.audit.budget=standard
  python -m launch.run --config=configs/audit.py \
      --config.defense.factory=my_package.my_module:make_defense \
      --config.defense.params='{"strength": 0.3}'

The defense: a registry name (``--config.defense.name=bart``) or a user's
factory by import path (``package.module:function`` returning a callable
``(key, images) -> images``); its keyword parameters as a JSON object in
``config.defense.params``. The model: ``config.models.model`` with any
source of the experiments (``fashion_small_resnet``, trained here and
cached; ``torchvision`` with ``path`` to a ``.pth`` read with
weights_only=True or a ``.safetensors`` file and ``depth``; ``variables``
with ``path`` to a jaxdef msgpack and ``depth``; ``activation="sap"`` makes
it a stochastic model). The data: the experiments' loaders
(``config.data``).

Writes audit.md, audit.json and figures/ in the workdir; the step records
in audit/ make a rerun resume.

Variants: fashion (default: the default run's small ResNet behind
randomized smoothing, sigma = 0.25, 100 test images, the quick budget);
tiny (a toy model, 8 images and the smoke budget, for tests).
"""

from __future__ import annotations

import ml_collections

from configs import _common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "fashion"
  if variant not in ("fashion", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of configs/audit.py; allowed: fashion, tiny")
  config = _common.new_config("audit")
  _common.set_data(config, "fashion_mnist", num_images=100)
  # The default run's base model (configs/default.py): trained once, cached.
  config.models = ml_collections.ConfigDict({"model": {
      "source": "fashion_small_resnet", "widths": (8, 16, 32), "epochs": 3,
      "batch_size": 256, "learning_rate": 3e-3, "finetune_defense": "",
      # Read by the checkpoint sources: torchvision / variables.
      "path": "", "depth": 18}})
  config.defense = ml_collections.ConfigDict({
      "name": "randomized_smoothing",
      "factory": "",  # "package.module:function": a user's defense instead of `name`
      "params": '{"sigma": 0.25}',  # JSON object of keyword parameters
  })
  config.audit = ml_collections.ConfigDict({
      "budget": "quick",  # quick | standard | thorough | smoke (jaxdef.auditing.BUDGETS)
      # True: every image aims at config.data.target_label (-1: the last class).
      "targeted": False,
  })
  # Fashion-MNIST models need a larger budget than ImageNet's 8/255 to be broken.
  config.attack.eps_255 = 16.0
  config.attack.norm = "inf"  # or "2", with eps_l2
  config.attack.eps_l2 = 0.0  # the L2 budget in pixel units, read when norm is "2"
  config.attack.eot_chunk_size = 0  # EOT draws evaluated at once (memory); 0: all
  config.attack.vote_chunk_size = 50
  _common.add_vote_rows(config.attack)
  if variant == "tiny":
    config.data.num_images = 8
    config.models.model.update(widths=(4, 8), epochs=1, train_images=2048)
    config.audit.budget = "smoke"
  return config
