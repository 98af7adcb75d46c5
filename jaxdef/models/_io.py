"""Saving and loading model variables, and comparing variable trees.

Converted weights are saved once as Flax msgpack (no pickle: loading never
runs code) and loaded in a fraction of the conversion time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax import traverse_util

from jaxdef import _files

# Longest list of keys an error message spells out.
MAX_LISTED = 20


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """A nested dict as {"params/conv1/kernel": leaf, ...}."""
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def listing(keys: Any) -> str:
  """Up to MAX_LISTED sorted keys, comma-separated, with a count of the rest."""
  keys = sorted(keys)
  shown = ", ".join(keys[:MAX_LISTED])
  return shown + (f", ... ({len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else "")


def tree_mismatches(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
  """Differences in keys and shapes between two variable trees.

  Args:
    expected: the template (arrays or `jax.ShapeDtypeStruct` leaves).
    actual: the tree to check.

  Returns:
    One line each for missing keys, unexpected keys and wrong shapes; empty
    when the trees match.
  """
  want, got = flatten(expected), flatten(actual)
  problems = []
  missing = set(want) - set(got)
  unexpected = set(got) - set(want)
  if missing:
    problems.append(f"missing keys: {listing(missing)}")
  if unexpected:
    problems.append(f"unexpected keys: {listing(unexpected)}")
  shapes = [f"{k} (expected {tuple(want[k].shape)}, got {tuple(np.shape(got[k]))})"
            for k in sorted(set(want) & set(got))
            if tuple(want[k].shape) != tuple(np.shape(got[k]))]
  if shapes:
    problems.append(f"wrong shapes: {listing(shapes)}")
  return problems


def save_variables(path: str | os.PathLike, variables: Mapping[str, Any]) -> None:
  """Writes variables (a nested dict of arrays) as Flax msgpack, atomically.

  The bytes go to a temporary file in the same folder, which then replaces
  `path` in one step: a crash never leaves a half-written file at `path`.

  Args:
    path: the file to write (conventionally ``*.msgpack``).
    variables: e.g. {"params": ..., "batch_stats": ...}.
  """
  if not isinstance(variables, Mapping):
    raise TypeError(f"variables must be a dict of arrays, got {type(variables).__name__}")
  state = jax.tree.map(np.asarray, serialization.to_state_dict(dict(variables)))
  _files.write_atomic(path, serialization.msgpack_serialize(state))


def load_variables(path: str | os.PathLike, like: Mapping[str, Any] | None = None) -> dict:
  """Reads variables written by `save_variables`.

  Args:
    path: the msgpack file.
    like: optional template (e.g. the variables of a fresh model); the loaded
      tree must have the same keys and shapes.

  Returns:
    The nested dict of `jax.Array`s.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: the file is not a valid msgpack variables file, or does not
      match `like` (the message lists missing, unexpected and mis-shaped keys).
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    data = f.read()
  try:
    state = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several unrelated types on bad bytes
    raise ValueError(f"{path} is not a readable Flax msgpack variables file "
                     f"(truncated or corrupt?): {type(e).__name__}: {e}") from e
  if not isinstance(state, dict):
    raise ValueError(f"{path} does not hold a dict of variables, got {type(state).__name__}")
  if like is not None:
    problems = tree_mismatches(like, state)
    if problems:
      raise ValueError(f"{path} does not match the template: " + "; ".join(problems))
  return jax.tree.map(jnp.asarray, state)
