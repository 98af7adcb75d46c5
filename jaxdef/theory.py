"""The binary Gaussian task of the study's theory, in closed form and by simulation.

Setting (SPEC.md section 7, "Theory"): a label y is -1 or +1 with probability
1/2 each, the input is x | y ~ N(y, 1), and the stochastic pre-processing
defense adds theta ~ N(1, sigma^2), t(x) = x + theta. The defended classifier
with decision threshold k is

    F_theta(x) = sgn(x + theta - k).

Three classifiers of the study are points of this family:

- undefended: sigma = 0, k = 1, i.e. sgn(x), the Bayes classifier of the task;
- defended: k = 0, the undefended classifier applied to defended inputs;
- trained invariance: k = 1 (`TRAINED_THRESHOLD`), the Bayes threshold for
  defended data t(x) | y ~ N(y + 1, 1 + sigma^2), i.e. what a classifier fine-
  tuned on defended inputs learns. It is the most invariant member: R(k) is
  largest at k = 1.

A fourth, the majority vote over `num_votes` independent draws of theta
(ties broken by a fair coin), is given for any k.

The adversary perturbs x by at most eps (the l-inf ball in one dimension) and
knows the defense distribution but not the draw. Every draw's decision is
increasing in x, so moving x by eps towards the wrong side, x - eps * y, is
the worst case for each draw and hence for the single draw and for the vote.

Closed forms, with m = 1 - k and s = sqrt(1 + sigma^2) (x + theta - k | y is
N(y + m, s^2)):

    accuracy        = (Phi((1 + m) / s) + Phi((1 - m) / s)) / 2
    robust_accuracy = (Phi((1 + m - eps) / s) + Phi((1 - m - eps) / s)) / 2
    invariance R(k) = Pr[sgn(x + theta - k) = sgn(x)]
                    = 1 - sum_y [T(h_y, a_y) + b_y]            (Owen's T)

with h_y = (y + m) / s, a_y = (y sigma^2 - m) / ((y + m) sigma), b_y = 1/2 when
y (y + m) < 0 and 0 otherwise; at k = 1 this is R(1) = 1 - 2 T(1 / s, sigma).
With sigma = 0 the classifier is deterministic, sgn(x + 1 - k), and R(k) =
1 - sum_y |Phi(-y) - Phi(-m - y)| / 2; k = 1 recovers the undefended values
Phi(1), Phi(1 - eps) and R = 1.

The vote: given x a draw says +1 with probability p(x) = Phi((x + m) / sigma),
and the majority of n votes (fair coin on ties) says +1 with probability
Pr[P <= p(x)] for P ~ Beta(r, r), r = ceil(n / 2) (a tie-broken even vote is
as accurate as the odd vote below it). Writing P = Phi(T), the vote is +1
exactly when x >= sigma T - m, so every vote quantity is a one-dimensional
expectation over T of normal CDFs, e.g. vote accuracy for y = +1 is
E_T[Phi(1 + m - sigma T)]. It is integrated with a fixed composite Gauss-
Legendre rule whose panel edges follow the density of T and the kinks and
steps of the integrand, so it is jit-, vmap- and grad-able and accurate to
about 1e-10 in float64 (1e-6 in float32).

Attack success rate (SPEC.md section 2) is the fraction of inputs classified
correctly that the attack turns wrong. With the same defense draws for the
clean and the perturbed input a draw that is right after the attack was right
before it, so the rate is 1 - robust_accuracy / accuracy.

All functions take scalars or arrays (broadcast together) and are
differentiable in k, sigma and eps; `num_votes` is a static Python int.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf
from jax.scipy.stats import norm
from scipy import special as scipy_special

from jaxdef import _validate

# The threshold a classifier trained on defended data learns: the Bayes
# threshold of t(x) | y ~ N(y + 1, 1 + sigma^2) is E[theta] = 1 for any sigma.
TRAINED_THRESHOLD = 1.0
# Votes of the study's evaluation (SPEC.md section 1).
DEFAULT_NUM_VOTES = 500

# Gauss-Legendre rules: on [0, 1] for Owen's T, on [-1, 1] for the panels.
_OWEN_NODES, _OWEN_WEIGHTS = np.polynomial.legendre.leggauss(24)
_OWEN_NODES = (_OWEN_NODES + 1) / 2
_OWEN_WEIGHTS = _OWEN_WEIGHTS / 2
_PANEL_NODES, _PANEL_WEIGHTS = np.polynomial.legendre.leggauss(16)
# Panel edges, in units of the spread of T, and around each feature of the
# integrand (kink or step), in units of its width 1 / sigma.
_SPREAD_EDGES = np.array([-7.0, -4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0, 7.0])
_FEATURE_EDGES = np.array([-8.0, -4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0,
                           8.0])
# T is integrated over +-_RANGE standard deviations (its tails are Gaussian).
_RANGE = 10.0


class MonteCarloEstimate(NamedTuple):
  """Empirical rates of one simulation, each with its binomial standard error.

  Attributes:
    accuracy: fraction of clean inputs classified correctly.
    robust_accuracy: fraction classified correctly after the worst-case
      perturbation (same defense draws as the clean input).
    invariance: fraction of clean inputs whose defended prediction equals
      sgn(x), the undefended prediction.
    attack_success_rate: among the correctly classified clean inputs, the
      fraction the perturbation turns wrong.
    accuracy_stderr, robust_accuracy_stderr, invariance_stderr,
    attack_success_rate_stderr: sqrt(p (1 - p) / count) of each rate.
    num_correct: number of correctly classified clean inputs (the success
      rate's denominator).
  """

  accuracy: jax.Array
  robust_accuracy: jax.Array
  invariance: jax.Array
  attack_success_rate: jax.Array
  accuracy_stderr: jax.Array
  robust_accuracy_stderr: jax.Array
  invariance_stderr: jax.Array
  attack_success_rate_stderr: jax.Array
  num_correct: jax.Array


# ---------------------------------------------------------------- validation


def _float_dtype():
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def _check(k=None, sigma=None, eps=None):
  """Checks concrete values; tracers (inside jit/vmap/grad) pass unchecked."""
  if k is not None:
    _validate.check_number(k, "k")
  if sigma is not None:
    _validate.check_number(sigma, "sigma", low=0.0)
  if eps is not None:
    _validate.check_number(eps, "eps", low=0.0)


def _check_count(value: Any, name: str) -> int:
  """A static count (votes, samples): a Python int >= 1."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be a Python int >= 1 (a static count), got {value!r}")
  if value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  return int(value)


