"""What a benchmark ran on, how fast that device can go, and XLA's FLOP counts.

Peaks are reported two ways on a CPU: a nominal one computed from lscpu
(cores x clock x FLOP per cycle from the SIMD flags, an assumption stated
in the output) and a measured large-matmul rate taken in the same run. On
a GPU the peak comes from a small table of datasheet figures chosen by
``jax.devices()[0].device_kind``.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense datasheet peaks in TFLOP/s (no structured sparsity). JAX's default
# matmul precision on NVIDIA GPUs since Ampere runs float32 convolutions and
# matmuls as TF32, so float32 rows are compared with both fp32 and tf32.
GPU_PEAKS_TFLOPS = {
    "H100 SXM": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0},
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},  # the H100 SXM chip, more memory
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
}

# Single-precision FLOP per cycle per core, assuming two FMA pipes (true of
# recent Intel server cores and AMD Zen 2-4; some AVX-512 parts have one).
_SIMD_FLOPS_PER_CYCLE = (
    ("avx512f", 64, "AVX-512: 2 FMA pipes x 16 float32 lanes x 2 FLOP"),
    ("fma", 32, "AVX2+FMA: 2 FMA pipes x 8 float32 lanes x 2 FLOP"),
    ("avx", 16, "AVX without FMA: 1 add + 1 multiply pipe x 8 float32 lanes"),
    ("sse2", 8, "SSE2: 1 add + 1 multiply pipe x 4 float32 lanes"),
)


def gpu_peak(device_kind: str) -> tuple[str, dict[str, float]] | None:
  """(table entry, {"fp32", "tf32", "bf16"} TFLOP/s) of a GPU, or None when unknown.

  Args:
    device_kind: ``jax.devices()[0].device_kind``, e.g. "NVIDIA H100 80GB HBM3".
  """
  kind = device_kind.lower()
  if "h200" in kind:
    return "H200", GPU_PEAKS_TFLOPS["H200"]
  if "h100" in kind:
    entry = "H100 PCIe" if "pcie" in kind else "H100 SXM"
    return entry, GPU_PEAKS_TFLOPS[entry]
  if "a100" in kind:
    return "A100", GPU_PEAKS_TFLOPS["A100"]
  return None


def _lscpu() -> dict[str, str]:
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    return {}
  fields = {}
  for line in text.splitlines():
    name, _, value = line.partition(":")
    fields[name.strip()] = value.strip()
  return fields


def _cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
  try:
    text = open("/proc/cpuinfo").read()
  except OSError:
    return {}
  fields = {}
  for line in text.split("\n\n")[0].splitlines():
    name, _, value = line.partition(":")
    fields[name.strip()] = value.strip()
  return fields


def cpu_description() -> dict[str, Any]:
  """CPU model, physical cores, logical CPUs usable by this process, clock and SIMD flags."""
  lscpu, cpuinfo = _lscpu(), _cpuinfo()
  model = lscpu.get("Model name") or cpuinfo.get("model name") or platform.processor() or "unknown"
  try:
    cores = int(lscpu["Core(s) per socket"]) * int(lscpu.get("Socket(s)", "1"))
  except (KeyError, ValueError):
    cores = os.cpu_count() or 1
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  if lscpu.get("CPU max MHz"):
    mhz, source = float(lscpu["CPU max MHz"]), "lscpu 'CPU max MHz'"
  elif cpuinfo.get("cpu MHz"):
    # Virtual machines often hide the maximum clock: the current one is the best figure left.
    mhz, source = float(cpuinfo["cpu MHz"]), "/proc/cpuinfo 'cpu MHz' (no max clock reported)"
  else:
    mhz, source = float("nan"), "unknown"
  flags = set((lscpu.get("Flags") or cpuinfo.get("flags") or "").split())
  return {"cpu_model": model, "cpu_cores": cores, "cpu_logical_usable": int(usable or 1),
          "cpu_ghz": mhz / 1000, "cpu_ghz_source": source, "cpu_flags": flags}


def cpu_nominal_peak(cpu: dict[str, Any] | None = None) -> dict[str, Any]:
  """Nominal float32 peak of this CPU: cores x clock x FLOP/cycle, with its assumption."""
  cpu = cpu or cpu_description()
  found = [(per_cycle, why) for flag, per_cycle, why in _SIMD_FLOPS_PER_CYCLE
           if flag in cpu["cpu_flags"]]
  per_cycle, assumption = (found[0] if found else
                           (2, "no SIMD flags found: 1 add + 1 multiply per cycle"))
  cores = min(cpu["cpu_cores"], cpu["cpu_logical_usable"])
  gflops = cores * cpu["cpu_ghz"] * per_cycle
  return {"gflops": gflops, "cores": cores, "ghz": cpu["cpu_ghz"],
          "flops_per_cycle": per_cycle,
          "assumption": f"{cores} cores x {cpu['cpu_ghz']:.3g} GHz ({cpu['cpu_ghz_source']}) x "
                        f"{per_cycle} FLOP/cycle ({assumption})"}


def measured_matmul_gflops(size: int = 2048, dtype: Any = jnp.float32, repeats: int = 5
                           ) -> dict[str, Any]:
  """GFLOP/s of a jitted (size x size) @ (size x size) matmul on the default device.

  The median of `repeats` calls after a compiling call; 2 size^3 FLOPs each.
  """
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32).astype(dtype)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  return {"gflops": 2 * size**3 / seconds / 1e9, "size": size, "dtype": jnp.dtype(dtype).name,
          "seconds": seconds}


def first_cost(analysis: Any) -> dict[str, float]:
  """XLA's cost analysis as one dict: JAX versions return a dict, a list of dicts or None."""
  if analysis is None:
    return {}
  if isinstance(analysis, (list, tuple)):
    return dict(analysis[0]) if analysis and analysis[0] else {}
  return dict(analysis)


