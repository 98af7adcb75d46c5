"""The benchmark harness: well-formed output at a tiny size, FLOP counts, the torch twin,
the missing-extra path and the reference way of the whole study.

No test here asserts a time: a benchmark is not a test. Sizes are tiny so
that the file runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default as default_config
from jaxdef import defenses
from jaxdef import models
from jaxdef.bench import _device
from jaxdef.bench import _harness
from jaxdef.bench import _study
from jaxdef.bench import _throughput
from jaxdef.bench import _torch
from jaxdef.classifier import StochasticClassifier
from jaxdef.experiments import _sweep
from jaxdef.models import _conv

HAS_TORCH = _torch.availability()["torch"] is not None
HAS_TORCHATTACKS = _torch.availability()["torchattacks"] is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed "
                                 "(requirements-bench.txt)")

TINY = _harness.Options(batch=3, steps=1, eots=(1, 2), votes=4, vote_batch=3, vote_chunk=4,
                        defenses=("smoothing",), widths=((4,),), resnets=(), repeats=1,
                        row_budget_s=1.0, study=False, progress=False, matmul_size=128,
                        bart_rates="off")


def _tiny_study_config(targeted=(False, True), eots=(1, 2)) -> ml_collections.ConfigDict:
  """The default's tiny variant: one model of one stage, one alpha, k in (1, 3)."""
  config = default_config.get_config("tiny")
  config.models = ml_collections.ConfigDict({"base": config.models["base"]})
  config.models.base.widths = (4,)  # one stage: the least to compile
  config.attack.targeted = targeted
  config.attack.eots = eots
  config.attack.alphas_255 = (4.0,)
  config.attack.steps = (1, 3)
  config.attack.votes = 8
  return config


def _finite_positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_harness_writes_json_and_markdown(tmp_path):
  # Lowered FLOPs: no second compile (the compiled count is checked on a matmul below).
  # 3 rows per call and a batch of 3: EOT-2 runs one draw at a time.
  options = dataclasses.replace(TINY, eots=(2,), flops="lowered", study=True, study_images=4,
                                eot_rows_per_call=3)
  config = _tiny_study_config(targeted=(False,), eots=(2,))
  result = _harness.run(options, tmp_path, study_config=config, command="test")
  written = json.loads((tmp_path / "bench.json").read_text())
  assert set(written) >= {"environment", "peaks", "results", "study", "notes", "command"}
  env = written["environment"]
  for key in ("date", "device_kind", "jax", "jaxlib", "cpu_model", "cpu_cores", "backend"):
    assert env[key] not in (None, ""), key
  assert _finite_positive(written["peaks"]["cpu_matmul_measured"]["gflops"])
  assert "FLOP/cycle" in written["peaks"]["cpu_nominal"]["how"]
  ours = [r for r in written["results"] if r["engine"] == "jaxdef"]
  assert [(r["kind"], r.get("eot")) for r in ours] == [("pgd", 2), ("vote", None)]
  assert ours[0]["eot_chunk"] == 1
  for row in ours:
    rate = row["image_gradients_per_second" if row["kind"] == "pgd" else
               "forward_passes_per_second"]
    flops = row["flops_per_image_gradient" if row["kind"] == "pgd" else "flops_per_forward"]
    assert _finite_positive(rate) and _finite_positive(flops) and row["compile_s"] >= 0
    assert 0 < row["fraction_of_cpu_matmul_measured"] and 0 < row["fraction_of_cpu_nominal"]
  # A gradient costs more than a forward pass of the same model.
  assert ours[0]["flops_per_image_gradient"] > ours[1]["flops_per_forward"]
  if HAS_TORCH:
    assert env["torch_threads"] >= 1
    theirs = {(r["kind"], r.get("eot")) for r in written["results"] if r["engine"] == "pytorch"}
    assert ("vote", None) in theirs
    assert (("pgd", 2) in theirs) == HAS_TORCHATTACKS
    assert _finite_positive(ours[1]["jaxdef_over_pytorch"])
    assert ours[0]["parity_error"] <= _torch.PARITY_TOLERANCE
  study = written["study"]
  assert study["cells"] == 2 and study["units"] == 1
  assert _finite_positive(study["ratio_reference_jax"])
  assert _finite_positive(study["ratio_reference_jax_again"])
  assert study["jaxdef_again"]["same_counts"] is True
  assert study["reference_jax"]["image_gradients"] == 4 * (1 + 3) * 2
  assert study["success_counts"]["cells_compared"] == 2
  # Random-init models: 0 = 0 here; test_reference_way_and_jaxdef_agree_on_every_cell
  # compares the two ways where attacks succeed.
  assert study["success_counts"]["mismatches"] == []
  if HAS_TORCH:
    assert study["reference_torch"]["extrapolated"] and study["reference_torch"]["units_run"] == 1
    assert _finite_positive(study["ratio_reference_torch"])
  text = (tmp_path / "bench.md").read_text()
  for heading in ("## Attack steps", "## Votes", "## Whole study", "reference way (JAX) / jaxdef",
                  "| 2 (chunks of 1) |"):
    assert heading in text
  assert result["results"] == written["results"]