def _as_float(*values):
  dtype = _float_dtype()
  return [jnp.asarray(v, dtype=dtype) for v in values]


# --------------------------------------------------------------- closed forms


def accuracy(k: Any = 1.0, sigma: Any = 1.0) -> jax.Array:
  """Benign accuracy of the single-draw defended classifier sgn(x + theta - k).

  Args:
    k: decision threshold (any real; k = 1 is trained invariance, k = 0 the
      undefended classifier behind the defense).
    sigma: standard deviation of theta ~ N(1, sigma^2), >= 0.

  Returns:
    Pr[sgn(x + theta - k) = y], in [0, 1], broadcast over k and sigma:
    (Phi((2 - k) / s) + Phi(k / s)) / 2 with s = sqrt(1 + sigma^2).

  Raises:
    ValueError: k or sigma not finite, or sigma < 0.
  """
  _check(k=k, sigma=sigma)
  k, sigma = _as_float(k, sigma)
  return _robust_accuracy(k, sigma, jnp.zeros_like(k))


def robust_accuracy(k: Any = 1.0, sigma: Any = 1.0, eps: Any = 1.0) -> jax.Array:
  """Accuracy of the single draw under the worst-case perturbation |delta| <= eps.

  The adversary knows the defense distribution but not the draw; moving x by
  eps towards the wrong side is optimal for every draw.

  Args:
    k: decision threshold (any real).
    sigma: standard deviation of theta, >= 0.
    eps: perturbation budget, >= 0.

  Returns:
    Pr[sgn(x - eps y + theta - k) = y], in [0, 1], broadcast over the
    arguments: (Phi((2 - k - eps) / s) + Phi((k - eps) / s)) / 2.

  Raises:
    ValueError: an argument is not finite, or sigma or eps is negative.
  """
  _check(k=k, sigma=sigma, eps=eps)
  k, sigma, eps = _as_float(k, sigma, eps)
  return _robust_accuracy(k, sigma, eps)


@jax.jit
def _robust_accuracy(k, sigma, eps):
  margin = 1.0 - k
  scale = jnp.sqrt(1.0 + sigma**2)
  return 0.5 * (norm.cdf((1.0 + margin - eps) / scale) + norm.cdf((1.0 - margin - eps) / scale))


