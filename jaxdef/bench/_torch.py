"""The PyTorch side of the benchmark: same architectures, same weights, same defense.

What a user would run instead of jaxdef: the model in PyTorch, randomized
smoothing as a ``torch.nn.Module`` (``x + sigma * randn_like(x)``, no
clipping, exactly `jaxdef.defenses.randomized_smoothing`'s default), and
torchattacks' ``EOTPGD`` (a Python loop of m forward/backward passes per
step). Votes draw their noise in chunks of draws stacked into one batch
under ``torch.inference_mode``.

torch, torchvision and torchattacks are an optional extra
(requirements-bench.txt): nothing here imports them at module import, and
`availability` says which are missing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import types
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from jaxdef.models import _convert

BENCH_PACKAGES = ("torch", "torchvision", "torchattacks")
REQUIREMENTS_FILE = "requirements-bench.txt"
# Logits of the torch and the Flax model must agree to this fraction of
# their largest magnitude (the weight-conversion tests use the same bound).
PARITY_TOLERANCE = 1e-4


def availability() -> dict[str, str | None]:
  """Package -> its version, or None when importing it fails."""
  found = {}
  for name in BENCH_PACKAGES:
    try:
      found[name] = getattr(importlib.import_module(name), "__version__", "unknown")
    except Exception:  # a broken install counts as missing, whatever it raises
      found[name] = None
  return found


def missing_message(found: dict[str, str | None]) -> str | None:
  """A one-line explanation of what is missing and how to install it, or None."""
  missing = [name for name in BENCH_PACKAGES if found.get(name) is None]
  if not missing:
    return None
  return (f"PyTorch comparison: missing package(s) {', '.join(missing)}; install the benchmark "
          f"extra with `.venv/bin/pip install -r {REQUIREMENTS_FILE}`")


@functools.cache
def _modules() -> types.SimpleNamespace:
  """torch and the module classes built on it (defined on first use only)."""
  import torch
  from torch import nn
  from torch.nn import functional

  class BasicBlock(nn.Module):
    """jaxdef's `BasicBlock`: two 3x3 convs with BN, 1x1 conv + BN shortcut on a change."""

    def __init__(self, in_channels: int, features: int, stride: int):
      super().__init__()
      self.conv1 = nn.Conv2d(in_channels, features, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(features)
      self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(features)
      self.downsample = None
      if stride != 1 or in_channels != features:
        self.downsample = nn.Sequential(nn.Conv2d(in_channels, features, 1, stride, bias=False),
                                        nn.BatchNorm2d(features))

    def forward(self, x):
      out = functional.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      shortcut = x if self.downsample is None else self.downsample(x)
      return functional.relu(out + shortcut)

  class SmallResNet(nn.Module):
    """`jaxdef.models.small_resnet` in PyTorch: the same layers under torchvision's names.

    NCHW inputs in [0, 1]; normalisation inside, as in jaxdef. Its
    state_dict converts with `jaxdef.models._convert.convert`.
    """

    def __init__(self, widths: Sequence[int], blocks_per_stage: int = 1, num_classes: int = 10,
                 in_channels: int = 1, mean: Sequence[float] = (0.5,),
                 std: Sequence[float] = (1.0,)):
      super().__init__()
      widths = tuple(int(w) for w in widths)
      self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
      self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
      self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(widths[0])
      channels = widths[0]
      for stage, width in enumerate(widths):
        blocks = []
        for index in range(blocks_per_stage):
          stride = 2 if stage > 0 and index == 0 else 1
          blocks.append(BasicBlock(channels, width, stride))
          channels = width
        setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
      self.num_stages = len(widths)
      self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
      x = functional.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
      for stage in range(self.num_stages):
        x = getattr(self, f"layer{stage + 1}")(x)
      return self.fc(x.mean(dim=(2, 3)))

  class Normalized(nn.Module):
    """A torchvision ImageNet model behind jaxdef's in-model normalisation."""

    def __init__(self, model, mean: Sequence[float], std: Sequence[float]):
      super().__init__()
      self.model = model
      self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
      self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
      return self.model((x - self.mean) / self.std)

  class Smoothing(nn.Module):
    """Randomized smoothing in front of a model: ``model(x + sigma * N(0, 1))``, unclipped.

    With `autocast` (a torch dtype) the model runs under autocast on the
    model's device; logits come back as float32.
    """

    def __init__(self, model, sigma: float, autocast: Any = None):
      super().__init__()
      self.model = model
      self.sigma = float(sigma)
      self.autocast = autocast

    def forward(self, x):
      noisy = x + self.sigma * torch.randn_like(x)
      if self.autocast is None:
        return self.model(noisy)
      with torch.autocast(device_type=x.device.type, dtype=self.autocast):
        return self.model(noisy).float()

  return types.SimpleNamespace(torch=torch, nn=nn, functional=functional,
                               SmallResNet=SmallResNet, Normalized=Normalized,
                               Smoothing=Smoothing)


def torch_module() -> Any:
  """The torch module (imported on first use)."""
  return _modules().torch


def device() -> Any:
  """CUDA when torch sees a GPU, else the CPU."""
  torch = torch_module()
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(_: Any = None) -> None:
  """Waits for queued GPU work (a no-op on the CPU); the `sync` of `time_calls`."""
  torch = torch_module()
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def randomize_batch_norm(model: Any, seed: int) -> Any:
  """Gives every BatchNorm non-trivial running statistics and affine parameters.

  A fresh network has mean 0, variance 1, scale 1 and bias 0, under which
  a BN mapped to the wrong tensor still gives the right logits; random
  values make the parity check catch it.
  """
  torch = torch_module()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        shape = module.running_mean.shape
        module.running_mean.copy_(0.2 * torch.randn(shape, generator=generator))
        module.running_var.copy_(0.5 + 1.5 * torch.rand(shape, generator=generator))
        module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
        module.bias.copy_(0.2 * torch.randn(shape, generator=generator))
  return model


def small_resnet(widths: Sequence[int], *, seed: int = 0, num_classes: int = 10,
                 blocks_per_stage: int = 1, mean: Sequence[float] = (0.5,),
                 std: Sequence[float] = (1.0,)) -> Any:
  """A randomly initialised torch `SmallResNet` (random BN statistics too), in eval mode.

  Arguments as `jaxdef.models.small_resnet`'s (one input channel).
  """
  torch = torch_module()
  torch.manual_seed(seed)
  model = _modules().SmallResNet(widths, blocks_per_stage, num_classes, 1, mean, std)
  return randomize_batch_norm(model, seed).eval()


def to_flax(torch_model: Any, flax_model: Any, in_channels: int) -> dict:
  """Flax variables of `flax_model` from a torch model's state_dict (jaxdef's converter)."""
  state = _convert._state_dict(torch_model.state_dict(), "state_dict")
  return _convert.convert(state, flax_model, in_channels, type(torch_model).__name__)


def load_flax(torch_model: Any, variables: dict) -> Any:
  """Copies Flax variables into a torch model (the inverse of `to_flax`), strictly.

  Raises:
    ValueError: a tensor is missing or left over on either side.
  """
  torch = torch_module()
  state = {}
  for path, value in traverse_util.flatten_dict(dict(variables)).items():
    array = np.asarray(value, np.float32)
    if array.ndim == 4:  # HWIO -> OIHW
      array = array.transpose(3, 2, 0, 1)
    elif array.ndim == 2:  # (in, out) -> (out, in)
      array = array.T
    # A writable copy: torch shares the memory of the arrays it is given.
    state[_convert._torch_name(path)] = torch.from_numpy(np.array(array, order="C"))
  missing, unexpected = torch_model.load_state_dict(state, strict=False)
  missing = [name for name in missing if not name.endswith("num_batches_tracked")]
  if missing or unexpected:
    raise ValueError(f"Flax variables do not fit the torch model: missing {missing}, "
                     f"unexpected {unexpected}")
  return torch_model.eval()


def logits(torch_model: Any, images_nhwc: np.ndarray) -> np.ndarray:
  """float32 logits (B, K) of a torch model on NHWC images in [0, 1] (no defense)."""
  torch = torch_module()
  parameter = next(torch_model.parameters())
  with torch.inference_mode():
    return torch_model(to_nchw(images_nhwc, parameter.device)).float().cpu().numpy()


def parity_error(torch_model: Any, flax_logits_fn: Any, images_nhwc: np.ndarray) -> float:
  """Largest |torch - jaxdef| logit difference relative to the largest |logit|.

  Both sides compute in full float32: on NVIDIA GPUs from Ampere on, XLA and
  cuDNN would otherwise run float32 matmuls and convolutions as TF32 (about
  5e-4 relative error on ResNet-50's logits, above `PARITY_TOLERANCE`),
  which is a speed setting, not a conversion error.
  """
  with full_float32():
    reference = logits(torch_model, images_nhwc)
    ours = np.asarray(flax_logits_fn(images_nhwc))
  return float(np.max(np.abs(ours - reference)) / max(np.max(np.abs(reference)), 1e-12))


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
  """Inside the block, float32 matmuls and convolutions are not run as TF32:
  JAX's default matmul precision is "highest", and so is PyTorch's (when
  torch is installed); both are restored after."""
  import jax
  torch = _torch_or_none()
  saved = None
  if torch is not None:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  try:
    with jax.default_matmul_precision("highest"):
      yield
  finally:
    if torch is not None:
      torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _torch_or_none() -> Any:
  try:
    import torch
  except ImportError:
    return None
  return torch


def smoothed(torch_model: Any, sigma: float, autocast: Any = None) -> Any:
  """The model behind randomized smoothing (see `Smoothing`), in eval mode."""
  return _modules().Smoothing(torch_model, sigma, autocast).eval()


def resnet(depth: int = 50, seed: int = 0) -> tuple[Any, dict]:
  """torchvision's ResNet-`depth`, random weights and BN statistics, behind ImageNet normalisation.

  Returns:
    (torch model taking NCHW images in [0, 1], its state_dict for
    `jaxdef.models.from_torchvision`).
  """
  import torchvision

  from jaxdef.models import _resnet

  torch = torch_module()
  torch.manual_seed(seed)
  network = randomize_batch_norm(getattr(torchvision.models, f"resnet{depth}")(weights=None),
                                 seed).eval()
  wrapped = _modules().Normalized(network, _resnet.IMAGENET_MEAN, _resnet.IMAGENET_STD).eval()
  return wrapped, network.state_dict()


def to_nchw(images_nhwc: Any, on: Any = None) -> Any:
  """A float32 NCHW torch tensor of NHWC images, on device `on` (default: `device()`)."""
  torch = torch_module()
  array = np.array(np.asarray(images_nhwc, np.float32).transpose(0, 3, 1, 2), order="C")
  return torch.from_numpy(array).to(on or device())  # a writable copy, as torch requires


def eotpgd_row(model: Any, images_nhwc: Any, labels: Any, *, eot: int, steps: int,
               eps: float = 8 / 255, repeats: int = 3, budget_s: float = 20.0) -> dict[str, Any]:
  """Image-gradients per second of torchattacks' ``EOTPGD`` on a defended torch model.

  The attack's settings are jaxdef's `pgd_row`: L-inf, step eps / 4, no
  random start, cross-entropy, `steps` steps, `eot` draws per step.
  """
  import torchattacks

  from jaxdef.bench import _throughput

  torch = torch_module()
  x = to_nchw(images_nhwc)
  y = torch.from_numpy(np.asarray(labels, np.int64)).to(x.device)
  attack = torchattacks.EOTPGD(model, eps=eps, alpha=eps / 4, steps=steps, eot_iter=eot,
                               random_start=False)

  def run(seed):
    torch.manual_seed(seed)
    return attack(x, y)

  timing = _throughput.time_calls(run, repeats=repeats, budget_s=budget_s, sync=synchronize)
  gradients = x.shape[0] * steps * eot
  return {"kind": "pgd", "batch": int(x.shape[0]), "steps": int(steps), "eot": int(eot),
          **timing, "image_gradients_per_second": gradients / timing["seconds"]}


def vote_labels(model: Any, x: Any, votes: int, chunk: int) -> Any:
  """Majority vote of `votes` draws of a defended model, drawn `chunk` at a time.

  Each chunk stacks `chunk` copies of the batch into one forward pass; ties
  go to the lowest label (as jaxdef's). Returns int64 (B,) labels.
  """
  torch = torch_module()
  counts = None
  with torch.inference_mode():
    for start in range(0, votes, chunk):
      draws = min(chunk, votes - start)
      scores = model(x.repeat(draws, 1, 1, 1))  # copy d of the batch is rows d*B .. (d+1)*B
      predictions = scores.argmax(-1).view(draws, x.shape[0]).T  # (B, draws)
      if counts is None:
        counts = torch.zeros((x.shape[0], scores.shape[-1]), dtype=torch.int64, device=x.device)
      counts.scatter_add_(1, predictions, torch.ones_like(predictions))
  return counts.argmax(-1)


def vote_row(model: Any, images_nhwc: Any, *, votes: int, chunk: int = 100, repeats: int = 3,
             budget_s: float = 20.0) -> dict[str, Any]:
  """Defended forward passes per second of a `votes`-draw vote in torch (see `vote_labels`)."""
  from jaxdef.bench import _throughput

  torch = torch_module()
  x = to_nchw(images_nhwc)

  def run(seed):
    torch.manual_seed(seed)
    return vote_labels(model, x, votes, chunk)

  timing = _throughput.time_calls(run, repeats=repeats, budget_s=budget_s, sync=synchronize)
  return {"kind": "vote", "batch": int(x.shape[0]), "votes": int(votes), "vote_chunk": chunk,
          **timing, "forward_passes_per_second": x.shape[0] * votes / timing["seconds"]}


class ReferenceEngine:
  """The PyTorch + ART way of one defended classifier, for `_study.reference_unit`.

  Every call takes and returns NumPy arrays (ART's classifier interface):
  one single-draw input-gradient per call, one single-draw forward pass
  per vote. Draw handles are ignored: torch's global generator, seeded
  once, draws the noise.
  """

  def __init__(self, model: Any):
    self.model = model
    self.torch = torch_module()
    self.device = next(model.parameters()).device

  def attack_draws(self, attack_key: Any, step: int, eot: int) -> list[Any]:
    del attack_key, step
    return [None] * eot

  def vote_draws(self, vote_key: Any, votes: int) -> list[Any]:
    del vote_key
    return [None] * votes

  def gradient(self, draw: Any, x: np.ndarray, goal: np.ndarray, targeted: bool) -> np.ndarray:
    """Input-gradient of the summed cross-entropy (negated when targeted), NHWC float32."""
    del draw
    torch = self.torch
    inputs = to_nchw(x, self.device).requires_grad_(True)
    labels = torch.from_numpy(np.asarray(goal, np.int64)).to(self.device)
    loss = torch.nn.functional.cross_entropy(self.model(inputs), labels, reduction="sum")
    (grad,) = torch.autograd.grad(-loss if targeted else loss, inputs)
    return grad.cpu().numpy().transpose(0, 2, 3, 1)

  def predict(self, draw: Any, x: np.ndarray) -> np.ndarray:
    """Labels (B,) of one defended draw."""
    del draw
    with self.torch.inference_mode():
      return self.model(to_nchw(x, self.device)).argmax(-1).cpu().numpy()
