"""The "lack of randomness" study of SPEC.md section 7 (config `lack_of_randomness`).

Each earlier defense (random crop, random resize-and-pad, stochastic
activation pruning, k-WTA, "odds are odd" detection) is attacked twice with
untargeted L-inf PGD:
  * published: EOT over `eot` draws per step (the row's published setting),
    k steps for every k of ``config.attack.steps``;
  * eot1: EOT moved into the steps, one draw per step and k x eot steps,
    so both settings cost k x eot gradient computations per image.
Each setting is one `pgd_trajectory` run giving every k at once.

A row may instead list its own `settings`: named (k, m, alpha_255) triples
such as the study's Table 1 ("published" k x m at its alpha, "ablation"
without EOT at another k and alpha, "equal_queries" without EOT at the
published k x m). Settings that share (m, alpha) share one trajectory, its
checkpoints their k's; a cell serving two settings is recorded once, its
`setting` naming both ("ablation+equal_queries").

Success is judged by the row's defended classifier: the majority vote over
`votes` draws for the randomized defenses (random crop, resize-and-pad,
SAP), the deterministic k-WTA model for k-WTA, and, for odds-are-odd, the
undefended model together with the fitted detector: success = misclassified
AND not flagged (the flag rates are recorded separately). Denominators are
the images the judge classifies correctly before the attack; intervals are
95% Clopper-Pearson.

Where the attack's classifier differs from the judge:
  * k-WTA is deterministic, but its published evaluation needs EOT-style
    gradients over Gaussian perturbations of the input: the attack
    differentiates the k-WTA model behind N(0, sigma^2) input noise
    (`params.sigma`), used for gradient estimation only.
  * odds-are-odd: the attack differentiates the model behind Gaussian noise
    of `params.attack_sigma`, so the adversarial example stays
    misclassified under the detector's noise.

Records: ``records/<unit>__k<k>.json``, one per finished cell, written
atomically; a rerun skips units whose cells are all on disk. Also
results.csv, summary.md and figures/eot_vs_eot1.{png,pdf}.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxdef import attacks
from jaxdef import compile_cache
from jaxdef import data
from jaxdef import defenses as defenses_lib
from jaxdef import detection
from jaxdef.classifier import StochasticClassifier
from jaxdef.experiments import _records
from jaxdef.experiments import _sanity
from jaxdef.experiments import _sources
from jaxdef.experiments import _sweep
from jaxdef.reports import figures
from jaxdef.reports import tables

DEFENSES = ("random_crop", "resize_pad", "sap", "kwta", "odds_are_odd")
# The activation each defense's model must have.
ACTIVATION_OF = {"random_crop": "relu", "resize_pad": "relu", "sap": "sap", "kwta": "kwta",
                 "odds_are_odd": "relu"}
# Parameters each row may set (`params`); the pre-processing ones go to the registry.
PARAMS = {"random_crop": ("crop_size",), "resize_pad": ("size_range", "output_size"),
          "sap": (), "kwta": ("sigma",),
          "odds_are_odd": ("sigma", "num_noise", "fpr", "fit_images", "attack_sigma")}
SETTINGS = ("published", "eot1")

CSV_COLUMNS = ("defense", "defense_name", "model", "setting", "k", "m", "budget", "alpha_255",
               "eps", "gradient_computations", "successes", "denominator", "num_images",
               "num_votes", "rate", "ci_low", "ci_high", "misclassified", "flagged",
               "clean_flagged", "nonfinite_images", "attack_seconds_whole_trajectory",
               "judge_seconds")


@dataclasses.dataclass(frozen=True)
class Row:
  """One defense of the study and its published EOT setting."""
  label: str
  defense: str  # one of DEFENSES
  model: str  # a label of config.models
  eot: int  # the published EOT draws per step, m_pub >= 2
  votes: int  # draws of each judged prediction
  params: dict[str, Any]
  # (name, k, m, alpha_255) of each setting; empty: published and eot1 over
  # config.attack.steps at config.attack.alpha_255.
  settings: tuple[tuple[str, int, int, float], ...] = ()


def rows_of(config) -> list[Row]:
  """The config's rows, checked; errors name the field and the allowed values."""
  if "rows" not in config or not config.rows:
    raise ValueError("config.rows must name at least one defense row")
  rows = []
  for label, entry in config.rows.items():
    where = f"config.rows.{label}"
    defense = entry.get("defense")
    if defense not in DEFENSES:
      raise ValueError(f"{where}.defense must be one of {', '.join(DEFENSES)}; got {defense!r}")
    model = entry.get("model")
    if model not in config.models:
      raise ValueError(f"{where}.model must be a label of config.models "
                       f"({', '.join(config.models)}); got {model!r}")
    activation = _sources.activation_of(model, config.models[model])["activation"]
    if activation != ACTIVATION_OF[defense]:
      raise ValueError(f"{where}: defense {defense!r} needs a model with activation "
                       f"{ACTIVATION_OF[defense]!r}, but config.models.{model}.activation is "
                       f"{activation!r}")
    eot, votes = entry.get("eot"), entry.get("votes")
    if not isinstance(eot, int) or eot < 2:
      raise ValueError(f"{where}.eot (the published EOT draws per step) must be an integer "
                       f">= 2, got {eot!r}")
    if not isinstance(votes, int) or votes < 1:
      raise ValueError(f"{where}.votes must be an integer >= 1, got {votes!r}")
    params = {k: tuple(v) if isinstance(v, (list, tuple)) else v
              for k, v in dict(entry.get("params", {})).items()}
    unknown = sorted(set(params) - set(PARAMS[defense]))
    if unknown:
      raise ValueError(f"{where}.params has {', '.join(unknown)}, not parameters of {defense} "
                       f"(allowed: {', '.join(PARAMS[defense]) or 'none'})")
    row = Row(label, defense, model, eot, votes, params,
              _settings_of(entry.get("settings", ()), where))
    _preprocessing(row)  # bad registry parameters fail here, before any work
    rows.append(row)
  return rows


