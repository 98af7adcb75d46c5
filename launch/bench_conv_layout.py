"""A/B of the convolution behind the small ResNet: jaxdef's per-shape convolution vs plain lax.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m launch.bench_conv_layout

Times PGD (5 steps, EOT-10, batch 64, randomized smoothing 0.25) on the
small Fashion-MNIST ResNet built two ways: with `jaxdef.models._conv` (the
default: per shape, XLA's convolution or unfold + matmul, and an input
gradient that convolves with a materialised HWIO kernel where XLA's
convolution computes it) and with `lax.conv_general_dilated` (JAX's
transpose rule relabels the kernel as ``01oi``, which XLA CPU runs on a
slow path inside the attack loop).
Prints image-gradients per second for each, compilation excluded.
"""

from __future__ import annotations

import json
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxdef as jd
from jaxdef.models import _resnet
from launch import _cli

BATCH, EOT, STEPS = 64, 10, 5


def _throughput(widths) -> float:
  model, variables = jd.models.small_resnet(10, widths=widths, key=jax.random.key(0))
  clf = jd.StochasticClassifier(jd.models.logits_fn(model, variables),
                                jd.defenses.randomized_smoothing(0.25))
  x = jax.random.uniform(jax.random.key(1), (BATCH, 28, 28, 1))
  y = jnp.zeros((BATCH,), jnp.int32)
  run = lambda seed: jd.attacks.pgd(jax.random.key(seed), clf, x, y, eps=8 / 255,
                                    alpha=2 / 255, steps=STEPS, eot=EOT)
  jax.block_until_ready(run(0))  # compile
  times = []
  for seed in range(1, 4):
    start = time.perf_counter()
    jax.block_until_ready(run(seed))
    times.append(time.perf_counter() - start)
  return BATCH * EOT * STEPS / float(np.median(times))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])} (this benchmark takes none)")
  results = {}
  for widths in ((8, 16, 32), (16, 32, 64)):
    name = "-".join(map(str, widths))
    results[f"{name} hwio_conv"] = round(_throughput(widths), 1)
    saved = _resnet.conv_ops
    _resnet.conv_ops = types.SimpleNamespace(conv_general_dilated=lax.conv_general_dilated)
    try:
      results[f"{name} lax_conv"] = round(_throughput(widths), 1)
    finally:
      _resnet.conv_ops = saved
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
  _cli.run(main)
