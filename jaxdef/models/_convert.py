"""Converting PyTorch weights: torchvision ResNets and Cohen et al.'s checkpoints.

Conversion is a renaming plus layout changes, checked against the Flax
model's own parameter tree: every Flax leaf must find its PyTorch tensor with
the right shape, and every PyTorch tensor must be used. Any mismatch fails
with the full list, never a silently half-loaded model.

Files are read with ``torch.load(weights_only=True)`` (torch is imported only
then), which unpickles tensors and plain containers but refuses any other
object, so a checkpoint cannot run code on load; ``.safetensors`` files are
read by a small NumPy reader of that format (no torch needed).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef.models import _io
from jaxdef.models import _resnet

COHEN_ARCHS = ("resnet50", "cifar_resnet20", "cifar_resnet110")

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
# Flax leaf name -> PyTorch parameter or buffer name.
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a .safetensors file: u64 header size, JSON header, raw tensor bytes."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or 8 + size > len(data):
      raise ValueError(f"header of {size} bytes does not fit in {len(data)} bytes")
    header = json.loads(data[8:8 + size])
    body = memoryview(data)[8 + size:]
    out = {}
    for name, info in header.items():
      if name == "__metadata__":
        continue
      begin, end = info["data_offsets"]
      if not 0 <= begin <= end <= len(body):
        raise ValueError(f"tensor {name!r} lies outside the file")
      dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
      out[name] = np.frombuffer(body[begin:end], dtype).reshape(info["shape"]).copy()
    return out
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path} is not a readable .safetensors file (truncated or corrupt?): "
                     f"{e}") from e


def _read_torch(path: str) -> Any:
  try:
    import torch
  except ImportError:
    raise ImportError(f"reading {path} needs PyTorch (pip install torch); or pass the "
                      "state_dict as a dict of NumPy arrays, or use a .safetensors file") from None
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    # weights_only=True stopped at an object that is not a tensor or plain
    # container: unpickling it could run arbitrary code.
    raise ValueError(
        f"refused to load {path}: the file contains pickled code/objects other than tensors "
        "and plain containers, and was refused for safety (torch.load weights_only=True). "
        "Re-save a trusted checkpoint's state_dict with torch.save(model.state_dict(), ...)."
        + _unpickler_detail(e)) from e
  except (RuntimeError, EOFError, OSError, ValueError) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise ValueError(f"could not read {path} (truncated or corrupt?): "
                     f"{type(e).__name__}: {e}") from e


def _unpickler_detail(error: Exception) -> str:
  """The line of torch's message that names the refused global, if any."""
  for line in str(error).splitlines():
    if "Unsupported global" in line or "WeightsUnpickler error" in line:
      return " Details: " + re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
  return ""


def read_checkpoint(source: Any) -> Any:
  """The object in a checkpoint file, or `source` itself when not a path."""
  if not isinstance(source, (str, os.PathLike)):
    return source
  path = os.fspath(source)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint file at {path}")
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  return _read_torch(path)


def _to_numpy(value: Any, name: str) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no NumPy twin in torch
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    return value.numpy()
  if isinstance(value, (np.ndarray, jax.Array, np.generic, int, float)):
    return np.asarray(value)
  raise TypeError(f"state_dict[{name!r}] must be a tensor or array, got {type(value).__name__}")


def _state_dict(source: Any, what: str) -> dict[str, np.ndarray]:
  """A flat {name: NumPy array} from a path, state_dict or checkpoint dict."""
  obj = read_checkpoint(source)
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise TypeError(f"{what} must be a state_dict (a dict of tensors or arrays) or a path to "
                    f"one, got {type(obj).__name__}")
  return {str(k): _to_numpy(v, str(k)) for k, v in obj.items()
          if not str(k).endswith("num_batches_tracked")}


