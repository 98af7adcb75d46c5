"""The test processes' compile settings (tests/optimization.py)."""

import os

import jax
import jax.numpy as jnp
import optimization
import pytest
from jax._src import compiler

from jaxdef import defenses
from jaxdef.transforms import _filters


def _suits(fn, *args) -> bool:
  return optimization.suits_elemental_emitters(jax.jit(fn).lower(*args).compiler_ir())


def test_median_networks_keep_the_fusion_emitters():
  # The elemental emitters copy a network's shared values into every consumer:
  # a 13 x 13 median ran out of memory with them.
  image = jnp.zeros((28, 28, 1))
  key = jax.random.key(0)
  for size in (5, 7, 13):
    assert not _suits(lambda x, size=size: _filters.median_blur(x, size), image), size
  for name in ("median_blur", "bart"):
    defense = defenses.get(name)
    assert not _suits(lambda x, defense=defense: defense(key, x), image[None]), name


def test_small_programs_suit_the_elemental_emitters():
  image = jnp.zeros((2, 28, 28, 1))
  key = jax.random.key(0)
  for name in ("randomized_smoothing", "noise", "random_crop"):
    defense = defenses.get(name)
    assert _suits(lambda x, defense=defense: defense(key, x), image), name
  assert _suits(lambda x: _filters.median_blur(x, 3), image[0])


@pytest.mark.skipif(not hasattr(compiler, "compile_or_get_cached")
                    or os.environ.get(optimization.ELEMENTAL_ENV, "1") == "0",
                    reason="no compile_or_get_cached to wrap in this JAX, or the switch is off")
def test_the_switch_is_installed_and_off_inside_fusion_emitters():
  assert getattr(compiler.compile_or_get_cached, "_jaxdef_tests", False)
  assert optimization._ELEMENTAL_EMITTERS["on"]
  with optimization.fusion_emitters():
    assert not optimization._ELEMENTAL_EMITTERS["on"]
  assert optimization._ELEMENTAL_EMITTERS["on"]
