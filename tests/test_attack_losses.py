"""The attack objectives against the AutoAttack paper's definitions, written here in numpy.

Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", eqs. (5) and (6), with pi the
logits sorted in decreasing order:

  DLR(z, y)          = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)
  targeted DLR(z, y, t) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)

and the Carlini-Wagner margin max_{j != y} z_j - z_y. Each is computed row
by row from Python lists, independently of jaxdef's vectorised code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd
from jaxdef.attacks._losses import dlr
from jaxdef.attacks._losses import margin
from jaxdef.attacks._losses import objective
from jaxdef.attacks._losses import targeted_dlr


def _reference_dlr(z: list[float], y: int) -> float:
  ranked = sorted(z, reverse=True)
  best_other = max(value for i, value in enumerate(z) if i != y)
  return -(z[y] - best_other) / (ranked[0] - ranked[2])


def _reference_targeted_dlr(z: list[float], y: int, t: int) -> float:
  ranked = sorted(z, reverse=True)
  return -(z[y] - z[t]) / (ranked[0] - (ranked[2] + ranked[3]) / 2)


def _reference_margin(z: list[float], y: int) -> float:
  return max(value for i, value in enumerate(z) if i != y) - z[y]


def _logits(rows: int = 64, classes: int = 10, seed: int = 0):
  rng = np.random.default_rng(seed)
  z = rng.normal(scale=3.0, size=(rows, classes)).astype(np.float32)
  z[0, :3] = z[0, 3]  # ties, including one at the true label
  labels = rng.integers(0, classes, rows)
  targets = (labels + rng.integers(1, classes, rows)) % classes  # never the true label
  return z, labels, targets


def test_dlr_is_the_papers_equation_5():
  z, labels, _ = _logits()
  expected = [_reference_dlr(row.tolist(), int(y)) for row, y in zip(z, labels)]
  np.testing.assert_allclose(dlr(jnp.asarray(z), jnp.asarray(labels)), expected, rtol=1e-5,
                             atol=1e-6)


def test_targeted_dlr_is_the_papers_equation_6():
  z, labels, targets = _logits(seed=1)
  expected = [_reference_targeted_dlr(row.tolist(), int(y), int(t))
              for row, y, t in zip(z, labels, targets)]
  got = targeted_dlr(jnp.asarray(z), jnp.asarray(labels), jnp.asarray(targets))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("targeted", [False, True])
def test_margin_and_the_objective_signs(targeted):
  z, labels, _ = _logits(seed=2)
  expected = np.array([_reference_margin(row.tolist(), int(y)) for row, y in zip(z, labels)])
  np.testing.assert_allclose(margin(jnp.asarray(z), jnp.asarray(labels)), expected, rtol=1e-6)
  # The attack maximises: the margin of the true label untargeted, minus the
  # margin of the target (pushing the target above every other class) targeted.
  got = objective(jnp.asarray(z), jnp.asarray(labels), "margin", targeted)
  np.testing.assert_allclose(got, -expected if targeted else expected, rtol=1e-6)
  np.testing.assert_allclose(objective(jnp.asarray(z), jnp.asarray(labels), "dlr", False),
                             [_reference_dlr(row.tolist(), int(y))
                              for row, y in zip(z, labels)], rtol=1e-5, atol=1e-6)


def test_margin_pgd_moves_the_input_and_raises_the_margin(fashion_mlp):
  images = jnp.asarray(fashion_mlp.test_images[:32])
  labels = jnp.asarray(fashion_mlp.test_labels[:32])
  clf = jd.StochasticClassifier(fashion_mlp.logits_fn, jd.defenses.identity())
  eps = 8 / 255
  adversarial = jd.attacks.pgd(jax.random.key(0), clf, images, labels, eps=eps, alpha=2 / 255,
                               steps=10, loss="margin")
  moved = np.abs(np.asarray(adversarial - images)).reshape(len(labels), -1).max(axis=1)
  assert np.all(moved > eps / 2) and np.all(moved <= eps + 1e-6)
  before = [_reference_margin(row.tolist(), int(y)) for row, y in
            zip(np.asarray(fashion_mlp.logits_fn(images)), np.asarray(labels))]
  after = [_reference_margin(row.tolist(), int(y)) for row, y in
           zip(np.asarray(fashion_mlp.logits_fn(adversarial)), np.asarray(labels))]
  assert all(a > b for a, b in zip(after, before))  # every image's margin rose
  assert np.mean(np.array(after) > 0) > np.mean(np.array(before) > 0)  # more misclassified
