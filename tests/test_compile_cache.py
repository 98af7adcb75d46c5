"""The persistent compilation cache: a second process loads what the first compiled."""

import os
import subprocess
import sys
import textwrap

import conftest
import jax
import jax.numpy as jnp
import pytest

from jaxdef import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Compiles one small program with the cache in argv[1]; prints the cache hits.
CHILD = textwrap.dedent("""
    import sys
    import jax
    import jax.numpy as jnp
    from jaxdef import compile_cache
    compile_cache.MIN_COMPILE_SECONDS = 0.0  # cache even this quick compilation
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
    assert str(compile_cache.enable(sys.argv[1])) == sys.argv[1]
    value = jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8)))
    print(len(hits), float(value.sum()))
""")


def _child(directory):
  result = subprocess.run([sys.executable, "-c", CHILD, str(directory)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=True)
  hits, value = result.stdout.split()
  return int(hits), float(value)


def test_a_second_process_loads_the_compiled_program(tmp_path):
  first_hits, first = _child(tmp_path)
  assert first_hits == 0 and any(tmp_path.iterdir())
  second_hits, second = _child(tmp_path)
  assert second_hits >= 1 and second == first


def test_off_and_bad_folders(tmp_path, monkeypatch):
  before = jax.config.jax_compilation_cache_dir
  assert compile_cache.enable("off") is None
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.enable() is None
  assert jax.config.jax_compilation_cache_dir == before
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(ValueError, match="compilation cache folder .*file/cache cannot be created"):
    compile_cache.enable(blocker / "cache")
  if os.geteuid() != 0:  # root writes anywhere
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="is not writable"):
      compile_cache.enable(locked)
  assert jax.config.jax_compilation_cache_dir == before


@pytest.mark.skipif(compile_cache.memory_mappings() is None, reason="no /proc mapping counts")
def test_release_drops_the_kernels_mappings():
  def compile_some():
    for width in range(20, 40):
      program = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0) * jnp.sin(x).mean())
      program(jnp.ones((8, width))).block_until_ready()

  assert not compile_cache.release_if_crowded(fraction=1.0)  # far below the cap
  compile_cache.release()
  base, limit = compile_cache.memory_mappings()
  assert limit > base > 0
  compile_some()
  crowded, _ = compile_cache.memory_mappings()
  assert crowded > base + 20  # each compiled program maps its own areas
  assert compile_cache.release_if_crowded(fraction=0.0)
  released, _ = compile_cache.memory_mappings()
  assert released < crowded - 20


@pytest.mark.skipif(not conftest.TCMALLOC, reason="tcmalloc is not installed "
                    "(launch/setup.sh installs libtcmalloc-minimal4 where it can)")
def test_the_tests_subprocesses_compile_with_tcmalloc():
  """conftest.py preloads tcmalloc into every process the suite starts (faster compiles)."""
  maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                        capture_output=True, text=True, timeout=60, check=True).stdout
  assert "libtcmalloc_minimal" in maps
