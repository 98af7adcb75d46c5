"""The embedded default's key results, pinned: a change that weakens the attack fails here.

The default run's two trained models (tests/data/default_run/*.msgpack, the
variables `launch.run` trained and fine-tuned) attack the default's 100 fixed
Fashion-MNIST test images again with the default config's untargeted EOT-1
cells (both step sizes, k = 10, 20, 50), keys and votes included. Every
success count must stay inside the 95% Clopper-Pearson interval recorded
by that run (tests/data/default_run/pinned.json), with the same
denominators; the clean votes must give the same denominators exactly.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from configs import default as default_config
from jaxdef import data
from jaxdef import models
from jaxdef.experiments import _kxm
from jaxdef.experiments import _sources
from jaxdef.experiments import _sweep

DATA = pathlib.Path(__file__).resolve().parent / "data" / "default_run"


def test_default_key_results_stay_within_their_pinned_intervals(tmp_path):
  pinned = json.loads((DATA / "pinned.json").read_text())["cells"]
  config = default_config.get_config()
  widths = tuple(config.models.base.widths)
  model, template = models.small_resnet(10, widths=widths)
  logits_fns = {label: models.logits_fn(model, models.load_variables(DATA / f"{label}.msgpack",
                                                                     like=template))
                for label in config.models}
  indices = data.load_subset(DATA / "indices.json", dataset="fashion_mnist", split="test")
  images, labels = data.load_fashion_mnist("test")
  images = jnp.asarray(np.asarray(images[indices], np.float32))
  labels = np.asarray(labels[indices], np.int32)
  targets = _sources.targets_for(labels, 10, int(config.data.get("target_label", -1)))
  defenses = _sources.build_defenses(config.defenses)
  spec = dataclasses.replace(_kxm.sweep_spec(config, logits_fns, defenses), targeted=(False,),
                             eots=(1,))
  assert {(c["model"], c["alpha_255"], c["k"]) for c in pinned} == {
      (u.model, round(u.alpha * 255, 4), k) for u in spec.units() for k in spec.checkpoints}
  records = _sweep.run_sweep(spec, _sources.classifiers(config, logits_fns, defenses), images,
                             jnp.asarray(labels), jnp.asarray(targets),
                             jax.random.key(config.seed), tmp_path, progress=False)
  found = {(r["model"], r["alpha_255"], r["k"]): r for r in records}
  outside = []
  for cell in pinned:
    record = found[(cell["model"], cell["alpha_255"], cell["k"])]
    assert record["denominator"] == cell["denominator"], cell  # the clean vote is unchanged
    assert record["gradient_computations"] == cell["gradient_computations"]
    if not cell["ci_low"] <= record["rate"] <= cell["ci_high"]:
      outside.append(f"{cell['model']} alpha {cell['alpha_255']}/255 k={cell['k']}: "
                     f"{record['successes']}/{record['denominator']}, pinned "
                     f"{cell['successes']}/{cell['denominator']} "
                     f"[{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]")
  assert not outside, "attack success left its pinned 95% interval: " + "; ".join(outside)
  same = sum(found[(c["model"], c["alpha_255"], c["k"])]["successes"] == c["successes"]
             for c in pinned)
  print(f"{same} of {len(pinned)} pinned cells reproduced exactly")