def _hide_packages(monkeypatch, names):
  # A None entry in sys.modules makes `import name` raise ImportError.
  for name in names:
    monkeypatch.setitem(sys.modules, name, None)


def test_missing_torch_is_said_and_output_still_written(tmp_path, monkeypatch, capsys):
  _hide_packages(monkeypatch, ("torch", "torchvision", "torchattacks"))
  options = dataclasses.replace(TINY, widths=((2,),), eots=(1,), votes=2, flops="off")
  _harness.run(options, tmp_path, command="test")
  out = capsys.readouterr().out
  assert "missing package(s) torch, torchvision, torchattacks" in out
  assert "requirements-bench.txt" in out
  written = json.loads((tmp_path / "bench.json").read_text())
  assert {r["engine"] for r in written["results"]} == {"jaxdef"}
  assert "torch" not in written["environment"]
  assert "all PyTorch rows are skipped" in (tmp_path / "bench.md").read_text()


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_missing_torchattacks_skips_only_the_eotpgd_rows(tmp_path, monkeypatch):
  _hide_packages(monkeypatch, ("torchattacks",))
  options = dataclasses.replace(TINY, widths=((2,),), eots=(1,), votes=2, flops="off")
  written = _harness.run(options, tmp_path, command="test")
  theirs = [(r["kind"], r.get("eot")) for r in written["results"] if r["engine"] == "pytorch"]
  assert theirs == [("vote", None)]
  assert "missing package(s) torchattacks" in (tmp_path / "bench.md").read_text()


def test_bart_rates_only_measures_bart_against_its_transforms(tmp_path, monkeypatch):
  """--bart_rates=only: each transform and BaRT-kappa timed, ratio = BaRT / sum of parts.

  Two of BaRT's transforms stand for the list here, and BaRT-kappa is built
  from those two; the GPU command's smoke test (test_launch.py) times every
  transform of the real list.
  """
  transforms = tuple(t for t in defenses.BART_TRANSFORMS if t[0] in ("quantization", "swirl"))
  monkeypatch.setattr(defenses, "BART_TRANSFORMS", transforms)
  options = dataclasses.replace(TINY, bart_rates="only", torch=False, bart_rates_sizes=((8, 2),),
                                bart_rates_kappas=(1, 2), row_budget_s=0.01)
  written = _harness.run(options, tmp_path, command="test")
  assert written["results"] == [] and written["study"] is None
  (size,) = written["bart_rates"]["sizes"]
  assert (size["side"], size["batch"]) == (8, 2)
  assert list(size["transforms"]) == ["swirl", "quantization"]
  for kappa, row in size["bart"].items():
    parts = sum(size["transforms"][name]["seconds_per_draw"] for name, _ in transforms[:int(kappa)])
    assert _finite_positive(row["draws_per_second"])
    assert row["ratio"] == pytest.approx(row["seconds_per_draw"] / parts)
  text = (tmp_path / "bench.md").read_text()
  assert "## BaRT against the cost of its transforms" in text
  assert "| swirl |" in text and "| 2 |" in text
  assert "## Attack steps" not in text
  with pytest.raises(ValueError, match="bart_rates must be one of on, off, only"):
    _harness.Options(bart_rates="sometimes")


def test_xla_flops_of_a_matmul_are_2mnk():
  a = jnp.ones((64, 32))
  b = jnp.ones((32, 16))
  assert _device.xla_flops(jnp.matmul, a, b) == 2 * 64 * 32 * 16
  assert _device.xla_flops(jnp.matmul, a, b, compiled=False) == 2 * 64 * 32 * 16
  assert _device.first_cost(None) == {}
  assert _device.first_cost([{"flops": 3.0}]) == {"flops": 3.0}
  assert _device.first_cost({"flops": 3.0}) == {"flops": 3.0}


