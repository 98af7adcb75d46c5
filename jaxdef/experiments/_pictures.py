"""Perturbation pictures of SPEC.md section 7 (config `perturbation_pictures`).

PGD with and without EOT at an equal budget of gradient computations
(e.g. k = 50 steps x m = 1 draw against k = 10 x m = 5), against every
configured model behind every configured defense, untargeted. Each
perturbation delta = adversarial - clean is shown as delta / (2 eps) + 0.5,
so 0.5 (grey) is no change and 0 / 1 are -eps / +eps. Writes records.json,
summary.md (success of every setting with its denominator and 95% interval,
and how the perturbations look in numbers) and one grid figure per (model,
defense) as PNG and PDF.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import StochasticClassifier
from jaxdef import attacks
from jaxdef import distortion
from jaxdef.experiments import _records
from jaxdef.experiments import _sanity
from jaxdef.experiments import _sources
from jaxdef.reports import figures
from jaxdef.reports import tables

SUMMARY_COLUMNS = (("model", "model"), ("defense", "defense"), ("k", "PGD steps k"),
                   ("m", "EOT m"), ("gradient_computations", "k x m"),
                   ("success", "attack success"), ("mean_abs_delta_over_eps", "mean |delta|/eps"),
                   ("saturated_fraction", "pixels at +-eps"), ("psnr_db", "PSNR dB"),
                   ("ssim", "SSIM"),
                   ("total_variation_over_eps", "TV(delta)/eps per pixel"))


def settings_of(config) -> tuple[tuple[int, int], ...]:
  """The (k, m) settings of `config.attack.settings`, checked for an equal budget.

  Raises:
    ValueError: fewer than two settings, a non-positive k or m, or unequal k x m.
  """
  settings = tuple((int(k), int(m)) for k, m in config.attack.settings)
  if len(settings) < 2:
    raise ValueError(f"config.attack.settings needs at least two (k, m) pairs to compare, "
                     f"got {settings}")
  if any(k < 1 or m < 1 for k, m in settings):
    raise ValueError(f"config.attack.settings must hold positive (k, m) pairs, got {settings}")
  budgets = {k * m for k, m in settings}
  if len(budgets) != 1:
    raise ValueError(f"config.attack.settings must share one budget k x m (the comparison is at "
                     f"equal gradient computations), got {settings} with budgets "
                     f"{sorted(budgets)}")
  return settings


def normalised(delta: np.ndarray, eps: float) -> np.ndarray:
  """delta / (2 eps) + 0.5, in [0, 1] for delta in [-eps, eps]."""
  return np.clip(np.asarray(delta) / (2 * eps) + 0.5, 0.0, 1.0)


def perturbation_stats(delta: jax.Array, eps: float) -> dict[str, float]:
  """How a perturbation looks, in numbers.

  Args:
    delta: float (B, H, W, C), adversarial - clean, inside [-eps, eps].
    eps: the L-inf budget.

  Returns:
    mean |delta| / eps, the fraction of pixels within 1% of +-eps, and the
    mean absolute difference of neighbouring pixels over eps (total
    variation per pixel: low for smooth, high for speckled perturbations).
  """
  delta = np.asarray(delta, np.float64)
  magnitude = np.abs(delta) / eps
  tv = (np.abs(np.diff(delta, axis=1)).mean() + np.abs(np.diff(delta, axis=2)).mean()) / 2
  return {"mean_abs_delta_over_eps": float(magnitude.mean()),
          "saturated_fraction": float(np.mean(magnitude >= 0.99)),
          "total_variation_over_eps": float(tv / eps)}


def picture_grid(clean: np.ndarray, adversarial: dict[str, np.ndarray], eps: float, path,
                 title: str) -> pathlib.Path:
  """One row per image: clean, then adversarial and normalised delta per setting.

  Args:
    clean: float (P, H, W, C) in [0, 1].
    adversarial: setting label -> float (P, H, W, C) in [0, 1].
    eps: the L-inf budget (delta is shown as delta / (2 eps) + 0.5).
    path: output path without suffix (PNG and PDF are written).
    title: figure title.
  """
  plt = figures.pyplot()
  rows, columns = len(clean), 1 + 2 * len(adversarial)
  figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.3 * rows + 0.4),
                              squeeze=False)
  for row in range(rows):
    figures.show_image(axes[row, 0], clean[row])
    for index, (label, images) in enumerate(adversarial.items()):
      figures.show_image(axes[row, 1 + 2 * index], images[row])
      figures.show_image(axes[row, 2 + 2 * index], normalised(images[row] - clean[row], eps))
      if row == 0:
        axes[0, 1 + 2 * index].set_title(f"adversarial\n{label}", fontsize=7)
        axes[0, 2 + 2 * index].set_title(f"delta\n{label}", fontsize=7)
  axes[0, 0].set_title("clean", fontsize=7)
  figure.suptitle(title, fontsize=8, y=1.04)
  figure.text(0.5, 0.0, "delta shown as delta / (2 eps) + 0.5: grey = unchanged, "
              "black = -eps, white = +eps", ha="center", va="top", fontsize=7)
  return figures.save(figure, path)


def run_pictures(config, workdir: pathlib.Path) -> dict:
  """Runs the equal-budget settings; returns {"records", "summary"}."""
  settings = settings_of(config)
  dataset = _sources.load_eval_data(config, workdir)
  logits_fns = _sources.load_models(config, workdir)
  defenses = _sources.build_defenses(config.defenses)
  eps = float(config.attack.eps_255) / 255
  alpha = float(config.attack.alpha_255) / 255
  votes = int(config.attack.votes)
  num_pictures = min(int(config.num_pictures), len(dataset.labels))
  attack_key, eval_key = jax.random.split(jax.random.key(int(config.seed)))
  classifiers = {(model, defense_label): StochasticClassifier(
                     logits_fn, defense, **_sources.vote_settings(config, logits_fn))
                 for model, logits_fn in logits_fns.items()
                 for defense_label, defense in defenses.items()}
  sanity_text = _sanity.run(config, {pair: (clf, votes) for pair, clf in classifiers.items()},
                            dataset.images, dataset.labels, workdir)
  records, lines = [], []
  for (model, defense_label), clf in classifiers.items():
    adversarial = {}
    for index, (k, m) in enumerate(settings):
      result = attacks.pgd_result(
          jax.random.fold_in(attack_key, index), clf, dataset.images,
          dataset.labels, eps=eps, alpha=alpha, steps=k, eot=m,
          random_start=bool(config.attack.random_start))
      # One evaluation key for every setting: the clean votes, hence the
      # denominators, are the same, and only the adversarial votes differ.
      rate = attacks.evaluate(clf, eval_key, dataset.images, result.adversarial,
                              dataset.labels, num_votes=votes)
      delta = result.adversarial - dataset.images
      record = {"model": model, "defense": defense_label, "k": k, "m": m, "eps": eps,
                "alpha": alpha, "gradient_computations": result.gradient_computations,
                "max_abs_delta": float(jnp.max(jnp.abs(delta))),
                **perturbation_stats(delta, eps),
                "psnr_db": distortion.psnr_db(dataset.images, result.adversarial),
                "ssim": distortion.mean_ssim(dataset.images, result.adversarial),
                **rate.as_dict()}
      record["success"] = tables.rate_with_interval(record)
      records.append(record)
      adversarial[f"k={k}, m={m}"] = np.asarray(result.adversarial[:num_pictures])
    name = f"{model}__{defense_label}"
    picture = picture_grid(np.asarray(dataset.images[:num_pictures]), adversarial, eps,
                           workdir / "figures" / f"perturbations__{name}",
                           f"{model} behind {defense_label}, eps = {config.attack.eps_255:g}"
                           f"/255, equal budget k x m = {settings[0][0] * settings[0][1]}")
    lines += [f"![perturbations {name}](figures/{picture.name})", ""]
  _records.write_json(workdir / "records.json", records)
  summary = "\n".join([
      f"# Perturbation pictures: {dataset.name}", "",
      f"Untargeted L-inf PGD, eps = {config.attack.eps_255:g}/255, step "
      f"{config.attack.alpha_255:g}/255, settings of equal gradient computations "
      f"{', '.join(f'k={k} x m={m}' for k, m in settings)}; success over the "
      f"{len(dataset.labels)} fixed images the defended vote ({votes} votes) classified "
      f"correctly, 95% Clopper-Pearson intervals.", "",
      tables.markdown(records, SUMMARY_COLUMNS), "", *lines,
      *([sanity_text] if sanity_text else [])])
  _records.write_atomic(workdir / "summary.md", summary)
  print(summary)
  return {"records": records, "summary": summary}


__all__ = ("run_pictures",)