def attack_success_rate(k: Any = 1.0, sigma: Any = 1.0, eps: Any = 1.0, *,
                        num_votes: int = 1) -> jax.Array:
  """Fraction of correctly classified inputs that the worst-case attack turns wrong.

  The clean and the perturbed input see the same defense draws, so the rate
  is 1 - robust accuracy / accuracy (SPEC.md's success rate, which counts
  only initially correct inputs). It rises as k approaches 1 when sigma or
  eps is large enough (e.g. sigma >= 0.7, or eps >= 0.4, for k in [0, 1]);
  with little noise and a small eps it can fall instead. The unconditional
  loss, accuracy - robust accuracy, rises towards k = 1 in every case tested.

  Args:
    k: decision threshold (any real).
    sigma: standard deviation of theta, >= 0.
    eps: perturbation budget, >= 0.
    num_votes: 1 for the single draw, n > 1 for the majority vote of n draws.

  Returns:
    The rate in [0, 1], broadcast over k, sigma and eps.

  Raises:
    ValueError: bad k, sigma or eps (see `robust_accuracy`), or num_votes
      not a positive int.
  """
  num_votes = _check_count(num_votes, "num_votes")
  _check(k=k, sigma=sigma, eps=eps)
  k, sigma, eps = _as_float(k, sigma, eps)
  if num_votes == 1:
    robust, clean = _robust_accuracy(k, sigma, eps), _robust_accuracy(k, sigma, 0.0 * eps)
  else:
    robust = _vote_accuracy(k, sigma, eps, num_votes)
    clean = _vote_accuracy(k, sigma, 0.0 * eps, num_votes)
  return 1.0 - robust / clean


def invariance(k: Any = 1.0, sigma: Any = 1.0) -> jax.Array:
  """Rate of invariance R(k) = Pr[sgn(x + theta - k) = sgn(x)] of a single draw.

  Args:
    k: decision threshold (any real).
    sigma: standard deviation of theta, >= 0.

  Returns:
    R(k) in [0, 1], broadcast over k and sigma. Closed form through Owen's T
    (see the module docstring); R(1) = 1 - 2 T(1 / sqrt(1 + sigma^2), sigma),
    and with sigma = 0 the deterministic sgn(x + 1 - k), exactly.

  Raises:
    ValueError: k or sigma not finite, or sigma < 0.
  """
  _check(k=k, sigma=sigma)
  k, sigma = _as_float(k, sigma)
  return _invariance(k, sigma)


def _owens_t_small(h, a):
  """Owen's T(h, a) for |a| <= 1: a Gauss-Legendre rule on its defining integral."""
  nodes = jnp.asarray(_OWEN_NODES, h.dtype)
  weights = jnp.asarray(_OWEN_WEIGHTS, h.dtype)
  h, a = h[..., None], a[..., None]
  q = 1.0 + (a * nodes) ** 2
  return jnp.sum(weights * jnp.exp(-0.5 * h**2 * q) / q, -1) * a[..., 0] / (2 * math.pi)


def _owens_t_ratio(h, numerator, denominator, product, denominator_sign):
  """Owen's T(h, a) with a = numerator / denominator and product = a * h.

  Uses T(h, a) = sgn(a) G(h, |a|) - T(a h, 1 / a) for |a| > 1, with
  G(h, b) = (Phi(h) Phi(-b h) + Phi(b h) Phi(-h)) / 2, so a may be infinite
  without NaN in values or gradients. `denominator_sign` (+1 or -1) is given
  separately: a denominator that underflows to 0 keeps its side.
  """
  small = jnp.abs(numerator) <= jnp.abs(denominator)
  safe_numerator = jnp.where(small, 1.0, numerator)
  safe_denominator = jnp.where(small, denominator, 1.0)
  sign = jnp.sign(safe_numerator) * denominator_sign
  # One evaluation of T serves both branches: T(h, a) or T(a h, 1 / a).
  owen = _owens_t_small(jnp.where(small, h, product),
                        jnp.where(small, numerator / safe_denominator,
                                  denominator / safe_numerator))
  cdf = norm.cdf(jnp.stack([h, sign * jnp.where(small, 0.0, product)]))
  g = 0.5 * (cdf[0] * (1.0 - cdf[1]) + cdf[1] * (1.0 - cdf[0]))
  return jnp.where(small, owen, sign * g - owen)