def _torch_name(flax_path: tuple[str, ...]) -> str:
  """("params", "layer1_0", "downsample_conv", "kernel") -> "layer1.0.downsample.0.weight"."""
  modules = [_MODULE_NAMES.get(m, re.sub(r"^(layer\d+)_(\d+)$", r"\1.\2", m))
             for m in flax_path[1:-1]]
  return ".".join([*modules, _LEAF_NAMES[flax_path[-1]]])


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:  # linear (out, in) -> (in, out)
    return value.T
  return value


def _looks_like(state: Mapping[str, Any]) -> str:
  """Which ResNet the keys of a state_dict describe, e.g. "ResNet-18"."""
  blocks = {}
  for key in state:
    match = re.match(r"layer(\d+)\.(\d+)\.", key)
    if match:
      stage, index = int(match[1]), int(match[2])
      blocks[stage] = max(blocks.get(stage, 0), index + 1)
  stages = tuple(blocks[s] for s in sorted(blocks))
  kind = "bottleneck" if any(".conv3." in k for k in state) else "basic"
  for depth, (block, sizes) in _resnet.IMAGENET_DEPTHS.items():
    if (block, sizes) == (kind, stages):
      return f"ResNet-{depth} (depth={depth})"
  if kind == "basic" and len(stages) == 3 and len(set(stages)) == 1:
    return f"a CIFAR ResNet-{6 * stages[0] + 2}"
  return f"no known ResNet ({kind} blocks per stage {stages})" if stages else "no ResNet"