def _settings_of(entries, where: str) -> tuple[tuple[str, int, int, float], ...]:
  """A row's `settings`, checked: each {name, k, m, alpha_255}, names distinct."""
  settings = []
  for index, entry in enumerate(entries or ()):
    entry = dict(entry)
    name, k, m, alpha = (entry.get(f) for f in ("name", "k", "m", "alpha_255"))
    field = f"{where}.settings[{index}]"
    if not isinstance(name, str) or not name.isidentifier():
      raise ValueError(f"{field}.name must be an identifier such as 'published', got {name!r}")
    for value, label in ((k, "k"), (m, "m")):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}.{label} must be an integer >= 1, got {value!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
      raise ValueError(f"{field}.alpha_255 (step in 1/255 units) must be a number > 0, "
                       f"got {alpha!r}")
    unknown = sorted(set(entry) - {"name", "k", "m", "alpha_255"})
    if unknown:
      raise ValueError(f"{field} has {', '.join(unknown)} (allowed: name, k, m, alpha_255)")
    settings.append((name, k, m, float(alpha)))
  names = [s[0] for s in settings]
  if len(set(names)) != len(names):
    raise ValueError(f"{where}.settings names must be distinct, got {names}")
  return tuple(settings)


def _preprocessing(row: Row):
  """The row's pre-processing defense, None for the in-model defenses."""
  if row.defense in ("random_crop", "resize_pad"):
    return defenses_lib.get(row.defense, **row.params)
  return None


def _odds_settings(row: Row) -> dict[str, Any]:
  sigma = float(row.params.get("sigma", 0.1))
  return {"sigma": sigma, "num_noise": int(row.params.get("num_noise", 64)),
          "fpr": float(row.params.get("fpr", 0.01)),
          "fit_images": int(row.params.get("fit_images", 1000)),
          "attack_sigma": float(row.params.get("attack_sigma", sigma))}


def _checkpoints(config, row: Row, setting: str) -> tuple[int, ...]:
  steps = tuple(int(k) for k in config.attack.steps)
  return steps if setting == "published" else tuple(k * row.eot for k in steps)


def units_of(config, row: Row) -> list[tuple[dict[int, str], _sweep.Unit, tuple[int, ...]]]:
  """({k: setting name}, unit, checkpoints) of each of the row's PGD runs."""
  if not row.settings:
    alpha = float(config.attack.alpha_255) / 255
    return [({k: setting for k in _checkpoints(config, row, setting)},
             _sweep.Unit(row.model, row.label, False, row.eot if setting == "published" else 1,
                         alpha), _checkpoints(config, row, setting)) for setting in SETTINGS]
  groups: dict[tuple[int, float], dict[int, list[str]]] = {}
  for name, k, m, alpha_255 in row.settings:
    groups.setdefault((m, alpha_255), {}).setdefault(k, []).append(name)
  return [({k: "+".join(names) for k, names in by_k.items()},
           _sweep.Unit(row.model, row.label, False, m, alpha_255 / 255), tuple(sorted(by_k)))
          for (m, alpha_255), by_k in groups.items()]


def row_costs(config) -> list[tuple[Row, int, int]]:
  """(row, image-gradients, forward passes) of every row (for --dry_run)."""
  n = int(config.data.num_images)
  costs = []
  for row in rows_of(config):
    units = units_of(config, row)
    gradients = sum(unit.eot * max(checkpoints) for _, unit, checkpoints in units) * n
    judged = (1 + sum(len(checkpoints) for _, _, checkpoints in units)) * n
    forwards = judged * row.votes
    if row.defense == "odds_are_odd":
      odds = _odds_settings(row)
      forwards += (judged + odds["fit_images"]) * (odds["num_noise"] + 1)
    costs.append((row, gradients, forwards))
  return costs


def cost(config) -> dict[str, int]:
  """Units, cells, image-gradients and forward passes of the whole study."""
  costs = row_costs(config)
  units = [u for row in rows_of(config) for u in units_of(config, row)]
  return {"units": len(units), "cells": sum(len(checkpoints) for _, _, checkpoints in units),
          "image_gradients": sum(g for _, g, _ in costs),
          "defended_forward_passes": sum(f for _, _, f in costs)}


def _fit_images(config, dataset: _sources.EvalData, count: int) -> jax.Array:
  """`count` clean images of the split, disjoint from the evaluated ones (fixed by seed)."""
  source = _sources._load_split(config.data)
  candidates = np.setdiff1d(np.arange(len(source)), dataset.indices)
  if not 1 <= count <= len(candidates):
    raise ValueError(f"odds_are_odd params.fit_images must be in [1, {len(candidates)}] (the "
                     f"split's images not evaluated), got {count}")
  rng = np.random.default_rng(int(config.seed) + 1)
  indices = np.sort(rng.choice(candidates, size=count, replace=False))
  images, _ = data.load_arrays(source, indices)
  return jax.numpy.asarray(images)


@dataclasses.dataclass
class _Judge:
  """How a row is attacked and judged."""
  attack: StochasticClassifier
  judge: StochasticClassifier
  votes: int
  detector: detection.OddsDetector | None = None

  def __call__(self, key, images) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels (B,), flagged (B,) bool)."""
    vote_key, flag_key = jax.random.split(key)
    predictions = np.asarray(self.judge.predict(vote_key, images, n=self.votes))
    if self.detector is None:
      return predictions, np.zeros(predictions.shape, bool)
    return predictions, np.asarray(self.detector.flags(flag_key, images))


def _counted_subset(config, judge: _Judge, correct: np.ndarray) -> np.ndarray | None:
  """The images to attack under ``config.attack.counted_only``: those the
  judge got right (padded, `_sweep.padded_subset`), or None for all.

  A model with its own randomness (SAP) is attacked whole: its draws
  depend on the rows it sees (`attacks.pgd_trajectory_results`' subset).
  """
  if not config.attack.get("counted_only", False) or judge.attack.stochastic_model:
    return None
  return _sweep.padded_subset(correct)


def _attack_classifier(config, row: Row, logits_fn) -> StochasticClassifier:
  """The classifier the attack differentiates for `row` (its EOT draws)."""
  votes = _sources.vote_settings(config, logits_fn)
  if row.defense in ("random_crop", "resize_pad"):
    return StochasticClassifier(logits_fn, _preprocessing(row), **votes)
  if row.defense == "sap":
    return StochasticClassifier(logits_fn, None, stochastic_model=True, **votes)
  # k-WTA and odds-are-odd are attacked through Gaussian noise: for k-WTA
  # the gradient noise that smooths its discontinuities, for odds-are-odd the
  # noise that also moves the detector's statistic.
  sigma = (float(row.params.get("sigma", 0.05)) if row.defense == "kwta"
           else _odds_settings(row)["attack_sigma"])
  return StochasticClassifier(logits_fn, defenses_lib.randomized_smoothing(sigma=sigma), **votes)


def _judge_for(config, row: Row, logits_fn, dataset, key) -> _Judge:
  attack = _attack_classifier(config, row, logits_fn)
  if row.defense in ("random_crop", "resize_pad", "sap"):
    return _Judge(attack, attack, row.votes)
  judge = StochasticClassifier(logits_fn, None, **_sources.vote_settings(config, logits_fn))
  if row.defense == "kwta":
    return _Judge(attack, judge, row.votes)
  odds = _odds_settings(row)
  stats = detection.fit(key, logits_fn, _fit_images(config, dataset, odds["fit_images"]),
                        sigma=odds["sigma"], num_noise=odds["num_noise"], fpr=odds["fpr"])
  return _Judge(attack, judge, row.votes, detection.OddsDetector(logits_fn, stats))


def run_rows(config, rows: list[Row], logits_fns, dataset, workdir: pathlib.Path, *,
             on_unit=None) -> list[dict]:
  """Runs (or resumes) every unit of every row; returns all cell records."""
  root = jax.random.key(int(config.seed))
  eps = float(config.attack.eps_255) / 255
  chunk = config.attack.get("eot_chunk_size") or None
  images, labels = dataset.images, np.asarray(dataset.labels)
  out = []
  plan = [(row, *unit) for row in rows for unit in units_of(config, row)]
  done = {u.name: _sweep.unit_records(workdir, u, c) for _, _, u, c in plan}
  bar = tqdm(total=len(plan), initial=sum(r is not None for r in done.values()),
             desc="lack-of-randomness units", unit="run", disable=not config.progress)
  judges: dict[str, _Judge] = {}
  clean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  for row, setting_of, unit, checkpoints in plan:
    if done[unit.name] is None:
      if row.label not in judges:
        judges[row.label] = _judge_for(config, row, logits_fns[row.model], dataset,
                                       _sweep.named_key(root, f"fit/{row.label}"))
        clean[row.label] = judges[row.label](_sweep.named_key(root, f"clean/{row.label}"), images)
      judge = judges[row.label]
      clean_predictions, clean_flags = clean[row.label]
      correct = clean_predictions == labels
      subset = _counted_subset(config, judge, correct)
      start = time.perf_counter()
      attack_key, judge_key = jax.random.split(unit.key(root))
      results = attacks.pgd_trajectory_results(
          attack_key, judge.attack, images, dataset.labels, eps=eps, alpha=unit.alpha,
          eot=unit.eot, checkpoints=checkpoints, eot_chunk_size=chunk, subset=subset)
      attack_s = time.perf_counter() - start
      for k, result in results.items():
        if _sweep.read_cell(_sweep.cell_path(workdir, unit, k)) is not None:
          continue  # written before a kill: a finished record is never rewritten
        start = time.perf_counter()
        # The whole batch is judged, uncounted images too: its draws then do
        # not depend on `subset`, so neither do the rates.
        predictions, flagged = judge(jax.random.fold_in(judge_key, k), result.adversarial)
        # A flagged adversarial example is caught: it counts as no success.
        rate = attacks.success_rate(clean_predictions, np.where(flagged, labels, predictions),
                                    labels, num_votes=row.votes)
        record = {
            "unit": unit.name, "attack": "pgd", "model": row.model, "defense": row.label,
            "defense_name": row.defense, "setting": setting_of[k], "targeted": False,
            "k": int(k), "m": unit.eot, "budget": int(result.strength),
            "alpha": unit.alpha, "alpha_255": round(unit.alpha * 255, 4), "eps": eps,
            "gradient_computations": int(result.strength),
            "misclassified": int((correct & (predictions != labels)).sum()),
            "flagged": int((correct & flagged).sum()),
            "clean_flagged": int(clean_flags.sum()),
            "nonfinite_images": int((np.asarray(result.nonfinite_step) >= 0).sum()),
            "attacked_images": int(images.shape[0] if subset is None else len(subset)),
            "attack_seconds_whole_trajectory": round(attack_s, 3),
            "judge_seconds": round(time.perf_counter() - start, 3),
            **rate.as_dict(),
        }
        _records.write_json(_sweep.cell_path(workdir, unit, k), record)
        compile_cache.release_if_crowded()
      done[unit.name] = _sweep.unit_records(workdir, unit, checkpoints)
      bar.update(1)
      if on_unit is not None:
        on_unit(unit)
    out.extend(done[unit.name])
  bar.close()
  return out


def _setting_name(record: dict) -> str:
  if record["setting"] == "published":
    return f"published EOT-{record['m']}"
  return "EOT-1 (same budget)" if record["setting"] == "eot1" else record["setting"]


def summarize(records: list[dict], workdir: pathlib.Path, title: str,
              sanity_text: str = "") -> str:
  """Writes results.csv, the figure and summary.md; returns the summary text."""
  _records.write_atomic(workdir / "results.csv", tables.csv(records, CSV_COLUMNS))
  ordered = sorted(records, key=lambda r: (r["defense"], r["budget"], r["setting"] != "published"))
  rows = [dict(r, setting_name=_setting_name(r), success=tables.rate_with_interval(r),
               flags=(f"{r['flagged']}/{r['denominator']} (clean: {r['clean_flagged']}/"
                      f"{r['num_images']})" if r["defense_name"] == "odds_are_odd" else "-"))
          for r in ordered]
  figure = figures.eot_comparison_bars(records, workdir / "figures" / "eot_vs_eot1", title)
  columns = [("defense", "defense"), ("setting_name", "setting"), ("k", "k"), ("m", "m"),
             ("budget", "k x m"), ("success", "success (count/denominator, 95% CI)"),
             ("flags", "flagged adversarial / clean"), ("num_votes", "votes")]
  lines = [f"# {title}", "",
           "Untargeted L-inf PGD. Each defense is attacked with its published EOT setting "
           "(m draws per step, k steps) and with EOT-1 at the same number of gradient "
           "computations per image (k x m steps, one draw each). Success is judged by the "
           "defended classifier over the images it classified correctly before the attack; "
           "for odds-are-odd an adversarial example also has to escape the detector.", "",
           tables.markdown(rows, columns), "", f"![published EOT vs EOT-1](figures/{figure.name})",
           "", *([sanity_text] if sanity_text else [])]
  summary = "\n".join(lines)
  _records.write_atomic(workdir / "summary.md", summary)
  return summary


def run_lack_of_randomness(config, workdir: pathlib.Path) -> dict:
  """Runs (or resumes) the study; returns {"records", "summary"}."""
  rows = rows_of(config)
  dataset = _sources.load_eval_data(config, workdir)
  needed = {row.model for row in rows}
  logits_fns = {label: _sources.load_model(label, config.models[label], config, workdir)
                for label in config.models if label in needed}
  # Checked as attacked: k-WTA and odds-are-odd through their gradient noise.
  sanity_text = _sanity.run(
      config, {(row.model, row.label): (_attack_classifier(config, row, logits_fns[row.model]),
                                        row.votes) for row in rows},
      dataset.images, dataset.labels, workdir)
  records = run_rows(config, rows, logits_fns, dataset, workdir)
  summary = summarize(records, workdir, f"Lack of randomness: {dataset.name}", sanity_text)
  print(summary)
  return {"records": records, "summary": summary}