@jax.jit
def _invariance(k, sigma):
  # Both labels at once, on a trailing axis.
  labels = jnp.asarray([1.0, -1.0], k.dtype)
  margin = (1.0 - k)[..., None]
  sigma = sigma[..., None]
  random = sigma > 0
  safe_sigma = jnp.where(random, sigma, 1.0)
  scale = jnp.sqrt(1.0 + safe_sigma**2)
  # Pr[sgn(x) != sgn(x + theta - k) | y] = 2 [T(y, y m / sigma) + T(h, a) + b]; the
  # first terms cancel between the two labels.
  h = (labels + margin) / scale
  numerator = labels * safe_sigma**2 - margin
  denominator = (labels + margin) * safe_sigma
  product = numerator / (safe_sigma * scale)  # a * h
  side = jnp.where(labels + margin >= 0, 1.0, -1.0)  # the sign of h and of the denominator
  owen = _owens_t_ratio(h, numerator, denominator, product, side)
  branch = jnp.where(labels * side < 0, 0.5, 0.0)
  random_rate = 1.0 - jnp.sum(owen + branch, -1)
  deterministic = 1.0 - 0.5 * jnp.sum(jnp.abs(norm.cdf(-labels) - norm.cdf(-margin - labels)), -1)
  return jnp.where(random[..., 0], random_rate, deterministic)


# ---------------------------------------------------------------- majority vote


@functools.cache
def _vote_constants(half: int) -> tuple[float, float]:
  """(log normaliser, standard deviation) of T = Phi^-1(P), P ~ Beta(half, half)."""
  log_norm = -float(scipy_special.betaln(half, half)) - (half - 1) * math.log(4.0)
  grid = np.linspace(-12.0, 12.0, 240_001)
  inner = np.abs(grid) < 1.0
  erf_sq = scipy_special.erf(np.where(inner, grid, 0.0) / math.sqrt(2.0)) ** 2
  log_4cc = np.where(inner, np.log1p(-erf_sq),
                     math.log(4.0) + scipy_special.log_ndtr(grid) + scipy_special.log_ndtr(-grid))
  density = np.exp(log_norm + (half - 1) * log_4cc - 0.5 * grid**2 - 0.5 * math.log(2 * math.pi))
  step = grid[1] - grid[0]
  return log_norm, float(np.sqrt(np.sum(density * grid**2) * step))


def _log_vote_density(t, half: int):
  """log density of T = Phi^-1(P), P ~ Beta(half, half), stable in float32."""
  log_norm, _ = _vote_constants(half)
  log_density = log_norm - 0.5 * t**2 - 0.5 * math.log(2 * math.pi)
  if half > 1:
    # (half - 1) log(4 Phi(t) Phi(-t)); log1p(-erf^2) keeps the small values
    # near t = 0 exact, the log-CDFs keep the tails.
    inner = jnp.abs(t) < 1.0
    t_in = jnp.where(inner, t, 0.0)
    t_out = jnp.where(inner, 1.0, t)
    log_4cc = jnp.where(
        inner, jnp.log1p(-erf(t_in / math.sqrt(2.0)) ** 2),
        math.log(4.0) + jnp.sum(norm.logcdf(jnp.stack([t_out, -t_out])), 0))
    log_density = log_density + (half - 1) * log_4cc
  return log_density


def _vote_expectation(integrand, half: int, sigma, centers):
  """E_T[integrand(T)] by composite Gauss-Legendre.

  Args:
    integrand: t -> values, smooth between the panel edges.
    half: r of P ~ Beta(r, r).
    sigma: the defense's sigma (features of the integrand have width 1 / sigma).
    centers: positions sigma * t of the integrand's kinks and steps.
  """
  dtype = sigma.dtype
  _, spread = _vote_constants(half)
  limit = _RANGE * spread
  random = sigma > 0
  inverse = jnp.where(random, 1.0 / jnp.where(random, sigma, 1.0), 0.0)
  feature_edges = jnp.asarray(_FEATURE_EDGES, dtype)
  edges = [jnp.asarray(np.concatenate([[-limit, limit], _SPREAD_EDGES * spread]), dtype)]
  for center in centers:
    edges.append(jnp.clip((center + feature_edges) * inverse, -limit, limit))
  # The edges only place the nodes; the integral over the real line does not
  # depend on them, so its derivative is the rule applied to the integrand's.
  edges = jax.lax.stop_gradient(jnp.sort(jnp.concatenate(edges)))
  lower, upper = edges[:-1, None], edges[1:, None]
  half_width = 0.5 * (upper - lower)
  t = lower + half_width * (jnp.asarray(_PANEL_NODES, dtype) + 1.0)
  weights = half_width * jnp.asarray(_PANEL_WEIGHTS, dtype)
  return jnp.sum(weights * jnp.exp(_log_vote_density(t, half)) * integrand(t))


