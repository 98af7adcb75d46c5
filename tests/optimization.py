"""How much XLA optimizes the programs the tests compile.

Most tests compile many small programs and run each briefly, so on a CPU
most of their time is XLA's optimization (LLVM above all), not the run: the
suite compiles with JAX's `jax_disable_most_optimizations` (LLVM at -O0, the
flag JAX provides for such smoke tests). Measured on the 2-core Intel Xeon,
2026-12-05: `JAX_DISABLE_MOST_OPTIMIZATIONS=<0|1> python -m launch.run
--config=configs/lack_of_randomness.py:tiny --compilation_cache=off` took
74.0 s with full optimization and 47.9 s without (the same counts in every
cell); the whole suite (`pytest -n 2 tests`) 1282 s and 950 s.

Tests whose assertions hold only for the programs users run (exact pinned
counts, results on a float rounding boundary, long step-by-step references
whose branches an ulp can flip) and tests that mostly run rather than compile
use the default optimization: the `full_optimization` marker, or the context
manager of the same name around a module-scoped fixture's work.

`JAX_DISABLE_MOST_OPTIMIZATIONS=0 pytest ...` runs the whole suite as users
run it. Subprocesses the tests start inherit the setting through the
environment.
"""

from __future__ import annotations

import contextlib
import os

import jax

FLAG = "jax_disable_most_optimizations"
ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"
_TRUE = ("1", "true", "yes", "on")


def compile_quickly_unless_told_otherwise() -> None:
  """Turns most optimizations off for this process and its children, unless $ENV says."""
  os.environ.setdefault(ENV, "1")
  jax.config.update(FLAG, os.environ[ENV].strip().lower() in _TRUE)


@contextlib.contextmanager
def full_optimization():
  """XLA's default optimization inside; programs compiled before are dropped first.

  The in-memory compilation caches do not key on the flag, so a program
  compiled quickly by an earlier test would otherwise be reused here. (The
  persistent cache keys on it.)
  """
  before = jax.config.values[FLAG]
  if before:
    jax.clear_caches()
  jax.config.update(FLAG, False)
  try:
    yield
  finally:
    jax.config.update(FLAG, before)
