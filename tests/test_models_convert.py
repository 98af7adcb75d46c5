"""Parity of converted PyTorch weights: torchvision ResNets and Cohen et al.'s checkpoints.

Every network here has random weights AND random BatchNorm statistics and
affine parameters, so that a BN mapped to the wrong tensor, a transposed
kernel or an off-by-one padding changes the logits. Logits must agree to
1e-4 of their largest magnitude in float32.

The CIFAR ResNet-110 of Cohen et al. (2019) is rebuilt below from their
``archs/cifar_resnet.py`` (bearpaw's pytorch-classification ResNet) with the
same class and attribute names, since their code is not a package.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import platform

import jax
import numpy as np
import pytest

from jaxdef import models
from jaxdef.bench import _torch as bench_torch
from jaxdef.bench._torch import full_float32

if platform.machine() == "x86_64":
  # requirements-test.txt installs torch on x86_64 (CI): a missing torch there
  # is a broken set-up and must fail, not skip.
  import torch
  import torchvision
else:
  torch = pytest.importorskip("torch", reason="parity tests need torch (requirements-test.txt)")
  torchvision = pytest.importorskip("torchvision", reason="parity tests need torchvision")
nn = torch.nn

TOLERANCE = 1e-4
IMAGE_SIZE = 64


# --- reference networks ------------------------------------------------------------------------


class BasicBlock(nn.Module):
  """Cohen et al.'s (bearpaw's) CIFAR BasicBlock."""

  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample
    self.stride = stride

  def forward(self, x):
    residual = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + residual)


class ResNet(nn.Module):
  """Cohen et al.'s ``resnet_cifar(depth, num_classes)``: depth 6n + 2, BasicBlocks."""

  def __init__(self, depth, num_classes=10):
    super().__init__()
    n = (depth - 2) // 6
    self.inplanes = 16
    self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    self.relu = nn.ReLU(inplace=True)
    self.layer1 = self._make_layer(16, n)
    self.layer2 = self._make_layer(32, n, stride=2)
    self.layer3 = self._make_layer(64, n, stride=2)
    self.avgpool = nn.AvgPool2d(8)
    self.fc = nn.Linear(64, num_classes)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
          nn.BatchNorm2d(planes))
    layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    x = self.avgpool(x)
    return self.fc(x.view(x.size(0), -1))


class NormalizeLayer(nn.Module):
  """Cohen et al.'s NormalizeLayer: constants as plain attributes, not in the state_dict."""

  def __init__(self, means, sds):
    super().__init__()
    self.means = torch.tensor(means)
    self.sds = torch.tensor(sds)

  def forward(self, x):
    return (x - self.means[None, :, None, None]) / self.sds[None, :, None, None]


def _randomize_batchnorm(module, seed, last_scale=(0.5, 1.5)):
  """Random BN affine parameters and running statistics (BN is never the identity)."""
  gen = torch.Generator().manual_seed(seed)
  for name, m in module.named_modules():
    if isinstance(m, nn.BatchNorm2d):
      n = m.num_features
      low, high = last_scale if name.endswith(("bn2", "bn3")) else (0.5, 1.5)
      with torch.no_grad():
        m.weight.copy_(low + (high - low) * torch.rand(n, generator=gen))
        m.bias.copy_(0.2 * torch.randn(n, generator=gen))
        m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
        m.num_batches_tracked.fill_(7)
  return module.eval()


def _torchvision(depth, num_classes=1000, replace_fc=None, seed=0):
  torch.manual_seed(seed)
  net = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
  if replace_fc is not None:  # fine-tuning style: a new head of another class count
    net.fc = nn.Linear(net.fc.in_features, replace_fc)
  return _randomize_batchnorm(net, seed)


def _images(n=2, size=IMAGE_SIZE, seed=0):
  return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _torch_logits(net, images, mean=None, std=None):
  """PyTorch logits of NHWC images in [0, 1], normalised outside the network when given."""
  x = images
  if mean is not None:
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  with torch.no_grad():
    return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def _relative_error(ours, reference):
  return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


def _assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _write_safetensors(path, tensors):
  """The safetensors layout by hand: u64 header size, JSON header, raw little-endian bytes."""
  codes = {"float32": "F32", "int64": "I64", "float16": "F16"}
  header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
  for name, array in tensors.items():
    data = np.ascontiguousarray(array).tobytes()
    header[name] = {"dtype": codes[array.dtype.name], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)
  path.write_bytes(len(blob).to_bytes(8, "little") + blob + b"".join(chunks))


@pytest.fixture(scope="module")
def resnet18_torch():
  return _torchvision(18)


@pytest.fixture(scope="module")
def resnet18_variables(resnet18_torch):
  return models.from_torchvision(resnet18_torch.state_dict(), depth=18)


@pytest.fixture(scope="module")
def resnet50_torch():
  return _torchvision(50, seed=2)


