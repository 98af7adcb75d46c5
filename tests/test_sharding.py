"""Data parallelism over local devices (jaxdef.sharding) on 4 simulated CPU devices.

The 4-device runs happen in one subprocess (XLA_FLAGS must be set before jax
is imported): this file run as a script computes every case with sharding
off (one device) and on (4 devices), saves the arrays, and the tests below
compare them, and compare the one-device numbers with this process's.

What is bit-identical and what is not, on XLA:CPU: a dense network's
attacks and votes are bit-identical sharded, padded or not. A convolution
runs through Eigen's tensor contraction, whose blocking depends on the rows
it is given (batch x H x W) and the thread count, and whose last rows go
through a remainder kernel that sums the taps in another order. So the last
image of a batch can differ in its last bits between batch sizes, and a
4-way sharded batch has four "last images". The conv tests therefore check
that each device computes exactly what one device computes on the same rows,
and that the attack's outputs agree with the one-device run.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd
from jaxdef import sharding
from jaxdef.attacks import _pgd

NUM_DEVICES = 4
BATCHES = (8, 6)  # divisible by 4, and padded to 8
FLAG = f"--xla_force_host_platform_device_count={NUM_DEVICES}"


def _mlp_classifier() -> jd.StochasticClassifier:
  """784-32-32-10 ReLU network with fixed random weights, behind randomized smoothing."""
  rng = np.random.default_rng(0)
  sizes = (28 * 28, 32, 32, 10)
  layers = [(jnp.asarray(rng.normal(size=(a, b)).astype(np.float32) / np.sqrt(a)),
             jnp.asarray(rng.normal(size=b).astype(np.float32) * 0.1))
            for a, b in zip(sizes[:-1], sizes[1:])]

  def logits(images):
    hidden = images.reshape(images.shape[0], -1) - 0.5
    for weight, bias in layers[:-1]:
      hidden = jax.nn.relu(hidden @ weight + bias)
    return hidden @ layers[-1][0] + layers[-1][1]

  return jd.StochasticClassifier(logits, jd.defenses.randomized_smoothing(0.25))


def _resnet_logits():
  model, variables = jd.models.small_resnet(widths=(2, 4, 4), key=jax.random.key(1))
  return jd.models.logits_fn(model, variables)


def _inputs(batch: int) -> tuple[jax.Array, jax.Array]:
  rng = np.random.default_rng(batch)
  images = rng.uniform(0, 1, (batch, 28, 28, 1)).astype(np.float32)
  return jnp.asarray(images), jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))


def _trajectory(clf, images, labels) -> dict[str, jax.Array]:
  results = jd.attacks.pgd_trajectory_results(
      jax.random.key(2), clf, images, labels, eps=8 / 255, alpha=2 / 255, eot=3,
      random_start=True, checkpoints=(2, 3))
  return {f"pgd_adversarial_{k}": r.adversarial for k, r in results.items()} | {
      f"pgd_objective_{k}": r.objective for k, r in results.items()}


def _mlp_cases(images, labels) -> dict[str, jax.Array]:
  clf = _mlp_classifier()
  key = jax.random.key(3)
  apgd = jd.attacks.apgd_result(key, clf, images, labels, steps=4, eot=2)
  sequential = clf.predict_sequential(key, images, n=40, chunk=10, error=0.1)
  return _trajectory(clf, images, labels) | {
      "apgd_adversarial": apgd.adversarial, "apgd_objective": apgd.objective,
      "predict": clf.predict(key, images, n=9), "vote_counts": clf.vote_counts(key, images, n=9),
      "invariance": clf.invariance(key, images, n=9),
      "sequential_labels": sequential.labels, "sequential_draws": sequential.draws}


def _alphas_batch(images, labels) -> dict[str, jax.Array]:
  """The sweep's path: two step sizes in one vmapped PGD run."""
  results = _pgd.pgd_trajectory_results_batch(
      jax.random.split(jax.random.key(5), 2), _mlp_classifier(), images, labels,
      [1 / 255, 3 / 255], eot=3, random_start=True, checkpoints=(2, 3))
  return {f"{name}_{a}_{k}": getattr(r[k], name) for a, r in enumerate(results) for k in (2, 3)
          for name in ("adversarial", "objective", "nonfinite_step")}


