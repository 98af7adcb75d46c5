"""Benchmark: jaxdef against the PyTorch way, as bench.json and bench.md.

  .venv/bin/python -m launch.bench --workdir=runs/bench

One line per measurement on stdout. Measures, compilation excluded (the
compile seconds are reported separately):
  1. PGD with EOT-m in image-gradients per second (an EOT-m step counts m
     per image) against randomized smoothing (sigma 0.25) and BaRT
     (kappa 6), and votes in defended forward passes per second, for the
     small Fashion-MNIST ResNet at each --widths and the study's ImageNet
     ResNets (--resnets: ResNet-18 and ResNet-50 at 32, 64 and 224 pixels),
     with every distinct convolution of those timed alone (--conv_shapes);
  2. XLA's FLOPs per image-gradient and the fraction of the device's peak
     reached (CPU: nominal from lscpu and a measured matmul; GPU: datasheet);
  3. the same architecture and weights in PyTorch (the Flax weights are
     converted from a random torch model, logits checked to 1e-4 first),
     attacked with torchattacks' EOTPGD behind randomized smoothing written
     in torch, and torch votes; jaxdef / PyTorch per row. Needs the
     benchmark extra (`pip install -r requirements-bench.txt`); without it
     the bench says which package is missing and skips those rows;
  4. BaRT against the cost of its transforms (--bart_rates);
  5. the whole study: the embedded default's sweep (configs/default.py) the
     reference way (an attack per k, EOT as a loop of single-draw calls,
     full votes as single calls; in JAX with the sweep's own keys, and in
     PyTorch) against `run_sweep` with its fastest settings; success counts
     of the JAX reference way and jaxdef are compared cell by cell.
About 15 minutes on an idle 2-core CPU with the defaults (AMD EPYC, 2026-11-23).

Flags:
  --workdir: output folder (bench.json, bench.md, study_sweep/).
  --batch, --steps: images per attack batch and PGD steps per timed call
    (small ResNet, randomized smoothing).
  --eot: EOT sample counts m (comma-separated).
  --votes, --vote_batch, --vote_chunk: draws per vote, images per vote,
    draws evaluated at once (at most; see --eot_rows_per_call).
  --eot_rows_per_call: most images per model call, both engines: jaxdef's
    EOT draws in an attack step are chunked under it (torchattacks' EOTPGD
    calls the model once per draw anyway) and votes evaluate at most that
    many rows at a time; auto: 256 on a CPU (its caches), no limit on a GPU;
    0: no limit.
  --defense: smoothing and/or bart (repeat the flag).
  --widths: small-ResNet stage widths, e.g. 8-16-32,16-32-64 (BaRT runs on
    the first only: it compiles for minutes on a CPU).
  --bart_batch, --bart_steps, --bart_votes: BaRT's sizes (slow on a CPU).
  --resnets: ImageNet ResNets as depth@pixels (default
    18@32,18@64,18@224,50@32,50@64,50@224; empty: none).
  --resnet_mode: auto (cpu on a CPU, full on a GPU) | cpu (32 images x 5
    steps at 32 and 64 pixels, 4 x 2 at 224, smoothing only) | full (batch
    128, 32 at 224, every defense) | smoke (1 image, 1 step, first m);
    --resnet_batch overrides the batch (0: by mode).
  --[no]conv_shapes: each distinct convolution of every --resnets model
    alone, forward and input gradient, both jaxdef formulations and
    PyTorch, at the attack rows' batch.
  --bfloat16: auto (GPU only) | on | off: also measure bfloat16 compute;
    only: bfloat16 alone.
  --[no]torch: the PyTorch rows; --threads: torch threads (0: one per
    usable CPU, XLA's CPU thread-pool size).
  --repeats, --row_budget_s: timed calls per row, stopping early once a
    row's timed calls add up to the budget.
  --flops: auto | compiled | lowered | off: XLA's cost analysis of the
    optimised or of the lowered program (no compile), or none; auto counts
    the compiled one except for BaRT and ResNet-50 on a CPU (minutes to
    compile again there).
  --[no]study: the whole-study comparison; --study_images (first N of the
    default's 100 images); --study_workdir: a finished default run whose
    trained models, config and images to use (else random-init small
    ResNets); --study_torch: sample (one unit per m, extrapolated) | all |
    off; --study_config: the sweep's config (default configs/default.py;
    overrides as launch.run's, e.g. --study_config.attack.eots='(1,)').
  --bart_rates: on | off | only: BaRT-kappa (kappa 1..6, per-image order) and
    each of its six transforms alone in image-draws per second at 28 x 28
    (batch 16), 64 x 64 (batch 16) and 224 x 224 (batch 4), RGB, with the
    ratio BaRT-kappa / (sum of its kappa transforms); "only" measures just
    that (about 5 minutes on 2 CPU cores); --bart_rates_sizes (side x batch,
    e.g. 28x16,224x4) and --bart_rates_kappas (e.g. 1,6) narrow it.
  --[no]progress: the study's progress bars.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from jaxdef.bench import _harness
from jaxdef.experiments._workdir_lock import WorkdirLock
from launch import _cli

_DEFAULTS = _harness.Options()
_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "default.py")

_WORKDIR = flags.DEFINE_string("workdir", "runs/bench", "Output folder.")
_BATCH = flags.DEFINE_integer("batch", _DEFAULTS.batch, "Images per attack batch.")
_STEPS = flags.DEFINE_integer("steps", _DEFAULTS.steps, "PGD steps per timed call.")
_EOT = flags.DEFINE_list("eot", [str(m) for m in _DEFAULTS.eots], "EOT sample counts m.")
_VOTES = flags.DEFINE_integer("votes", _DEFAULTS.votes, "Votes per prediction.")
_VOTE_BATCH = flags.DEFINE_integer("vote_batch", _DEFAULTS.vote_batch, "Images per vote.")
_VOTE_CHUNK = flags.DEFINE_integer("vote_chunk", _DEFAULTS.vote_chunk,
                                   "Draws evaluated at once in a vote.")
_DEFENSES = flags.DEFINE_multi_enum(
    "defense", list(_DEFAULTS.defenses), list(_harness.DEFENSE_LABELS),
    "Defenses to measure (repeat the flag).")
_WIDTHS = flags.DEFINE_list("widths", ["-".join(map(str, w)) for w in _DEFAULTS.widths],
                            "Small-ResNet stage widths, e.g. 8-16-32,16-32-64.")
_BART_BATCH = flags.DEFINE_integer("bart_batch", _DEFAULTS.bart_batch, "BaRT attack batch.")
_BART_STEPS = flags.DEFINE_integer("bart_steps", _DEFAULTS.bart_steps, "BaRT PGD steps.")
_BART_VOTES = flags.DEFINE_integer("bart_votes", _DEFAULTS.bart_votes, "BaRT votes.")
_RESNETS = flags.DEFINE_list("resnets", list(_DEFAULTS.resnets),
                             "ImageNet ResNets as depth@pixels, e.g. 18@64,50@224.")
_RESNET_MODE = flags.DEFINE_enum("resnet_mode", _DEFAULTS.resnet_mode, _harness.RESNET_MODES,
                                 "ImageNet ResNet sizes: auto = cpu on a CPU, full on a GPU.")
_RESNET_BATCH = flags.DEFINE_integer("resnet_batch", 0, "ImageNet ResNet batch (0: by mode).")
_CONV_SHAPES = flags.DEFINE_bool("conv_shapes", True, "Time every distinct convolution of "
                                 "the --resnets models alone, against PyTorch.")
_BFLOAT16 = flags.DEFINE_enum("bfloat16", _DEFAULTS.bfloat16, _harness.BFLOAT16_MODES,
                              "Also measure bfloat16 compute (auto: on a GPU only; only: "
                              "bfloat16 alone).")
_TORCH = flags.DEFINE_bool("torch", True, "Measure the PyTorch side (benchmark extra).")
_THREADS = flags.DEFINE_integer("threads", 0, "torch threads (0: one per usable CPU).")
_REPEATS = flags.DEFINE_integer("repeats", _DEFAULTS.repeats, "Most timed calls per row.")
_ROW_BUDGET = flags.DEFINE_float("row_budget_s", _DEFAULTS.row_budget_s,
                                 "Seconds of timed calls after which a row stops.")
_FLOPS = flags.DEFINE_enum("flops", _DEFAULTS.flops, _harness.FLOPS_MODES,
                           "XLA's cost analysis: auto, compiled, lowered or off.")
_STUDY = flags.DEFINE_bool("study", True, "Run the whole-study comparison.")
_STUDY_IMAGES = flags.DEFINE_integer("study_images", _DEFAULTS.study_images,
                                     "Images of the whole study (first N of the default's).")
with _cli.user_errors():  # reads the config file and applies --study_config.<field> overrides
  _STUDY_CONFIG = config_flags.DEFINE_config_file(
      "study_config", _DEFAULT_CONFIG, "The sweep of the whole study (the embedded default).")
_STUDY_WORKDIR = flags.DEFINE_string("study_workdir", "",
                                     "A finished default run whose trained models to use.")
_STUDY_TORCH = flags.DEFINE_enum("study_torch", _DEFAULTS.study_torch,
                                 _harness.STUDY_TORCH_MODES,
                                 "PyTorch reference way: one unit per m (extrapolated), all, off.")
_EOT_ROWS = flags.DEFINE_string(
    "eot_rows_per_call", "auto", "Most images per model call of a jaxdef attack step, EOT "
    "draws chunked under it: an integer (0: no limit) or auto (256 on a CPU, no limit on a GPU).")
_BART_RATES = flags.DEFINE_enum(
    "bart_rates", _DEFAULTS.bart_rates, _harness.BART_RATES_MODES,
    "BaRT-1..6 and each of its transforms alone, draws/s at 28, 64 and 224 pixels (RGB): "
    "on, off, or only (measure nothing else).")
_BART_RATES_SIZES = flags.DEFINE_list(
    "bart_rates_sizes", [f"{side}x{batch}" for side, batch in _DEFAULTS.bart_rates_sizes],
    "BaRT rates' sizes as side x batch, e.g. 28x16,224x4.")
_BART_RATES_KAPPAS = flags.DEFINE_list(
    "bart_rates_kappas", [str(k) for k in _DEFAULTS.bart_rates_kappas],
    "BaRT rates' kappa values, e.g. 1,6.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bars of the study (the "
                              "per-measurement lines are always printed).")


def _integers(name: str, values: list[str], example: str, separator: str = "") -> tuple:
  """The flag's comma-separated integers, or tuples of integers joined by `separator`."""
  try:
    if separator:
      return tuple(tuple(int(v) for v in value.split(separator)) for value in values)
    return tuple(int(value) for value in values)
  except ValueError:
    raise app.UsageError(f"--{name} must look like {example}; got {values}") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  eots = _integers("eot", _EOT.value, "1,10")
  try:
    eot_rows = None if _EOT_ROWS.value == "auto" else int(_EOT_ROWS.value)
  except ValueError:
    raise app.UsageError(f"--eot_rows_per_call must be an integer >= 0 or auto, got "
                         f"{_EOT_ROWS.value}") from None
  try:
    options = _harness.Options(
        batch=_BATCH.value, steps=_STEPS.value, eots=eots, votes=_VOTES.value,
        vote_batch=_VOTE_BATCH.value, vote_chunk=_VOTE_CHUNK.value,
        defenses=tuple(dict.fromkeys(_DEFENSES.value)),
        widths=_integers("widths", _WIDTHS.value, "8-16-32,16-32-64", "-"),
        bart_batch=_BART_BATCH.value, bart_steps=_BART_STEPS.value,
        bart_votes=_BART_VOTES.value, resnets=tuple(_RESNETS.value),
        resnet_mode=_RESNET_MODE.value, resnet_batch=_RESNET_BATCH.value,
        conv_shapes=_CONV_SHAPES.value, bfloat16=_BFLOAT16.value, torch=_TORCH.value,
        threads=_THREADS.value, repeats=_REPEATS.value, row_budget_s=_ROW_BUDGET.value,
        flops=_FLOPS.value, study=_STUDY.value, study_images=_STUDY_IMAGES.value,
        study_workdir=_STUDY_WORKDIR.value, study_torch=_STUDY_TORCH.value,
        progress=_PROGRESS.value, eot_rows_per_call=eot_rows, bart_rates=_BART_RATES.value,
        bart_rates_sizes=_integers("bart_rates_sizes", _BART_RATES_SIZES.value, "28x16,224x4",
                                   "x"),
        bart_rates_kappas=_integers("bart_rates_kappas", _BART_RATES_KAPPAS.value, "1,6"))
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  _cli.writable_folder("--workdir", _WORKDIR.value)
  study_config = _cli.loaded_config(_STUDY_CONFIG)
  with WorkdirLock(_WORKDIR.value):  # one benchmark per workdir (bench.json, study_sweep/)
    result = _harness.run(options, _WORKDIR.value, study_config=study_config,
                          command=" ".join(["python -m launch.bench", *sys.argv[1:]]))
  print(open(f"{_WORKDIR.value}/bench.md").read())
  return 0 if result else 1


if __name__ == "__main__":
  _cli.run(main)
