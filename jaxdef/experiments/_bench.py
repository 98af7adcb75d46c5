"""Throughput measurements: attack steps and votes, in image-evaluations per second."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from jaxdef import attacks
from jaxdef.classifier import StochasticClassifier


def _timed(fn, repeats: int) -> float:
  """Median wall time of `repeats` calls after one warm-up (compilation) call."""
  jax.block_until_ready(fn(0))
  times = []
  for i in range(1, repeats + 1):
    start = time.perf_counter()
    jax.block_until_ready(fn(i))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def pgd_throughput(clf: StochasticClassifier, images, labels, *, eot: int, steps: int = 10,
                   eps: float = 8 / 255, repeats: int = 3, eot_chunk_size: int | None = None
                   ) -> dict[str, Any]:
  """Image-gradients per second of PGD with EOT-m (m per image per step).

  Compilation is excluded: the first call compiles, the median of `repeats`
  further calls (fresh keys) is timed.
  """
  run = lambda seed: attacks.pgd(jax.random.key(seed), clf, images, labels, eps=eps,
                                 alpha=eps / 4, steps=steps, eot=eot,
                                 eot_chunk_size=eot_chunk_size)
  seconds = _timed(run, repeats)
  gradients = images.shape[0] * steps * eot
  return {"kind": "pgd", "batch": int(images.shape[0]), "steps": steps, "eot": eot,
          "seconds": seconds, "image_gradients_per_second": gradients / seconds}


def vote_throughput(clf: StochasticClassifier, images, *, votes: int = 500, repeats: int = 3
                    ) -> dict[str, Any]:
  """Defended forward passes per second of a `votes`-draw majority vote."""
  seconds = _timed(lambda seed: clf.predict(jax.random.key(seed), images, n=votes), repeats)
  return {"kind": "vote", "batch": int(images.shape[0]), "votes": votes, "seconds": seconds,
          "forward_passes_per_second": images.shape[0] * votes / seconds}
