"""Tests for jaxdef.models that need no PyTorch: shapes, transforms, activations, I/O.

Parity with torchvision lives in test_models_convert.py. XLA compiles a
ResNet for each input shape and transform (jit, vmap, grad), which is most of
the time here: models are built once per module and inputs are small.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdef import models


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


def _num_params(variables):
  return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))


@pytest.fixture(scope="module")
def resnet18():
  model, variables = models.resnet(18, num_classes=10, input_shape=(32, 32, 3),
                                   key=jax.random.key(1))
  return model, variables, models.logits_fn(model, variables)


@pytest.fixture(scope="module")
def small():
  model, variables = models.small_resnet()
  return model, variables


# --- topology and shapes -------------------------------------------------------------------


@pytest.mark.parametrize("depth, size, params", [
    (18, 32, 11_689_512), (34, 32, 21_797_672), (50, 64, 25_557_032)])
def test_resnet_logits_shape_and_parameter_count(depth, size, params):
  # Parameter counts of torchvision's resnet18/34/50 with 1000 classes. The
  # logits' shape comes from tracing alone (jax.eval_shape, no compilation);
  # ResNet-18 also runs here, and the conversion tests run all three against
  # torchvision.
  model, variables = models.resnet(depth, input_shape=(size, size, 3))
  assert _num_params(variables) == params
  images = _images((1, size, size, 3))
  logits_fn = models.logits_fn(model, variables)
  logits = jax.eval_shape(logits_fn, images)
  assert logits.shape == (1, 1000) and logits.dtype == jnp.float32
  if depth == 18:
    assert np.all(np.isfinite(logits_fn(images)))


def test_resnet_init_is_random_in_key_and_torchvision_scaled():
  _, a = models.resnet(18, num_classes=10, key=jax.random.key(0), input_shape=(32, 32, 3))
  _, b = models.resnet(18, num_classes=10, key=jax.random.key(1), input_shape=(32, 32, 3))
  kernel = np.asarray(a["params"]["layer3_0"]["conv2"]["kernel"])  # 3x3, 256 -> 256
  assert not np.allclose(kernel, b["params"]["layer3_0"]["conv2"]["kernel"])
  # kaiming_normal_(mode="fan_out"): std sqrt(2 / (3 * 3 * 256)).
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (9 * 256)), rtol=0.02)
  assert np.all(a["params"]["bn1"]["scale"] == 1) and np.all(a["batch_stats"]["bn1"]["var"] == 1)
  fc = np.asarray(a["params"]["fc"]["kernel"])
  assert fc.shape == (512, 10) and np.abs(fc).max() <= 1 / np.sqrt(512)


def test_model_init_uses_the_same_distributions(small):
  # model.init (the modules' own initialisers) matches the constructors' fast path.
  model, fast = small
  slow = jax.jit(lambda k: model.init({"params": k}, jnp.zeros((1, 28, 28, 1))))(jax.random.key(3))
  for module in ["layer3_0", "fc"]:
    leaf = "conv2" if module == "layer3_0" else None
    a = fast["params"][module][leaf]["kernel"] if leaf else fast["params"][module]["kernel"]
    b = slow["params"][module][leaf]["kernel"] if leaf else slow["params"][module]["kernel"]
    assert a.shape == b.shape
    np.testing.assert_allclose(np.std(a), np.std(b), rtol=0.15)
    assert not np.allclose(a, b)


def test_cifar_resnet_topology():
  model, variables = models.cifar_resnet(110)
  # 1.73M parameters: the ResNet-110 of He et al. / Cohen et al.
  assert _num_params(variables) == 1_730_714
  assert sorted(k for k in variables["params"] if k.startswith("layer1_"))[-1] == "layer1_9"
  assert "layer3_17" in variables["params"] and "layer4_0" not in variables["params"]
  assert "downsample_conv" not in variables["params"]["layer1_0"]
  assert variables["params"]["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 16, 32)
  assert model.mean == models.CIFAR_MEAN and model.std == models.CIFAR_STD
  small_model, small_variables = models.cifar_resnet(20)
  logits = models.logits_fn(small_model, small_variables)(_images((2, 32, 32, 3)))
  assert logits.shape == (2, 10)


def test_small_resnet_shape_size_and_training_step(small):
  model, variables = small
  assert _num_params(variables) == 77_754
  images = _images((16, 28, 28, 1))
  labels = jnp.arange(16) % 10
  assert models.logits_fn(model, variables)(images).shape == (16, 10)
  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(variables, opt_state):
    def loss_fn(params):
      logits, updates = model.apply({**variables, "params": params}, images, train=True,
                                    mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    changes, opt_state = optimizer.update(grads, opt_state)
    params = optax.apply_updates(variables["params"], changes)
    return {"params": params, **updates}, opt_state, loss

  opt_state = optimizer.init(variables["params"])
  state, losses = variables, []
  for _ in range(8):
    state, opt_state, loss = step(state, opt_state)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0]
  # Training mode updated the running statistics.
  assert not np.allclose(state["batch_stats"]["bn1"]["mean"], 0)


# --- logits_fn under transforms --------------------------------------------------------------


def test_logits_fn_under_jit(resnet18):
  _, _, fn = resnet18
  images = _images((2, 32, 32, 3))
  np.testing.assert_allclose(jax.jit(fn)(images), fn(images), rtol=1e-5, atol=1e-5)


def test_logits_fn_under_vmap(resnet18):
  _, _, fn = resnet18
  stack = _images((3, 2, 32, 32, 3), seed=1)
  batched = jax.vmap(fn)(stack)
  assert batched.shape == (3, 2, 10)
  for i in range(3):
    np.testing.assert_allclose(batched[i], fn(stack[i]), rtol=1e-4, atol=1e-4)


def test_logits_fn_gradient(resnet18):
  _, _, fn = resnet18
  images = _images((2, 32, 32, 3), seed=2)
  # Jitted: eagerly, the backward pass dispatches op by op (13 s against 2 s).
  grad = jax.jit(jax.grad(lambda x: fn(x)[:, 3].sum()))(images)
  assert grad.shape == images.shape
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 0


def test_logits_fn_bfloat16_close_to_float32(resnet18):
  model, variables, fn = resnet18
  images = _images((2, 32, 32, 3), seed=3)
  reference = np.asarray(fn(images))
  low = models.logits_fn(model, variables, dtype=jnp.bfloat16)(images)
  assert low.dtype == jnp.float32
  error = np.abs(np.asarray(low) - reference).max() / np.abs(reference).max()
  assert error < 5e-2, error


# --- input checks ------------------------------------------------------------------------------


def test_bad_images_name_the_argument(resnet18):
  _, _, fn = resnet18
  with pytest.raises(ValueError, match="images must have 3 channels"):
    fn(_images((1, 32, 32, 1)))
  with pytest.raises(ValueError, match="images must have 3 channels"):
    jax.jit(fn)(_images((1, 32, 32, 1)))  # shape checks also hold when traced
  with pytest.raises(ValueError, match="images must have rank 4"):
    fn(_images((32, 32, 3)))
  with pytest.raises(TypeError, match="images must be floating point"):
    fn(jnp.zeros((1, 32, 32, 3), jnp.uint8))
  with pytest.raises(ValueError, match=r"images values must lie in \[0, 1\]"):
    fn(_images((1, 32, 32, 3)) * 255)
  # Defended inputs such as unclipped randomized smoothing may leave [0, 1].
  noisy = _images((1, 32, 32, 3)) + 0.5 * jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
  assert np.all(np.isfinite(fn(noisy)))


def test_variables_that_do_not_fit_are_listed(resnet18):
  _, variables, _ = resnet18
  model, _ = models.resnet(18, num_classes=1000, input_shape=(32, 32, 3))
  with pytest.raises(ValueError, match=r"wrong shapes: params/fc/bias \(expected \(1000,\)"):
    models.logits_fn(model, variables)
  broken = {"params": dict(variables["params"]), "batch_stats": variables["batch_stats"]}
  del broken["params"]["layer4_1"]
  with pytest.raises(ValueError, match="missing keys: params/layer4_1"):
    models.logits_fn(models.resnet(18, 10, input_shape=(32, 32, 3))[0], broken)


def test_bad_constructor_arguments():
  with pytest.raises(ValueError, match="depth must be one of"):
    models.resnet(20)
  with pytest.raises(ValueError, match="6n \\+ 2"):
    models.cifar_resnet(111)
  with pytest.raises(ValueError, match="activation must be one of"):
    models.small_resnet(activation="gelu")
  with pytest.raises(ValueError, match="kwta_ratio"):
    models.small_resnet(activation="kwta", kwta_ratio=1.5)
  with pytest.raises(ValueError, match="mean must have 1 or C = 1 values"):
    models.small_resnet(mean=models.IMAGENET_MEAN)


# --- activations -------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.25, 1.0])
def test_kwta_keeps_exactly_the_k_largest(ratio):
  x = np.random.default_rng(0).normal(size=(3, 8, 8, 4)).astype(np.float32)
  out = np.asarray(models.kwta(jnp.asarray(x), ratio=ratio))
  k = max(1, round(ratio * 256))
  flat, kept = x.reshape(3, -1), out.reshape(3, -1)
  for b in range(3):
    assert np.count_nonzero(kept[b]) == k
    top = np.argsort(flat[b])[-k:]
    np.testing.assert_array_equal(kept[b][top], flat[b][top])


@pytest.mark.parametrize("seed", range(4))
def test_kwta_threshold_is_numpys_kth_largest_with_ties_and_signs(seed):
  rng = np.random.default_rng(seed)
  # Negative and positive values, signed zeros, repeated values, large magnitudes.
  x = rng.choice(np.array([-3e30, -2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 7.0, 2e30], np.float32),
                 size=(5, 97)) * rng.choice([1.0, 1.0, 1e-3], size=(5, 97)).astype(np.float32)
  x[0] = rng.normal(size=97)  # one row without ties
  ratio = rng.uniform(0.01, 1.0)
  out = np.asarray(models.kwta(jnp.asarray(x), ratio=ratio))
  k = max(1, round(ratio * 97))
  for row, kept in zip(x, out):
    threshold = np.partition(row, 97 - k)[97 - k]  # the k-th largest, independently
    np.testing.assert_array_equal(kept, np.where(row >= threshold, row, 0.0))


def test_kwta_matches_lax_top_k_threshold_in_bfloat16():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6, 6, 8)), jnp.bfloat16)
  flat = x.reshape(4, -1).astype(jnp.float32)
  threshold = jax.lax.top_k(flat, 29)[0][:, -1:]
  expected = jnp.where(flat >= threshold, flat, 0.0).reshape(x.shape)
  np.testing.assert_array_equal(np.asarray(models.kwta(x, ratio=0.1), np.float32),
                                np.asarray(expected))


def test_kwta_gradient_flows_through_kept_units():
  x = _images((2, 50)) - 0.5
  grad = jax.grad(lambda x: models.kwta(x, ratio=0.2).sum())(x)
  np.testing.assert_array_equal(np.asarray(grad), (np.asarray(models.kwta(x, ratio=0.2)) != 0))


def test_sap_is_keyed():
  h = jax.nn.relu(_images((2, 6, 6, 4)) - 0.3)
  a = models.sap(jax.random.key(0), h)
  np.testing.assert_array_equal(a, models.sap(jax.random.key(0), h))
  assert not np.array_equal(a, models.sap(jax.random.key(1), h))
  # Zeros stay zero; some units are pruned; kept units are scaled up.
  a, h = np.asarray(a), np.asarray(h)
  assert np.all(a[h == 0] == 0)
  assert np.any((a == 0) & (h > 0))
  assert np.all(a[a != 0] >= h[a != 0])
  # Samples of a batch draw independently.
  assert not np.array_equal(models.sap(jax.random.key(0), np.stack([h[0], h[0]]))[0],
                            models.sap(jax.random.key(0), np.stack([h[0], h[0]]))[1])


def test_sap_is_unbiased_in_value_and_gradient():
  h = jax.nn.relu(_images((1, 40), seed=5) - 0.2) * 3
  keys = jax.random.split(jax.random.key(7), 4000)
  draws = np.asarray(jax.vmap(lambda k: models.sap(k, h))(keys))[:, 0]
  mean, se = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
  target = np.asarray(h)[0]
  assert np.all(np.abs(mean - target) <= 5 * se + 1e-6), np.max(np.abs(mean - target) / (se + 1e-9))
  # E[d sap(h)_j / d h_j] = 1 for units that can be drawn.
  grads = np.asarray(jax.vmap(jax.grad(lambda k, h: models.sap(k, h).sum(), argnums=1),
                              in_axes=(0, None))(keys[:2000], h))[:, 0]
  alive = target > 0
  np.testing.assert_allclose(grads[:, alive].mean(0), 1.0, atol=0.15)
  assert np.all(grads[:, ~alive] == 0)


def test_sap_draw_count_follows_ratio():
  # With very few draws, at most that many units survive.
  h = _images((1, 1000), seed=6) + 0.01
  out = np.asarray(models.sap(jax.random.key(0), h, ratio=0.01))
  assert 1 <= np.count_nonzero(out) <= 10


def test_sap_model_needs_a_key():
  model, variables = models.small_resnet(activation="sap", widths=(8, 16))
  with pytest.raises(ValueError, match="stochastic_logits_fn"):
    models.logits_fn(model, variables)
  fn = models.stochastic_logits_fn(model, variables)
  images = _images((2, 28, 28, 1))
  a = fn(jax.random.key(0), images)
  assert a.shape == (2, 10) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, fn(jax.random.key(0), images))
  assert not np.allclose(a, fn(jax.random.key(1), images))
  keys = jax.random.split(jax.random.key(2), 3)
  draws = jax.jit(jax.vmap(fn, in_axes=(0, None)))(keys, images)
  assert draws.shape == (3, 2, 10) and not np.allclose(draws[0], draws[1])
  grad = jax.jit(jax.grad(lambda x: fn(jax.random.key(0), x)[:, 0].sum()))(images)
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 0


def test_kwta_model_is_deterministic_and_sparse():
  model, variables = models.small_resnet(activation="kwta", kwta_ratio=0.2)
  images = _images((2, 28, 28, 1))
  fn = models.logits_fn(model, variables)
  np.testing.assert_array_equal(fn(images), fn(images))
  # One draw of the keyed form equals the plain form: the key is ignored.
  keyed = models.stochastic_logits_fn(model, variables)
  np.testing.assert_allclose(keyed(jax.random.key(5), images), fn(images), rtol=1e-5, atol=1e-6)
  relu = models.logits_fn(model.clone(activation="relu"), variables)(images)
  assert not np.allclose(fn(images), relu)


# --- saving variables ---------------------------------------------------------------------------


def test_save_load_round_trip(small, tmp_path):
  _, variables = small
  path = tmp_path / "small.msgpack"
  models.save_variables(path, variables)
  assert [p.name for p in tmp_path.iterdir()] == ["small.msgpack"]  # no temporary left over
  loaded = models.load_variables(path, like=variables)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  assert jax.tree.structure(loaded) == jax.tree.structure(jax.tree.map(np.asarray, variables))


def test_load_checks_the_template_and_the_file(small, tmp_path):
  _, variables = small
  path = tmp_path / "small.msgpack"
  models.save_variables(path, variables)
  _, other = models.small_resnet(widths=(8, 16, 32), blocks_per_stage=2)
  with pytest.raises(ValueError, match="small.msgpack does not match the template: missing keys"):
    models.load_variables(path, like=other)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="small.msgpack is not a readable"):
    models.load_variables(path)
  with pytest.raises(FileNotFoundError):
    models.load_variables(tmp_path / "missing.msgpack")
