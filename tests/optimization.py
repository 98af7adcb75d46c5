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

With most optimizations off, XLA's CPU backend still spends most of a
small program's compile in its MLIR fusion emitters (a `perf` profile of a
sanity check on the tiny ResNet behind randomized smoothing: 28% of the
process in `xla::cpu::FusionCompiler`, against 10% in LLVM). Its older
elemental emitters (`xla_cpu_use_fusion_emitters=false`) compile the same
program in about half the time, but copy a shared value into every consumer
of a fused chain: on the median blur's selection networks (thousands of
chained min/max/select ops) that outgrows the machine's memory (with the
older emitters for every program, `pytest tests/test_transforms_filters.py
tests/test_defenses.py` was killed at 24 GB; a static 13 x 13 median of a
5 x 4 x 2 image alone ran past a 12 GB limit). So while most optimizations
are off, this process compiles a program with the older emitters when it
holds at most `ELEMENTAL_EMITTER_MAX_SELECTIONS` min/max/select/compare
ops, and with the fusion emitters otherwise
(`_compile_small_programs_with_elemental_emitters`).
The two emitters can round differently in the last bit: tests whose
results sit on a rounding boundary at -O0 (an interpolation coordinate on
the image's edge) keep the fusion emitters, the `fusion_emitters` marker
or context manager; subprocesses that must match the test process bit for
bit call `compile_quickly_unless_told_otherwise` too.
Measured on the AMD EPYC, 2 cores, 2026-12-06, back to back (`pytest -q
-p no:cacheprovider tests/test_lack_of_randomness.py tests/test_audit.py`):
151.9 s with the fusion emitters throughout, 120.3 s with the switch
(BENCHMARKS.md has the whole suite).

`JAX_DISABLE_MOST_OPTIMIZATIONS=0 pytest ...` runs the whole suite as users
run it; `JAXDEF_TEST_ELEMENTAL_EMITTERS=0` keeps the fusion emitters
throughout. Subprocesses the tests start inherit the setting through the
environment (the emitter choice stays in the test processes).
"""

from __future__ import annotations

import contextlib
import os
import re

import jax

FLAG = "jax_disable_most_optimizations"
ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"
# "0" keeps XLA's fusion emitters for every program (to compare, or to rule
# the emitters out when a test fails).
ELEMENTAL_ENV = "JAXDEF_TEST_ELEMENTAL_EMITTERS"
_TRUE = ("1", "true", "yes", "on")

# Above this many selection ops a program keeps the fusion emitters. Counted
# in lowered programs of 28 x 28 images: a static 3 x 3 median 58, 5 x 5
# 315, 7 x 7 891, 13 x 13 5,484; the median blur defense 12,009 and BaRT-6
# 12,106; BaRT-1 108, the noise defense 106, randomized smoothing 2, the
# small ResNet's input gradient 19.
ELEMENTAL_EMITTER_MAX_SELECTIONS = 200
_SELECTION_OP = re.compile(r"stablehlo\.(?:minimum|maximum|select|compare)\b")
_ELEMENTAL_EMITTERS = {"on": True}  # off inside `fusion_emitters()`


def compile_quickly_unless_told_otherwise() -> None:
  """Turns most optimizations off for this process and its children, unless $ENV says."""
  os.environ.setdefault(ENV, "1")
  jax.config.update(FLAG, os.environ[ENV].strip().lower() in _TRUE)
  if os.environ.get(ELEMENTAL_ENV, "1").strip().lower() in _TRUE:
    _compile_small_programs_with_elemental_emitters()


def suits_elemental_emitters(computation) -> bool:
  """Whether a lowered program (an MLIR module) has few enough selection ops for them."""
  text = computation.operation.get_asm(large_elements_limit=16)
  return len(_SELECTION_OP.findall(text)) <= ELEMENTAL_EMITTER_MAX_SELECTIONS


def _compile_small_programs_with_elemental_emitters() -> None:
  """While FLAG is on, CPU programs with few selection ops compile with XLA's elemental emitters.

  Wraps JAX's one entry to the XLA compiler (`jax._src.compiler.
  compile_or_get_cached`); the persistent cache keys on the compile options,
  so the two kinds of program never mix. Does nothing if that private entry
  is missing (another JAX version): the tests then only compile slower.
  """
  from jax._src import compiler

  compile_or_get_cached = getattr(compiler, "compile_or_get_cached", None)
  if compile_or_get_cached is None or getattr(compile_or_get_cached, "_jaxdef_tests", False):
    return

  def compile_small_ones_elementally(backend, computation, devices, compile_options, *args,
                                     **kwargs):
    if (jax.config.values[FLAG] and _ELEMENTAL_EMITTERS["on"] and backend.platform == "cpu"
        and suits_elemental_emitters(computation)):
      compile_options.env_option_overrides = [
          *compile_options.env_option_overrides, ("xla_cpu_use_fusion_emitters", False)]
    return compile_or_get_cached(backend, computation, devices, compile_options, *args,
                                 **kwargs)

  compile_small_ones_elementally._jaxdef_tests = True
  compiler.compile_or_get_cached = compile_small_ones_elementally


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


@contextlib.contextmanager
def fusion_emitters():
  """Most optimizations still off, but every program inside keeps XLA's fusion emitters.

  Programs compiled before are dropped first, as in `full_optimization`.
  """
  before = _ELEMENTAL_EMITTERS["on"]
  if before:
    jax.clear_caches()
  _ELEMENTAL_EMITTERS["on"] = False
  try:
    yield
  finally:
    _ELEMENTAL_EMITTERS["on"] = before