# --- parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, replace_fc", [(18, None), (34, 10), (50, None)])
def test_torchvision_parity(depth, replace_fc, request):
  if depth == 18:
    net = request.getfixturevalue("resnet18_torch")
  elif depth == 50:
    net = request.getfixturevalue("resnet50_torch")
  else:
    net = _torchvision(depth, replace_fc=replace_fc, seed=1)
  num_classes = replace_fc or 1000
  variables = models.from_torchvision(net.state_dict(), depth=depth)
  assert variables["params"]["fc"]["kernel"].shape[1] == num_classes  # inferred from fc.weight
  model, _ = models.resnet(depth, num_classes, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
  images = _images(seed=depth)
  with full_float32():  # no TF32 on a GPU, on either side
    reference = _torch_logits(net, images, models.IMAGENET_MEAN, models.IMAGENET_STD)
    ours = models.logits_fn(model, variables)(images)
  assert ours.shape == (2, num_classes)
  error = _relative_error(ours, reference)
  print(f"resnet{depth}: max relative error of logits {error:.2e}")
  assert error <= TOLERANCE, error


def test_parity_runs_in_full_float32_and_restores_the_settings():
  before = (jax.config.jax_default_matmul_precision, torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32)
  seen = []

  def flax_side(images):
    seen.append((jax.config.jax_default_matmul_precision, torch.backends.cuda.matmul.allow_tf32,
                 torch.backends.cudnn.allow_tf32))
    return np.zeros((len(images), 3), np.float32)

  class TorchSide(nn.Module):
    def __init__(self):
      super().__init__()
      self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
      seen.append(("torch", torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
      return torch.ones(x.shape[0], 3)

  error = bench_torch.parity_error(TorchSide(), flax_side, np.zeros((2, 4, 4, 3), np.float32))
  assert error == 1.0  # |0 - 1| / 1
  assert seen == [("torch", False, False), ("highest", False, False)]
  after = (jax.config.jax_default_matmul_precision, torch.backends.cuda.matmul.allow_tf32,
           torch.backends.cudnn.allow_tf32)
  assert after == before


def test_cohen_cifar_resnet110_checkpoint_parity(tmp_path):
  torch.manual_seed(3)
  net = _randomize_batchnorm(ResNet(110, num_classes=10), seed=3, last_scale=(0.05, 0.2))
  smoothed = nn.Sequential(NormalizeLayer(models.CIFAR_MEAN, models.CIFAR_STD), net).eval()
  path = tmp_path / "checkpoint.pth.tar"
  torch.save({"epoch": 90, "arch": "cifar_resnet110", "state_dict": smoothed.state_dict()}, path)
  assert next(iter(smoothed.state_dict())).startswith("1.")
  variables = models.from_cohen_checkpoint(path)  # arch read from the checkpoint
  model, _ = models.cifar_resnet(110)
  images = _images(size=32, seed=4)
  with full_float32():
    reference = _torch_logits(smoothed, images)  # their NormalizeLayer normalises
    error = _relative_error(models.logits_fn(model, variables)(images), reference)
  print(f"cifar_resnet110: max relative error of logits {error:.2e}")
  assert error <= TOLERANCE, error
  # The same network saved from DataParallel ("1.module." prefixes), arch given by hand.
  parallel = {"state_dict": {"1.module." + k[2:]: v for k, v in smoothed.state_dict().items()}}
  _assert_same_tree(models.from_cohen_checkpoint(parallel, arch="cifar_resnet110"), variables)


def test_cohen_resnet50_checkpoint(resnet50_torch, tmp_path):
  state = resnet50_torch.state_dict()
  expected = models.from_torchvision(state, depth=50)
  checkpoint = {"epoch": 90, "arch": "resnet50",
                "state_dict": {"1.module." + k: v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9}]}}
  _assert_same_tree(models.from_cohen_checkpoint(checkpoint), expected)
  path = tmp_path / "noise_0.25" / "checkpoint.pth.tar"
  path.parent.mkdir()
  torch.save(checkpoint, path)
  _assert_same_tree(models.from_cohen_checkpoint(str(path)), expected)


# --- sources of weights ------------------------------------------------------------------------


def test_file_numpy_prefixed_and_safetensors_sources(resnet18_torch, resnet18_variables, tmp_path):
  state = resnet18_torch.state_dict()
  pth = tmp_path / "resnet18.pth"
  torch.save(state, pth)
  _assert_same_tree(models.from_torchvision(pth, depth=18), resnet18_variables)
  numpy_state = {k: v.numpy() for k, v in state.items()}
  _assert_same_tree(models.from_torchvision(numpy_state, depth=18), resnet18_variables)
  parallel = {"module." + k: v for k, v in state.items()}
  _assert_same_tree(models.from_torchvision(parallel, depth=18), resnet18_variables)
  _assert_same_tree(models.from_torchvision({"state_dict": state}, depth=18), resnet18_variables)
  st = tmp_path / "resnet18.safetensors"
  _write_safetensors(st, numpy_state)
  _assert_same_tree(models.from_torchvision(str(st), depth=18), resnet18_variables)
  half = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in numpy_state.items()}
  _write_safetensors(st, half)
  converted = models.from_torchvision(st, depth=18)
  assert converted["params"]["conv1"]["kernel"].dtype == np.float32
  np.testing.assert_allclose(converted["params"]["conv1"]["kernel"],
                             resnet18_variables["params"]["conv1"]["kernel"], rtol=1e-3, atol=1e-6)


