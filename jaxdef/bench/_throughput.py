"""Throughput of jaxdef's attack steps and votes, compilation excluded.

Every measurement calls the public API (`jaxdef.attacks.pgd`,
`StochasticClassifier.predict`) as a user would: the first call compiles and
runs, later calls with fresh keys are timed. The compile time reported is
the first call minus the median steady call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxdef import attacks
from jaxdef.attacks import _eot
from jaxdef.attacks import _losses
from jaxdef.bench import _device
from jaxdef.classifier import StochasticClassifier


def time_calls(call: Callable[[int], Any], *, repeats: int = 3, budget_s: float = 20.0,
               sync: Callable[[Any], Any] = jax.block_until_ready) -> dict[str, Any]:
  """Times ``call(i)`` for i = 1, 2, ... after a first, compiling ``call(0)``.

  Stops after `repeats` timed calls, or earlier once the timed calls add up
  to `budget_s` (always at least one), so a slow configuration costs
  bounded time.

  Args:
    call: runs one measured unit of work; the integer seeds its randomness.
    repeats: most timed calls.
    budget_s: seconds of timed calls after which no further call starts.
    sync: waits for the call's result (device work is asynchronous).

  Returns:
    {"seconds": median of the timed calls, "timed_calls", "first_call_s",
    "compile_s": first_call_s - seconds, floored at 0}.
  """
  start = time.perf_counter()
  sync(call(0))
  first = time.perf_counter() - start
  times = []
  for i in range(1, max(int(repeats), 1) + 1):
    start = time.perf_counter()
    sync(call(i))
    times.append(time.perf_counter() - start)
    if sum(times) >= budget_s:
      break
  seconds = float(np.median(times))
  return {"seconds": seconds, "timed_calls": len(times), "first_call_s": first,
          "compile_s": max(first - seconds, 0.0)}


def gradient_flops(clf: StochasticClassifier, images: jax.Array, labels: jax.Array, *,
                   compiled: bool = True) -> float | None:
  """XLA's FLOPs per image-gradient: one EOT-1 gradient of the batch, divided by B.

  The defense, the forward and the backward pass of one draw are counted
  (the attack's update and projection are negligible). An EOT-m step costs
  m times this: the m draws are a vmapped batch of m x B.
  """
  objective = lambda logits: _losses.objective(logits, labels, "ce", False)
  step = lambda key, x: _eot.eot_value_and_grad(clf, key, x, objective, 1)[1]
  flops = _device.xla_flops(step, jax.random.key(0), images, compiled=compiled)
  return None if flops is None else flops / images.shape[0]


def forward_flops(clf: StochasticClassifier, images: jax.Array, *, compiled: bool = True
                  ) -> float | None:
  """XLA's FLOPs per defended forward pass (defense draw + logits), per image."""
  flops = _device.xla_flops(clf.logits, jax.random.key(0), images, compiled=compiled)
  return None if flops is None else flops / images.shape[0]


def pgd_row(clf: StochasticClassifier, images: jax.Array, labels: jax.Array, *, eot: int,
            steps: int, eps: float = 8 / 255, repeats: int = 3, budget_s: float = 20.0,
            eot_chunk_size: int | None = None) -> dict[str, Any]:
  """Image-gradients per second of `jaxdef.attacks.pgd` with EOT-m.

  Args:
    clf: the defended classifier.
    images: float (B, H, W, C) in [0, 1].
    labels: int (B,).
    eot: m, draws per image per step.
    steps: PGD steps per timed call.
    eps: L-inf budget; the step is eps / 4.
    repeats, budget_s: see `time_calls`.
    eot_chunk_size: EOT draws evaluated at once (None: all m).

  Returns:
    A row: kind "pgd", batch, steps, eot, eot_chunk (draws at once), timing
    fields and ``image_gradients_per_second`` = B x steps x m / seconds.
  """
  chunk = _eot.as_chunk_size(eot_chunk_size, eot)
  run = lambda seed: attacks.pgd(jax.random.key(seed), clf, images, labels, eps=eps,
                                 alpha=eps / 4, steps=steps, eot=eot, eot_chunk_size=chunk)
  timing = time_calls(run, repeats=repeats, budget_s=budget_s)
  gradients = images.shape[0] * steps * eot
  return {"kind": "pgd", "batch": int(images.shape[0]), "steps": int(steps), "eot": int(eot),
          "eot_chunk": chunk or int(eot), **timing,
          "image_gradients_per_second": gradients / timing["seconds"]}


def vote_row(clf: StochasticClassifier, images: jax.Array, *, votes: int, repeats: int = 3,
             budget_s: float = 20.0) -> dict[str, Any]:
  """Defended forward passes per second of a `votes`-draw majority vote (`predict`).

  Draws are evaluated `clf.vote_chunk_size` at a time (row "vote_chunk").
  """
  run = lambda seed: clf.predict(jax.random.key(seed), images, n=votes)
  timing = time_calls(run, repeats=repeats, budget_s=budget_s)
  return {"kind": "vote", "batch": int(images.shape[0]), "votes": int(votes),
          "vote_chunk": int(clf.vote_chunk_size), **timing,
          "forward_passes_per_second": images.shape[0] * votes / timing["seconds"]}


def add_peak_fractions(row: dict[str, Any], flops_per_item: float | None,
                       peaks_gflops: dict[str, float]) -> dict[str, Any]:
  """Adds achieved GFLOP/s and its fraction of each peak to a pgd or vote row.

  Args:
    row: with ``image_gradients_per_second`` or ``forward_passes_per_second``.
    flops_per_item: FLOPs per image-gradient (pgd) or per forward pass (vote).
    peaks_gflops: label -> peak GFLOP/s (see `_device.peaks_for`).
  """
  rate = row.get("image_gradients_per_second", row.get("forward_passes_per_second"))
  key = "flops_per_image_gradient" if row["kind"] == "pgd" else "flops_per_forward"
  row[key] = flops_per_item
  if flops_per_item is None or rate is None:
    return row
  achieved = rate * flops_per_item / 1e9
  row["achieved_gflops"] = achieved
  for label, peak in peaks_gflops.items():
    row[f"fraction_of_{label}"] = achieved / peak
  return row
