"""A/B of the k-WTA activation: jaxdef's bisection against XLA's sorting top_k.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m launch.bench_kwta

Times the input gradient of the small Fashion-MNIST ResNet (widths 8-16-32,
batch 256, k-WTA ratio 0.1, random weights and images) three ways: with
`jaxdef.models.kwta` (the k-th largest activation by bisection on
order-preserving keys), with the same layer thresholded by
`jax.lax.top_k` (the implementation before 2026-12-05), and with ReLU for
scale. Prints image-gradients per second, compilation excluded.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp

from jaxdef import models
from jaxdef.models import _activations
from launch import _cli

BATCH, CALLS, RATIO = 256, 5, 0.1


def _top_k_kwta(x, *, ratio=RATIO):
  flat = x.reshape(x.shape[0], -1)
  k = max(1, round(ratio * flat.shape[1]))
  threshold = jax.lax.top_k(flat, k)[0][:, -1:]
  return jnp.where(flat >= threshold, flat, jnp.zeros_like(flat)).reshape(x.shape)


def _throughput(activation: str) -> float:
  model, variables = models.small_resnet(10, widths=(8, 16, 32), activation=activation,
                                         kwta_ratio=RATIO, key=jax.random.key(0))
  logits_fn = models.logits_fn(model, variables)
  images = jax.random.uniform(jax.random.key(1), (BATCH, 28, 28, 1))
  gradient = jax.jit(jax.grad(lambda x: logits_fn(x).sum()))
  gradient(images).block_until_ready()  # compile
  start = time.perf_counter()
  for _ in range(CALLS):
    gradient(images).block_until_ready()
  return CALLS * BATCH / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])} (this benchmark takes none)")
  rates = {"kwta (bisection)": _throughput("kwta"), "relu": _throughput("relu")}
  bisection = _activations.kwta
  _activations.kwta = _top_k_kwta  # the module global the models call
  try:
    rates["kwta (lax.top_k)"] = _throughput("kwta")
  finally:
    _activations.kwta = bisection
  print(json.dumps({name: round(rate) for name, rate in rates.items()}, indent=2))


if __name__ == "__main__":
  _cli.run(main)
