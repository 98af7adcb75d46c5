"""Statistical detection of adversarial examples: "odds are odd" (Roth et al. 2019).

The test asks how the logits of an input react to Gaussian noise. For the
predicted class ``y`` and every other class ``z`` it measures the
noise-induced change of the logit difference

    g_{y,z}(x) = mean_eta[(f_z - f_y)(x + eta)] - (f_z - f_y)(x),
    eta ~ N(0, sigma^2 I),

standardises it with the mean and standard deviation of ``g_{y,z}`` on clean
images predicted as ``y``, and flags the input when, for some ``z``, the
standardised value exceeds its threshold. Adversarial examples sit close
to the decision boundary, so noise tends to move their logits back towards
the true class, which clean inputs rarely do.

`fit` computes the statistics and thresholds on clean data (numpy, once);
`statistic`, `scores` and `flags` are pure and traceable (jit, vmap, grad):
the noise draws are one vmapped batch, never a Python loop.

Threshold choice (this project's, documented here): the standardised
statistics share one threshold per predicted class ``y``, the ``1 - fpr``
quantile over the fitting images predicted ``y`` of ``max_z`` of their
standardised statistic, so the false-positive rate on the fitting data is
about `fpr` for every class. In raw units the threshold of test ``(y, z)``
is ``mean[y, z] + tau_y * std[y, z]``: one threshold per (y, z) pair.
Classes predicted for fewer than `min_images` fitting images use
statistics and a threshold pooled over all classes.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import _validate

LogitsFn = Callable[[jax.Array], jax.Array]

# The smallest standard deviation used when standardising (a (y, z) pair
# whose statistic never varies would otherwise divide by zero).
MIN_STD = 1e-6


@flax.struct.dataclass
class OddsStatistics:
  """What `fit` learned on clean data; a pytree (arrays are leaves).

  Attributes:
    mean: float32 (K, K): mean of g_{y,z} over fitting images predicted y.
    std: float32 (K, K): its standard deviation (at least `MIN_STD`).
    thresholds: float32 (K, K): threshold of the standardised statistic of
      test (y, z); the diagonal is unused.
    class_counts: int32 (K,): fitting images predicted as each class.
    sigma: noise standard deviation (pixel units, images in [0, 1]).
    num_noise: noise draws averaged per image.
    fpr: target false-positive rate the thresholds were fitted for.
  """
  mean: jax.Array
  std: jax.Array
  thresholds: jax.Array
  class_counts: jax.Array
  sigma: float = flax.struct.field(pytree_node=False)
  num_noise: int = flax.struct.field(pytree_node=False)
  fpr: float = flax.struct.field(pytree_node=False)


def _check_settings(sigma, num_noise, fpr=None) -> None:
  _validate.check_number(sigma, "sigma", low=0, low_inclusive=False)
  _validate.check_number(num_noise, "num_noise", low=1, integer=True)
  if fpr is not None:
    _validate.check_number(fpr, "fpr", low=0, high=1, low_inclusive=False, high_inclusive=False)


def noise_draws(key: jax.Array, images: jax.Array, *, sigma: float, num_noise: int) -> jax.Array:
  """The noise of `statistic`: ``sigma * normal(key, (num_noise, *images.shape))``."""
  return sigma * jax.random.normal(key, (num_noise, *images.shape), images.dtype)


def statistic(key: jax.Array, logits_fn: LogitsFn, images: jax.Array, *, sigma: float,
              num_noise: int) -> tuple[jax.Array, jax.Array]:
  """The raw noise statistic g_{y,z} of every image, for its predicted class y.

  Args:
    key: PRNG key of the noise (see `noise_draws`; the same key gives the
      same statistic).
    logits_fn: pure ``images -> logits`` (B, K) of the undefended model.
    images: float (B, H, W, C) in [0, 1]. Noisy copies are not clipped.
    sigma: noise standard deviation, > 0.
    num_noise: noise draws per image, >= 1 (evaluated as one vmapped batch).

  Returns:
    (g, predicted): g float32 (B, K) with g[b, z] = g_{y_b, z}(x_b)
    (g[b, y_b] = 0); predicted int32 (B,), the clean argmax y_b.
  """
  _validate.check_key(key)
  _check_settings(sigma, num_noise)
  images = _validate.check_images(images)
  clean = logits_fn(images)
  predicted = jnp.argmax(clean, -1).astype(jnp.int32)
  own = lambda logits: jnp.take_along_axis(logits, predicted[:, None], -1)
  noise = noise_draws(key, images, sigma=sigma, num_noise=int(num_noise))
  noisy = jax.vmap(lambda eta: logits_fn(images + eta))(noise)  # (n, B, K)
  noisy_difference = (noisy - jax.vmap(own)(noisy)).mean(0)
  return noisy_difference - (clean - own(clean)), predicted


def standardized(stats: OddsStatistics, g: jax.Array, predicted: jax.Array) -> jax.Array:
  """(g - mean[y, z]) / std[y, z] minus the threshold, (B, K); -inf at z = y.

  A positive entry means test (y, z) fires.
  """
  z = (g - stats.mean[predicted]) / stats.std[predicted] - stats.thresholds[predicted]
  own = jax.nn.one_hot(predicted, g.shape[-1], dtype=jnp.bool_)
  return jnp.where(own, -jnp.inf, z)


def scores(key: jax.Array, logits_fn: LogitsFn, stats: OddsStatistics, images: jax.Array
           ) -> jax.Array:
  """max_z of the standardised statistic minus its threshold, float32 (B,).

  An image is flagged when its score is > 0. Traceable; random through the
  noise drawn from `key`.
  """
  g, predicted = statistic(key, logits_fn, images, sigma=stats.sigma, num_noise=stats.num_noise)
  return standardized(stats, g, predicted).max(-1)


def flags(key: jax.Array, logits_fn: LogitsFn, stats: OddsStatistics, images: jax.Array
          ) -> jax.Array:
  """Whether each image is flagged as adversarial, bool (B,)."""
  return scores(key, logits_fn, stats, images) > 0


def fit(key: jax.Array, logits_fn: LogitsFn, images: jax.Array, *, sigma: float,
        num_noise: int = 64, fpr: float = 0.01, min_images: int = 2) -> OddsStatistics:
  """Fits the per-(y, z) statistics and thresholds on clean images.

  Args:
    key: PRNG key of the fitting noise.
    logits_fn: pure ``images -> logits`` (B, K).
    images: clean float (B, H, W, C) in [0, 1], the fitting data.
    sigma: noise standard deviation, > 0.
    num_noise: noise draws per image, >= 1.
    fpr: target false-positive rate on clean data, in (0, 1); 0.01 by default.
    min_images: a class predicted for fewer fitting images than this uses
      the statistics pooled over all classes (>= 2).

  Returns:
    The fitted `OddsStatistics`.
  """
  _check_settings(sigma, num_noise, fpr)
  _validate.check_number(min_images, "min_images", low=2, integer=True)
  g, predicted = jax.jit(lambda k, x: statistic(k, logits_fn, x, sigma=sigma,
                                                num_noise=int(num_noise)))(key, images)
  g, predicted = np.asarray(g, np.float64), np.asarray(predicted)
  num_classes = g.shape[1]
  off = ~np.eye(num_classes, dtype=bool)[predicted]  # (B, K): z != y_b
  pooled_mean = g[off].mean() if off.any() else 0.0
  pooled_std = g[off].std() if off.any() else 1.0
  counts = np.bincount(predicted, minlength=num_classes)
  mean = np.full((num_classes, num_classes), pooled_mean)
  std = np.full((num_classes, num_classes), pooled_std)
  for y in np.flatnonzero(counts >= min_images):
    mean[y] = g[predicted == y].mean(0)
    std[y] = g[predicted == y].std(0)
  std = np.maximum(std, MIN_STD)
  z = np.where(off, (g - mean[predicted]) / std[predicted], -np.inf).max(-1)
  # With a single class there is no z != y: nothing can fire.
  pooled_tau = np.quantile(z, 1 - fpr) if num_classes > 1 else np.inf
  thresholds = np.full((num_classes, num_classes), pooled_tau)
  for y in np.flatnonzero(counts >= min_images):
    thresholds[y] = np.quantile(z[predicted == y], 1 - fpr)
  return OddsStatistics(
      mean=jnp.asarray(mean, jnp.float32), std=jnp.asarray(std, jnp.float32),
      thresholds=jnp.asarray(thresholds, jnp.float32),
      class_counts=jnp.asarray(counts, jnp.int32), sigma=float(sigma),
      num_noise=int(num_noise), fpr=float(fpr))


class OddsDetector:
  """A fitted "odds are odd" detector of one model, usable inside jit.

  Args:
    logits_fn: pure ``images -> logits`` of the undefended model.
    stats: its `OddsStatistics` from `fit`.
  """

  def __init__(self, logits_fn: LogitsFn, stats: OddsStatistics):
    if not callable(logits_fn):
      raise TypeError(f"logits_fn must be callable images -> logits, got "
                      f"{type(logits_fn).__name__}")
    if not isinstance(stats, OddsStatistics):
      raise TypeError(f"stats must be OddsStatistics (from jaxdef.detection.fit), got "
                      f"{type(stats).__name__}")
    self.logits_fn = logits_fn
    self.stats = stats
    self._flags = jax.jit(lambda key, images: flags(key, logits_fn, stats, images))

  def __repr__(self) -> str:
    return (f"OddsDetector(sigma={self.stats.sigma}, num_noise={self.stats.num_noise}, "
            f"fpr={self.stats.fpr})")

  def scores(self, key: jax.Array, images: jax.Array) -> jax.Array:
    """See `scores`: float32 (B,), flagged where > 0."""
    return scores(key, self.logits_fn, self.stats, images)

  def flags(self, key: jax.Array, images: jax.Array) -> jax.Array:
    """See `flags`: bool (B,). Concrete calls run compiled."""
    if _validate.is_concrete(images) and _validate.is_concrete(key):
      _validate.check_key(key)
      return self._flags(key, _validate.check_images(images))
    return flags(key, self.logits_fn, self.stats, images)


__all__ = ("MIN_STD", "OddsDetector", "OddsStatistics", "fit", "flags", "noise_draws", "scores",
           "standardized", "statistic")