@functools.partial(jax.jit, static_argnames="num_votes")
def _vote_accuracy(k, sigma, eps, num_votes: int):
  half = (num_votes + 1) // 2

  def one(k, sigma, eps):
    margin = 1.0 - k
    positive, negative = 1.0 + margin - eps, 1.0 - margin - eps
    centers = jnp.stack([positive, negative])[:, None, None]
    integrand = lambda t: 0.5 * jnp.sum(norm.cdf(centers - sigma * t), 0)
    return _vote_expectation(integrand, half, sigma, (positive, negative))

  return jnp.vectorize(one)(k, sigma, eps)


@functools.partial(jax.jit, static_argnames="num_votes")
def _vote_invariance(k, sigma, num_votes: int):
  half = (num_votes + 1) // 2

  def one(k, sigma):
    margin = 1.0 - k

    def integrand(t):
      # The vote says +1 exactly when x >= sigma t - m.
      boundary = sigma * t - margin
      above, below = jnp.maximum(boundary, 0.0), jnp.minimum(boundary, 0.0)
      # Pr[x > 0, vote +1] and Pr[x < 0, vote -1] for y = +1 and y = -1.
      cdf = norm.cdf(jnp.stack([1.0 - above, -1.0 - above, below - 1.0, below + 1.0]))
      return 0.5 * jnp.sum(cdf, 0)

    return _vote_expectation(integrand, half, sigma, (margin, margin + 1.0, margin - 1.0))

  return jnp.vectorize(one)(k, sigma)


def vote_accuracy(k: Any = 1.0, sigma: Any = 1.0, num_votes: int = DEFAULT_NUM_VOTES
                  ) -> jax.Array:
  """Benign accuracy of the majority vote over `num_votes` draws of theta.

  Args:
    k: decision threshold (any real).
    sigma: standard deviation of theta, >= 0.
    num_votes: number of draws, a Python int >= 1; ties (even counts) are
      broken by a fair coin, which makes 2j votes exactly as accurate as 2j - 1.

  Returns:
    Pr[vote = y] in [0, 1], broadcast over k and sigma; equals `accuracy` for
    one vote and tends to the deterministic sgn(x + 1 - k) as votes grow.

  Raises:
    ValueError: bad k or sigma, or num_votes not a positive int.
  """
  num_votes = _check_count(num_votes, "num_votes")
  _check(k=k, sigma=sigma)
  k, sigma = _as_float(k, sigma)
  return _vote_accuracy(k, sigma, jnp.zeros_like(k), num_votes=num_votes)


def vote_robust_accuracy(k: Any = 1.0, sigma: Any = 1.0, eps: Any = 1.0,
                         num_votes: int = DEFAULT_NUM_VOTES) -> jax.Array:
  """Accuracy of the majority vote under the worst-case perturbation |delta| <= eps.

  Args:
    k: decision threshold (any real).
    sigma: standard deviation of theta, >= 0.
    eps: perturbation budget, >= 0.
    num_votes: number of draws, a Python int >= 1 (fair coin on ties).

  Returns:
    Pr[vote(x - eps y) = y] in [0, 1], broadcast over the arguments.

  Raises:
    ValueError: bad k, sigma or eps, or num_votes not a positive int.
  """
  num_votes = _check_count(num_votes, "num_votes")
  _check(k=k, sigma=sigma, eps=eps)
  k, sigma, eps = _as_float(k, sigma, eps)
  return _vote_accuracy(k, sigma, eps, num_votes=num_votes)


def vote_invariance(k: Any = 1.0, sigma: Any = 1.0, num_votes: int = DEFAULT_NUM_VOTES
                    ) -> jax.Array:
  """Rate of invariance of the majority vote, Pr[vote(x) = sgn(x)].

  Args:
    k: decision threshold (any real).
    sigma: standard deviation of theta, >= 0.
    num_votes: number of draws, a Python int >= 1 (fair coin on ties).

  Returns:
    The rate in [0, 1], broadcast over k and sigma; equals `invariance` for
    one vote.

  Raises:
    ValueError: bad k or sigma, or num_votes not a positive int.
  """
  num_votes = _check_count(num_votes, "num_votes")
  _check(k=k, sigma=sigma)
  k, sigma = _as_float(k, sigma)
  return _vote_invariance(k, sigma, num_votes=num_votes)