def _numpy(results: dict[str, jax.Array], prefix: str) -> dict[str, np.ndarray]:
  return {f"{prefix}/{name}": np.asarray(value) for name, value in results.items()}


def _conv_part(arrays: dict, facts: dict) -> None:
  """The conv model: PGD on both batches, and each device's rows."""
  resnet = jd.StochasticClassifier(_resnet_logits(), jd.defenses.randomized_smoothing(0.25))
  for batch in BATCHES:
    images, labels = _inputs(batch)
    with sharding.use_devices("off"):
      arrays |= _numpy(_trajectory(resnet, images, labels), f"resnet/off/{batch}")
    on = _trajectory(resnet, images, labels)
    arrays |= _numpy(on, f"resnet/on/{batch}")
    adversarial = on["pgd_adversarial_3"]
    facts[f"pgd_devices_{batch}"] = len(adversarial.sharding.device_set)
    facts[f"pgd_shard_rows_{batch}"] = sorted(
        shard.data.shape[0] for shard in adversarial.addressable_shards)

  # Each device runs the one-device program on its rows, bit for bit (a
  # deterministic defense, so that no draw depends on the row index).
  plain = jd.StochasticClassifier(_resnet_logits())
  images, _ = _inputs(6)
  arrays["resnet/per_device/on"] = np.asarray(plain.draw_logits(jax.random.key(0), images, 1))[0]
  (padded,), _ = sharding.put_batch(images)
  with sharding.use_devices("off"):
    rows = np.asarray(padded)
    arrays["resnet/per_device/off"] = np.concatenate(
        [np.asarray(plain.logits_fn(jnp.asarray(rows[i:i + 2]))) for i in range(0, 8, 2)])[:6]


def _dense_part(arrays: dict, facts: dict) -> None:
  """The dense model on the padded batch (whose sharded program is the
  divisible batch's): every attack and vote; then device selections."""
  images, labels = _inputs(6)
  with sharding.use_devices("off"):
    arrays |= _numpy(_mlp_cases(images, labels), "mlp/off/6")
    arrays |= _numpy(_alphas_batch(images, labels), "alphas/off/6")
  arrays |= _numpy(_mlp_cases(images, labels), "mlp/on/6")
  # An attacked subset: one device attacks those rows; four attack all and reset the rest.
  for where in ("off", "on"):
    with sharding.use_devices("off" if where == "off" else "auto"):
      result = jd.attacks.pgd_trajectory_results(
          jax.random.key(4), _mlp_classifier(), images, labels, eps=8 / 255, alpha=2 / 255,
          eot=3, checkpoints=(2,), subset=[0, 2, 5])[2]
    arrays[f"subset/{where}/adversarial"] = np.asarray(result.adversarial)
    arrays[f"subset/{where}/objective"] = np.asarray(result.objective)
    arrays[f"subset/{where}/nonfinite_step"] = np.asarray(result.nonfinite_step)
  arrays |= _numpy(_alphas_batch(images, labels), "alphas/on/6")

  # The padded batch as placed: rows 6 and 7 repeat row 5, one pair per device.
  (placed,), batch = sharding.put_batch(jnp.arange(6))
  facts["placed"] = [np.asarray(placed).tolist(), batch, str(placed.sharding.spec),
                     [np.asarray(s.data).tolist() for s in placed.addressable_shards]]

  # A two-device selection, and a bad one.
  with sharding.use_devices(2):
    facts["two_devices"] = len(sharding.active_devices())
    arrays["mlp/two/6/predict"] = np.asarray(_mlp_classifier().predict(jax.random.key(3),
                                                                       images, n=9))
  try:
    sharding.set_devices(NUM_DEVICES + 1)
  except ValueError as error:
    facts["too_many"] = str(error)
  facts["after_error"] = str(sharding.get_devices())


PROGRAM_BATCH = 16  # 4 rows per device


def _compiled_facts(lowered) -> dict:
  """What the compiled (partitioned) program does per device: the rows of
  every convolution, and its collectives with their operand shapes."""
  text = lowered.compile().as_text()
  rows = sorted({int(shape.split(",")[0]) for shape in re.findall(
      r"= f32\[([\d,]+)\]\{[^}]*\} convolution\(", text)})
  collectives = re.findall(r"= (\w+\[[\d,]*\])\S* (all-gather|all-to-all|all-reduce|"
                           r"collective-permute|reduce-scatter)(?:-start)?\(", text)
  return {"conv_rows": rows, "collectives": [[kind, shape] for shape, kind in collectives]}


