"""The invariance trade-off of SPEC.md section 7 (`invariance_smoothing`, `invariance_bart`).

For each defense strength (randomized smoothing's sigma, BaRT's kappa: one
entry of ``config.defenses`` each, its strength read from the entry's
``config.invariance.parameter``), the base model and the copy fine-tuned on
that defense (``config.models["finetuned_<defense label>"]``) are measured
behind the defense: rate of invariance, clean and vote accuracy, and the
success of APGD without EOT (m = 1, the study's 200 steps) over the images
the vote classified correctly, with its 95% Clopper-Pearson interval. Each
(strength, model) cell is written to records/ when it finishes, so a rerun
of the same config resumes. Writes results.csv, summary.md and a figure of
invariance, vote accuracy and attack success against strength for both
models (PNG and PDF).

With ``config.invariance.track_epochs`` (models trained here, source
``fashion_small_resnet``), robustness is also tracked during fine-tuning:
the same measurements for the checkpoint of every fine-tuning epoch (epoch
0 = the base model), under the same key, into epochs.csv and a figure of
invariance, vote accuracy and attack success against epoch, one line per
strength.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef import StochasticClassifier
from jaxdef import attacks
from jaxdef import compile_cache
from jaxdef import models
from jaxdef.experiments import _records
from jaxdef.experiments import _sanity
from jaxdef.experiments import _sources
from jaxdef.experiments import _sweep
from jaxdef.reports import figures
from jaxdef.reports import tables

BASE = "base"
ROLES = ("before", "after")  # fine-tuning on the defense
CSV_COLUMNS = ("defense", "strength", "model", "role", "targeted", "num_images", "clean_accuracy",
               "invariance", "vote_accuracy", "successes", "denominator", "rate", "ci_low",
               "ci_high", "robust_accuracy", "steps", "eot", "gradient_computations", "eps",
               "num_votes", "attack_seconds")


def finetuned_label(defense_label: str) -> str:
  return f"finetuned_{defense_label}"


def strengths(config) -> dict[str, float]:
  """Defense label -> its strength (the value of `config.invariance.parameter`)."""
  parameter = config.invariance.parameter
  out = {}
  for label, entry in config.defenses.items():
    if parameter not in entry:
      raise ValueError(f"config.defenses.{label} has no {parameter!r} "
                       f"(config.invariance.parameter); it has {', '.join(entry)}")
    out[label] = float(entry[parameter])
  return out


def check_models(config) -> None:
  """Every defense needs its fine-tuned model, and there must be a base one."""
  expected = [BASE] + [finetuned_label(label) for label in config.defenses]
  missing = [label for label in expected if label not in config.models]
  if missing:
    raise ValueError(f"config.models lacks {', '.join(missing)}: the invariance study needs "
                     f"'{BASE}' and 'finetuned_<defense label>' for every defense "
                     f"({', '.join(config.defenses)})")


def modes(config) -> tuple[bool, ...]:
  """The attack modes measured: ``config.attack.targeted`` (default: untargeted only)."""
  value = config.attack.get("targeted", (False,))
  value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
  if not value or any(not isinstance(v, bool) for v in value) or len(set(value)) != len(value):
    raise ValueError("config.attack.targeted must be a tuple of distinct booleans, e.g. "
                     f"(False, True) (untargeted and targeted at config.data.target_label); "
                     f"got {value!r}")
  return value


def _suffix(targeted: bool) -> str:
  return "__targeted" if targeted else ""


def _cell_path(workdir: pathlib.Path, defense_label: str, model: str,
               targeted: bool = False, epoch: int | None = None) -> pathlib.Path:
  """records/<defense>__<model>[__epochNNN][__targeted].json (epoch: a tracked checkpoint)."""
  tracked = "" if epoch is None else f"__epoch{epoch:03d}"
  return workdir / "records" / f"{defense_label}__{model}{tracked}{_suffix(targeted)}.json"


def mode_key(key: jax.Array, targeted: bool) -> jax.Array:
  """The key of one mode's cell: the untargeted one is the strength's key itself."""
  return jax.random.fold_in(key, 1) if targeted else key


def measure_cell(clf: StochasticClassifier, key: jax.Array, images: jax.Array,
                 labels: jax.Array, attack, targets: jax.Array | None = None) -> dict:
  """Invariance, accuracies and APGD success of one defended model.

  Args:
    clf: the model behind the defense.
    key: PRNG key, split by role (invariance, attack, votes).
    images: float (B, H, W, C) in [0, 1].
    labels: int (B,).
    attack: the config's attack section (eps_255, steps, eot, loss, votes,
      invariance_draws; optional sequential_votes, vote_error, counted_only,
      as in the k x m sweep).
    targets: int (B,) target labels of a targeted attack; None: untargeted.
      A targeted success is a clean-correct image voted as its target
      (images of the target class aim at another class, `_sources.targets_for`).

  With ``attack.counted_only`` only the images the clean vote got right
  (the success rate's denominator, padded to `_sweep.SUBSET_BUCKET`) are
  attacked and voted on after the attack: the same rate, from a smaller
  batch (its draws differ from a whole-batch attack's, not its law).

  Returns:
    A record: rates in [0, 1], success counts with their denominator and CI.
  """
  import time

  invariance_key, attack_key, vote_key = jax.random.split(key, 3)
  clean_key, adversarial_key = jax.random.split(vote_key)
  eps = float(attack.eps_255) / 255
  votes = int(attack.votes)
  sequential = bool(attack.get("sequential_votes", False))
  vote = functools.partial(_sweep.vote_labels, clf, votes=votes, sequential=sequential,
                           error=float(attack.get("vote_error", 1e-3)))
  invariance = float(clf.invariance(invariance_key, images, int(attack.invariance_draws)))
  clean_accuracy = float(jnp.mean(jnp.argmax(clf.logits_fn(images), -1) == labels))
  clean, clean_cost = vote(clean_key, images)
  labels_np = np.asarray(labels)
  counted = clean == labels_np
  attacked = (_sweep.padded_subset(counted) if attack.get("counted_only", False)
              else np.arange(labels_np.size))
  targeted = targets is not None
  goal = np.asarray(targets if targeted else labels)[attacked]
  start = time.perf_counter()
  result = attacks.apgd_result(attack_key, clf, images[attacked], goal,
                               eps=eps, steps=int(attack.steps), eot=int(attack.eot),
                               loss=str(attack.loss), targeted=targeted,
                               true_labels=labels_np[attacked] if targeted else None)
  adversarial = jax.block_until_ready(result.adversarial)
  seconds = time.perf_counter() - start
  voted, adversarial_cost = vote(adversarial_key, adversarial, skip=~counted[attacked])
  # Images not attacked are outside the denominator; they keep their label.
  after = labels_np.copy()
  after[attacked] = voted
  rate = attacks.success_rate(clean, after, labels_np, targets, num_votes=votes)
  num_images = int(labels_np.size)
  return {"targeted": targeted, "invariance": invariance, "clean_accuracy": clean_accuracy,
          "vote_accuracy": rate.denominator / num_images,
          "robust_accuracy": (rate.denominator - rate.successes) / num_images,
          "steps": result.steps, "eot": result.eot,
          "gradient_computations": result.gradient_computations, "eps": eps,
          "loss": str(attack.loss), "attack_seconds": seconds,
          "attacked_images": int(attacked.size),
          "vote_rule": "sequential" if sequential else "full",
          **({"vote_error": float(attack.get("vote_error", 1e-3))} if sequential else {}),
          "vote_forward_passes": clean_cost["vote_forward_passes"]
          + adversarial_cost["vote_forward_passes"],
          **rate.as_dict()}


EPOCH_COLUMNS = ("defense", "strength", "model", "targeted", "epoch", "num_images",
                 "clean_accuracy", "invariance", "vote_accuracy", "successes", "denominator",
                 "rate", "ci_low", "ci_high", "robust_accuracy", "gradient_computations",
                 "attack_seconds")
PANELS = (("invariance", "rate of invariance"), ("vote_accuracy", "vote accuracy"),
          ("rate", "APGD success (no EOT)"))


def _plot_panels(axes, x, line: list[dict], style: str, label: str) -> None:
  """One line per panel of `PANELS` (in %), success with its CI as error bars."""
  for axis, (metric, heading) in zip(axes, PANELS):
    values = np.array([100 * r[metric] for r in line])
    if metric == "rate":
      error = np.array([[100 * (r["rate"] - r["ci_low"]) for r in line],
                        [100 * (r["ci_high"] - r["rate"]) for r in line]])
      axis.errorbar(x, values, yerr=np.nan_to_num(error), fmt=style, markersize=4, capsize=2,
                    label=label)
    else:
      axis.plot(x, values, style, markersize=4, label=label)
    axis.set_title(heading, fontsize=9)


def _finish_axes(figure, axes, xlabel: str, title: str, path) -> pathlib.Path:
  for axis in axes:
    axis.set_xlabel(xlabel)
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
  axes[0].set_ylabel("%")
  axes[-1].legend(fontsize=7)
  figure.suptitle(title, fontsize=9)
  return figures.save(figure, path)


def epochs_figure(records: list[dict], path, parameter: str, title: str) -> pathlib.Path:
  """Invariance, vote accuracy and attack success against fine-tuning epoch, per strength."""
  plt = figures.pyplot()
  figure, axes = plt.subplots(1, len(PANELS), figsize=(3.4 * len(PANELS), 3.2), sharey=True)
  for strength in sorted({r["strength"] for r in records}):
    line = sorted((r for r in records if r["strength"] == strength), key=lambda r: r["epoch"])
    _plot_panels(axes, [r["epoch"] for r in line], line, "o-", f"{parameter} = {strength:g}")
  for axis in axes:
    axis.xaxis.get_major_locator().set_params(integer=True)
  return _finish_axes(figure, axes, "fine-tuning epoch", title, path)


def tradeoff_figure(records: list[dict], path, parameter: str, title: str) -> pathlib.Path:
  """Invariance, vote accuracy and attack success against strength, before/after fine-tuning."""
  plt = figures.pyplot()
  figure, axes = plt.subplots(1, len(PANELS), figsize=(3.4 * len(PANELS), 3.2), sharey=True)
  for role, style in zip(ROLES, ("o-", "s--")):
    line = sorted((r for r in records if r["role"] == role), key=lambda r: r["strength"])
    if line:
      _plot_panels(axes, [r["strength"] for r in line], line, style,
                   "base model" if role == "before" else "fine-tuned on the defense")
  return _finish_axes(figure, axes, parameter, title, path)


def check_tracking(config) -> None:
  """Epoch tracking needs models trained here (per-epoch checkpoints)."""
  if not config.invariance.get("track_epochs", False):
    return
  for label in config.defenses:
    entry = config.models[finetuned_label(label)]
    if entry.get("source") != "fashion_small_resnet":
      raise ValueError(
          f"config.invariance.track_epochs needs per-epoch checkpoints, which only models "
          f"trained here have (source 'fashion_small_resnet'); config.models."
          f"{finetuned_label(label)}.source is {entry.get('source')!r}: set "
          "--config.invariance.track_epochs=False")


def track_epochs(config, workdir: pathlib.Path, dataset, defenses: dict,
                 records: list[dict]) -> list[dict]:
  """Robustness during fine-tuning: `measure_cell` at every fine-tuning epoch.

  Epoch 0 is the base model's "before" record (the same key and draws);
  epochs 1..E load the fine-tuned model's checkpoints. Each (defense, epoch)
  cell is written to records/ when it finishes, like the main cells.
  """
  from jaxdef.experiments import _fashion_models

  root = jax.random.key(int(config.seed))
  before = {(r["defense"], r.get("targeted", False)): r for r in records
            if r["role"] == "before"}
  after = {(r["defense"], r.get("targeted", False)): r for r in records if r["role"] == "after"}
  tracked = []
  for index, (defense_label, defense) in enumerate(defenses.items()):
    key = jax.random.fold_in(root, index)  # as in run_invariance: the same draws
    model_label = finetuned_label(defense_label)
    epochs = range(1, int(config.models[model_label].get("finetune_epochs", 2)) + 1)
    paths = {(e, targeted): _cell_path(workdir, defense_label, model_label, targeted, e)
             for e in epochs for targeted in modes(config)}
    cells = {item: _sweep.read_cell(path) for item, path in paths.items()}
    # The last epoch's checkpoint is the fine-tuned model itself, measured
    # with the same key as its "after" cell: that cell is reused.
    for targeted in modes(config):
      cells[epochs[-1], targeted] = {**after[defense_label, targeted], "epoch": epochs[-1]}
    if any(cell is None for cell in cells.values()):
      model, variables_by_epoch = _fashion_models.epoch_variables(
          model_label, config.models[model_label], config,
          progress=bool(config.get("progress", True)))
      for epoch, variables in variables_by_epoch:
        if epoch == 0 or all(cells[epoch, t] is not None for t in modes(config)):
          continue
        logits_fn = models.logits_fn(model, variables, dtype=_sources.compute_dtype(config))
        clf = StochasticClassifier(logits_fn, defense,
                                   **_sources.vote_settings(config, logits_fn))
        for targeted in modes(config):
          if cells[epoch, targeted] is not None:
            continue
          cells[epoch, targeted] = {
              "defense": defense_label,
              "strength": before[defense_label, targeted]["strength"],
              "parameter": config.invariance.parameter, "model": model_label, "epoch": epoch,
              **measure_cell(clf, mode_key(key, targeted), dataset.images, dataset.labels,
                             config.attack, dataset.targets if targeted else None)}
          _records.write_json(paths[epoch, targeted], cells[epoch, targeted])
          compile_cache.release_if_crowded()
    for targeted in modes(config):
      tracked.append({**before[defense_label, targeted], "model": model_label, "epoch": 0})
      tracked += [cells[e, targeted] for e in epochs]
  _records.write_atomic(workdir / "epochs.csv", tables.csv(tracked, EPOCH_COLUMNS))
  return tracked


def _mode_name(targeted: bool) -> str:
  return "targeted" if targeted else "untargeted"


def _epochs_section(tracked: list[dict], workdir: pathlib.Path, parameter: str, name: str,
                    attack) -> list[str]:
  """The summary's "during fine-tuning" table and figures (empty without tracking)."""
  if not tracked:
    return []
  links = []
  for targeted in sorted({r.get("targeted", False) for r in tracked}):
    figure = epochs_figure([r for r in tracked if r.get("targeted", False) == targeted],
                           workdir / "figures" / f"invariance_epochs{_suffix(targeted)}",
                           parameter, f"{name}: during fine-tuning, {_mode_name(targeted)} "
                           f"APGD-{attack.steps}, eps = {attack.eps_255:g}/255")
    links.append(f"![epochs, {_mode_name(targeted)}](figures/{figure.name})")
  for record in tracked:
    record["success"] = tables.rate_with_interval(record)
    record["mode"] = _mode_name(record.get("targeted", False))
  return ["## During fine-tuning", "",
          "The fine-tuned model at every epoch's checkpoint (epoch 0: the base model), "
          "measured as above with the same draws (epochs.csv).", "",
          tables.markdown(tracked, [("strength", parameter), ("mode", "attack"),
                                    ("epoch", "epoch"),
                                    ("clean_accuracy", "clean acc."),
                                    ("invariance", "invariance"), ("vote_accuracy", "vote acc."),
                                    ("success", "APGD success"),
                                    ("robust_accuracy", "robust acc.")]), "",
          *links, ""]


def run_invariance(config, workdir: pathlib.Path) -> dict:
  """Runs (or resumes) the trade-off study; returns {"records", "summary"}."""
  check_models(config)
  check_tracking(config)
  attack_modes = modes(config)
  strength_of = strengths(config)
  parameter = config.invariance.parameter
  dataset = _sources.load_eval_data(config, workdir)
  defenses = _sources.build_defenses(config.defenses)
  root = jax.random.key(int(config.seed))
  loaded: dict = {}

  def classifier(model: str, defense) -> StochasticClassifier:
    if model not in loaded:
      loaded[model] = _sources.load_model(model, config.models[model], config, workdir)
    return StochasticClassifier(loaded[model], defense,
                                **_sources.vote_settings(config, loaded[model]))

  sanity_text = ""
  if config.get("sanity_check", True):
    sanity_text = _sanity.run(
        config, {(model, label): (classifier(model, defense), int(config.attack.votes))
                 for label, defense in defenses.items()
                 for model in (BASE, finetuned_label(label))},
        dataset.images, dataset.labels, workdir)
  records = []
  for index, (defense_label, defense) in enumerate(defenses.items()):
    # Both models of a strength share its key: they see the same draws.
    key = jax.random.fold_in(root, index)
    for role, model in zip(ROLES, (BASE, finetuned_label(defense_label))):
      for targeted in attack_modes:
        path = _cell_path(workdir, defense_label, model, targeted)
        record = _sweep.read_cell(path)
        if record is None:
          clf = classifier(model, defense)
          record = {"defense": defense_label, "strength": strength_of[defense_label],
                    "parameter": parameter, "model": model, "role": role,
                    **measure_cell(clf, mode_key(key, targeted), dataset.images, dataset.labels,
                                   config.attack, dataset.targets if targeted else None)}
          _records.write_json(path, record)
          compile_cache.release_if_crowded()
        records.append(record)
  _records.write_atomic(workdir / "results.csv", tables.csv(records, CSV_COLUMNS))
  tracked = (track_epochs(config, workdir, dataset, defenses, records)
             if config.invariance.get("track_epochs", False) else [])
  attack = config.attack
  links = []
  for targeted in attack_modes:
    figure = tradeoff_figure(
        [r for r in records if r.get("targeted", False) == targeted],
        workdir / "figures" / f"invariance_tradeoff{_suffix(targeted)}", parameter,
        f"{dataset.name}: {_mode_name(targeted)} APGD-{attack.steps} (EOT m = {attack.eot}), "
        f"eps = {attack.eps_255:g}/255, {attack.votes} votes")
    links.append(f"![trade-off, {_mode_name(targeted)}](figures/{figure.name})")
  for record in records:
    record["success"] = tables.rate_with_interval(record)
    record["mode"] = _mode_name(record.get("targeted", False))
  summary = "\n".join([
      f"# Invariance trade-off: {dataset.name}, {parameter} sweep", "",
      f"{len(dataset.labels)} fixed test images (indices.json). Per {parameter}: the base "
      f"model (before) and its copy fine-tuned on that defense (after). Invariance: rate at "
      f"which one defended draw agrees with the undefended model "
      f"({attack.invariance_draws} draws). Attack: APGD-{attack.steps} "
      f"({', '.join(_mode_name(t) for t in attack_modes)}; targeted: towards class "
      f"{config.data.get('target_label', -1)} (-1: the last)), "
      f"{attack.loss} loss, EOT m = {attack.eot}, eps = {attack.eps_255:g}/255; success over "
      f"the images the defended vote ({attack.votes} votes) classified correctly, 95% "
      f"Clopper-Pearson intervals; robust accuracy = vote accuracy x (1 - success).", "",
      tables.markdown(records, [("strength", parameter), ("mode", "attack"),
                                ("role", "fine-tuned"),
                                ("model", "model"), ("clean_accuracy", "clean acc."),
                                ("invariance", "invariance"), ("vote_accuracy", "vote acc."),
                                ("success", "APGD success"),
                                ("robust_accuracy", "robust acc.")]), "",
      *links, "", *([sanity_text] if sanity_text else [])]
      + _epochs_section(
          tracked, workdir, parameter, dataset.name, attack))
  _records.write_atomic(workdir / "summary.md", summary)
  print(summary)
  return {"records": records, "summary": summary}


__all__ = ("run_invariance",)