# ------------------------------------------------------------------ simulation


def monte_carlo(key: jax.Array, k: Any = 1.0, sigma: Any = 1.0, eps: Any = 1.0, *,
                num_samples: int = 100_000, num_votes: int | None = None
                ) -> MonteCarloEstimate:
  """Simulates the task: draws data and defense, attacks, and counts.

  Draws `num_samples` labels y and inputs x | y ~ N(y, 1), perturbs each by
  the worst case x - eps * y, and classifies clean and perturbed inputs with
  the same draws of theta ~ N(1, sigma^2): one draw each, or the majority of
  `num_votes` draws (a fair coin, shared by the clean and the perturbed
  input, breaks ties). Independent of the closed forms, which it checks.

  Args:
    key: PRNG key; split into label, input, defense and tie-break keys.
    k: decision threshold.
    sigma: standard deviation of theta, >= 0.
    eps: perturbation budget, >= 0.
    num_samples: number of inputs, a Python int >= 1.
    num_votes: None (or 1) for the single draw, else the number of votes.

  Returns:
    A `MonteCarloEstimate` of float scalars (rates and standard errors).

  Raises:
    ValueError: bad k, sigma, eps, num_samples or num_votes.
    TypeError: key is not a jax.random key.
  """
  _validate.check_key(key)
  _check(k=k, sigma=sigma, eps=eps)
  num_samples = _check_count(num_samples, "num_samples")
  num_votes = 1 if num_votes is None else _check_count(num_votes, "num_votes")
  k, sigma, eps = _as_float(k, sigma, eps)
  return _monte_carlo(key, k, sigma, eps, num_votes, num_samples=num_samples)


@functools.partial(jax.jit, static_argnames="num_samples")
def _monte_carlo(key, k, sigma, eps, num_votes, *, num_samples: int):
  # num_votes is traced: one compilation serves every number of votes.
  dtype = k.dtype
  label_key, input_key, defense_key, tie_key = jax.random.split(key, 4)
  labels = jnp.where(jax.random.bernoulli(label_key, 0.5, (num_samples,)), 1.0, -1.0)
  labels = labels.astype(dtype)
  inputs = labels + jax.random.normal(input_key, (num_samples,), dtype)
  # Every draw's decision increases with x, so the worst case moves x by eps
  # towards the wrong side.
  perturbed = inputs - eps * labels

  def count(index, counts):
    theta = 1.0 + sigma * jax.random.normal(
        jax.random.fold_in(defense_key, index), (num_samples,), dtype)
    clean, adversarial = counts
    return clean + (inputs + theta - k > 0), adversarial + (perturbed + theta - k > 0)

  zeros = jnp.zeros(num_samples, jnp.int32)
  clean_votes, adversarial_votes = jax.lax.fori_loop(0, num_votes, count, (zeros, zeros))
  coin = jnp.where(jax.random.bernoulli(tie_key, 0.5, (num_samples,)), 1.0, -1.0)

  def decide(positive_votes):
    twice = 2 * positive_votes
    return jnp.where(twice > num_votes, 1.0, jnp.where(twice < num_votes, -1.0, coin))

  clean_labels, adversarial_labels = decide(clean_votes), decide(adversarial_votes)
  correct = clean_labels == labels
  robust = adversarial_labels == labels
  agree = clean_labels == jnp.where(inputs > 0, 1.0, -1.0)
  num_correct = jnp.sum(correct)
  flipped = jnp.sum(correct & ~robust)
  success = flipped / jnp.maximum(num_correct, 1)

  def rate(values):
    return jnp.mean(values.astype(dtype))

  def stderr(p, n):
    return jnp.sqrt(p * (1.0 - p) / jnp.maximum(n, 1))

  accuracy_, robust_, invariance_ = rate(correct), rate(robust), rate(agree)
  return MonteCarloEstimate(
      accuracy=accuracy_,
      robust_accuracy=robust_,
      invariance=invariance_,
      attack_success_rate=success.astype(dtype),
      accuracy_stderr=stderr(accuracy_, num_samples),
      robust_accuracy_stderr=stderr(robust_, num_samples),
      invariance_stderr=stderr(invariance_, num_samples),
      attack_success_rate_stderr=stderr(success, num_correct).astype(dtype),
      num_correct=num_correct,
  )


