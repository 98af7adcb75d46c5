"""Training checkpoints: one self-checking msgpack file per epoch.

A checkpoint holds everything a resumed run needs to continue exactly where
the interrupted one stopped: the variables, the optimiser state (moments and
step count, hence the learning rate), the epoch and step reached, the
data-order state and the metrics history, plus a fingerprint of the model
and training config so that a workdir is never resumed by a different run.

File layout: a msgpack map ``{"format", "sha256", "payload"}`` whose payload
is itself Flax msgpack; the SHA-256 of the payload catches truncated and
corrupt files (a bit flip inside an array would otherwise load silently).
Nothing is unpickled: loading never runs code from the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jaxdef import _files
from jaxdef.models import _io

FORMAT = "jaxdef.train.checkpoint/1"
BEST_NAME = "best.msgpack"
HISTORY_NAME = "history.json"
_EPOCH_FILE = re.compile(r"^epoch_(\d{3,})\.msgpack$")


class CorruptCheckpointError(ValueError):
  """A checkpoint file that is truncated, corrupt or not a checkpoint at all."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """The contents of one checkpoint file.

  Attributes:
    path: the file it was read from.
    epoch: epochs completed (1-based; the file is ``epoch_{epoch:03d}.msgpack``).
    step: optimiser updates completed.
    variables: {"params", "batch_stats", ...} as `jax.Array`s.
    opt_state: the optax state when read with a template, else its state dict.
    history: one metrics dict per completed epoch.
    fingerprint: the model and config the run was started with.
    data_order: how the per-epoch data order is drawn (seed and generator).
  """

  path: pathlib.Path
  epoch: int
  step: int
  variables: dict
  opt_state: Any
  history: list
  fingerprint: dict
  data_order: dict


def epoch_path(workdir: str | os.PathLike, epoch: int) -> pathlib.Path:
  """The checkpoint file of `epoch` (1-based) in `workdir`: ``epoch_003.msgpack``."""
  return pathlib.Path(workdir) / f"epoch_{int(epoch):03d}.msgpack"


def list_checkpoints(workdir: str | os.PathLike) -> list[tuple[int, pathlib.Path]]:
  """(epoch, path) of every epoch checkpoint file in `workdir`, by epoch."""
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    return []
  found = []
  for path in workdir.iterdir():
    match = _EPOCH_FILE.match(path.name)
    if match and path.is_file():
      found.append((int(match.group(1)), path))
  return sorted(found)


write_bytes_atomic = _files.write_atomic
write_json = _files.write_json


def _numpy_tree(tree: Any) -> Any:
  return jax.tree.map(np.asarray, serialization.to_state_dict(tree))


def save_checkpoint(path: str | os.PathLike, *, variables: Mapping[str, Any], opt_state: Any,
                    epoch: int, step: int, history: list, fingerprint: Mapping[str, Any],
                    data_order: Mapping[str, Any]) -> None:
  """Writes one checkpoint file atomically (see the module docstring for the layout)."""
  payload = serialization.msgpack_serialize({
      "variables": _numpy_tree(dict(variables)),
      "opt_state": _numpy_tree(opt_state),
      "epoch": int(epoch),
      "step": int(step),
      "history": json.dumps(history, default=float),
      "fingerprint": json.dumps(fingerprint, sort_keys=True),
      "data_order": json.dumps(data_order, sort_keys=True),
  })
  outer = serialization.msgpack_serialize(
      {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload})
  write_bytes_atomic(path, outer)


def load_checkpoint(path: str | os.PathLike, *, opt_state_like: Any = None,
                    variables_like: Mapping[str, Any] | None = None) -> Checkpoint:
  """Reads a checkpoint written by `jaxdef.train.fit`.

  Args:
    path: an ``epoch_NNN.msgpack`` file.
    opt_state_like: optional optax state of the same optimiser (e.g.
      ``optimizer(...).init(params)``); given, `Checkpoint.opt_state` is
      restored into its structure, else it is the raw state dict.
    variables_like: optional template variables; the loaded ones must have
      the same keys and shapes.

  Returns:
    The `Checkpoint`.

  Raises:
    FileNotFoundError: no file at `path`.
    CorruptCheckpointError (a ValueError): the file is truncated, corrupt
      (checksum mismatch) or not a jaxdef training checkpoint.
    ValueError: the contents do not match the templates (keys listed).
  """
  path = pathlib.Path(path)
  data = path.read_bytes()
  try:
    outer = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several unrelated types on bad bytes
    raise CorruptCheckpointError(f"{path} is truncated or corrupt (not readable msgpack: "
                                 f"{type(e).__name__}: {e})") from e
  if not isinstance(outer, dict) or outer.get("format") != FORMAT:
    raise CorruptCheckpointError(f"{path} is not a jaxdef training checkpoint (format "
                                 f"{FORMAT!r} expected)")
  payload = outer.get("payload")
  if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != outer.get("sha256"):
    raise CorruptCheckpointError(f"{path} is corrupt: its contents do not match their SHA-256")
  try:
    state = serialization.msgpack_restore(payload)
    history = json.loads(state["history"])
    fingerprint = json.loads(state["fingerprint"])
    data_order = json.loads(state["data_order"])
    epoch, step = int(state["epoch"]), int(state["step"])
    raw_variables, raw_opt_state = state["variables"], state["opt_state"]
  except Exception as e:
    raise CorruptCheckpointError(f"{path} is corrupt: {type(e).__name__}: {e}") from e
  checkpoint = Checkpoint(path=path, epoch=epoch, step=step, variables=raw_variables,
                          opt_state=raw_opt_state, history=history, fingerprint=fingerprint,
                          data_order=data_order)
  return _restore(checkpoint, opt_state_like, variables_like)


def _restore(checkpoint: Checkpoint, opt_state_like: Any,
             variables_like: Mapping[str, Any] | None) -> Checkpoint:
  """Checks the raw trees against the templates and converts them to jax arrays."""
  path, opt_state = checkpoint.path, checkpoint.opt_state
  if variables_like is not None:
    problems = _io.tree_mismatches(variables_like, checkpoint.variables)
    if problems:
      raise ValueError(f"{path} does not match the model's variables: " + "; ".join(problems))
  if opt_state_like is not None:
    problems = _io.tree_mismatches({"opt": _numpy_tree(opt_state_like)}, {"opt": opt_state})
    if problems:
      raise ValueError(f"{path} holds the state of a different optimiser: " + "; ".join(problems))
    opt_state = serialization.from_state_dict(opt_state_like, opt_state)
  return dataclasses.replace(checkpoint, variables=jax.tree.map(jnp.asarray, checkpoint.variables),
                             opt_state=jax.tree.map(jnp.asarray, opt_state))


def _shorten(value: Any, limit: int = 120) -> str:
  text = json.dumps(value, sort_keys=True, default=str)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """One line per config entry that differs between a checkpoint and the current run."""
  return [f"{key}: checkpoint {_shorten(saved.get(key))}, now {_shorten(current.get(key))}"
          for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def latest_checkpoint(workdir: str | os.PathLike, *, fingerprint: Mapping[str, Any],
                      opt_state_like: Any, variables_like: Mapping[str, Any]
                      ) -> Checkpoint | None:
  """The newest readable checkpoint of `workdir` for the run described by `fingerprint`.

  A truncated or corrupt file is reported by name (a `UserWarning`) and
  skipped in favour of the previous epoch's.

  Returns:
    The `Checkpoint`, or None when `workdir` holds no readable checkpoint.

  Raises:
    ValueError: the newest readable checkpoint belongs to a different model
      or config (the differences are listed, with how to start fresh).
  """
  found = list_checkpoints(workdir)
  current = json.loads(json.dumps(fingerprint, sort_keys=True))
  for _, path in reversed(found):
    try:
      checkpoint = load_checkpoint(path)  # raw trees: the fingerprint decides first
    except CorruptCheckpointError as e:
      warnings.warn(f"skipping unreadable checkpoint {path}: {e}; resuming from an earlier "
                    "epoch", stacklevel=3)
      continue
    differences = fingerprint_differences(checkpoint.fingerprint, current)
    if differences:
      names = ", ".join(p.name for _, p in found)
      raise ValueError(
          f"workdir {workdir} holds checkpoints of a different model or training config "
          f"({path.name} differs in: " + "; ".join(differences) + "). To start fresh, pass "
          f"another workdir, or delete {names} (and {BEST_NAME}, {HISTORY_NAME}) from it.")
    return _restore(checkpoint, opt_state_like, variables_like)
  if found:
    warnings.warn(f"no readable checkpoint in {workdir} ({len(found)} unreadable); training "
                  "from the start", stacklevel=3)
  return None


def prune_checkpoints(workdir: str | os.PathLike, keep: int | None) -> None:
  """Deletes all but the newest `keep` epoch checkpoints (None keeps all)."""
  if keep is None:
    return
  for _, path in list_checkpoints(workdir)[:-keep]:
    path.unlink(missing_ok=True)
