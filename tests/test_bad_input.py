"""Bad input across the public API (../shared/API.md): a clear error, naming the argument.

One table walks every public function and config field through the
categories of issue 7: wrong rank and dtype, values outside [0, 1], NaN/inf,
empty batches, bad keys, labels out of range, eps/alpha/steps/eot/votes out
of range, unknown names, kappa out of range. Each case names the exception
type and a pattern that contains the argument's name and what is allowed.
Everything is tiny: a linear classifier on 4 x 4 images, no model compiled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdef as jd
from configs import default as default_config
from configs import invariance_smoothing
from configs import kxm_sweep
from configs import theory as theory_config
from jaxdef import experiments

KEY = jax.random.key(0)
IMAGE = jnp.full((4, 4, 3), 0.5, jnp.float32)
IMAGES = jnp.full((2, 4, 4, 3), 0.5, jnp.float32)
LABELS = jnp.asarray([0, 1], jnp.int32)
WEIGHTS = jnp.asarray(np.random.default_rng(0).normal(size=(48, 4)), jnp.float32)
T = jd.transforms
D = jd.defenses
A = jd.attacks


def linear_logits(images):
  return images.reshape(images.shape[0], -1) @ WEIGHTS


CLF = jd.StochasticClassifier(linear_logits, D.randomized_smoothing(0.1))

# Each bad image: (value for a rank-3 argument, for a rank-4 one, exception, pattern after
# the argument's name).
BAD_PIXELS = {
    "wrong rank": (IMAGE[..., 0], IMAGE, ValueError, r" must have rank"),
    "uint8 dtype": ((IMAGE * 255).astype(jnp.uint8), (IMAGES * 255).astype(jnp.uint8),
                    TypeError, r" must be floating point with values in \[0, 1\].*dtype uint8"),
    "8-bit values": (IMAGE * 255, IMAGES * 255, ValueError, r" values must lie in \[0, 1\]"),
    "NaN": (IMAGE.at[0, 0, 0].set(jnp.nan), IMAGES.at[0, 0, 0, 0].set(jnp.nan), ValueError,
            r" contains NaN or inf"),
    "inf": (IMAGE.at[1, 1, 1].set(jnp.inf), IMAGES.at[1, 1, 1, 1].set(-jnp.inf), ValueError,
            r" contains NaN or inf"),
    "empty": (IMAGE[:0], IMAGES[:0], ValueError, r" must not be empty"),
    "not an array": ([[0.5]], [[0.5]], TypeError, r" must be an array"),
}
# Slightly out of range: refused by everything but models and randomized smoothing,
# which take defended images (unclipped noise) with a loose bound.
NEGATIVE = (IMAGE - 0.7, IMAGES - 0.7, ValueError, r" values must lie in \[0, 1\]")

# name -> (call taking the bad value, argument name, rank)
TRANSFORMS = {
    "swirl": (lambda x: T.swirl(x, 1.0, 3.0, (1, 1)), "image", 3),
    "median_blur": (lambda x: T.median_blur(x, 3), "image", 3),
    "gaussian_blur": (lambda x: T.gaussian_blur(x, 3, 1.0), "image", 3),
    "quantize": (lambda x: T.quantize(x, 4), "image", 3),
    "fft_perturb": (lambda x: T.fft_perturb(KEY, x, 0.5), "image", 3),
    "noise": (lambda x: T.noise(KEY, x, "gaussian"), "image", 3),
    "rotate": (lambda x: T.rotate(x, 10.0), "image", 3),
    "random_swirl": (lambda x: T.random_swirl(KEY, x), "image", 3),
    "random_median_blur": (lambda x: T.random_median_blur(KEY, x), "image", 3),
    "random_gaussian_blur": (lambda x: T.random_gaussian_blur(KEY, x), "image", 3),
    "random_quantize": (lambda x: T.random_quantize(KEY, x), "image", 3),
    "random_fft_perturb": (lambda x: T.random_fft_perturb(KEY, x), "image", 3),
    "random_noise": (lambda x: T.random_noise(KEY, x), "image", 3),
    "random_rotate": (lambda x: T.random_rotate(KEY, x), "image", 3),
}
BATCHED = {
    "defense call": (lambda x: D.quantization()(KEY, x), "images", 4),
    "defenses.sample": (lambda x: D.sample(D.fft_perturbation(), KEY, x, 2), "images", 4),
    "clf.logits": (lambda x: CLF.logits(KEY, x), "images", 4),
    "clf.predict": (lambda x: CLF.predict(KEY, x, n=2), "images", 4),
    "clf.invariance": (lambda x: CLF.invariance(KEY, x, n=2), "images", 4),
    "clf.vote_counts": (lambda x: CLF.vote_counts(KEY, x, n=2), "images", 4),
    "pgd": (lambda x: A.pgd(KEY, CLF, x, LABELS, steps=1), "images", 4),
    "apgd": (lambda x: A.apgd(KEY, CLF, x, LABELS, steps=1), "images", 4),
    "pgd_trajectory": (lambda x: A.pgd_trajectory(KEY, CLF, x, LABELS, checkpoints=(1,)),
                       "images", 4),
    "evaluate clean": (lambda x: A.evaluate(CLF, KEY, x, IMAGES, LABELS, num_votes=2),
                       "clean_images", 4),
    "evaluate adversarial": (lambda x: A.evaluate(CLF, KEY, IMAGES, x, LABELS, num_votes=2),
                             "adversarial_images", 4),
    "checks.sanity_check": (lambda x: jd.checks.sanity_check(CLF, KEY, x, LABELS),
                            "images", 4),
}
LOOSE_RANGE = {"gaussian_noise": (lambda x: T.gaussian_noise(KEY, x, 0.1), "image", None)}


def _pixel_cases():
  for table in (TRANSFORMS, BATCHED, LOOSE_RANGE):
    for function, (call, argument, rank) in table.items():
      categories = dict(BAD_PIXELS)
      if table is not LOOSE_RANGE:
        categories["negative"] = NEGATIVE
      else:  # any rank is fine: a scalar is the wrong rank
        categories["wrong rank"] = (jnp.float32(0.5), None, ValueError, r" must have rank >= 1")
      for category, (as_image, as_batch, error, pattern) in categories.items():
        value = as_batch if rank == 4 else as_image
        yield pytest.param(call, value, error, argument + pattern,
                           id=f"{function}-{category}")


@pytest.mark.parametrize("call, value, error, match", list(_pixel_cases()))
def test_bad_pixels_are_named(call, value, error, match):
  with pytest.raises(error, match=match):
    call(value)


def test_models_refuse_8_bit_and_nonfinite_images_but_take_defended_ones():
  model, variables = jd.models.small_resnet(num_classes=3, input_shape=(4, 4, 3), widths=(2,),
                                            blocks_per_stage=1)
  logits_fn = jd.models.logits_fn(model, variables)
  assert logits_fn(IMAGES - 0.7).shape == (2, 3)  # unclipped noise is fine
  for category in ("wrong rank", "uint8 dtype", "8-bit values", "NaN", "empty", "not an array"):
    _, value, error, pattern = BAD_PIXELS[category]
    with pytest.raises(error, match="images" + pattern):
      logits_fn(value)
  with pytest.raises(ValueError, match="images must have 3 channels"):
    logits_fn(IMAGES[..., :1])


BAD_KEY = ("not a key", 3)
WITH_KEY = {
    "fft_perturb": lambda key: T.fft_perturb(key, IMAGE, 0.5),
    "noise": lambda key: T.noise(key, IMAGE, "gaussian"),
    "gaussian_noise": lambda key: T.gaussian_noise(key, IMAGE, 0.1),
    "random_swirl": lambda key: T.random_swirl(key, IMAGE),
    "random_quantize": lambda key: T.random_quantize(key, IMAGE),
    "defense call": lambda key: D.randomized_smoothing()(key, IMAGES),
    "defenses.sample": lambda key: D.sample(D.randomized_smoothing(), key, IMAGES, 2),
    "clf.logits": lambda key: CLF.logits(key, IMAGES),
    "clf.predict": lambda key: CLF.predict(key, IMAGES, n=2),
    "pgd": lambda key: A.pgd(key, CLF, IMAGES, LABELS, steps=1),
    "apgd": lambda key: A.apgd(key, CLF, IMAGES, LABELS, steps=1),
    "pgd_trajectory": lambda key: A.pgd_trajectory(key, CLF, IMAGES, LABELS, checkpoints=(1,)),
    "theory.monte_carlo": lambda key: jd.theory.monte_carlo(key),
    "checks.sanity_check": lambda key: jd.checks.sanity_check(CLF, key, IMAGES, LABELS),
}


@pytest.mark.parametrize("bad_key", [3, jnp.zeros(3, jnp.float32), "seed"],
                         ids=["int", "float array", "string"])
@pytest.mark.parametrize("function", sorted(WITH_KEY))
def test_bad_keys_are_named(function, bad_key):
  with pytest.raises(TypeError, match=r"key must be a jax.random key"):
    WITH_KEY[function](bad_key)


ATTACKS = {
    "pgd": lambda **kw: A.pgd(KEY, CLF, kw.pop("images", IMAGES), kw.pop("labels", LABELS),
                              **{"steps": 1, **kw}),
    "apgd": lambda **kw: A.apgd(KEY, CLF, kw.pop("images", IMAGES), kw.pop("labels", LABELS),
                                **{"steps": 1, **kw}),
    "pgd_trajectory": lambda **kw: A.pgd_trajectory(
        KEY, CLF, kw.pop("images", IMAGES), kw.pop("labels", LABELS),
        **{"checkpoints": (1,), **kw}),
}
ATTACK_CASES = [
    # labels
    (dict(labels=jnp.asarray([0, 4])), ValueError, r"labels must lie in \[0, 4\) .*4 classes"),
    (dict(labels=jnp.asarray([-1, 0])), ValueError, r"labels must lie in \[0, 4\)"),
    (dict(labels=jnp.asarray([0.0, 1.0])), TypeError, "labels must be integers"),
    (dict(labels=jnp.asarray([0])), ValueError, r"labels must have shape \(2,\)"),
    (dict(labels=[0, 1]), TypeError, "labels must be an integer array"),
    # budgets
    (dict(eps=0.0), ValueError, r"eps must be in \(0, 1\]"),
    (dict(eps=-8 / 255), ValueError, r"eps must be in \(0, 1\]"),
    (dict(eps=8.0), ValueError, r"eps must be in \(0, 1\].*write 8/255"),
    (dict(eps=float("nan")), ValueError, "eps must be finite"),
    (dict(eps=float("inf"), norm="2"), ValueError, "eps must be finite"),
    (dict(eps="8/255"), TypeError, "eps must be a number"),
    (dict(eot=0), ValueError, r"eot must be in \[1, inf\]"),
    (dict(eot=2.5), ValueError, "eot must be an integer"),
    (dict(eot_chunk_size=0), ValueError, "eot_chunk_size must be in"),
    (dict(norm="l2"), ValueError, "norm must be one of 'inf', '2'"),
    (dict(loss="hinge"), ValueError, "loss must be one of"),
    (dict(targeted=1), TypeError, "targeted must be True or False"),
    (dict(random_start="yes"), TypeError, "random_start must be True or False"),
]
PGD_ONLY = [
    (dict(alpha=0.0), ValueError, r"alpha must be in \(0, 1\]"),
    (dict(alpha=2.0), ValueError, r"alpha must be in \(0, 1\].*write 8/255"),
    (dict(alpha=float("nan")), ValueError, "alpha must be finite"),
]
STEPS = {
    "pgd": [(dict(steps=0), ValueError, r"steps must be in \[1, inf\]"),
            (dict(steps=2.5), ValueError, "steps must be an integer")],
    "apgd": [(dict(steps=0), ValueError, r"steps must be in \[1, inf\]"),
             (dict(rho=1.5), ValueError, r"rho must be in \[0, 1\]")],
    "pgd_trajectory": [(dict(checkpoints=()), ValueError, "checkpoints must be positive"),
                       (dict(checkpoints=(0, 2)), ValueError, "checkpoints must be positive"),
                       (dict(checkpoints=(1,), steps=1.5), ValueError,
                        "steps must be an integer")],
}


def _attack_cases():
  for name in ATTACKS:
    cases = ATTACK_CASES + STEPS[name] + ([] if name == "apgd" else PGD_ONLY)
    for kwargs, error, match in cases:
      label = ",".join(f"{k}={v!r}" if not hasattr(v, "shape") else f"{k}=array{v.shape}"
                       for k, v in kwargs.items())
      yield pytest.param(name, kwargs, error, match, id=f"{name}-{label}")


@pytest.mark.parametrize("name, kwargs, error, match", list(_attack_cases()))
def test_attack_arguments_are_named(name, kwargs, error, match):
  with pytest.raises(error, match=match):
    ATTACKS[name](**kwargs)


def test_attack_refuses_what_is_not_a_classifier():
  with pytest.raises(TypeError, match="clf must be a jaxdef.StochasticClassifier"):
    A.pgd(KEY, linear_logits, IMAGES, LABELS, steps=1)


def _rank1(images):
  return linear_logits(images).reshape(-1)


CALLS = [
    # defenses and the registry
    (lambda: D.get("smoothing"), ValueError, r"unknown defense 'smoothing'; available: .*bart"),
    (lambda: D.get("bart", sigma=0.1), TypeError, "does not take sigma; its parameters are"),
    (lambda: D.get("bart", kappa=0), ValueError, r"kappa must be an integer in 1..6, got 0"),
    (lambda: D.bart(kappa=7), ValueError, r"kappa must be an integer in 1..6, got 7"),
    (lambda: D.bart(kappa=2.0), ValueError, r"kappa must be an integer in 1..6, got 2.0"),
    (lambda: D.bart(kappa="3"), ValueError, r"kappa must be an integer in 1..6, got '3'"),
    (lambda: D.bart(transforms=()), ValueError, "transforms must hold at least one"),
    (lambda: D.randomized_smoothing(sigma=-0.25), ValueError, r"sigma must be in \[0, inf\]"),
    (lambda: D.randomized_smoothing(sigma=float("nan")), ValueError, "sigma must be finite"),
    (lambda: D.randomized_smoothing(clip="yes"), TypeError, "clip must be True or False"),
    (lambda: D.noise_injection(kinds=("blue",)), ValueError, "kinds must be one of 'gaussian'"),
    (lambda: D.quantization(levels_range=(0, 8)), ValueError, "levels_range must satisfy 1 <="),
    (lambda: D.random_rotation(mode="mirror"), ValueError, "mode must be one of 'constant'"),
    (lambda: D.random_crop(crop_size=0), ValueError, r"crop_size must be in \[1, inf\]"),
    (lambda: D.compose(), ValueError, "compose needs at least one defense"),
    (lambda: D.compose(D.identity(), 3), TypeError, "a defense must be callable"),
    (lambda: D.sample(D.identity(), KEY, IMAGES, 0), ValueError, r"n must be in \[1, inf\]"),
    (lambda: D.sample(D.identity(), KEY, IMAGES, 2.5), ValueError, "n must be an integer"),
    (lambda: D.sample(D.identity(), KEY, IMAGES, 2, chunk_size=0), ValueError,
     r"chunk_size must be in \[1, inf\]"),
    (lambda: D.sample(None, KEY, IMAGES, 2), TypeError, "a defense must be callable"),
    (lambda: jd.bpda("quantize"), TypeError, "bpda expects a callable"),
    (lambda: jd.bpda(lambda x: x, argnum=2)(IMAGE), ValueError,
     "bpda argnum=2 does not point at an array"),
    # transforms' parameters
    (lambda: T.swirl(IMAGE, 1.0, 0.0, (1, 1)), ValueError, r"radius must be in \(0, inf\]"),
    (lambda: T.swirl(IMAGE, 1.0, 3.0, (1,)), ValueError, r"center must be a pair \(x, y\)"),
    (lambda: T.median_blur(IMAGE, 4), ValueError, "kernel_size must be odd, got 4"),
    (lambda: T.gaussian_blur(IMAGE, 0, 1.0), ValueError, r"kernel_size must be in \[1, inf\]"),
    (lambda: T.median_blur(IMAGE, 2.5), ValueError, "kernel_size must be an integer"),
    (lambda: T.gaussian_blur(IMAGE, 3, 0.0), ValueError, r"sigma must be in \(0, inf\]"),
    (lambda: T.quantize(IMAGE, 0), ValueError, r"levels must be in \[1, inf\]"),
    (lambda: T.fft_perturb(KEY, IMAGE, 1.5), ValueError, r"fraction must be in \[0, 1\]"),
    (lambda: T.noise(KEY, IMAGE, "blue"), ValueError, "kind must be one of 'gaussian'"),
    (lambda: T.noise(KEY, IMAGE, "salt", amount=2.0), ValueError, r"amount must be in \[0, 1\]"),
    (lambda: T.gaussian_noise(KEY, IMAGE, -0.1), ValueError, r"sigma must be in \[0, inf\]"),
    (lambda: T.rotate(IMAGE, 10.0, mode="mirror"), ValueError, "mode must be one of"),
    (lambda: T.random_fft_perturb(KEY, IMAGE, fraction_range=(0.5, 1.5)), ValueError,
     r"fraction_range must satisfy 0.0 <= low <= high <= 1.0"),
    # classifier
    (lambda: jd.StochasticClassifier("resnet"), TypeError, "logits_fn must be callable"),
    (lambda: jd.StochasticClassifier(linear_logits, "bart"), TypeError,
     "a defense must be callable"),
    (lambda: jd.StochasticClassifier(linear_logits, vote_chunk_size=0), ValueError,
     r"vote_chunk_size must be in \[1, inf\]"),
    (lambda: CLF.predict(KEY, IMAGES, n=0), ValueError, r"n must be in \[1, inf\]"),
    (lambda: CLF.predict(KEY, IMAGES, n=2, mode="majority"), ValueError,
     "mode must be one of 'vote', 'all', 'logits'"),
    (lambda: CLF.invariance(KEY, IMAGES, n=-1), ValueError, r"n must be in \[1, inf\]"),
    (lambda: CLF.predict_sequential(KEY, IMAGES, n=4, error=1.0), ValueError,
     r"error must be in \(0, 1\)"),
    (lambda: jd.StochasticClassifier(_rank1).predict(KEY, IMAGES, n=2), ValueError,
     r"logits_fn must return logits of shape \(batch, classes\) = \(2, classes\)"),
    # success rates
    (lambda: A.evaluate(CLF, KEY, IMAGES, IMAGES, LABELS, num_votes=0), ValueError,
     r"num_votes must be in \[1, inf\]"),
    (lambda: A.success_rate(LABELS, LABELS, LABELS, num_votes=0), ValueError,
     r"num_votes must be in \[1, inf\]"),
    (lambda: A.success_rate(LABELS, LABELS, LABELS * 1.0, num_votes=2), TypeError,
     "labels must be integer class labels"),
    (lambda: A.success_rate(LABELS[:0], LABELS[:0], LABELS[:0], num_votes=2), ValueError,
     "clean_predictions must not be empty"),
    (lambda: A.success_rate(LABELS, LABELS, LABELS[:1], num_votes=2), ValueError,
     "predictions and labels must be 1-D of one length"),
    # models
    (lambda: jd.models.resnet(depth=20), ValueError, r"depth must be one of \[18, 34, 50"),
    (lambda: jd.models.resnet(depth=18, num_classes=0), ValueError,
     r"num_classes must be in \[1, inf\]"),
    (lambda: jd.models.from_torchvision(3, depth=18), TypeError,
     "state_dict_or_path must be a state_dict"),
    (lambda: jd.models.from_torchvision("/nonexistent/resnet18.pth", depth=18),
     FileNotFoundError, "no checkpoint file at /nonexistent/resnet18.pth"),
    (lambda: jd.models.from_torchvision({}, depth=18), ValueError,
     "state_dict does not fit ResNet-18: missing keys"),
    (lambda: jd.models.logits_fn(linear_logits, {}), TypeError, "model must be a Flax module"),
    # theory
    (lambda: jd.theory.accuracy(sigma=-1.0), ValueError, r"sigma must be in \[0.0, inf\]"),
    (lambda: jd.theory.accuracy(k=float("nan")), ValueError, "k must be finite"),
    (lambda: jd.theory.robust_accuracy(eps=-0.5), ValueError, r"eps must be in \[0.0, inf\]"),
    (lambda: jd.theory.invariance(k="1"), TypeError, "k must be a number"),
    (lambda: jd.theory.vote_accuracy(num_votes=0), ValueError, "num_votes must be an int >= 1"),
]


@pytest.mark.parametrize("call, error, match", CALLS,
                         ids=[f"{i:02d}-{c[2][:40]}" for i, c in enumerate(CALLS)])
def test_bad_parameters_are_named(call, error, match):
  with pytest.raises(error, match=match):
    call()


def _kxm():
  config = kxm_sweep.get_config("tiny")
  config.progress = False
  return config


def _set(config, path, value):
  *sections, field = path.split(".")
  holder = config
  for section in sections:
    holder = holder[section]
  holder[field] = value
  return config


CONFIG_CASES = [
    (_kxm, "attack.eps_255", -8.0, r"config.attack.eps_255 must be a number in \(0, 255\]"),
    (_kxm, "attack.eps_255", 1000.0, r"config.attack.eps_255 must be a number in \(0, 255\]"),
    (_kxm, "attack.alphas_255", (), "config.attack.alphas_255 must be a non-empty sequence"),
    (_kxm, "attack.alphas_255", (1.0, 0.0), r"config.attack.alphas_255 .*\(0.0 is not\)"),
    (_kxm, "attack.steps", (1, 0), "config.attack.steps must be a non-empty sequence of int"),
    (_kxm, "attack.eots", (0,), "config.attack.eots must be a non-empty sequence of int"),
    (_kxm, "attack.votes", 0, "config.attack.votes must be an integer >= 1, got 0"),
    (_kxm, "attack.vote_chunk_size", 0, "config.attack.vote_chunk_size must be an integer"),
    (_kxm, "attack.eot_chunk_size", -1, "config.attack.eot_chunk_size must be an integer >= 0"),
    (_kxm, "attack.vote_error", 1.0, r"config.attack.vote_error must be a number in \(0, 1\)"),
    (_kxm, "attack.targeted", (), "config.attack.targeted must be a non-empty sequence"),
    (_kxm, "seed", -1, "config.seed must be an integer >= 0"),
    (_kxm, "dtype", "float16", "config.dtype must be one of 'float32', 'bfloat16', got 'float16'"),
    (_kxm, "device_memory_gb", -1.0, r"config.device_memory_gb must be a number in \[0, inf\)"),
    (_kxm, "attack.eot_rows_per_call", -1,
     r"config.attack.eot_rows_per_call must be 'auto', 0 \(no limit\) or an integer >= 1"),
    (_kxm, "attack.vote_rows_per_call", "lots",
     r"config.attack.vote_rows_per_call must be 'auto', 0 \(no limit\)"),
    (lambda: default_config.get_config("tiny"), "survey.num_samples", 0,
     "config.survey.num_samples must be an integer >= 1"),
    (lambda: invariance_smoothing.get_config("tiny"), "attack.eot", 0,
     "config.attack.eot must be an integer >= 1"),
    (lambda: invariance_smoothing.get_config("tiny"), "attack.loss", "hinge",
     "config.attack.loss must be one of 'ce', 'dlr'"),
    (lambda: theory_config.get_config("tiny"), "theory.k_min", 5.0,
     "config.theory.k_min must not exceed config.theory.k_max"),
    (lambda: theory_config.get_config("tiny"), "theory.sigma", -1.0,
     r"config.theory.sigma must be a number in \[0, inf\)"),
]


@pytest.mark.parametrize("make, path, value, match", CONFIG_CASES,
                         ids=[f"{c[1]}={c[2]!r}" for c in CONFIG_CASES])
def test_bad_config_values_are_named_before_anything_runs(make, path, value, match, tmp_path):
  config = _set(make(), path, value)
  with pytest.raises(ValueError, match=match):
    experiments.dry_run(config)
  with pytest.raises(ValueError, match=match):
    experiments.run(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # refused before anything was written


def test_shipped_configs_pass_the_value_check():
  from jaxdef.experiments import _schema

  for make in (_kxm, lambda: default_config.get_config(), lambda: kxm_sweep.get_config(),
               lambda: invariance_smoothing.get_config(), lambda: theory_config.get_config()):
    _schema.check_values(make())


def _batch_attack(keys, alphas, images=IMAGES):
  from jaxdef.attacks import _pgd

  return _pgd.pgd_trajectory_results_batch(keys, CLF, images, LABELS, alphas,
                                           checkpoints=(1,))


@pytest.mark.parametrize("keys, alphas, images, error, match", [
    ("not keys", (0.01, 0.02), IMAGES, TypeError, r"keys must be a jax.random key"),
    (KEY, (0.01, 0.02), IMAGES, ValueError, r"keys must hold one PRNG key per step size.*\(2,\)"),
    (jax.random.split(KEY, 3), (0.01, 0.02), IMAGES, ValueError,
     r"keys must hold one PRNG key per step size.*shape \(3,\)"),
    (jax.random.split(KEY, 0), (), IMAGES, ValueError, r"alphas must be non-empty"),
    (jax.random.split(KEY, 2), 0.01, IMAGES, TypeError, r"alphas must be a sequence"),
    (jax.random.split(KEY, 2), (0.01, 8), IMAGES, ValueError,
     r"alpha must be in \(0, 1\], got 8.*write 8/255"),
    (jax.random.split(KEY, 2), (0.01, -0.1), IMAGES, ValueError,
     r"alpha must be in \(0, 1\], got -0.1"),
    (jax.random.split(KEY, 2), (0.01, 0.02), IMAGES * 255, ValueError,
     r"images values must lie in \[0, 1\]"),
], ids=["not keys", "one key", "three keys", "no alphas", "alphas scalar", "alpha 8",
        "alpha negative", "8-bit images"])
def test_batched_step_sizes_are_checked_once_and_each(keys, alphas, images, error, match):
  with pytest.raises(error, match=match):
    _batch_attack(keys, alphas, images)


def test_batched_step_sizes_take_raw_uint32_keys():
  raw = jax.random.key_data(jax.random.split(KEY, 2))
  typed = _batch_attack(jax.random.split(KEY, 2), (0.01, 0.02))
  untyped = _batch_attack(raw, (0.01, 0.02))
  for a in range(2):
    np.testing.assert_array_equal(untyped[a][1].adversarial, typed[a][1].adversarial)


class _NoHostCopyOfArrays:
  """numpy, except that converting a device array of more than 3 values fails."""

  def __getattr__(self, name):
    return getattr(np, name)

  @staticmethod
  def asarray(value, *args, **kwargs):
    if isinstance(value, jax.Array) and value.size > 3:
      raise AssertionError(f"host copy of a device array of shape {value.shape}")
    return np.asarray(value, *args, **kwargs)


def test_device_images_are_checked_on_the_device(monkeypatch):
  """Finiteness and range of a device batch come back as three scalars, not a copy."""
  from jaxdef import _validate
  monkeypatch.setattr(_validate, "np", _NoHostCopyOfArrays())
  good = jnp.full((4, 8, 8, 3), 0.5)
  assert _validate.check_images(good) is not None
  with pytest.raises(ValueError, match="NaN or inf"):
    _validate.check_images(good.at[1, 2, 3, 0].set(jnp.nan))
  with pytest.raises(ValueError, match=r"min -0\.5 and max 0\.5"):
    _validate.check_images(good.at[0, 0, 0, 0].set(-0.5))
  with pytest.raises(ValueError, match=r"min 0\.5 and max 255"):
    _validate.check_images(good.at[0, 0, 0, 0].set(255.0).astype(jnp.bfloat16))
  # Host arrays are still checked (by numpy, where they are).
  with pytest.raises(ValueError, match="NaN or inf"):
    _validate.check_images(np.full((1, 2, 2, 1), np.inf, np.float32))