# ---------------------------------------------------------------------- tables


def table(ks: Sequence[float], sigma: float, eps: float, *, num_votes: int | None = None
          ) -> list[dict[str, float]]:
  """Rows over the decision threshold k for a report (see `jaxdef.reports.tables`).

  Args:
    ks: thresholds, a non-empty sequence of finite numbers.
    sigma: standard deviation of theta, >= 0.
    eps: perturbation budget, >= 0.
    num_votes: also report the majority vote of this many draws.

  Returns:
    One dict per k with float values: "k", "accuracy", "robust_accuracy",
    "invariance", "attack_success_rate", and with num_votes "vote_accuracy",
    "vote_robust_accuracy", "vote_invariance", "vote_attack_success_rate".

  Raises:
    ValueError: empty or non-finite ks, bad sigma, eps or num_votes.
  """
  try:
    values = np.asarray(ks, dtype=np.float64)
  except (TypeError, ValueError):
    values = None
  if values is None or values.ndim > 1 or values.size == 0:
    raise ValueError(f"ks must be a non-empty sequence of thresholds (numbers), got {ks!r}")
  values = values.reshape(-1)
  _check(k=values, sigma=sigma, eps=eps)
  if num_votes is not None:
    num_votes = _check_count(num_votes, "num_votes")
  columns = {
      "accuracy": accuracy(values, sigma),
      "robust_accuracy": robust_accuracy(values, sigma, eps),
      "invariance": invariance(values, sigma),
      "attack_success_rate": attack_success_rate(values, sigma, eps),
  }
  if num_votes is not None:
    columns.update({
        "vote_accuracy": vote_accuracy(values, sigma, num_votes),
        "vote_robust_accuracy": vote_robust_accuracy(values, sigma, eps, num_votes),
        "vote_invariance": vote_invariance(values, sigma, num_votes),
        "vote_attack_success_rate": attack_success_rate(values, sigma, eps, num_votes=num_votes),
    })
  columns = {name: np.asarray(column, dtype=np.float64) for name, column in columns.items()}
  return [{"k": float(k), **{name: float(column[i]) for name, column in columns.items()}}
          for i, k in enumerate(values)]


def summary(sigma: float, eps: float, *, num_votes: int = DEFAULT_NUM_VOTES
            ) -> list[dict[str, Any]]:
  """The study's classifiers side by side, for one sigma and eps.

  Rows: "undefended" (sgn(x)), "defended" (k = 0, one draw), "defended, vote"
  (k = 0, majority of num_votes), "trained invariance" (k = 1, one draw) and
  "trained invariance, vote" (k = 1, majority of num_votes).

  Args:
    sigma: standard deviation of theta, >= 0.
    eps: perturbation budget, >= 0.
    num_votes: votes of the voting rows, a Python int >= 1.

  Returns:
    One dict per classifier: "classifier", "k", "sigma", "num_votes",
    "accuracy", "robust_accuracy", "invariance", "attack_success_rate".

  Raises:
    ValueError: bad sigma, eps or num_votes.
  """
  _check(sigma=sigma, eps=eps)
  num_votes = _check_count(num_votes, "num_votes")
  rows = []
  for name, k, noise, votes in (
      ("undefended", TRAINED_THRESHOLD, 0.0, 1),
      ("defended", 0.0, sigma, 1),
      ("defended, vote", 0.0, sigma, num_votes),
      ("trained invariance", TRAINED_THRESHOLD, sigma, 1),
      ("trained invariance, vote", TRAINED_THRESHOLD, sigma, num_votes),
  ):
    if votes == 1:
      values = (accuracy(k, noise), robust_accuracy(k, noise, eps), invariance(k, noise))
    else:
      values = (vote_accuracy(k, noise, votes), vote_robust_accuracy(k, noise, eps, votes),
                vote_invariance(k, noise, votes))
    clean, robust, invariant = (float(v) for v in values)
    rows.append({
        "classifier": name, "k": float(k), "sigma": float(noise), "num_votes": votes,
        "accuracy": clean, "robust_accuracy": robust, "invariance": invariant,
        "attack_success_rate": 1.0 - robust / clean,
    })
  return rows
