"""Tests for jaxdef.train: optimiser, loop, defense on batches, checkpoints and exact resume.

A tiny ResNet (widths 8, 16; BatchNorm included) on 512 Fashion-MNIST
images keeps every fit to a second or two after one compilation; fits that
share the model, defense and schedule share the compiled step.
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdef import data
from jaxdef import defenses
from jaxdef import models
from jaxdef import train
from jaxdef.train import _loop

EPOCHS = 2
BATCH = 16
SETTINGS = dict(epochs=EPOCHS, batch_size=BATCH, learning_rate=3e-3, seed=3, progress=False)


@pytest.fixture(scope="module")
def setup():
  images, labels = data.load_fashion_mnist("train")
  model, variables = models.small_resnet(widths=(8, 16), key=jax.random.key(0))
  return model, variables, (images[:512], labels[:512]), (images[512:768], labels[512:768])


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
  """One uninterrupted run with checkpoints: the result and its workdir."""
  model, variables, train_data, val_data = setup
  workdir = tmp_path_factory.mktemp("reference")
  result = train.fit(model, variables, train_data, val_data, workdir=workdir, **SETTINGS)
  return result, workdir


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _without_timings(history):
  return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]


# --- optimiser -----------------------------------------------------------------------------


@pytest.mark.parametrize("warmup", [0, 10])
def test_learning_rate_schedule_matches_closed_form_and_optax(warmup):
  total, peak = 100, 1e-3
  schedule = train.learning_rate_schedule(peak, total, warmup_steps=warmup)
  steps = np.arange(0, total + 1)
  if warmup:
    reference = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)
    rising = peak * steps / warmup
    cosine = 0.5 * peak * (1 + np.cos(np.pi * (steps - warmup) / (total - warmup)))
    expected = np.where(steps < warmup, rising, cosine)
  else:
    reference = optax.cosine_decay_schedule(peak, total)
    expected = 0.5 * peak * (1 + np.cos(np.pi * steps / total))  # CosineAnnealingLR, eta_min 0
  got = np.array([schedule(t) for t in steps])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-10)
  np.testing.assert_allclose(got, [reference(t) for t in steps], rtol=1e-6, atol=1e-12)
  assert got[0] == (0.0 if warmup else peak) and abs(got[-1]) < 1e-12


def test_optimizer_is_adamw_with_decoupled_decay():
  lr, decay, total = 1e-2, 0.1, 10
  tx = train.optimizer(lr, total, weight_decay=decay)
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  grads = [{"w": jnp.array([0.5, 0.1, -0.3])}, {"w": jnp.array([-0.2, 0.4, 0.1])}]
  state, p = tx.init(params), params
  m = v = np.zeros(3)
  w = np.array([1.0, -2.0, 3.0])
  for t, g in enumerate(grads):
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    g = np.asarray(g["w"])
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
    m_hat, v_hat = m / (1 - 0.9 ** (t + 1)), v / (1 - 0.999 ** (t + 1))
    rate = 0.5 * lr * (1 + np.cos(np.pi * t / total))
    w = w - rate * (m_hat / (np.sqrt(v_hat) + 1e-8) + decay * w)  # torch.optim.AdamW's update
  np.testing.assert_allclose(p["w"], w, rtol=1e-5)


# --- the loop --------------------------------------------------------------------------------


def test_fit_learns_and_updates_batchnorm(setup, reference):
  _, variables, _, _ = setup
  result, _ = reference
  history = result.history
  assert [h["epoch"] for h in history] == [1, 2]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  # 64 small batches: far from trained, but well above chance (0.1).
  assert history[-1]["train_accuracy"] > 0.25 and history[-1]["val_accuracy"] > 0.2
  assert history[-1]["step"] == EPOCHS * (512 // BATCH)
  assert history[-1]["learning_rate"] < 1e-4  # the cosine has nearly reached 0
  stats = result.variables["batch_stats"]["bn1"]["mean"]
  assert not np.allclose(stats, variables["batch_stats"]["bn1"]["mean"])
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(result.variables))


def test_checkpoints_per_epoch_best_and_history_are_written(setup, reference):
  model, variables, _, val_data = setup
  result, workdir = reference
  assert [e for e, _ in train.list_checkpoints(workdir)] == [1, 2]
  assert train.epoch_path(workdir, 2).name == "epoch_002.msgpack"
  last = train.load_checkpoint(train.epoch_path(workdir, 2), variables_like=variables)
  assert (last.epoch, last.step) == (2, EPOCHS * 512 // BATCH)
  _assert_trees_equal(last.variables, result.variables)
  assert _without_timings(last.history) == _without_timings(result.history)
  assert last.data_order["seed"] == 3
  # best.msgpack: plain variables of the best epoch, readable by jaxdef.models.
  assert result.best_path == workdir / "best.msgpack"
  best_epoch = 1 + int(np.argmax([h["val_accuracy"] for h in result.history]))
  assert result.best_epoch == best_epoch
  best = models.load_variables(result.best_path, like=variables)
  _assert_trees_equal(best, train.load_checkpoint(train.epoch_path(workdir, best_epoch)).variables)
  score = train.evaluate(model, best, *val_data)["accuracy"]
  assert score == pytest.approx(result.history[best_epoch - 1]["val_accuracy"])
  saved = json.loads((workdir / "history.json").read_text())
  assert saved["best_epoch"] == best_epoch and len(saved["history"]) == EPOCHS


def test_resume_after_interruption_is_bit_identical(setup, reference, tmp_path):
  model, variables, train_data, val_data = setup
  result, _ = reference

  class Interrupt(Exception):
    pass

  def stop_in_epoch_2(epoch, variables, metrics):
    if epoch == 2:
      raise Interrupt

  with pytest.raises(Interrupt):
    train.fit(model, variables, train_data, val_data, workdir=tmp_path,
              on_epoch_end=stop_in_epoch_2, **SETTINGS)
  assert [e for e, _ in train.list_checkpoints(tmp_path)] == [1]
  resumed = train.fit(model, variables, train_data, val_data, workdir=tmp_path, **SETTINGS)
  _assert_trees_equal(resumed.variables, result.variables)
  assert _without_timings(resumed.history) == _without_timings(result.history)
  # A finished run returns at once with the same variables.
  again = train.fit(model, variables, train_data, val_data, workdir=tmp_path, **SETTINGS)
  _assert_trees_equal(again.variables, result.variables)
  # All steps of the three runs (epochs, steps, resumed state) went through one trace.
  step = _loop._compiled_step(model, None, ("batch_stats",), 3e-3, EPOCHS * 512 // BATCH, 0.01, 0)
  assert step._cache_size() == 1


def test_corrupt_checkpoint_is_named_and_skipped(setup, reference, tmp_path):
  model, variables, train_data, val_data = setup
  result, workdir = reference
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  last = train.epoch_path(tmp_path, 2)
  last.write_bytes(last.read_bytes()[:1000])  # truncated mid-write by a crash
  with pytest.raises(train.CorruptCheckpointError, match="epoch_002.msgpack"):
    train.load_checkpoint(last)
  with pytest.warns(UserWarning, match="epoch_002.msgpack"):
    resumed = train.fit(model, variables, train_data, val_data, workdir=tmp_path, **SETTINGS)
  _assert_trees_equal(resumed.variables, result.variables)
  # A flipped byte inside an array is caught by the checksum.
  blob = bytearray(last.read_bytes())
  blob[len(blob) // 2] ^= 0xFF
  last.write_bytes(bytes(blob))
  with pytest.raises(train.CorruptCheckpointError, match="SHA-256|corrupt"):
    train.load_checkpoint(last)


@pytest.mark.parametrize("change, named", [
    (dict(learning_rate=1e-3), "learning_rate"),
    (dict(seed=4), "seed"),
    (dict(defense=defenses.randomized_smoothing(0.5)), "defense"),
    (dict(model_widths=(8, 8)), "model"),
    (dict(init_key=1), "initial_variables"),
])
def test_workdir_of_another_run_is_refused(setup, reference, change, named):
  model, variables, train_data, val_data = setup
  _, workdir = reference
  change = dict(change)
  if "model_widths" in change:
    model, variables = models.small_resnet(widths=change.pop("model_widths"))
  if "init_key" in change:
    _, variables = models.small_resnet(widths=(8, 16), key=jax.random.key(change.pop("init_key")))
  with pytest.raises(ValueError, match=f"different model or training config.*{named}.*delete"):
    train.fit(model, variables, train_data, val_data, workdir=workdir, **{**SETTINGS, **change})


def test_defense_is_applied_to_every_batch_with_fresh_keys(setup, reference):
  model, variables, train_data, val_data = setup
  result, _ = reference
  seen = []

  def blank(key, images):
    # Records each draw's key and erases the images: only the defense's output is learned from.
    jax.debug.callback(lambda k: seen.append(np.asarray(k).tobytes()), jax.random.key_data(key))
    return jnp.zeros_like(images)

  out = train.fit(model, variables, train_data, val_data, defense=blank, **SETTINGS)
  # One draw per training step, each with its own key; validation adds one draw per
  # epoch, with the same key every epoch (epochs are compared on the same draws).
  assert len(seen) == EPOCHS * (512 // BATCH + 1)
  assert len(set(seen)) == EPOCHS * (512 // BATCH) + 1
  assert out.best_path is None and out.best_epoch in (1, 2)  # no workdir: nothing on disk
  # Blank inputs carry no information: training accuracy stays near chance,
  # unlike the clean run with the same seed and schedule.
  assert out.history[-1]["train_accuracy"] < 0.2 < result.history[-1]["train_accuracy"]
  assert "val_defended_accuracy" in out.history[-1]


def test_finetune_on_smoothing_records_defended_and_vote_accuracy(setup, reference, tmp_path):
  model, variables, train_data, val_data = setup
  result, _ = reference
  before = jax.tree.map(np.array, result.variables)
  tuned = train.finetune(model, result.variables, train_data, val_data,
                         defense=defenses.randomized_smoothing(0.25), epochs=1, batch_size=64,
                         learning_rate=1e-3, val_votes=3, workdir=tmp_path, progress=False)
  entry = tuned.history[0]
  assert {"val_accuracy", "val_defended_accuracy", "val_vote_accuracy"} <= set(entry)
  assert all(0.0 <= entry[k] <= 1.0 for k in entry if k.startswith("val_"))
  assert tuned.best_epoch == 1 and tuned.best_path.exists()
  _assert_trees_equal(result.variables, before)  # the base variables are untouched
  with pytest.raises(ValueError, match="defense"):
    train.finetune(model, result.variables, train_data, val_data, defense=None, epochs=1)


def test_evaluate_matches_logits_fn_and_classifier_vote(setup, reference):
  model, _, _, (images, labels) = setup
  result, _ = reference
  logits = models.logits_fn(model, result.variables)(images)
  expected = float(np.mean(np.argmax(logits, -1) == labels))
  scores = train.evaluate(model, result.variables, images, labels, batch_size=100)  # padded
  assert scores == {"accuracy": pytest.approx(expected)}


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("change, error, named", [
    (dict(epochs=0), ValueError, "epochs"),
    (dict(epochs=1.5), ValueError, "epochs"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=10_000), ValueError, "batch_size"),
    (dict(learning_rate=0.0), ValueError, "learning_rate"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(warmup_epochs=2), ValueError, "warmup_epochs"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(defense=3), TypeError, "defense"),
    (dict(defense="no_such_defense"), ValueError, "no_such_defense"),
    (dict(val_votes=5), ValueError, "val_votes"),
    (dict(best_metric="val_loss"), ValueError, "best_metric"),
    (dict(best_metric="val_vote_accuracy"), ValueError, "best_metric"),
    (dict(keep_checkpoints=0), ValueError, "keep_checkpoints"),
    (dict(on_epoch_end="print"), TypeError, "on_epoch_end"),
])
def test_bad_arguments_are_named(setup, change, error, named):
  model, variables, train_data, val_data = setup
  with pytest.raises(error, match=named):
    train.fit(model, variables, train_data, val_data, **{**SETTINGS, **change})


@pytest.mark.parametrize("which, bad, error, named", [
    ("train", "not a pair", TypeError, "train_data must be a pair"),
    ("train", "uint8", TypeError, "train_data images"),
    ("train", "too few labels", ValueError, "train_data has 512 images but 511 labels"),
    ("train", "float labels", ValueError, "train_data labels"),
    ("train", "label 10", ValueError, r"train_data labels must lie in \[0, 9\]"),
    ("val", "shape", ValueError, "val_data images must have the shape"),
    ("model", "not a module", TypeError, "model must be a Flax module"),
    ("model", "no params", TypeError, "variables must be a dict with 'params'"),
])
def test_bad_data_and_model_are_named(setup, which, bad, error, named):
  model, variables, (images, labels), val_data = setup
  train_data = (images, labels)
  if bad == "not a pair":
    train_data = images
  elif bad == "uint8":
    train_data = ((images * 255).astype(np.uint8), labels)
  elif bad == "too few labels":
    train_data = (images, labels[:-1])
  elif bad == "float labels":
    train_data = (images, labels.astype(np.float32))
  elif bad == "label 10":
    train_data = (images, np.where(np.arange(512) == 7, 10, labels))
  elif bad == "shape":
    val_data = (val_data[0][:, :14, :14], val_data[1])
  elif bad == "not a module":
    model = lambda x: x
  elif bad == "no params":
    variables = {"batch_stats": variables["batch_stats"]}
  with pytest.raises(error, match=named):
    train.fit(model, variables, train_data, val_data, **SETTINGS)


# --- the Fashion-MNIST launcher ------------------------------------------------------------


def test_train_fashion_launcher_trains_then_loads(tmp_path):
  from launch import train_fashion

  tiny = dict(epochs=1, finetune_epochs=1, votes=2, vote_images=20, test_images=200,
              widths=(8, 16), train_size=256, validation_size=200, progress=False)
  record = train_fashion.run(tmp_path, **tiny)
  names = ["small_resnet_fashion_w8-16_n256_v200", "small_resnet_fashion_w8-16_n256_v200_rs0.25"]
  for name in names:
    assert (tmp_path / f"{name}.msgpack").exists()
    assert (tmp_path / name / "epoch_001.msgpack").exists()
  for model in ("base", "finetuned"):
    assert record[model]["epochs"] == 1
    assert 0 <= record[model]["clean_test_accuracy"] <= 1
    assert 0 <= record[model]["vote_accuracy"] <= 1
  assert json.loads((tmp_path / "train_fashion.json").read_text())["votes"] == 2
  # A second call loads the exported variables instead of training.
  (tmp_path / names[0] / "epoch_001.msgpack").unlink()
  again = train_fashion.run(tmp_path, **tiny)
  assert again["base"]["clean_test_accuracy"] == record["base"]["clean_test_accuracy"]
  with pytest.raises(ValueError, match="another config.*epochs.*delete"):
    train_fashion.run(tmp_path, **{**tiny, "epochs": 2})