def _programs_part(arrays: dict, facts: dict) -> None:
  """Compiles every batched program for 4 devices and records `_compiled_facts`.

  A conv model whose 3 x 3 convolutions keep XLA's formulation, so that the
  compiled programs show them; B = 16, so one device's share is 4 rows.
  """
  from jaxdef import _sequential
  from jaxdef import classifier
  from jaxdef.attacks import _apgd
  model, variables = jd.models.small_resnet(widths=(8, 16, 16), key=jax.random.key(1))
  clf = jd.StochasticClassifier(jd.models.logits_fn(model, variables),
                                jd.defenses.randomized_smoothing(0.25), vote_chunk_size=5)
  images, labels = _inputs(PROGRAM_BATCH)
  (images, labels), _ = sharding.put_batch(images, labels)
  key, clf = sharding.put_replicated(jax.random.key(0), clf)
  pgd = dict(clf=clf, norm="inf", targeted=jnp.bool_(False), use_random_start=True, loss="ce",
             eot_chunk_size=None, checkpoints=(1, 2))
  eps, alpha = jnp.float32(8 / 255), jnp.float32(2 / 255)
  table = jnp.asarray(_sequential.decision_table(20, 5, 0.01, 10))
  programs = {
      "pgd_eot1": _pgd._pgd_run.lower(key, images, labels, eps, alpha, None, eot=1, **pgd),
      "pgd_eot10": _pgd._pgd_run.lower(key, images, labels, eps, alpha, None, eot=10, **pgd),
      "alphas_eot3": _pgd._pgd_run_batch.lower(
          jax.random.split(key, 2), images, labels, eps, jnp.asarray([1 / 255, 2 / 255]), None,
          eot=3, **pgd),
      "apgd_eot2": _apgd._apgd_run.lower(
          key, images, labels, labels, eps, jnp.float32(0.75), jnp.float32(0.75), clf=clf,
          steps=3, eot=2, norm="inf", targeted=False, use_random_start=False, loss="ce",
          eot_chunk_size=None),
      "votes_n10": classifier._draw_logits.lower(clf, key, images, 10),
      "sequential_chunk5": _sequential.sequential_vote.lower(
          clf, key, images, table, 20, 5, 2, jnp.zeros(PROGRAM_BATCH, bool)),
      "invariance_clean": classifier._undefended_logits.lower(clf, key, images),
  }
  facts["programs"] = {name: _compiled_facts(lowered) for name, lowered in programs.items()}


PARTS = {"conv": _conv_part, "dense": _dense_part, "programs": _programs_part}


def _worker(part: str, out_dir: pathlib.Path) -> None:
  """Runs in a 4-device subprocess; writes <part>.npz and <part>.json."""
  assert jax.local_device_count() == NUM_DEVICES, jax.devices()
  arrays, facts = {}, {}
  PARTS[part](arrays, facts)
  np.savez(out_dir / f"{part}.npz", **arrays)
  (out_dir / f"{part}.json").write_text(json.dumps(facts))


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
  """(arrays, facts) from the 4-device subprocesses, and this process's one-device numbers.

  XLA compiles each program on one thread: the two parts run in two
  subprocesses while this process computes its own numbers.
  """
  out_dir = tmp_path_factory.mktemp("sharding")
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + FLAG).strip(),
             JAX_PLATFORMS="cpu")
  processes = {part: subprocess.Popen([sys.executable, __file__, part, str(out_dir)], env=env,
                                      text=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE) for part in PARTS}
  try:
    images, labels = _inputs(6)
    arrays = _numpy(_mlp_cases(images, labels), "mlp/here/6")
    facts = {}
    for part, process in processes.items():
      _, stderr = process.communicate(timeout=900)
      assert process.returncode == 0, f"{part}: {stderr[-4000:]}"
      arrays |= dict(np.load(out_dir / f"{part}.npz"))
      facts |= json.loads((out_dir / f"{part}.json").read_text())
  finally:
    for process in processes.values():
      if process.poll() is None:
        process.kill()
  return arrays, facts