def test_peaks_cpu_nominal_and_gpu_table():
  cpu = {"cpu_flags": {"avx", "avx2", "fma"}, "cpu_cores": 4, "cpu_logical_usable": 2,
         "cpu_ghz": 3.0, "cpu_ghz_source": "test"}
  peak = _device.cpu_nominal_peak(cpu)
  assert peak["gflops"] == 2 * 3.0 * 32 and "2 FMA pipes" in peak["assumption"]
  cpu["cpu_flags"] = {"avx512f", "fma"}
  assert _device.cpu_nominal_peak(cpu)["flops_per_cycle"] == 64
  assert _device.gpu_peak("NVIDIA H100 80GB HBM3") == ("H100 SXM",
                                                        _device.GPU_PEAKS_TFLOPS["H100 SXM"])
  assert _device.gpu_peak("NVIDIA H200")[1]["bf16"] == pytest.approx(989.4)
  assert _device.gpu_peak("NVIDIA H100 PCIe")[0] == "H100 PCIe"
  assert _device.gpu_peak("Tesla T4") is None


def test_time_calls_stops_at_the_budget_and_counts_calls():
  seen = []
  timing = _throughput.time_calls(lambda i: seen.append(i), repeats=5, budget_s=1e-12,
                                  sync=lambda _: None)
  assert seen == [0, 1] and timing["timed_calls"] == 1  # one compiling call, one timed
  seen.clear()
  timing = _throughput.time_calls(lambda i: seen.append(i), repeats=3, budget_s=1e9,
                                  sync=lambda _: None)
  assert seen == [0, 1, 2, 3] and timing["timed_calls"] == 3 and timing["compile_s"] >= 0


def test_options_name_the_bad_argument():
  with pytest.raises(ValueError, match="defenses must be chosen from smoothing, bart"):
    _harness.Options(defenses=("jpeg",))
  with pytest.raises(ValueError, match="resnet_mode must be one of auto, cpu, full, smoke"):
    _harness.Options(resnet_mode="big")
  with pytest.raises(ValueError, match=r"resnets entries must be depth@pixels .* got '50x224'"):
    _harness.Options(resnets=("50x224",))
  with pytest.raises(ValueError, match="depth one of 18, 34, 50, 101, 152 .* got '20@64'"):
    _harness.Options(resnets=("20@64",))
  with pytest.raises(ValueError, match="bart_rates_kappas must be chosen from 1, 2, 3"):
    _harness.Options(bart_rates_kappas=(7,))
  with pytest.raises(ValueError, match="bart_rates_sizes must be"):
    _harness.Options(bart_rates_sizes=((28,),))
  with pytest.raises(ValueError, match="eots must be positive integers"):
    _harness.Options(eots=(0,))
  with pytest.raises(ValueError, match="study_images must be a positive integer"):
    _harness.Options(study_images=0)
  with pytest.raises(ValueError, match="eot_rows_per_call must be an integer >= 0"):
    _harness.Options(eot_rows_per_call=-1)


@needs_torch
@pytest.mark.parametrize("widths, blocks", [((4, 8, 16), 1), ((8, 8), 2)])
def test_torch_small_resnet_converts_to_flax_and_back(widths, blocks):
  net = _torch.small_resnet(widths, seed=3, blocks_per_stage=blocks)
  model, _ = models.small_resnet(10, widths=widths, blocks_per_stage=blocks)
  variables = _torch.to_flax(net, model, 1)
  images = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
  assert _torch.parity_error(net, models.logits_fn(model, variables), images) <= 1e-4
  # BN statistics were made non-trivial, so a misplaced BN tensor would show.
  assert float(np.abs(variables["batch_stats"]["bn1"]["mean"]).max()) > 0.01
  copy = _torch.load_flax(_torch.small_resnet(widths, seed=4, blocks_per_stage=blocks),
                          variables)
  np.testing.assert_array_equal(_torch.logits(copy, images), _torch.logits(net, images))


@needs_torch
def test_torch_vote_is_the_majority_with_lowest_label_ties():
  torch = _torch.torch_module()

  class Fixed(torch.nn.Module):
    """Draw d of the batch votes for class d % 3: counts 2, 2, 1 over 5 draws -> label 0."""

    def forward(self, x):
      draws = x.shape[0] // 2
      labels = torch.arange(draws).repeat_interleave(2) % 3
      return torch.nn.functional.one_hot(labels, 4).float()

  labels = _torch.vote_labels(Fixed(), torch.zeros(2, 1, 4, 4), votes=5, chunk=5)
  assert labels.tolist() == [0, 0]