def convert(state: Mapping[str, np.ndarray], model: Any, input_channels: int,
            label: str) -> dict:
  """Maps a flat PyTorch state_dict onto `model`'s variable tree, strictly.

  Args:
    state: {torch name: NumPy array}, num_batches_tracked already dropped.
    model: the Flax ResNet the weights are for.
    input_channels: C of the model's input.
    label: what the model is called in error messages ("ResNet-50").

  Returns:
    {"params": ..., "batch_stats": ...} of float32 `jax.Array`s.
  """
  rngs = {"params": jax.random.key(0), "sap": jax.random.key(0)}
  x = jax.ShapeDtypeStruct((1, 32, 32, input_channels), jnp.float32)
  template = jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)
  leaves = {tuple(k.split("/")): v for k, v in _io.flatten(template).items()}
  flat, missing, shapes, used = {}, [], [], set()
  for path, spec in leaves.items():
    name = _torch_name(path)
    if name not in state:
      missing.append(name)
      continue
    used.add(name)
    value = _to_flax_layout(state[name])
    if value.shape != tuple(spec.shape):
      shapes.append(f"{name} (expected {_torch_shape(spec.shape)}, got {state[name].shape})")
      continue
    flat[path] = jnp.asarray(value, spec.dtype)
  unexpected = set(state) - used
  if missing or unexpected or shapes:
    problems = []
    if missing:
      problems.append(f"missing keys: {_io.listing(missing)}")
    if unexpected:
      problems.append(f"unexpected keys: {_io.listing(unexpected)}")
    if shapes:
      problems.append(f"wrong shapes: {_io.listing(shapes)}")
    raise ValueError(f"state_dict does not fit {label}; its keys look like {_looks_like(state)}. "
                     + "; ".join(problems))
  nested: dict = {}
  for path, value in flat.items():
    node = nested
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return nested


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """A Flax shape in PyTorch's layout, for error messages."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape)) if len(shape) == 2 else tuple(shape)


def from_torchvision(state_dict_or_path: Any, depth: int = 50) -> dict:
  """Converts a torchvision ResNet state_dict to Flax variables.

  The class count comes from ``fc.weight`` (a replaced fc of any size
  works); build the matching model with ``resnet(depth, num_classes)``.
  A ``"module."`` prefix (DataParallel) is stripped; a checkpoint dict with
  a "state_dict" entry is unwrapped.

  Args:
    state_dict_or_path: a state_dict (torch tensors or NumPy arrays), or a
      path to a ``.pth``/``.pt`` file (needs torch) or a ``.safetensors`` file.
    depth: 18, 34, 50, 101 or 152.

  Returns:
    {"params": ..., "batch_stats": ...} for `jaxdef.models.resnet(depth, ...)`.

  Raises:
    ValueError: the keys or shapes do not fit (all mismatches are listed,
      with the depth the keys look like), or the file was refused (pickled
      objects) or is corrupt.
  """
  if depth not in _resnet.IMAGENET_DEPTHS:
    raise ValueError(f"depth must be one of {sorted(_resnet.IMAGENET_DEPTHS)}, got {depth!r}")
  state = _state_dict(state_dict_or_path, "state_dict_or_path")
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return _convert_imagenet(state, depth)


def _convert_imagenet(state: dict[str, np.ndarray], depth: int) -> dict:
  label = f"ResNet-{depth}"
  if "fc.weight" not in state or "conv1.weight" not in state:
    raise ValueError(f"state_dict does not fit {label}: missing keys: "
                     f"{_io.listing({'fc.weight', 'conv1.weight'} - set(state))} "
                     f"(its keys look like {_looks_like(state)})")
  num_classes, channels = state["fc.weight"].shape[0], state["conv1.weight"].shape[1]
  block, stages = _resnet.IMAGENET_DEPTHS[depth]
  model = _resnet.ResNet(stage_sizes=stages, block=block, num_classes=int(num_classes))
  return convert(state, model, int(channels), label)


def from_cohen_checkpoint(path_or_dict: Any, arch: str | None = None) -> dict:
  """Converts a randomized-smoothing checkpoint of Cohen et al. (2019).

  Their checkpoints are ``{"arch": ..., "state_dict": ...}`` of
  ``Sequential(NormalizeLayer, network)``: parameter names start with
  ``"1.module."`` (ImageNet ResNet-50, in DataParallel) or ``"1."`` (CIFAR
  ResNets). The NormalizeLayer holds no tensors; its constants are the
  defaults of `resnet` and `cifar_resnet`, which normalise inside.

  Args:
    path_or_dict: the checkpoint dict or its state_dict, or a path.
    arch: "resnet50" | "cifar_resnet110" | "cifar_resnet20" (any
      "cifar_resnet<6n+2>"); None reads the checkpoint's "arch" entry.

  Returns:
    Variables for ``resnet(50)`` or ``cifar_resnet(depth)``.
  """
  checkpoint = read_checkpoint(path_or_dict)
  if arch is None:
    arch = checkpoint.get("arch") if isinstance(checkpoint, Mapping) else None
    if arch is None:
      raise ValueError(f"arch must be given (one of {COHEN_ARCHS}): the checkpoint has no "
                       "'arch' entry")
  cifar = re.fullmatch(r"cifar_resnet(\d+)", str(arch))
  if arch != "resnet50" and not (cifar and (int(cifar[1]) - 2) % 6 == 0 and int(cifar[1]) >= 8):
    raise ValueError(f"arch must be one of {COHEN_ARCHS} (or cifar_resnet<6n+2>), got {arch!r}")
  state = _state_dict(checkpoint, "path_or_dict")
  stripped = {}
  for key, value in state.items():
    for prefix in ("1.module.", "1."):
      if key.startswith(prefix):
        stripped[key[len(prefix):]] = value
        break
    else:
      if not key.startswith("0."):  # index 0 is the NormalizeLayer
        stripped[key] = value
  if arch == "resnet50":
    return _convert_imagenet(stripped, 50)
  depth = int(cifar[1])
  if "fc.weight" not in stripped:
    raise ValueError(f"state_dict does not fit {arch}: missing keys: fc.weight")
  n = (depth - 2) // 6
  model = _resnet.ResNet(stage_sizes=(n, n, n), block="basic",
                         num_classes=int(stripped["fc.weight"].shape[0]), widths=(16, 32, 64),
                         stem="cifar")
  return convert(stripped, model, 3, f"CIFAR ResNet-{depth} ({arch})")
