"""BaRT's cost against the cost of its transforms: image-draws per second, RGB.

For each (side, batch) size, every transform of BaRT alone (its registered
defense) and BaRT-kappa for kappa = 1..6 (per-image order, the default) draw
the batch once per call, jit-compiled; the compilation is timed apart.
``ratio`` is BaRT-kappa's seconds per image-draw over the sum of its kappa
transforms' seconds per image-draw: 1 means BaRT costs exactly its
transforms, kappa would mean every transform ran at every position (what a
vmapped `lax.switch` does).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxdef import defenses

# The comparison sizes of issue 14 and the study's images: Fashion-MNIST and
# CIFAR-like 28 x 28, reduced ImageNette 64 x 64, ImageNet 224 x 224.
SIZES = ((28, 16), (64, 16), (224, 4))
KAPPAS = (1, 2, 3, 4, 5, 6)


def _rate(defense: defenses.Defense, side: int, batch: int, min_calls: int,
          budget_s: float) -> dict[str, Any]:
  """Mean image-draws per second over calls with fresh keys, after a compiling call.

  A mean, not a median: a call's cost is itself random (the noise kind, the
  median kernel size and BaRT's transforms are drawn per image), and the
  rate of a long run is total images over total time.
  """
  images = jax.random.uniform(jax.random.key(1), (batch, side, side, 3))
  draw = jax.jit(defense.fn)
  start = time.perf_counter()
  jax.block_until_ready(draw(jax.random.key(0), images))
  first = time.perf_counter() - start
  calls, total = 0, 0.0
  while calls < min_calls or total < budget_s:
    start = time.perf_counter()
    jax.block_until_ready(draw(jax.random.key(calls + 1), images))
    total += time.perf_counter() - start
    calls += 1
  seconds = total / calls
  return {"draws_per_second": batch / seconds, "seconds_per_draw": seconds / batch,
          "compile_s": max(first - seconds, 0.0), "timed_calls": calls}


def measure(sizes=SIZES, kappas=KAPPAS, *, min_calls: int = 5, budget_s: float = 5.0,
            log: Callable[[str], None] = print) -> dict[str, Any]:
  """Draws/s of each BaRT transform and of BaRT-kappa at each size.

  Each rate is timed over at least `min_calls` calls and `budget_s` seconds.

  Returns:
    {"sizes": [{"side", "batch", "transforms": {name: rate}, "bart": {kappa:
    rate with "ratio"}}], ...}; a rate is `_rate`'s dict.
  """
  transforms = defenses.BART_TRANSFORMS  # BaRT-kappa below is built from these very ones
  names = [name for name, _ in transforms]
  results = []
  for side, batch in sizes:
    alone = {}
    for name in names:
      alone[name] = _rate(defenses.get(name), side, batch, min_calls, budget_s)
      log(f"bart rates {side}x{side} (batch {batch}): {name} "
          f"{alone[name]['draws_per_second']:,.0f} draws/s")
    bart = {}
    for kappa in kappas:
      row = _rate(defenses.bart(kappa=kappa, transforms=transforms), side, batch, min_calls,
                  budget_s)
      parts = sum(alone[name]["seconds_per_draw"] for name in names[:kappa])
      row["ratio"] = row["seconds_per_draw"] / parts
      bart[kappa] = row
      log(f"bart rates {side}x{side} (batch {batch}): BaRT-{kappa} "
          f"{row['draws_per_second']:,.1f} draws/s, {row['ratio']:.2f}x its transforms "
          f"(compile {row['compile_s']:.1f} s)")
    results.append({"side": side, "batch": batch, "transforms": alone, "bart": bart})
  return {"sizes": results, "transforms": names,
          "what": "image-draws per second (mean over calls), one draw of an RGB batch per "
                  "call, jit-compiled, compilation excluded; ratio = BaRT-kappa seconds per "
                  "image-draw / sum of its kappa transforms' (per-image order)"}


def markdown(rates: dict[str, Any]) -> str:
  """Two tables: each transform's draws/s, and BaRT-kappa's with its ratio."""
  sizes = rates["sizes"]
  heads = [f"{s['side']}x{s['side']} (batch {s['batch']})" for s in sizes]
  lines = ["| transform | " + " | ".join(heads) + " |",
           "|---|" + "---|" * len(heads)]
  for name in rates["transforms"]:
    cells = [f"{s['transforms'][name]['draws_per_second']:,.0f}" for s in sizes]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "| BaRT-kappa | " + " | ".join(f"{h}: draws/s, ratio" for h in heads) + " |",
            "|---|" + "---|" * len(heads)]
  kappas = sorted({int(k) for s in sizes for k in s["bart"]})
  for kappa in kappas:
    cells = []
    for s in sizes:
      row = s["bart"].get(kappa, s["bart"].get(str(kappa)))
      cells.append("-" if row is None else
                   f"{row['draws_per_second']:,.1f}, {row['ratio']:.2f}")
    lines.append(f"| {kappa} | " + " | ".join(cells) + " |")
  compile_s = [row["compile_s"] for s in sizes for row in s["bart"].values()]
  lines += ["", f"{rates['what']}. BaRT compile times: {np.min(compile_s):.1f} to "
                f"{np.max(compile_s):.1f} s."]
  return "\n".join(lines)
