"""Data parallelism over the local devices, and multi-host initialisation.

Batches of images are split along a mesh axis named ``"data"`` over the
devices of this process: `put_batch` pads a batch to a multiple of the device
count (repeating its last image) and places it with
``NamedSharding(mesh, PartitionSpec("data"))``; keys and scalars are
replicated (`put_replicated`); the jitted attack or vote that receives them
is partitioned by XLA from those input shardings, and `unpad` drops the
padding rows from its outputs. Every image's computation is independent of
the others, and random draws of shape (B', ...) agree with those of shape
(B, ...) on their first B rows (``jax_threefry_partitionable``, on by default
in this JAX), so padding and sharding do not change the numbers of the real
images: the CPU test checks bit-identity with the one-device run.

Which devices (the setting):

* ``"auto"`` (the default): all of ``jax.local_devices()`` when there are
  two or more; with one device nothing is placed or padded (plain arrays, no
  overhead).
* ``"off"``: never shard (every array stays where it is).
* an int n: the first n local devices.
* a sequence of `jax.Device`: exactly those (local, distinct).

Set it for the process with `set_devices`, or for a block with the context
manager `use_devices`::

  jaxdef.sharding.set_devices("off")
  with jaxdef.sharding.use_devices(2):
    result = jaxdef.attacks.pgd_result(...)

Multi-host runs call `initialize_distributed` before any other JAX call;
each process then shards over its own local devices (launch/slurm_sweep.sh,
BUILD.md "Multi-host runs").
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

AXIS = "data"
AUTO = "auto"
OFF = "off"

_setting: Any = AUTO


def _check_setting(devices: Any) -> Any:
  """Validates a device setting; returns it normalised (a str, int or tuple)."""
  allowed = ("'auto', 'off', a number of local devices, or a sequence of local jax.Device "
             "objects")
  if isinstance(devices, str):
    if devices not in (AUTO, OFF):
      raise ValueError(f"devices must be {allowed}; got the string {devices!r}")
    return devices
  if isinstance(devices, bool) or devices is None:
    raise TypeError(f"devices must be {allowed}; got {devices!r}")
  local = jax.local_devices()
  if isinstance(devices, (int, np.integer)):
    if not 1 <= int(devices) <= len(local):
      raise ValueError(f"devices={int(devices)} asks for more local devices than exist or fewer "
                       f"than one: this process has {len(local)} ({local[0].platform}); "
                       f"allowed: 1 to {len(local)}")
    return int(devices)
  if not isinstance(devices, Sequence) and not isinstance(devices, np.ndarray):
    raise TypeError(f"devices must be {allowed}; got {type(devices).__name__}")
  devices = tuple(devices)
  if not devices:
    raise ValueError(f"devices must not be an empty sequence; allowed: {allowed}")
  for device in devices:
    if not isinstance(device, jax.Device):
      raise TypeError(f"devices must be a sequence of jax.Device objects (e.g. from "
                      f"jax.local_devices()), got an element of type {type(device).__name__}")
    if device not in local:
      raise ValueError(f"device {device} is not a local device of this process; local "
                       f"devices: {local}")
  if len(set(devices)) != len(devices):
    raise ValueError(f"devices must be distinct, got {list(devices)}")
  return devices


def set_devices(devices: Any = AUTO) -> None:
  """Chooses the devices that batches are sharded over, for the whole process.

  Args:
    devices: ``"auto"`` (all local devices when there are >= 2, else none),
      ``"off"`` (never shard), an int n (the first n local devices) or a
      sequence of local `jax.Device` objects. Ints and sequences are checked
      against ``jax.local_devices()`` (which starts the backend).

  Raises:
    ValueError, TypeError: an unknown string, n outside [1, local device
      count], a device that is not local, duplicates.
  """
  global _setting
  _setting = _check_setting(devices)


def get_devices() -> Any:
  """The current setting (``"auto"``, ``"off"``, an int or a tuple of devices)."""
  return _setting


@contextlib.contextmanager
def use_devices(devices: Any) -> Iterator[None]:
  """Context manager: `set_devices(devices)` inside the block, restored after.

  The setting is one per process (not per thread): do not switch it in one
  thread while another runs an attack.

  Example::

    with jaxdef.sharding.use_devices("off"):
      reference = clf.predict(key, images)   # one device, plain arrays
  """
  global _setting
  previous = _setting
  _setting = _check_setting(devices)
  try:
    yield
  finally:
    _setting = previous


def active_devices() -> tuple[jax.Device, ...] | None:
  """The devices batches are sharded over now, or None when sharding is off.

  ``"auto"`` gives all local devices when there are two or more, else None.
  """
  if _setting == OFF:
    return None
  local = jax.local_devices()
  if _setting == AUTO:
    return tuple(local) if len(local) > 1 else None
  if isinstance(_setting, int):
    return tuple(local[:_setting])
  return _setting


@functools.lru_cache(maxsize=16)
def _mesh(devices: tuple[jax.Device, ...]) -> Mesh:
  return Mesh(np.asarray(devices, dtype=object), (AXIS,))


def data_mesh() -> Mesh | None:
  """The one-axis mesh ("data",) over `active_devices()`, or None when off."""
  devices = active_devices()
  return None if devices is None else _mesh(devices)


def put_batch(*arrays: Any) -> tuple[tuple[jax.Array, ...], int]:
  """Pads batch-leading arrays to a multiple of the device count and shards them.

  Padding repeats each array's last row (the last image, its label), so
  padded rows are valid inputs; drop their results with `unpad`.

  Args:
    *arrays: arrays sharing the leading (batch) dimension B >= 1.

  Returns:
    ``(placed, B)``: the arrays, each of leading size B' = B rounded up to a
    multiple of the device count and placed with
    ``NamedSharding(mesh, PartitionSpec("data"))``; unchanged when sharding
    is off.
  """
  if not arrays:
    raise ValueError("put_batch needs at least one array")
  batch = int(np.shape(arrays[0])[0])
  for x in arrays[1:]:
    if np.shape(x)[:1] != (batch,):
      raise ValueError(f"put_batch: arrays must share the leading (batch) size {batch}, got "
                       f"shape {tuple(np.shape(x))}")
  mesh = data_mesh()
  # Under a caller's jit (tracers) placement is the caller's business.
  if mesh is None or any(isinstance(x, jax.core.Tracer) for x in arrays):
    return tuple(arrays), batch
  pad = -batch % mesh.size
  sharding = NamedSharding(mesh, PartitionSpec(AXIS))
  placed = []
  for x in arrays:
    x = jnp.asarray(x)
    if pad:
      x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
    placed.append(jax.device_put(x, sharding))
  return tuple(placed), batch


def put_replicated(*arrays: Any) -> tuple[Any, ...]:
  """Places arrays or pytrees of them (keys, scalars, a classifier's weights) whole on
  every active device; unchanged when off."""
  mesh = data_mesh()
  if mesh is None or any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(arrays)):
    return tuple(arrays)
  return tuple(jax.device_put(x, NamedSharding(mesh, PartitionSpec())) for x in arrays)


def unpad(x: jax.Array, batch: int, axis: int = 0) -> jax.Array:
  """The first `batch` entries of `x` along `axis` (drops `put_batch` padding)."""
  if x.shape[axis] == batch:
    return x
  return jax.lax.slice_in_dim(x, 0, batch, axis=axis)


def map_rows(fn: Any, *args: Any, in_axes: Sequence[int | None], out_axes: Any = 0) -> Any:
  """fn(*args), each device computing it on its own rows (`jax.shard_map`).

  Why: under `jax.vmap` (EOT draws, vote chunks, batched step sizes) XLA
  merges the mapped axis into the batch ahead of it, (m, B) -> m B, which
  cannot keep the batch's sharding: it all-gathers the activations and every
  device computes every row. Inside `shard_map` the same vmap merges each
  device's (m, B / N) rows only. `fn` must treat rows independently (an
  eval-mode network does), so the values are those of one device.

  Args:
    fn: the function; it sees B / N rows along every sharded axis.
    *args: its arguments (arrays or pytrees of them).
    in_axes: per argument, the axis of the batch (sharded over the data
      axis) or None (replicated: keys, weights, scalars).
    out_axes: a pytree prefix of fn's outputs: the batch axis of each output,
      whose shards are concatenated, or None (the output must be the same on
      every device).

  Returns:
    fn's outputs. Unsharded (a plain call) when sharding is off, inside a
    `shard_map` already, or when some batch is not a multiple of the device
    count (`put_batch` pads it to one).
  """
  mesh = data_mesh()
  if mesh is None or mesh.size == 1 or _inside_manual_axes():
    return fn(*args)
  for arg, axis in zip(args, in_axes):
    if axis is not None and any(np.shape(leaf)[axis] % mesh.size
                                for leaf in jax.tree_util.tree_leaves(arg)):
      return fn(*args)
  spec = lambda axis: PartitionSpec() if axis is None else PartitionSpec(*[None] * axis, AXIS)
  in_specs = tuple(spec(axis) for axis in in_axes)
  out_specs = jax.tree_util.tree_map(spec, out_axes, is_leaf=lambda a: a is None)
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       check_vma=False)(*args)


def _inside_manual_axes() -> bool:
  """True inside a `shard_map` over the data axis (nothing left to split)."""
  try:
    return AXIS in jax.sharding.get_abstract_mesh().manual_axes
  except AttributeError:
    return False


# --- multi-host --------------------------------------------------------------

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID")


def _check_address(address: Any) -> str:
  if not isinstance(address, str) or not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", address):
    raise ValueError(f"coordinator_address must be 'host:port' (e.g. 'node001:61234'), got "
                     f"{address!r}")
  port = int(address.rsplit(":", 1)[1])
  if not 1 <= port <= 65535:
    raise ValueError(f"coordinator_address port must be in [1, 65535], got {port} in "
                     f"{address!r}")
  return address


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an integer, got {value!r}")
  if value < low or (high is not None and value > high):
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"{name} must be {bound}, got {value}")
  return int(value)


def first_slurm_host(node_list: str) -> str:
  """The first host name of a SLURM node list ("gpu[003-004,9],cpu1" -> "gpu003")."""
  match = re.fullmatch(r"([^,\[\]]+)(?:\[([^\],\-]+)[^\]]*\])?(?:,.*)?", node_list.strip())
  if not match:
    raise ValueError(f"cannot read the first host of the SLURM node list {node_list!r}")
  return match.group(1) + (match.group(2) or "")


def slurm_arguments(environ: Any = None) -> dict[str, Any] | None:
  """`initialize_distributed` arguments from SLURM's variables, None outside SLURM.

  num_processes = SLURM_NTASKS, process_id = SLURM_PROCID, the coordinator is
  the first host of SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST) on port
  JAX_COORDINATOR_PORT or, as in JAX, 61440 + SLURM_JOB_ID mod 4096;
  JAX_COORDINATOR_ADDRESS overrides the whole address.
  """
  environ = os.environ if environ is None else environ
  if not all(name in environ for name in _SLURM_VARS):
    return None
  node_list = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
  address = environ.get("JAX_COORDINATOR_ADDRESS")
  if address is None:
    if not node_list:
      raise ValueError("SLURM run without SLURM_STEP_NODELIST or SLURM_JOB_NODELIST: cannot "
                       "find the coordinator host; set JAX_COORDINATOR_ADDRESS=host:port")
    port = environ.get("JAX_COORDINATOR_PORT") or str(
        61440 + int(environ["SLURM_JOB_ID"]) % 4096)
    address = f"{first_slurm_host(node_list)}:{port}"
  try:
    num_processes, process_id = int(environ["SLURM_NTASKS"]), int(environ["SLURM_PROCID"])
  except ValueError:
    raise ValueError(f"SLURM_NTASKS and SLURM_PROCID must be integers, got "
                     f"{environ['SLURM_NTASKS']!r} and {environ['SLURM_PROCID']!r}") from None
  return {"coordinator_address": address, "num_processes": num_processes,
          "process_id": process_id}


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None, *,
                           local_device_ids: Sequence[int] | None = None,
                           timeout_s: int = 300) -> dict[str, Any]:
  """Joins this process to a multi-host JAX run (`jax.distributed.initialize`).

  Call it first, before any other JAX call. Give all three of
  coordinator_address, num_processes and process_id, or none: then they come
  from SLURM (`slurm_arguments`; one task per host). Every process keeps all
  of its local devices (JAX's own SLURM detection would restrict each
  process to one GPU) unless `local_device_ids` (or the environment variable
  JAX_LOCAL_DEVICE_IDS) says otherwise, and shards its batches over them.

  Args:
    coordinator_address: "host:port" of process 0, reachable from all.
    num_processes: processes in the run, >= 1.
    process_id: this process, in [0, num_processes).
    local_device_ids: restrict this process to these local accelerator ids.
    timeout_s: seconds to wait for all processes to connect, >= 1.

  Returns:
    The arguments used: {"coordinator_address", "num_processes", "process_id"}.

  Raises:
    ValueError, TypeError: some but not all of the three given, bad values,
      or none given outside SLURM.
    RuntimeError: JAX already started its backend, or initialised twice.
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  missing = [name for name, value in given.items() if value is None]
  if len(missing) == 3:
    given = slurm_arguments()
    if given is None:
      raise ValueError("initialize_distributed: not inside a SLURM job (SLURM_JOB_ID, "
                       "SLURM_NTASKS and SLURM_PROCID unset); pass coordinator_address="
                       "'host:port', num_processes and process_id")
  elif missing:
    raise ValueError(f"initialize_distributed: give coordinator_address, num_processes and "
                     f"process_id together, or none of them (inside SLURM); missing: "
                     f"{', '.join(missing)}")
  _check_address(given["coordinator_address"])
  _check_int(given["num_processes"], "num_processes", 1)
  _check_int(given["process_id"], "process_id", 0, given["num_processes"] - 1)
  _check_int(timeout_s, "timeout_s", 1)
  if local_device_ids is not None:
    local_device_ids = [_check_int(i, "local_device_ids[]", 0) for i in local_device_ids]
    if not local_device_ids:
      raise ValueError("local_device_ids must not be empty (None keeps all local devices)")
  if jax.distributed.is_initialized():
    raise RuntimeError("initialize_distributed: jax.distributed is already initialized in this "
                       "process; call it once")
  try:
    jax.distributed.initialize(
        given["coordinator_address"], int(given["num_processes"]), int(given["process_id"]),
        local_device_ids=local_device_ids, cluster_detection_method="deactivate",
        initialization_timeout=int(timeout_s))
  except RuntimeError as error:
    raise RuntimeError(f"initialize_distributed: {error} (call it once per process, before any "
                       "other JAX call)") from error
  return {k: given[k] for k in ("coordinator_address", "num_processes", "process_id")}
