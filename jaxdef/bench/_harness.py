"""The benchmark run behind ``python -m launch.bench``: what is measured, in which order.

For every model (the small Fashion-MNIST ResNet at each width, the ImageNet
ResNets of `Options.resnets`: ResNet-18 and ResNet-50 at 32, 64 and 224
pixels), compute dtype and defense: PGD with EOT-m for every m, and a vote,
in jaxdef and -- randomized smoothing only, when the benchmark extra is
installed -- in PyTorch with the same weights; every distinct convolution
of each ImageNet ResNet alone (`_conv_shapes`); then the whole-study
comparison. Results go to ``bench.json`` and ``bench.md``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import data
from jaxdef import defenses
from jaxdef import models
from jaxdef.attacks._eot import chunk_under
from jaxdef.bench import _bart_rates
from jaxdef.bench import _conv_shapes
from jaxdef.bench import _device
from jaxdef.bench import _report
from jaxdef.bench import _study
from jaxdef.bench import _throughput
from jaxdef.bench import _torch
from jaxdef.classifier import StochasticClassifier
from jaxdef.experiments import _records
from jaxdef.models import _resnet

SIGMA = 0.25
KAPPA = 6
DEFENSE_LABELS = {"smoothing": f"randomized_smoothing({SIGMA})", "bart": f"bart(kappa={KAPPA})"}
# The study's ImageNet ResNets, "depth@pixels"; RESNET_MODES size them:
# cpu (small batches, smoothing only), full (the study's batches, every
# defense), smoke (one image, one step, the first EOT m), auto (cpu on a
# CPU, full on a GPU).
IMAGENET_RESNETS = ("18@32", "18@64", "18@224", "50@32", "50@64", "50@224")
RESNET_MODES = ("auto", "cpu", "full", "smoke")
BFLOAT16_MODES = ("auto", "on", "off", "only")
FLOPS_MODES = ("auto", "compiled", "lowered", "off")
STUDY_TORCH_MODES = ("sample", "all", "off")
BART_RATES_MODES = ("on", "off", "only")
# Rows per model call a CPU handles best (see `jaxdef.attacks._eot.chunk_under`):
# torchattacks' EOTPGD calls the model once per draw on the batch, so a
# chunked jaxdef step is the same schedule, vmapped.
CPU_EOT_ROWS = 256


@dataclasses.dataclass(frozen=True)
class Options:
  """What to measure; the flags of ``launch.bench`` (see its docstring)."""
  batch: int = 64
  steps: int = 5
  eots: tuple[int, ...] = (1, 10)
  votes: int = 500
  vote_batch: int = 16
  vote_chunk: int = 100
  defenses: tuple[str, ...] = ("smoothing", "bart")
  widths: tuple[tuple[int, ...], ...] = ((8, 16, 32), (16, 32, 64))
  bart_batch: int = 8
  bart_steps: int = 1
  bart_votes: int = 50
  resnets: tuple[str, ...] = IMAGENET_RESNETS
  resnet_mode: str = "auto"
  resnet_batch: int = 0  # 0: by mode and size (see `_resnet_sizes`)
  # Every distinct convolution of each ImageNet ResNet alone, against PyTorch.
  conv_shapes: bool = True
  bfloat16: str = "auto"
  torch: bool = True
  threads: int = 0
  repeats: int = 3
  row_budget_s: float = 10.0
  flops: str = "auto"
  study: bool = True
  study_images: int = 100
  study_workdir: str = ""
  study_torch: str = "sample"
  progress: bool = True
  matmul_size: int = 0  # of the measured-peak matmul; 0: 2048 on a CPU, 8192 on a GPU
  # Most images per model call of an attack step (EOT draws chunked under it,
  # `jaxdef.attacks._eot.chunk_under`) and of a vote (draws per call, both
  # engines); None: CPU_EOT_ROWS on a CPU, no limit on a GPU; 0: no limit.
  eot_rows_per_call: int | None = None
  # BaRT-1..6 and each transform alone, draws/s at 28, 64 and 224 pixels
  # (`_bart_rates`): on, off, or only (nothing else is measured).
  bart_rates: str = "on"
  # Its (side, batch) sizes and BaRT-kappa values.
  bart_rates_sizes: tuple[tuple[int, int], ...] = _bart_rates.SIZES
  bart_rates_kappas: tuple[int, ...] = _bart_rates.KAPPAS

  def __post_init__(self):
    for name in ("batch", "steps", "votes", "vote_batch", "vote_chunk", "bart_batch",
                 "bart_steps", "bart_votes", "repeats", "study_images"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not self.eots or any(not isinstance(m, int) or m < 1 for m in self.eots):
      raise ValueError(f"eots must be positive integers, got {self.eots!r}")
    unknown = [d for d in self.defenses if d not in DEFENSE_LABELS]
    if not self.defenses or unknown:
      raise ValueError(f"defenses must be chosen from {', '.join(DEFENSE_LABELS)}, got "
                       f"{self.defenses!r}")
    if any(not w or min(w) < 1 for w in self.widths):
      raise ValueError(f"widths must be positive channel counts per stage, got {self.widths!r}")
    for entry in self.resnets:
      parse_resnet(entry)
    for name, allowed in (("resnet_mode", RESNET_MODES), ("bfloat16", BFLOAT16_MODES),
                          ("flops", FLOPS_MODES), ("study_torch", STUDY_TORCH_MODES),
                          ("bart_rates", BART_RATES_MODES)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got "
                         f"{getattr(self, name)!r}")
    for name in ("resnet_batch", "threads", "matmul_size") + (
        ("eot_rows_per_call",) if self.eot_rows_per_call is not None else ()):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
    if not self.bart_rates_sizes or any(
        len(size) != 2 or min(size) < 1 for size in self.bart_rates_sizes):
      raise ValueError(f"bart_rates_sizes must be (side, batch) pairs of positive integers, got "
                       f"{self.bart_rates_sizes!r}")
    if not self.bart_rates_kappas or any(k not in _bart_rates.KAPPAS
                                         for k in self.bart_rates_kappas):
      raise ValueError(f"bart_rates_kappas must be chosen from "
                       f"{', '.join(map(str, _bart_rates.KAPPAS))}, got "
                       f"{self.bart_rates_kappas!r}")
    if self.row_budget_s <= 0:
      raise ValueError(f"row_budget_s must be > 0, got {self.row_budget_s!r}")


def parse_resnet(entry: str) -> tuple[int, int]:
  """"50@224" -> (50, 224): an ImageNet ResNet depth and square input size in pixels."""
  depth, _, size = str(entry).partition("@")
  if (not depth.isdigit() or not size.isdigit() or int(depth) not in _resnet.IMAGENET_DEPTHS
      or int(size) < 32):
    raise ValueError(f"resnets entries must be depth@pixels with depth one of "
                     f"{', '.join(map(str, sorted(_resnet.IMAGENET_DEPTHS)))} and pixels >= 32 "
                     f"(e.g. 50@224), got {entry!r}")
  return int(depth), int(size)


@dataclasses.dataclass
class _Model:
  """A model to measure: the Flax module and variables, its torch twin (or None)."""
  name: str
  label: str
  flax_model: Any
  variables: dict
  torch_model: Any
  images: np.ndarray
  labels: np.ndarray
  parity_error: float | None


class _Log:
  """Per-measurement lines with the elapsed time, on stdout (always: they are the results)."""

  def __init__(self):
    self.start = time.perf_counter()

  def __call__(self, text: str) -> None:
    print(f"[{time.perf_counter() - self.start:7.1f} s] {text}", flush=True)


def _fashion_images(count: int) -> tuple[np.ndarray, np.ndarray]:
  images, labels = data.load_fashion_mnist("test")
  return np.asarray(images[:count], np.float32), np.asarray(labels[:count], np.int32)


def _small_resnet(widths: tuple[int, ...], count: int, torch_ready: bool) -> _Model:
  """The small ResNet; with torch, its weights come FROM a random torch twin."""
  flax_model, variables = models.small_resnet(10, widths=widths)
  images, labels = _fashion_images(count)
  net, error = None, None
  if torch_ready:
    net = _torch.small_resnet(widths, seed=0)
    variables = _torch.to_flax(net, flax_model, 1)
    error = _torch.parity_error(net, models.logits_fn(flax_model, variables), images[:16])
    if error > _torch.PARITY_TOLERANCE:
      raise RuntimeError(f"small ResNet {widths}: torch and Flax logits disagree (relative "
                         f"error {error:.2e} > {_torch.PARITY_TOLERANCE:g}); not timing them")
    net = net.to(_torch.device())
  label = "small_resnet " + "-".join(str(w) for w in widths)
  return _Model("small_resnet", label, flax_model, variables, net, images, labels, error)


def _imagenet_resnet(depth: int, size: int, count: int, torch_ready: bool) -> _Model:
  """ResNet-`depth` at size x size on random images; with torchvision, torchvision's weights."""
  flax_model, variables = models.resnet(depth, 1000)
  rng = np.random.default_rng(0)
  images = rng.random((count, size, size, 3), dtype=np.float32)
  labels = rng.integers(0, 1000, count).astype(np.int32)
  net, error = None, None
  label = f"resnet{depth} {size}x{size}"
  if torch_ready:
    net, state = _torch.resnet(depth, seed=0)
    variables = models.from_torchvision(state, depth=depth)
    error = _torch.parity_error(net, models.logits_fn(flax_model, variables), images[:1])
    if error > _torch.PARITY_TOLERANCE:
      raise RuntimeError(f"{label}: torch and Flax logits disagree (relative error "
                         f"{error:.2e} > {_torch.PARITY_TOLERANCE:g}); not timing them")
    net = net.to(_torch.device())
  return _Model(f"resnet{depth}", label, flax_model, variables, net, images, labels, error)