def test_save_load_converted_variables(resnet18_variables, tmp_path):
  path = tmp_path / "resnet18.msgpack"
  models.save_variables(path, resnet18_variables)
  template = models.resnet(18, 1000, input_shape=(32, 32, 3))[1]
  _assert_same_tree(models.load_variables(path, like=template), resnet18_variables)
  with pytest.raises(ValueError, match="wrong shapes: params/fc/bias"):
    models.load_variables(path, like=models.resnet(18, 10, input_shape=(32, 32, 3))[1])


# --- refusals and errors -----------------------------------------------------------------------


class _TouchOnUnpickle:
  """Unpickling this object creates a file: stands in for arbitrary code."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the plain pickle.dump file
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_code_is_refused(writer, tmp_path):
  marker = tmp_path / "code_ran"
  path = tmp_path / "evil.pth"
  payload = {"conv1.weight": torch.zeros(64, 3, 7, 7), "payload": _TouchOnUnpickle(marker)}
  if writer == "torch.save":
    torch.save(payload, path)
  else:
    with open(path, "wb") as f:
      pickle.dump(payload, f)
  with pytest.raises(ValueError, match="refused") as info:
    models.from_torchvision(path, depth=18)
  assert "pickled code/objects" in str(info.value) and str(path) in str(info.value)
  with pytest.raises(ValueError, match="refused"):
    models.from_cohen_checkpoint(path, arch="resnet50")
  assert not marker.exists()


def test_truncated_and_missing_files(resnet18_torch, tmp_path):
  path = tmp_path / "resnet18.pth"
  torch.save(resnet18_torch.state_dict(), path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"could not read .*resnet18\.pth \(truncated or corrupt"):
    models.from_torchvision(path, depth=18)
  st = tmp_path / "resnet18.safetensors"
  _write_safetensors(st, {k: v.numpy() for k, v in resnet18_torch.state_dict().items()})
  st.write_bytes(st.read_bytes()[:5000])
  with pytest.raises(ValueError, match=r"resnet18\.safetensors is not a readable"):
    models.from_torchvision(st, depth=18)
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    models.from_torchvision(tmp_path / "missing.pth", depth=18)


def test_wrong_depth_lists_keys(resnet18_torch, resnet50_torch):
  with pytest.raises(ValueError) as info:
    models.from_torchvision(resnet18_torch.state_dict(), depth=50)
  message = str(info.value)
  assert "does not fit ResNet-50" in message and "look like ResNet-18 (depth=18)" in message
  assert "missing keys: layer1.0.bn3.bias" in message
  assert "wrong shapes: fc.weight (expected (1000, 2048), got (1000, 512))" in message
  with pytest.raises(ValueError) as info:
    models.from_torchvision(resnet50_torch.state_dict(), depth=18)
  message = str(info.value)
  assert "look like ResNet-50 (depth=50)" in message and "unexpected keys: layer1.0.bn3" in message
  with pytest.raises(ValueError, match="look like ResNet-50"):
    models.from_torchvision(resnet50_torch.state_dict(), depth=34)


def test_bad_state_dicts(resnet18_torch):
  state = dict(resnet18_torch.state_dict())
  state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
  with pytest.raises(ValueError, match=r"wrong shapes: conv1.weight \(expected \(64, 3, 7, 7\), "
                                       r"got \(64, 3, 5, 5\)\)"):
    models.from_torchvision(state, depth=18)
  state = dict(resnet18_torch.state_dict())
  del state["layer4.1.bn2.running_var"]
  state["layer5.0.conv1.weight"] = torch.zeros(1)
  with pytest.raises(ValueError, match="missing keys: layer4.1.bn2.running_var; "
                                       "unexpected keys: layer5.0.conv1.weight"):
    models.from_torchvision(state, depth=18)
  with pytest.raises(TypeError, match="state_dict"):
    models.from_torchvision([1, 2, 3], depth=18)
  with pytest.raises(ValueError, match="depth must be one of"):
    models.from_torchvision(resnet18_torch.state_dict(), depth=19)
  with pytest.raises(ValueError, match="arch must be given"):
    models.from_cohen_checkpoint({"state_dict": {}})
  with pytest.raises(ValueError, match="arch must be one of"):
    models.from_cohen_checkpoint({"state_dict": {}}, arch="vgg16")
