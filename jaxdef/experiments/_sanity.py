"""The pre-attack sanity check of every experiment that attacks (`jaxdef.checks`).

Each (model, defense) pair an experiment is about to attack is checked on
the evaluation images before the first gradient: defense randomness across
keys, logits rather than probabilities, finite outputs, images whose
attack-objective gradient is exactly zero (gradient masking), and the clean
correct counts of one draw and of the vote. The findings go to
``workdir/sanity.json`` (one record per pair) and to a summary.md section;
what is wrong is also warned about. On by default; ``config.sanity_check =
False`` switches it off.

A resumed run reuses a pair's record from sanity.json when it was made with
the same number of images and votes (the pair's key comes from its name, so
recomputing it would give the same numbers) and repeats its warnings.
"""

from __future__ import annotations

import json
import pathlib
import warnings
from collections.abc import Mapping

import jax

from jaxdef import checks
from jaxdef.classifier import StochasticClassifier
from jaxdef.experiments import _records
from jaxdef.experiments import _sweep
from jaxdef.reports import tables

SANITY_FILE = "sanity.json"
SANITY_COLUMNS = [("model", "model"), ("defense", "defense"), ("random", "random across keys"),
                  ("logits", "outputs"), ("finite_logits", "finite"),
                  ("zero_gradients", "zero gradients"), ("single_draw", "single draw correct"),
                  ("vote", "vote correct")]


# What `section` and a resumed run read of a record.
_NEEDED = frozenset({"model", "defense_label", "undefended", "random", "looks_like_probabilities",
                     "finite_logits", "zero_gradient_images", "num_images",
                     "single_draw_correct", "num_draws", "vote_correct", "num_votes",
                     "warnings", "warning_categories"})


def _earlier_records(workdir: pathlib.Path) -> dict[tuple[str, str], dict]:
  """Pairs recorded by an earlier run in this workdir; {} when none.

  A truncated or corrupt file is reported by name and recomputed, never trusted.
  """
  path = workdir / SANITY_FILE
  if not path.exists():
    return {}
  try:
    records = json.loads(path.read_text())
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and _NEEDED <= r.keys() and isinstance(r["warnings"], list)
        and isinstance(r["warning_categories"], list)
        and len(r["warnings"]) == len(r["warning_categories"]) for r in records):
      raise ValueError("not a list of sanity records")
  except (OSError, ValueError) as error:
    warnings.warn(f"{path}: unreadable or truncated ({error}); checking every pair again",
                  RuntimeWarning, stacklevel=3)
    return {}
  return {(r["model"], r["defense_label"]): r for r in records}


def _category(name: str) -> type[checks.SanityWarning]:
  """The warning class a record names; the base class for a name it does not know."""
  category = getattr(checks, str(name), None)
  is_sanity = isinstance(category, type) and issubclass(category, checks.SanityWarning)
  return category if is_sanity else checks.SanityWarning


def _reusable(record: dict | None, num_images: int, num_votes: int) -> bool:
  return (record is not None and record["num_images"] == num_images
          and record["num_votes"] == num_votes)


def run(config, pairs: Mapping[tuple[str, str], tuple[StochasticClassifier, int]], images,
        labels, workdir: pathlib.Path) -> str:
  """Checks every pair, writes sanity.json and returns the summary section.

  Args:
    config: the experiment config (reads ``seed`` and ``sanity_check``).
    pairs: {(model label, defense label): (the classifier the attack will
      differentiate, votes of its clean vote)}.
    images: float (B, H, W, C) in [0, 1], the evaluation images.
    labels: int (B,) their labels.
    workdir: the run's folder.

  Returns:
    A markdown section for summary.md ("" when ``config.sanity_check`` is False).
  """
  if not config.get("sanity_check", True):
    return ""
  root = _sweep.named_key(jax.random.key(int(config.seed)), "sanity")
  earlier = _earlier_records(workdir)
  num_images = int(images.shape[0])
  records = []
  for (model, defense), (clf, num_votes) in pairs.items():
    record = earlier.get((model, defense))
    if _reusable(record, num_images, int(num_votes)):
      for message, category in zip(record["warnings"], record["warning_categories"]):
        warnings.warn(f"(recorded in {SANITY_FILE}) {message}", _category(category),
                      stacklevel=2)
    else:
      # A key per pair from its name: the same findings whatever the order.
      report = checks.sanity_check(clf, _sweep.named_key(root, f"{model}/{defense}"), images,
                                   labels, num_votes=int(num_votes))
      record = {"model": model, "defense_label": defense, **report.as_dict()}
    records.append(record)
  _records.write_json(workdir / SANITY_FILE, records)
  return section(records)


def section(records: list[dict]) -> str:
  """The summary.md section of sanity.json's records."""
  rows = [{"model": r["model"], "defense": r["defense_label"],
           "random": "undefended" if r["undefended"] else ("yes" if r["random"] else "NO"),
           "logits": "probabilities?" if r["looks_like_probabilities"] else "logits",
           "finite_logits": "yes" if r["finite_logits"] else "NO",
           "zero_gradients": f"{r['zero_gradient_images']}/{r['num_images']}",
           "single_draw": f"{r['single_draw_correct']}/{r['num_draws'] * r['num_images']} "
                          f"({r['num_draws']} draws)",
           "vote": f"{r['vote_correct']}/{r['num_images']} ({r['num_votes']} votes)"}
          for r in records]
  found = [f"- {r['model']} behind {r['defense_label']}: {message}"
           for r in records for message in r["warnings"]]
  return "\n".join([
      "## Sanity check before attacking", "",
      "Defense randomness across keys, logits (not probabilities), finite outputs, images "
      "whose attack-objective gradient is exactly zero (gradient masking), and clean "
      f"correct counts; details in {SANITY_FILE}.", "",
      tables.markdown(rows, SANITY_COLUMNS), "",
      *(found or ["No warnings."]), ""])
