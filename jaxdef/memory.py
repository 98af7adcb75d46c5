"""How many model rows one compiled call may evaluate, per platform.

A row is one image through the model once (one EOT draw of one attacked
image, one vote draw of one image). Attacks, votes, invariance and the
sanity check chunk their draws so that one call sees at most a number of
rows (`rows_per_call`), because the memory a call needs grows with its rows:

* On a CPU a few hundred rows per call use the caches best (BENCHMARKS.md:
  a 640-row EOT-10 step of the 16-32-64 small ResNet ran 1.3x faster in
  64-row chunks), so "auto" is `CPU_ROWS_PER_CALL` there.
* On an accelerator "auto" fills a fraction of the device's memory: the
  bytes one row needs come from XLA's `memory_analysis` of the model's
  compiled gradient (or forward pass) at two batch sizes (`row_bytes`).

The same estimate backs ``launch.run --dry_run``, which states the largest
program of a config for a stated device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

AUTO = "auto"
# Rows per call on a CPU (the default and k x m configs' measured choice).
CPU_ROWS_PER_CALL = 256
# Share of an accelerator's memory that one call's rows may fill: the rest
# holds the weights, the batch, XLA's own buffers and fragmentation.
DEVICE_MEMORY_FRACTION = 0.5
# Batch sizes whose compiled programs give the per-row slope.
_PROBE_BATCHES = (2, 4)


@dataclasses.dataclass(frozen=True)
class RowCost:
  """Bytes of device memory per model row, and the part that does not grow with rows."""
  per_row: int
  fixed: int

  def bytes_for(self, rows: int) -> int:
    """Estimated peak bytes of one call of `rows` rows."""
    return self.fixed + self.per_row * int(rows)


def _program_bytes(fn: Any, variables: Any, batch: int, image_shape: tuple[int, ...],
                   dtype: Any) -> int:
  images = jax.ShapeDtypeStruct((batch, *image_shape), dtype)
  compiled = jax.jit(fn).lower(variables, images).compile()
  analysis = compiled.memory_analysis()
  return int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
             + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)


def row_cost(apply_fn: Any, variables: Any, image_shape: tuple[int, ...], *,
             gradient: bool) -> RowCost:
  """Per-row memory of ``apply_fn(variables, images) -> logits``, from XLA.

  Args:
    apply_fn: pure function of (variables, float32 images (B, *image_shape)).
    variables: the weights, or their `jax.ShapeDtypeStruct`s (nothing is run).
    image_shape: (H, W, C).
    gradient: True for an attack step (value and input gradient of the
      summed logits: activations kept for the backward pass), False for a
      vote (forward only).

  Returns:
    A `RowCost` from the compiled programs at two batch sizes on this
    process's default backend.
  """
  if gradient:
    fn = lambda v, x: jax.grad(lambda images: apply_fn(v, images).sum())(x)
  else:
    fn = apply_fn
  small, large = (_program_bytes(fn, variables, b, tuple(image_shape), jnp.float32)
                  for b in _PROBE_BATCHES)
  per_row = max(1, -(-(large - small) // (_PROBE_BATCHES[1] - _PROBE_BATCHES[0])))
  return RowCost(per_row=per_row, fixed=max(0, small - per_row * _PROBE_BATCHES[0]))


def device_memory_bytes(device: Any = None) -> int | None:
  """The memory XLA may allocate on `device` (default: the first local one);
  None on a CPU, whose memory is the host's."""
  device = device or jax.local_devices()[0]
  if device.platform == "cpu":
    return None
  stats = device.memory_stats() or {}
  limit = stats.get("bytes_limit")
  return int(limit) if limit else None


def rows_per_call(setting: Any, cost: RowCost | None = None, *, on_cpu: int | None,
                  memory_bytes: int | None = None, platform: str | None = None,
                  name: str = "rows_per_call") -> int | None:
  """A rows-per-call setting resolved to a number (None: no limit).

  Args:
    setting: "auto", 0 or None (no limit), or an int >= 1 (kept).
    cost: the model's `RowCost`, or a function returning it (called only
      when "auto" needs it: on an accelerator or a stated memory).
    on_cpu: what "auto" means on a CPU: `CPU_ROWS_PER_CALL` for attack
      steps; None (no limit) for votes, whose draws `vote_chunk_size` chunks.
    memory_bytes: the device memory to fill; None: `device_memory_bytes()`.
      Given on a CPU, it states a device (``--dry_run``).
    platform: "cpu", "gpu", ...; None: JAX's default backend.
    name: the setting's name, for errors.

  Returns:
    On a CPU, "auto" is `on_cpu`. On an accelerator (or a stated memory) it
    is the rows whose estimated peak fills `DEVICE_MEMORY_FRACTION` of the
    memory, at least 1.

  Raises:
    ValueError: an unknown setting, or "auto" on an accelerator without a
      cost or a known memory size.
  """
  if setting is None or (isinstance(setting, (int, np.integer)) and not isinstance(setting, bool)
                         and setting == 0):
    return None
  if isinstance(setting, (int, np.integer)) and not isinstance(setting, bool) and setting > 0:
    return int(setting)
  if setting != AUTO:
    raise ValueError(f"{name} must be 'auto', 0 (no limit) or an integer >= 1, got {setting!r}")
  if (platform or jax.default_backend()) == "cpu" and memory_bytes is None:
    return on_cpu
  memory_bytes = memory_bytes if memory_bytes is not None else device_memory_bytes()
  if callable(cost):
    cost = cost()
  if memory_bytes is None or cost is None:
    raise ValueError(f"{name}='auto' on an accelerator needs the model's row cost and the "
                     "device's memory; give an integer instead")
  return max(1, int((DEVICE_MEMORY_FRACTION * memory_bytes - cost.fixed) // cost.per_row))


_ROW_COSTS: dict[Any, RowCost] = {}


def cached_row_cost(key: Any, build: Any, image_shape: tuple[int, ...], *,
                    gradient: bool) -> RowCost:
  """`row_cost` remembered under a hashable `key` (say, the model's config
  entry) for this process; `build()` returns (apply_fn, variables) and runs
  only on a miss (compiling ResNet-50's gradient takes seconds)."""
  full_key = (key, tuple(image_shape), bool(gradient), jax.default_backend())
  if full_key not in _ROW_COSTS:
    apply_fn, variables = build()
    _ROW_COSTS[full_key] = row_cost(apply_fn, variables, image_shape, gradient=gradient)
  return _ROW_COSTS[full_key]