def test_dense_model_attacks_and_votes_are_bit_identical_sharded_and_padded(four_devices):
  arrays, _ = four_devices
  names = [k.split("/")[-1] for k in arrays if k.startswith("mlp/off/6/")]
  assert len(names) == 11
  for name in names:
    off, on = arrays[f"mlp/off/6/{name}"], arrays[f"mlp/on/6/{name}"]
    assert off.shape == on.shape and off.dtype == on.dtype, name
    np.testing.assert_array_equal(on, off, err_msg=name)
  # The attacks moved the images: equality is not that of two no-ops.
  images, _ = _inputs(6)
  for name in ("pgd_adversarial_3", "apgd_adversarial"):
    assert np.abs(arrays[f"mlp/on/6/{name}"] - np.asarray(images)).max() > 0.02


def test_batched_step_sizes_are_bit_identical_sharded_and_padded(four_devices):
  arrays, _ = four_devices
  names = [k.split("/")[-1] for k in arrays if k.startswith("alphas/off/6/")]
  assert len(names) == 12
  for name in names:
    np.testing.assert_array_equal(arrays[f"alphas/on/6/{name}"], arrays[f"alphas/off/6/{name}"],
                                  err_msg=name)
  assert not np.array_equal(arrays["alphas/on/6/adversarial_0_3"],
                            arrays["alphas/on/6/adversarial_1_3"])


def test_an_attacked_subset_gives_the_one_device_results(four_devices):
  arrays, _ = four_devices
  for name in ("adversarial", "objective", "nonfinite_step"):
    np.testing.assert_array_equal(arrays[f"subset/on/{name}"], arrays[f"subset/off/{name}"],
                                  err_msg=name)
  images = np.asarray(_inputs(6)[0])
  outside = [1, 3, 4]
  np.testing.assert_array_equal(arrays["subset/on/adversarial"][outside], images[outside])
  assert np.isnan(arrays["subset/on/objective"][outside]).all()
  assert np.abs(arrays["subset/on/adversarial"][[0, 2, 5]] - images[[0, 2, 5]]).max() > 0.01


def test_outputs_are_sharded_over_four_devices_and_padding_repeats_the_last_row(four_devices):
  _, facts = four_devices
  assert facts["pgd_devices_8"] == NUM_DEVICES
  assert facts["pgd_shard_rows_8"] == [2, 2, 2, 2]
  values, batch, spec, shards = facts["placed"]
  assert values == [0, 1, 2, 3, 4, 5, 5, 5] and batch == 6
  assert spec in ("P('data',)", "PartitionSpec('data',)")
  assert shards == [[0, 1], [2, 3], [4, 5], [5, 5]]


def test_two_devices_and_a_bad_selection(four_devices):
  arrays, facts = four_devices
  assert facts["two_devices"] == 2
  np.testing.assert_array_equal(arrays["mlp/two/6/predict"], arrays["mlp/off/6/predict"])
  assert "allowed: 1 to 4" in facts["too_many"]
  assert facts["after_error"] == "auto"  # a refused setting leaves the old one


def test_conv_model_each_device_computes_its_rows_as_one_device_does(four_devices):
  arrays, _ = four_devices
  np.testing.assert_array_equal(arrays["resnet/per_device/on"], arrays["resnet/per_device/off"])


@pytest.mark.parametrize("batch", BATCHES)
def test_conv_model_pgd_agrees_with_one_device(four_devices, batch):
  arrays, _ = four_devices
  images, _ = _inputs(batch)
  assert np.abs(arrays[f"resnet/on/{batch}/pgd_adversarial_3"] - np.asarray(images)).max() > 0.02
  for k in (2, 3):
    off = arrays[f"resnet/off/{batch}/pgd_adversarial_{k}"]
    on = arrays[f"resnet/on/{batch}/pgd_adversarial_{k}"]
    # Steps follow the gradient's sign, which last-bit differences do not flip.
    np.testing.assert_array_equal(on, off)
    np.testing.assert_allclose(arrays[f"resnet/on/{batch}/pgd_objective_{k}"],
                               arrays[f"resnet/off/{batch}/pgd_objective_{k}"],
                               rtol=1e-6, atol=1e-6)


