"""Row limits per platform (jaxdef.memory), bounded votes, and the dry run's memory plan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd
from configs import default as default_config
from configs import invariance_smoothing
from configs import kxm_sweep
from configs import lack_of_randomness
from jaxdef import classifier
from jaxdef import experiments
from jaxdef import memory
from jaxdef.experiments import _kxm
from jaxdef.experiments import _sources
from jaxdef.experiments import _sweep

GB = 2**30


def test_row_cost_of_a_matmul_is_its_input_and_output_rows():
  """Independent arithmetic: x (B, D) @ w (D, E) keeps an input row (D floats) and
  an output row (E floats) per row, and the weights once."""
  d, e = 512, 96
  weights = jax.ShapeDtypeStruct((d, e), jnp.float32)
  apply = lambda w, x: x.reshape(x.shape[0], -1) @ w
  cost = memory.row_cost(apply, weights, (8, 8, 8), gradient=False)
  assert cost.per_row == 4 * (d + e)
  assert cost.fixed == 4 * d * e
  assert cost.bytes_for(10) == 4 * d * e + 10 * 4 * (d + e)
  # The input gradient returns an input-sized row (x itself is not needed: linear).
  gradient = memory.row_cost(apply, weights, (8, 8, 8), gradient=True)
  assert 4 * d <= gradient.per_row <= 4 * (d + e)


def test_resnet50_gradient_rows_cost_what_the_issue_measured():
  """About 53 MB per ResNet-50 224 x 224 EOT gradient row in float32 (issue 19)."""
  model, _ = jd.models.resnet(50, 1000)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                                train=False))
  apply = lambda v, x: model.apply(v, x, train=False)
  cost = memory.row_cost(apply, variables, (224, 224, 3), gradient=True)
  assert 40 * 2**20 < cost.per_row < 70 * 2**20


def test_rows_per_call_auto_is_the_cpu_choice_or_half_the_device():
  cost = memory.RowCost(per_row=50 * 2**20, fixed=2**30)
  assert memory.rows_per_call("auto", cost, on_cpu=256, platform="cpu") == 256
  assert memory.rows_per_call("auto", cost, on_cpu=None, platform="cpu") is None
  # A stated 80 GB device: (40 GB - 1 GB) / 50 MB.
  assert memory.rows_per_call("auto", cost, on_cpu=256, memory_bytes=80 * GB) == 798
  assert memory.rows_per_call("auto", cost, on_cpu=None, memory_bytes=80 * GB,
                              platform="gpu") == 798
  assert memory.rows_per_call(64, cost, on_cpu=256) == 64
  assert memory.rows_per_call(0, cost, on_cpu=256) is None
  assert memory.rows_per_call(None, cost, on_cpu=256) is None
  # A tiny device still runs one row per call.
  assert memory.rows_per_call("auto", cost, on_cpu=256, memory_bytes=2**20) == 1


def test_rows_per_call_computes_the_cost_only_when_needed():
  calls = []

  def cost():
    calls.append(1)
    return memory.RowCost(per_row=2**20, fixed=0)

  assert memory.rows_per_call("auto", cost, on_cpu=256, platform="cpu") == 256
  assert not calls
  assert memory.rows_per_call("auto", cost, on_cpu=256, memory_bytes=GB) == 512
  assert calls == [1]


@pytest.mark.parametrize("setting", ["AUTO", -1, 2.5, True])
def test_rows_per_call_refuses_other_settings(setting):
  with pytest.raises(ValueError, match=r"eot_rows_per_call must be 'auto', 0 \(no limit\)"):
    memory.rows_per_call(setting, None, on_cpu=256, name="eot_rows_per_call")


def test_auto_on_an_accelerator_needs_the_cost():
  with pytest.raises(ValueError, match="needs the model's row cost"):
    memory.rows_per_call("auto", None, on_cpu=256, memory_bytes=80 * GB, platform="gpu")


def test_this_cpu_has_no_device_memory_limit():
  assert memory.device_memory_bytes() is None


def _dense_classifier(**kwargs):
  rng = np.random.default_rng(0)
  weights = jnp.asarray(rng.normal(size=(4 * 4, 3)).astype(np.float32))
  logits = lambda x: x.reshape(x.shape[0], -1) @ weights
  return jd.StochasticClassifier(logits, jd.defenses.randomized_smoothing(0.3), **kwargs)


def test_vote_rows_bound_the_draws_per_call_and_keep_the_votes():
  images = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (6, 4, 4, 1)).astype(np.float32))
  free = _dense_classifier(vote_chunk_size=10)
  bounded = _dense_classifier(vote_chunk_size=10, vote_rows_per_call=13)
  assert classifier.draws_per_call(free, 40, 6) == 10
  assert classifier.draws_per_call(bounded, 40, 6) == 2  # 13 // 6 images
  assert classifier.draws_per_call(_dense_classifier(vote_rows_per_call=4), 40, 6) == 1
  key = jax.random.key(2)
  np.testing.assert_array_equal(bounded.draw_logits(key, images, 40),
                                free.draw_logits(key, images, 40))
  np.testing.assert_array_equal(bounded.predict_sequential(key, images, 40).labels,
                                free.predict_sequential(key, images, 40).labels)
  with pytest.raises(ValueError, match="vote_rows_per_call"):
    _dense_classifier(vote_rows_per_call=0)


def test_configs_resolve_their_row_limits_on_this_cpu():
  config = default_config.get_config("tiny")
  assert config.attack.eot_rows_per_call == "auto"
  assert config.attack.vote_rows_per_call == "auto"
  fn = jd.models.logits_fn(*jd.models.small_resnet(widths=(4, 8), key=jax.random.key(0)))
  assert _sources.eot_rows_per_call(config, {"m": fn}) == memory.CPU_ROWS_PER_CALL
  assert _sources.vote_settings(config, fn) == {
      "vote_chunk_size": config.attack.vote_chunk_size, "vote_rows_per_call": None}
  spec = _kxm.sweep_spec(config, {"m": fn}, config.defenses)
  assert spec.eot_rows_per_call == memory.CPU_ROWS_PER_CALL  # what the default run uses
  assert _kxm.sweep_spec(config, config.models, config.defenses).eot_rows_per_call == 256
  config.attack.eot_rows_per_call = 64
  config.attack.vote_rows_per_call = 100
  assert _sources.eot_rows_per_call(config, {"m": fn}) == 64
  assert _sources.vote_settings(config, fn)["vote_rows_per_call"] == 100
  # A stated device: "auto" fills half of it with this model's rows.
  config.attack.vote_rows_per_call = "auto"
  config.device_memory_gb = 1
  rows = _sources.vote_settings(config, fn)["vote_rows_per_call"]
  assert rows is not None and rows > 1000


IMAGENET_CONFIGS = [(kxm_sweep, "imagenet"), (lack_of_randomness, "imagenet"),
                    (invariance_smoothing, "imagenette")]


@pytest.mark.parametrize("module, variant", IMAGENET_CONFIGS)
def test_imagenet_programs_fit_an_80_gb_device_at_1000_images(module, variant):
  config = module.get_config(variant)
  assert config.data.num_images == 1000
  plan = experiments.dry_run(config)["memory"]
  assert plan["device_gb"] == 80
  estimated = {label: entry for label, entry in plan["models"].items()
               if isinstance(entry, dict)}
  assert estimated
  for label, entry in estimated.items():
    assert entry["fits"], (label, entry)
    for program in ("attack_step", "vote"):
      assert entry[program]["rows"] >= 1000  # at least one draw of every image
      assert entry[program]["estimated_gb"] <= 80, (label, program, entry)


def test_without_row_limits_the_dry_run_shows_what_would_not_fit():
  """The k x m sweep's sanity vote before row limits: 100 draws x 1,000 images."""
  config = kxm_sweep.get_config("imagenet")
  config.attack.vote_rows_per_call = 0
  config.attack.eot_rows_per_call = 0
  entry = experiments.dry_run(config)["memory"]["models"]["resnet50"]
  assert entry["vote"]["rows"] == 100 * 1000
  assert entry["attack_step"]["rows"] == 20 * 1000
  assert not entry["fits"] and entry["largest"] == "vote"
  assert entry["vote"]["estimated_gb"] > 1000
  config.device_memory_gb = 160  # a stated device of another size
  assert experiments.dry_run(config)["memory"]["device_gb"] == 160


def test_sequential_votes_pass_over_undecided_images_on_a_cpu_only():
  assert _sweep.sequential_sub_batches("cpu") == 8
  assert _sweep.sequential_sub_batches("gpu") == _sweep.sequential_sub_batches("tpu") == 1
  assert _sweep.sequential_sub_batches() == 8  # this machine