def _pinned_study(num_images: int) -> _study.Study:
  """The default run's trained base model (tests/data/default_run) behind its smoothing.

  Trained, so small attacks succeed on some images and the two ways'
  agreement is over non-zero counts (a random-init ResNet labels every image
  alike with a margin no small attack moves: every cell would read 0).
  """
  import regression_default

  problem = regression_default.pinned_problem()
  pair = ("base", "smoothing_025")
  spec = _sweep.SweepSpec(models=pair[:1], defenses=pair[1:], targeted=(False, True),
                          eots=(2,), alphas=(6 / 255,), checkpoints=(1, 3), eps=16 / 255,
                          votes=8)
  clf = StochasticClassifier(problem.logits_fns["base"], problem.defenses["smoothing_025"],
                             vote_chunk_size=8)
  return _study.Study(spec=spec, classifiers={pair: clf},
                      flax_models={"base": problem.flax_models["base"]},
                      sigmas={"smoothing_025": 0.25},
                      images=np.asarray(problem.images[:num_images]),
                      labels=problem.labels[:num_images], targets=problem.targets[:num_images],
                      key=jax.random.key(0), models_note="tests/data/default_run base")


def test_reference_way_and_jaxdef_agree_on_every_cell(tmp_path):
  study = _pinned_study(12)
  settings = _study.available_settings(_study.EXACT_SETTINGS)
  ours = _study.jaxdef_way(study, tmp_path / "sweep", settings, progress=False)
  reference = _study.reference_way(
      study, lambda pair: _study.JaxReferenceEngine(study.classifiers[pair]), progress=False)
  agreement = _study.compare(ours["records"], reference["records"])
  assert agreement["cells_compared"] == len(ours["records"]) == 4
  assert agreement["mismatches"] == []
  assert sum(r["successes"] for r in reference["records"]) > 0  # not a trivial 0 = 0
  assert reference["image_gradients"] == 12 * 2 * (1 + 3) * 2
  assert ours["image_gradients"] == 12 * 2 * 3 * 2  # one trajectory per unit


def test_extrapolation_counts_each_unit_by_its_m():
  spec = _study.setup(_tiny_study_config(), num_images=2).spec
  first = {unit.eot: unit for unit in reversed(spec.units())}
  measured = {"unit_seconds": {first[1].name: 1.0, first[2].name: 10.0},
              "clean_seconds": {"a": 0.5}}
  # 2 target modes x (m=1, m=2) units of one pair, and one clean vote.
  assert _study.extrapolate(measured, spec) == pytest.approx(2 * 1.0 + 2 * 10.0 + 0.5)
  with pytest.raises(ValueError, match="no measured unit with m in \\[2\\]"):
    _study.extrapolate({"unit_seconds": {first[1].name: 1.0}, "clean_seconds": {"a": 0}}, spec)


def test_study_workdir_without_a_run_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    _study.setup(_tiny_study_config(), num_images=2, study_workdir=str(tmp_path))
  with pytest.raises(ValueError, match="study_images must be in \\[1, 8\\]"):
    _study.setup(_tiny_study_config(), num_images=9)


def test_key_derivation_matches_the_sweep():
  # The reference engine must draw the keys `_pgd_run` and `predict` draw.
  root = jax.random.key(5)
  engine = _study.JaxReferenceEngine.__new__(_study.JaxReferenceEngine)
  draws = engine.attack_draws(root, 3, 2)
  steps_key = jax.random.split(root)[1]
  expected = jax.random.split(jax.random.fold_in(steps_key, 3), 2)
  assert all(np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
             for a, b in zip(draws, expected))


@needs_torch
def test_conv_shapes_times_every_distinct_convolution_against_torch():
  from jaxdef.bench import _conv_shapes

  model, variables = models.small_resnet(10, widths=(4, 8))
  logits = models.logits_fn(model, variables)
  distinct = _conv_shapes.distinct_shapes(logits, (28, 28, 1), 2)
  # Stem, stage 1 (two 3x3 convs of one shape), stage 2 (strided 3x3, 3x3, 1x1 shortcut).
  assert [count for _, count in distinct] == [1, 2, 1, 1, 1]
  rows = _conv_shapes.measure(logits, (28, 28, 1), 2, torch=True, model_label="tiny",
                              repeats=1, budget_s=0.1, log=lambda _: None)
  assert len(rows) == len(distinct)
  for row, (shape, _) in zip(rows, distinct):
    assert row["x_shape"] == list(shape.x_shape)
    chosen = _conv.plan(shape.x_shape, shape.kernel_shape, shape.strides, shape.padding)
    assert row["plan"] == {"forward": chosen.forward, "input_gradient": chosen.input_gradient}
    assert row["jaxdef_forward_s"] == row["seconds"][f"{chosen.forward}_forward"]
    assert row["forward_vs_torch"] == pytest.approx(
        row["seconds"]["torch_forward"] / row["jaxdef_forward_s"])
    assert isinstance(row["rule_picked_faster_gradient"], bool)
  table = _conv_shapes.markdown(rows)
  assert "**tiny** (5 distinct convolutions; slowest against PyTorch:" in table
  assert "| 2 x 28 x 28 x 4 -> 8, 3x3 stride 2 | 1 |" in table