def xla_flops(fn: Callable[..., Any], *args: Any, compiled: bool = True) -> float | None:
  """FLOPs XLA counts for one call of ``jax.jit(fn)(*args)``, or None when it reports none.

  Args:
    fn: a traceable function.
    args: example arguments (arrays or ``jax.ShapeDtypeStruct``s).
    compiled: analyse the optimised (compiled) program, which is what runs;
      False analyses the lowered program before XLA's passes (no compilation,
      seconds instead of minutes for BaRT on a CPU).

  Loops (``lax.fori_loop``, ``lax.scan``, ``lax.map``) are counted once, not
  per iteration: analyse one step, not a whole attack.
  """
  lowered = jax.jit(fn).lower(*args)
  cost = first_cost(lowered.compile().cost_analysis() if compiled else lowered.cost_analysis())
  flops = cost.get("flops")
  return float(flops) if flops is not None and flops > 0 else None


def peaks_for(dtype_name: str, *, cpu_nominal_gflops: float | None = None,
              cpu_measured_gflops: float | None = None) -> dict[str, float]:
  """Peaks (GFLOP/s) a throughput of compute dtype `dtype_name` is compared with.

  Returns:
    label -> GFLOP/s: on a known GPU the datasheet figures for that dtype
    ("fp32" and "tf32" for float32, "bf16" for bfloat16); on a CPU the
    nominal and the measured matmul peak; {} on an unknown accelerator.
  """
  device = jax.devices()[0]
  if device.platform == "cpu":
    peaks = {}
    if cpu_nominal_gflops:
      peaks["cpu_nominal"] = cpu_nominal_gflops
    if cpu_measured_gflops:
      peaks["cpu_matmul_measured"] = cpu_measured_gflops
    return peaks
  found = gpu_peak(device.device_kind)
  if found is None:
    return {}
  _, table = found
  names = ("bf16",) if dtype_name == "bfloat16" else ("fp32", "tf32")
  return {f"gpu_{name}": 1000 * table[name] for name in names}


def _version(module_name: str) -> str | None:
  try:
    module = __import__(module_name)
  except Exception:  # any failure to import means "not available"
    return None
  return getattr(module, "__version__", "unknown")


def environment(torch_info: dict[str, Any] | None = None) -> dict[str, Any]:
  """What the numbers were measured on: date, device, versions, CPU and threads."""
  import flax
  import jaxlib

  device = jax.devices()[0]
  cpu = cpu_description()
  env = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
      "numpy": np.__version__,
      "python": platform.python_version(),
      "machine": platform.machine(),
      "cpu_model": cpu["cpu_model"],
      "cpu_cores": cpu["cpu_cores"],
      "cpu_logical_usable": cpu["cpu_logical_usable"],
      "cpu_ghz": cpu["cpu_ghz"],
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # PyTorch's OpenMP threads spin while waiting (ACTIVE, the default): fast on
      # an idle machine, many times slower when another process shares the cores.
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (ACTIVE spinning)"),
      "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
  }
  gpu = gpu_peak(device.device_kind) if device.platform != "cpu" else None
  if gpu is not None:
    env["gpu_peak_entry"], env["gpu_peak_tflops"] = gpu
  env.update(torch_info or {})
  return env


def compute_dtype_name(dtype: Any) -> str:
  """'float32' or 'bfloat16' from a dtype or its name."""
  name = jnp.dtype(dtype).name
  if not re.fullmatch(r"float32|bfloat16", name):
    raise ValueError(f"dtype must be float32 or bfloat16, got {name}")
  return name
