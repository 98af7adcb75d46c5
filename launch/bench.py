"""Throughput benchmark: PGD-with-EOT steps and votes, as JSON and markdown.

  python -m launch.bench --workdir=runs/bench [--batch=64] [--steps=5] [--defense=smoothing]

Measures image-gradients per second of PGD with EOT-m (m in --eot) against
randomized smoothing and BaRT on the small Fashion-MNIST ResNet, and
defended forward passes per second of a 500-vote prediction. Compilation
is excluded (timed calls follow a warm-up call).
"""

from __future__ import annotations

import json
import pathlib

import jax
from absl import app
from absl import flags

import jaxdef as jd
from jaxdef.experiments import _bench
from jaxdef.experiments import _records
from jaxdef.reports import tables

_WORKDIR = flags.DEFINE_string("workdir", "runs/bench", "Output folder.")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per attack batch.")
_STEPS = flags.DEFINE_integer("steps", 5, "PGD steps per timed call.")
_EOT = flags.DEFINE_list("eot", ["1", "10"], "EOT sample counts m.")
_VOTES = flags.DEFINE_integer("votes", 500, "Votes per prediction.")
_DEFENSES = flags.DEFINE_multi_enum(
    "defense", ["smoothing", "bart"], ["smoothing", "bart"],
    "Defenses to measure (repeat the flag; BaRT-6 is slow on a CPU: every draw evaluates "
    "all six transforms).")


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value)
  images, labels = jd.data.load_fashion_mnist("test")
  x = jax.numpy.asarray(images[:_BATCH.value])
  y = jax.numpy.asarray(labels[:_BATCH.value])
  model, variables = jd.models.small_resnet(num_classes=10)
  logits_fn = jd.models.logits_fn(model, variables)
  rows = []
  chosen = {"smoothing": ("randomized_smoothing(0.25)", jd.defenses.randomized_smoothing(0.25)),
            "bart": ("bart(kappa=6)", jd.defenses.bart(kappa=6))}
  for label, defense in (chosen[name] for name in _DEFENSES.value):
    clf = jd.StochasticClassifier(logits_fn, defense)
    for eot in (int(m) for m in _EOT.value):
      record = _bench.pgd_throughput(clf, x, y, eot=eot, steps=_STEPS.value)
      rows.append({"defense": label, "model": "small_resnet", **record})
      print(json.dumps(rows[-1]))
    record = _bench.vote_throughput(clf, x, votes=_VOTES.value)
    rows.append({"defense": label, "model": "small_resnet", **record})
    print(json.dumps(rows[-1]))
  _records.write_json(workdir / "bench.json",
                      {"environment": _records.environment(), "results": rows})
  table = tables.markdown(rows, [
      ("defense", "defense"), ("kind", "kind"), ("batch", "batch"), ("eot", "EOT m"),
      ("votes", "votes"), ("image_gradients_per_second", "image-gradients/s"),
      ("forward_passes_per_second", "forward passes/s"), ("seconds", "s per call")])
  _records.write_atomic(workdir / "bench.md", table + "\n")
  print(table)



if __name__ == "__main__":
  app.run(main)