def test_one_device_numbers_match_this_process(four_devices):
  arrays, _ = four_devices
  here = {k: v for k, v in arrays.items() if k.startswith("mlp/here/6/")}
  assert len(here) == 11
  for key, value in here.items():
    name = key.split("/")[-1]
    np.testing.assert_array_equal(value, arrays[f"mlp/off/6/{name}"], err_msg=name)
    np.testing.assert_array_equal(value, arrays[f"mlp/on/6/{name}"], err_msg=name)


# Draws (or draws x step sizes) each model call of the program evaluates at once.
PROGRAM_DRAWS = {"pgd_eot1": 1, "pgd_eot10": 10, "alphas_eot3": 6, "apgd_eot2": 2,
                 "votes_n10": 5, "sequential_chunk5": 5, "invariance_clean": 1}


@pytest.mark.parametrize("program", sorted(PROGRAM_DRAWS))
def test_every_program_computes_a_quarter_of_the_rows_per_device(four_devices, program):
  """Each convolution sees B/4 rows per draw, and nothing the size of an
  activation crosses devices: the only collectives are scalar reductions
  (a sequential vote's "all decided" and its cost)."""
  _, facts = four_devices
  compiled = facts["programs"][program]
  draws = PROGRAM_DRAWS[program]
  per_device = PROGRAM_BATCH // NUM_DEVICES
  if program == "sequential_chunk5":
    # Passes of ceil(2 x 4 / 16) = 1 undecided row per device (2 of 16 on one).
    assert compiled["conv_rows"] == [draws * 1]
  else:
    # The 1 x 1 shortcut projections are matmuls; every 3 x 3 keeps XLA's convolution.
    assert compiled["conv_rows"] == [draws * per_device], compiled["conv_rows"]
  for kind, shape in compiled["collectives"]:
    assert kind == "all-reduce" and re.fullmatch(r"\w+\[\]", shape), (kind, shape)


# --- this process: one device ------------------------------------------------


def test_auto_on_one_device_places_nothing():
  assert jax.local_device_count() == 1
  assert sharding.get_devices() == "auto"
  assert sharding.active_devices() is None and sharding.data_mesh() is None
  images, labels = _inputs(6)
  (out_images, out_labels), batch = sharding.put_batch(images, labels)
  assert out_images is images and out_labels is labels and batch == 6
  assert sharding.unpad(images, 6) is images


def test_explicit_single_device_and_restoring_the_setting():
  images, _ = _inputs(3)
  with sharding.use_devices(1):
    (placed,), batch = sharding.put_batch(images)
    assert batch == 3 and placed.shape == images.shape
    assert placed.sharding.device_set == {jax.local_devices()[0]}
  with pytest.raises(RuntimeError, match="inside"):
    with sharding.use_devices("off"):
      assert sharding.active_devices() is None
      raise RuntimeError("inside")
  assert sharding.get_devices() == "auto"


@pytest.mark.parametrize("devices, error, match", [
    ("all", ValueError, "'auto', 'off'"),
    (2, ValueError, "allowed: 1 to 1"),
    (0, ValueError, "allowed: 1 to 1"),
    (True, TypeError, "got True"),
    (None, TypeError, "got None"),
    ([], ValueError, "empty"),
    (["cpu:0"], TypeError, "jax.Device"),
    (2.5, TypeError, "float"),
])
def test_bad_settings_are_named(devices, error, match):
  with pytest.raises(error, match=match):
    sharding.set_devices(devices)
  with pytest.raises(error, match=match):
    with sharding.use_devices(devices):
      pass
  assert sharding.get_devices() == "auto"


def test_duplicate_devices_are_refused():
  device = jax.local_devices()[0]
  with pytest.raises(ValueError, match="distinct"):
    sharding.set_devices([device, device])


def test_put_batch_refuses_mismatched_batches():
  with pytest.raises(ValueError, match="leading"):
    sharding.put_batch(jnp.zeros((4, 2)), jnp.zeros(3))


if __name__ == "__main__":
  import optimization

  # The test process's compile settings, so that its one-device numbers
  # match these bit for bit (optimization.py: the emitters can differ in
  # the last bit).
  optimization.compile_quickly_unless_told_otherwise()
  _worker(sys.argv[1], pathlib.Path(sys.argv[2]))
