"""Shared fixtures: a small classifier trained on the embedded Fashion-MNIST."""

from __future__ import annotations

import ctypes.util
import dataclasses
import math
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimization
import pytest

from jaxdef import compile_cache
from jaxdef import data

optimization.compile_quickly_unless_told_otherwise()

# The pytest-xdist workers and every subprocess the tests start run with
# tcmalloc when it is installed (`launch/setup.sh` installs it): XLA, which
# takes most of the suite's time compiling, allocates heavily and compiles
# 10-25% faster with it than with glibc's malloc (BENCHMARKS.md,
# 2026-12-06). Set here, in the controller, before the workers start; the
# results do not depend on the allocator (the exact pins of
# test_regression_default hold either way).
TCMALLOC = ctypes.util.find_library("tcmalloc_minimal")
if TCMALLOC and TCMALLOC not in os.environ.get("LD_PRELOAD", ""):
  os.environ["LD_PRELOAD"] = " ".join(filter(None, [os.environ.get("LD_PRELOAD"), TCMALLOC]))

# The test processes (pytest-xdist workers) and the `launch.run` subprocesses
# share one persistent compilation cache for the session, never the user's
# own: they compile many of the same attacks and votes. The process that makes
# the folder (the pytest controller) removes it when the session ends.
_SESSION_CACHE = None
if compile_cache.ENV not in os.environ:
  _SESSION_CACHE = tempfile.mkdtemp(prefix="jaxdef-test-xla-")
  os.environ[compile_cache.ENV] = _SESSION_CACHE
compile_cache.enable()


def pytest_unconfigure(config):
  del config  # unused
  if _SESSION_CACHE is not None:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


# The modules holding the suite's longest fixtures and tests (a minute or more
# each, `--durations` of a full run): collected first, so that pytest-xdist's
# workers start them early and the many short tests even out the end of the
# run instead of one worker finishing a long fixture alone.
LONGEST_FIRST = ("test_reproduction", "test_regression_default", "test_lack_of_randomness",
                 "test_defenses", "test_experiments", "test_launch", "test_sharding",
                 "test_readme")


def pytest_collection_modifyitems(config, items):
  del config  # unused
  rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
  # A stable sort: each module's tests stay together and in their order.
  items.sort(key=lambda item: rank.get(getattr(item.module, "__name__", ""), len(rank)))


@pytest.fixture(autouse=True)
def _optimization_the_test_asks_for(request):
  """Tests marked `full_optimization` compile as users' programs do, `fusion_emitters`
  with XLA's fusion emitters at -O0 (see optimization.py)."""
  if request.node.get_closest_marker("full_optimization") is not None:
    with optimization.full_optimization():
      yield
  elif request.node.get_closest_marker("fusion_emitters") is not None:
    with optimization.fusion_emitters():
      yield
  else:
    yield


@pytest.fixture(autouse=True)
def _release_compiled_programs_near_the_mapping_cap():
  """A worker runs hundreds of tests in one process; see compile_cache.release_if_crowded."""
  yield
  compile_cache.release_if_crowded()


def check_rate(record: dict) -> None:
  """A success record's count, denominator, rate and 95% interval are consistent."""
  assert 0 <= record["successes"] <= record["denominator"] <= record["num_images"]
  if record["denominator"]:
    assert record["rate"] == pytest.approx(record["successes"] / record["denominator"])
    assert record["ci_low"] <= record["rate"] <= record["ci_high"]
  else:
    assert math.isnan(record["rate"])
  assert 0 <= record["ci_low"] <= record["ci_high"] <= 1


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  logits_fn: object  # images (B, 28, 28, 1) in [0, 1] -> logits (B, 10)
  params: dict
  test_images: np.ndarray  # float32 (N, 28, 28, 1)
  test_labels: np.ndarray  # int32 (N,)
  test_accuracy: float


def _mlp_logits(params, images):
  hidden = jnp.reshape(images, (images.shape[0], -1)) - 0.5
  for weight, bias in params[:-1]:
    hidden = jax.nn.relu(hidden @ weight + bias)
  weight, bias = params[-1]
  return hidden @ weight + bias


def train_mlp(seed: int = 0, epochs: int = 3, hidden: int = 256) -> TrainedModel:
  """A 784-256-256-10 MLP, Adam, a few epochs: about 85% test accuracy in seconds."""
  train_x, train_y = data.load_fashion_mnist("train")
  test_x, test_y = data.load_fashion_mnist("test")
  key = jax.random.key(seed)
  sizes = [28 * 28, hidden, hidden, 10]
  params = []
  for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    key, sub = jax.random.split(key)
    params.append((jax.random.normal(sub, (fan_in, fan_out)) * np.sqrt(2 / fan_in),
                   jnp.zeros(fan_out)))
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def update(params, opt_state, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(_mlp_logits(p, x), y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(seed)
  batch = 256
  for _ in range(epochs):
    order = rng.permutation(len(train_x))
    for start in range(0, len(order) - batch + 1, batch):
      idx = order[start:start + batch]
      params, opt_state = update(params, opt_state, train_x[idx], train_y[idx])
  logits_fn = jax.jit(lambda images: _mlp_logits(params, images))
  accuracy = float(np.mean(np.argmax(logits_fn(test_x), -1) == test_y))
  return TrainedModel(logits_fn, params, test_x, test_y, accuracy)


@pytest.fixture(scope="session")
def fashion_mlp() -> TrainedModel:
  """Trained once per test process (a few seconds on two cores)."""
  return train_mlp()