def _defense(name: str):
  return (defenses.randomized_smoothing(SIGMA) if name == "smoothing"
          else defenses.bart(kappa=KAPPA))


@dataclasses.dataclass(frozen=True)
class _Sizes:
  batch: int
  steps: int
  vote_batch: int
  votes: int


class _Bench:
  """Runs the rows; holds what every row shares."""

  def __init__(self, options: Options, log: Callable[[str], None], found: dict[str, Any]):
    self.options, self.log, self.found = options, log, found
    self.rows: list[dict] = []
    self.notes: list[str] = []
    self.peaks: dict[str, dict] = {}
    self.conv_shapes: list[dict] = []

  def measure_peaks(self) -> None:
    if jax.devices()[0].platform == "cpu":
      nominal = _device.cpu_nominal_peak()
      self.peaks["cpu_nominal"] = {"gflops": nominal["gflops"], "how": nominal["assumption"]}
      size = self.options.matmul_size or 2048
      matmul = _device.measured_matmul_gflops(size)
      self.peaks["cpu_matmul_measured"] = {
          "gflops": matmul["gflops"], "how": f"jitted {size} x {size} float32 matmul, this run"}
    else:
      size = self.options.matmul_size or 8192
      for dtype in (jnp.float32, jnp.bfloat16):
        matmul = _device.measured_matmul_gflops(size, dtype)
        self.peaks[f"matmul_measured_{matmul['dtype']}"] = {
            "gflops": matmul["gflops"], "how": f"jitted {size} x {size} {matmul['dtype']} matmul"}
    for label, peak in self.peaks.items():
      self.log(f"peak {label}: {peak['gflops']:,.1f} GFLOP/s ({peak['how']})")

  def peaks_for(self, dtype_name: str) -> dict[str, float]:
    """Label -> GFLOP/s of the peaks a row of compute dtype `dtype_name` is compared with."""
    if jax.devices()[0].platform == "cpu":
      return {label: peak["gflops"] for label, peak in self.peaks.items()}
    measured = self.peaks.get(f"matmul_measured_{dtype_name}")
    return {**_device.peaks_for(dtype_name),
            **({f"matmul_measured_{dtype_name}": measured["gflops"]} if measured else {})}

  def _add(self, row: dict) -> None:
    self.rows.append(row)
    what = (f"{row['engine']} {row['kind']} {row['model_label']} {row['dtype']} "
            f"{row['defense']}")
    if row["kind"] == "pgd":
      self.log(f"{what} m={_report.eot_text(row)} batch {row['batch']} x {row['steps']} steps: "
               f"{row['image_gradients_per_second']:,.1f} image-gradients/s "
               f"({row['seconds']:.3g} s per call, compile {row['compile_s']:.1f} s)")
    else:
      self.log(f"{what} batch {row['batch']} x {row['votes']} votes: "
               f"{row['forward_passes_per_second']:,.1f} forward passes/s "
               f"({row['seconds']:.3g} s per call, compile {row['compile_s']:.1f} s)")

  def _flops_source(self, model: _Model, defense_name: str) -> str | None:
    """How FLOPs are counted for a row: "compiled", "lowered" or None (not at all)."""
    mode = self.options.flops
    if mode == "auto":
      # A second compile of BaRT or an ImageNet ResNet costs minutes on a CPU; their
      # lowered programs count within 1% (ResNet-50) to 25% (BaRT's vmapped branches) less.
      slow = defense_name == "bart" or model.name != "small_resnet"
      mode = "lowered" if slow and jax.devices()[0].platform == "cpu" else "compiled"
    return None if mode == "off" else mode

  def measure_model(self, model: _Model, dtypes: list[Any], defense_names: list[str],
                    sizes: dict[str, _Sizes], eots: tuple[int, ...]) -> None:
    opts = self.options
    timing = {"repeats": opts.repeats, "budget_s": opts.row_budget_s}
    for dtype in dtypes:
      dtype_name = _device.compute_dtype_name(dtype)
      logits_fn = models.logits_fn(model.flax_model, model.variables, dtype=dtype)
      peaks = self.peaks_for(dtype_name)
      for name in defense_names:
        size = sizes[name]
        # Vote draws per call, under the same row limit as the attack steps
        # (both engines use it: the same schedule).
        limit = self.eot_rows_per_call()
        vote_chunk = (opts.vote_chunk if limit is None
                      else max(1, min(opts.vote_chunk, limit // size.vote_batch)))
        clf = StochasticClassifier(logits_fn, _defense(name), vote_chunk_size=vote_chunk)
        x, y = jnp.asarray(model.images[:size.batch]), jnp.asarray(model.labels[:size.batch])
        votes_x = jnp.asarray(model.images[:size.vote_batch])
        source = self._flops_source(model, name)
        common = {"model": model.name, "model_label": model.label, "dtype": dtype_name,
                  "defense": DEFENSE_LABELS[name], "parity_error": model.parity_error}
        flops = (None if source is None else
                 _throughput.gradient_flops(clf, x, y, compiled=source == "compiled"))
        for eot in eots:
          chunk = chunk_under(eot, int(x.shape[0]), self.eot_rows_per_call())
          row = _throughput.pgd_row(clf, x, y, eot=eot, steps=size.steps, eot_chunk_size=chunk,
                                    **timing)
          self._add(self._finish(row, "jaxdef", common, flops, peaks, source))
          if self._torch_attack_ready(model, name):
            twin = self._torch_defended(model, dtype_name)
            row = _torch.eotpgd_row(twin, model.images[:size.batch], model.labels[:size.batch],
                                    eot=eot, steps=size.steps, **timing)
            self._add(self._finish(row, "pytorch", common, None, {}))
        flops = (None if source is None else
                 _throughput.forward_flops(clf, votes_x, compiled=source == "compiled"))
        row = _throughput.vote_row(clf, votes_x, votes=size.votes, **timing)
        self._add(self._finish(row, "jaxdef", common, flops, peaks, source))
        if model.torch_model is not None and name == "smoothing":
          twin = self._torch_defended(model, dtype_name)
          row = _torch.vote_row(twin, model.images[:size.vote_batch], votes=size.votes,
                                chunk=vote_chunk, **timing)
          self._add(self._finish(row, "pytorch", common, None, {}))

  def eot_rows_per_call(self) -> int | None:
    """Most rows per model call of attack steps and votes (None: no limit), from the options."""
    limit = self.options.eot_rows_per_call
    if limit is None:
      return CPU_EOT_ROWS if jax.devices()[0].platform == "cpu" else None
    return limit or None

  def _torch_attack_ready(self, model: _Model, defense_name: str) -> bool:
    return (model.torch_model is not None and defense_name == "smoothing"
            and self.found.get("torchattacks") is not None)

  def _torch_defended(self, model: _Model, dtype_name: str) -> Any:
    torch = _torch.torch_module()
    autocast = torch.bfloat16 if dtype_name == "bfloat16" else None  # as jaxdef: bf16 compute
    return _torch.smoothed(model.torch_model, SIGMA, autocast)

  @staticmethod
  def _finish(row: dict, engine: str, common: dict, flops: float | None,
              peaks: dict[str, float], source: str | None = None) -> dict:
    row = {"engine": engine, **common, **row}
    if engine == "jaxdef":
      _throughput.add_peak_fractions(row, flops, peaks)
      row["flops_source"] = source
    row["pair_key"] = "|".join(str(row.get(k)) for k in
                               ("model_label", "dtype", "defense", "kind", "eot"))
    return row

  def pair_ratios(self) -> None:
    """jaxdef / PyTorch throughput on every jaxdef row that has a PyTorch twin."""
    torch_rows = {r["pair_key"]: r for r in self.rows if r["engine"] == "pytorch"}
    for row in self.rows:
      twin = torch_rows.get(row["pair_key"]) if row["engine"] == "jaxdef" else None
      if twin is not None:
        rate = ("image_gradients_per_second" if row["kind"] == "pgd"
                else "forward_passes_per_second")
        row["jaxdef_over_pytorch"] = row[rate] / twin[rate]


def _dtypes(option: str) -> list[Any]:
  if option == "only":
    return [jnp.bfloat16]
  on_gpu = jax.devices()[0].platform != "cpu"
  with_bf16 = option == "on" or (option == "auto" and on_gpu)
  return [jnp.float32, jnp.bfloat16] if with_bf16 else [jnp.float32]


def _torch_info(options: Options, found: dict[str, Any]) -> dict[str, Any]:
  if not found.get("torch"):
    return {}
  torch = _torch.torch_module()
  # The same number of threads as XLA's CPU thread pool (one per usable CPU).
  threads = options.threads or _device.cpu_description()["cpu_logical_usable"]
  torch.set_num_threads(threads)
  return {"torch": found["torch"], "torchvision": found.get("torchvision"),
          "torchattacks": found.get("torchattacks"), "torch_threads": torch.get_num_threads(),
          "torch_device": str(_torch.device())}


def run(options: Options, workdir: str | os.PathLike, *, study_config: Any = None,
        command: str | None = None) -> dict[str, Any]:
  """Runs the benchmark and writes ``bench.json`` and ``bench.md`` to `workdir`.

  Args:
    options: what to measure.
    workdir: output folder (created); the study's sweep writes its records
      under ``workdir/study_sweep`` (deleted first).
    study_config: the embedded default's config (``configs/default.py``);
      needed when ``options.study``.
    command: the command line, recorded in the output.

  Returns:
    The contents of bench.json: environment, peaks, results (rows),
    study, notes.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  log = _Log()
  found = _torch.availability() if options.torch else {}
  notes = []
  if not options.torch:
    notes.append("PyTorch comparison off (--notorch): no PyTorch rows.")
  else:
    message = _torch.missing_message(found)
    if message:
      skipped = ("all PyTorch rows are skipped" if not found.get("torch") else
                 "the rows that need them are skipped (EOTPGD needs torchattacks, ResNet-50 "
                 "needs torchvision)")
      notes.append(f"{message}; {skipped}.")
      log(notes[-1])
  env = _device.environment(_torch_info(options, found))
  env["jax_cpu_threads"] = _device.cpu_description()["cpu_logical_usable"]
  bench = _Bench(options, log, found)
  bench.notes = notes
  if options.bart_rates == "only":
    return _finish(options, workdir, command, env, bench, None, log,
                   _measure_bart_rates(options, log))
  bench.measure_peaks()
  torch_ready = bool(found.get("torch"))
  dtypes = _dtypes(options.bfloat16)
  small = _Sizes(options.batch, options.steps, options.vote_batch, options.votes)
  bart = _Sizes(options.bart_batch, options.bart_steps, min(options.bart_batch,
                                                            options.vote_batch),
                options.bart_votes)
  for index, widths in enumerate(options.widths):
    model = _small_resnet(tuple(widths), max(options.batch, options.vote_batch,
                                             options.bart_batch), torch_ready)
    # BaRT-6 compiles for minutes on a CPU: its rows run on the first widths only.
    names = [d for d in options.defenses if d != "bart" or index == 0]
    bench.measure_model(model, dtypes, names, {"smoothing": small, "bart": bart},
                        options.eots)
  if "bart" in options.defenses and len(options.widths) > 1:
    notes.append("BaRT-6 rows run on the first --widths entry only (every BaRT program takes "
                 f"minutes to compile on a CPU); BaRT sizes: batch {bart.batch} x "
                 f"{bart.steps} steps, votes {bart.vote_batch} x {bart.votes}.")
  _measure_imagenet_resnets(bench, options, dtypes,
                            torch_ready and bool(found.get("torchvision")))
  bench.pair_ratios()
  study = None
  if options.study:
    if study_config is None:
      raise ValueError("study_config (configs/default.py's config) is needed for the study")
    study = run_study(options, study_config, workdir, found, log)
  rates = _measure_bart_rates(options, log) if options.bart_rates == "on" else None
  return _finish(options, workdir, command, env, bench, study, log, rates)


def _measure_bart_rates(options: Options, log: Callable[[str], None]) -> dict[str, Any]:
  return _bart_rates.measure(options.bart_rates_sizes, options.bart_rates_kappas,
                             min_calls=options.repeats,
                             budget_s=options.row_budget_s, log=log)


def _finish(options: Options, workdir: pathlib.Path, command: str | None, env: dict[str, Any],
            bench: _Bench, study: dict[str, Any] | None, log: Callable[[str], None],
            bart_rates: dict[str, Any] | None) -> dict[str, Any]:
  """Adds the load note, writes bench.json and bench.md, returns bench.json's contents."""
  notes = bench.notes
  env["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  # The start only: by the end the bench's own threads are in the load average.
  busy = env.get("load_average_1min") or 0
  if busy > 0.5 * env["cpu_logical_usable"] and jax.devices()[0].platform == "cpu":
    passive = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    notes.append(f"The machine was busy (1-minute load average {busy:.1f} at the start on "
                 f"{env['cpu_logical_usable']} CPUs): every figure is distorted"
                 + (" (OMP_WAIT_POLICY=PASSIVE was set, so PyTorch's threads slept while "
                    "waiting)" if passive else
                    ", PyTorch's most: its OpenMP threads spin while waiting and ran about "
                    "10x slower on a shared 2-core machine; OMP_WAIT_POLICY=PASSIVE avoids "
                    "that") + ". Rerun on an idle machine for figures to report.")
  result = {"command": command or " ".join(sys.argv), "environment": env,
            "peaks": bench.peaks, "results": bench.rows, "conv_shapes": bench.conv_shapes,
            "study": study, "notes": notes,
            "bart_rates": bart_rates, "options": dataclasses.asdict(options)}
  _records.write_json(workdir / "bench.json", result)
  _records.write_atomic(workdir / "bench.md", _report.markdown(result))
  log(f"wrote {workdir / 'bench.json'} and {workdir / 'bench.md'}")
  return result


def _resnet_sizes(options: Options, mode: str, size: int) -> tuple[_Sizes, tuple[int, ...],
                                                                 list[str]]:
  """(sizes, EOT ms, defenses) of an ImageNet ResNet row set at `size` pixels in `mode`."""
  smoothing = ["smoothing"] if "smoothing" in options.defenses else []
  if mode == "smoke":
    batch = options.resnet_batch or 1
    return _Sizes(batch, 1, batch, 8), options.eots[:1], smoothing
  if mode == "cpu":
    # About 0.1 s per ResNet-50 224 x 224 image-gradient on 2 cores: 4 images and
    # 2 steps there, the issue's 32 images of 5 steps at 32 and 64 pixels.
    large = size >= 128
    batch = options.resnet_batch or (4 if large else 32)
    steps = min(options.steps, 2) if large else options.steps
    return _Sizes(batch, steps, batch, 20 if large else 100), options.eots, smoothing
  batch = options.resnet_batch or (32 if size >= 128 else 128)
  return (_Sizes(batch, options.steps, batch, min(options.votes, 100)), options.eots,
          list(options.defenses))


def _measure_imagenet_resnets(bench: _Bench, options: Options, dtypes: list[Any],
                              torch_ready: bool) -> None:
  """PGD and vote rows, and the per-convolution table, of every `options.resnets` entry."""
  if not options.resnets:
    return
  mode = options.resnet_mode
  if mode == "auto":
    mode = "full" if jax.devices()[0].platform != "cpu" else "cpu"
  planned = [(entry, *_resnet_sizes(options, mode, parse_resnet(entry)[1]))
             for entry in options.resnets]
  bench.notes.append(
      f"ImageNet ResNets ran in --resnet_mode={mode}, random images and weights (torchvision's "
      "initialisation, converted): " + "; ".join(
          f"{entry} batch {sizes.batch} x {sizes.steps} steps, EOT m in {list(eots)}, "
          f"{sizes.votes} votes, {', '.join(names) or 'no defense'}"
          for entry, sizes, eots, names in planned) + "."
      + {"cpu": " cpu mode leaves BaRT out: on an ImageNet ResNet it compiles for many "
                "minutes on a CPU.", "smoke": " smoke mode measures smoothing only.",
         "full": ""}[mode])
  for entry, sizes, eots, names in planned:
    depth, size = parse_resnet(entry)
    if not names:
      continue
    model = _imagenet_resnet(depth, size, sizes.batch, torch_ready)
    bench.measure_model(model, dtypes, names, {n: sizes for n in names}, eots)
    if options.conv_shapes:
      bench.conv_shapes += _conv_shapes.measure(
          models.logits_fn(model.flax_model, model.variables), (size, size, 3), sizes.batch,
          torch=model.torch_model is not None, model_label=model.label, log=bench.log)


def run_study(options: Options, config: Any, workdir: pathlib.Path, found: dict[str, Any],
              log: Callable[[str], None]) -> dict[str, Any]:
  """The whole-study comparison (see `_study`); returns its bench.json entry."""
  study = _study.setup(config, num_images=options.study_images,
                       study_workdir=options.study_workdir or None)
  spec = study.spec
  log(f"study: {len(spec.units())} units x {len(spec.checkpoints)} k on "
      f"{options.study_images} images; models: {study.models_note}")
  settings = _study.available_settings(_study.FAST_SETTINGS)
  # What the config itself sets that shapes the work (reported, not overridden).
  from_config = {name: getattr(spec, name) for name in ("eot_rows_per_call",)
                 if getattr(spec, name, None) is not None}
  ours = _study.jaxdef_way(study, workdir / "study_sweep", settings, progress=options.progress)
  log(f"study, jaxdef way ({settings or 'no fast settings in this SweepSpec'}; from the "
      f"config: {from_config or 'nothing'}): {ours['seconds']:.1f} s")
  # A rerun (the persistent compilation cache, `jaxdef.compile_cache`, gives a
  # new process the same): every program is compiled already.
  again = _study.jaxdef_way(study, workdir / "study_sweep_again", settings,
                            progress=options.progress)
  log(f"study, jaxdef way again, compiled programs reused: {again['seconds']:.1f} s")
  make_jax = lambda pair: _study.JaxReferenceEngine(study.classifiers[pair])
  reference = _study.reference_way(study, make_jax, progress=options.progress,
                                   label="reference way (JAX)")
  log(f"study, reference way in JAX: {reference['seconds']:.1f} s")
  agreement = _study.compare(ours["records"], reference["records"])
  agreement["expected"] = (
      "sequential votes may differ from the full vote on images whose vote is close; every "
      "other number is computed from the same keys" if settings.get("sequential_votes") else
      "both ways draw the same keys: every cell should be identical")
  result = {
      "models": study.models_note, "num_images": options.study_images,
      "units": len(spec.units()), "cells": len(spec.units()) * len(spec.checkpoints),
      "votes": spec.votes,
      "grid": (f"{len(spec.models)} models x {len(spec.defenses)} defense(s) x "
               f"{len(spec.targeted)} target modes x m in {tuple(spec.eots)} x "
               f"{len(spec.alphas)} alphas x k in {tuple(spec.checkpoints)}"),
      "jaxdef": {"seconds": ours["seconds"], "settings": settings,
                 "from_config": from_config,
                 "settings_text": ", ".join(f"{k}={v}" for k, v in {**settings,
                                                                     **from_config}.items())
                 or "one trajectory per (m, alpha)",
                 "image_gradients": ours["image_gradients"],
                 "forward_passes": ours["forward_passes"]},
      "jaxdef_again": {"seconds": again["seconds"],
                       "same_counts": _study.compare(again["records"], ours["records"])[
                           "cells_identical"] == len(ours["records"])},
      "reference_jax": {k: v for k, v in reference.items() if k != "records"},
      "ratio_reference_jax": reference["seconds"] / ours["seconds"],
      "ratio_reference_jax_again": reference["seconds"] / again["seconds"],
      "success_counts": agreement,
  }
  result["reference_torch"] = _torch_study(options, study, found, log)
  if result["reference_torch"].get("seconds") is not None:
    result["ratio_reference_torch"] = result["reference_torch"]["seconds"] / ours["seconds"]
    result["ratio_reference_torch_again"] = (result["reference_torch"]["seconds"]
                                             / again["seconds"])
  return result


def _torch_study(options: Options, study: _study.Study, found: dict[str, Any],
                 log: Callable[[str], None]) -> dict[str, Any]:
  if options.study_torch == "off" or not options.torch:
    return {"skipped": "off (--study_torch=off or --notorch)"}
  if not found.get("torch"):
    return {"skipped": _torch.missing_message(found)}
  if any(sigma is None for sigma in study.sigmas.values()):
    return {"skipped": "a defense of the study is not unclipped randomized smoothing"}
  sample = options.study_torch == "sample"
  units = _study.sample_units(study.spec) if sample else None
  measured = _study.reference_way(study, _study.torch_engines(study), units=units,
                                  progress=options.progress, label="reference way (PyTorch)")
  seconds = _study.extrapolate(measured, study.spec) if sample else measured["seconds"]
  log(f"study, reference way in PyTorch: {measured['seconds']:.1f} s on "
      f"{measured['units_run']} units" + (f", {seconds:.1f} s extrapolated to all" if sample
                                          else ""))
  whole = _study.reference_way_counts(study.spec, study.images.shape[0])
  return {"seconds": seconds, "seconds_measured": measured["seconds"], "extrapolated": sample,
          "units_run": measured["units_run"], "unit_seconds": measured["unit_seconds"],
          "clean_seconds": measured["clean_seconds"],
          "image_gradients_all": whole["image_gradients"],
          "forward_passes_all": whole["forward_passes"],
          "records": measured["records"]}
