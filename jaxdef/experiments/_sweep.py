"""The k x m x alpha sweep: resumable, one trajectory per (m, alpha).

A *unit* is one PGD run of max(k) steps with EOT-m and step alpha against
one (model, defense) pair, untargeted or targeted; `pgd_trajectory` gives
the iterate at every k of the sweep from that single run. Each k of a unit
is a *cell*: its adversarial images are judged by the defended voting
classifier and its record is written atomically to
``records/<unit>__k<k>.json``. A rerun on the same workdir skips units
whose cells are all on disk, so an interrupted sweep resumes where it
stopped. Every unit's keys are derived from its name, never from the order
of work, so a resumed sweep computes exactly the numbers an uninterrupted
one would have.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
import warnings
import zlib
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxdef import attacks
from jaxdef.experiments import _records

RECORDS_DIR = "records"


@dataclasses.dataclass(frozen=True)
class Unit:
  """One trajectory run: every k of one (model, defense, targeted, m, alpha)."""
  model: str
  defense: str
  targeted: bool
  eot: int
  alpha: float  # step size in pixel units ([0, 1] images)

  @property
  def name(self) -> str:
    mode = "targeted" if self.targeted else "untargeted"
    # alpha is written in 1/255 units with 4 decimals: stable and file-safe.
    return (f"{self.model}__{self.defense}__{mode}__m{self.eot}"
            f"__a{self.alpha * 255:.4f}".replace(".", "p"))

  def key(self, root: jax.Array) -> jax.Array:
    """The unit's PRNG key: a function of its name only (order-independent)."""
    return jax.random.fold_in(root, zlib.crc32(self.name.encode()) & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """What to sweep and how to judge it.

  Attributes:
    models: model labels.
    defenses: defense labels.
    targeted: attack modes to run (False = untargeted, True = targeted).
    eots: EOT sample counts m.
    alphas: step sizes in pixel units.
    checkpoints: the PGD step counts k, from one trajectory.
    eps: L-inf budget in pixel units.
    votes: draws of each defended prediction.
    eot_chunk_size: EOT draws per sequential chunk (None: all at once).
  """
  models: Sequence[str]
  defenses: Sequence[str]
  targeted: Sequence[bool]
  eots: Sequence[int]
  alphas: Sequence[float]
  checkpoints: Sequence[int]
  eps: float
  votes: int
  eot_chunk_size: int | None = None

  def units(self) -> list[Unit]:
    return [Unit(model, defense, bool(t), int(m), float(a))
            for model in self.models for defense in self.defenses for t in self.targeted
            for m in self.eots for a in self.alphas]

  def gradient_computations(self, num_images: int) -> int:
    """Image-gradients the whole sweep costs (for cost estimates)."""
    return (len(self.models) * len(self.defenses) * len(self.targeted) * len(self.alphas)
            * sum(self.eots) * max(self.checkpoints) * num_images)

  def forward_passes(self, num_images: int) -> int:
    """Defended forward passes of the votes (clean once per pair, then each cell)."""
    pairs = len(self.models) * len(self.defenses)
    cells = len(self.units()) * len(self.checkpoints)
    return (pairs + cells) * self.votes * num_images


def cell_path(workdir: pathlib.Path, unit: Unit, k: int) -> pathlib.Path:
  return workdir / RECORDS_DIR / f"{unit.name}__k{k}.json"


def read_cell(path: pathlib.Path) -> dict | None:
  """A finished cell's record, or None when missing; corrupt files are reported.

  Shared by every experiment that writes one JSON record per finished cell
  (sweeps, lack of randomness, invariance): None means "compute it again".
  """
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or "successes" not in record:
      raise ValueError("not a cell record")
    return record
  except (ValueError, OSError) as error:
    warnings.warn(f"{path}: unreadable or truncated record ({error}); recomputing its unit",
                  RuntimeWarning, stacklevel=3)
    return None


def unit_records(workdir: pathlib.Path, unit: Unit, checkpoints) -> list[dict] | None:
  """The unit's cell records, one per k of `checkpoints`, or None unless all are on disk."""
  records = [read_cell(cell_path(workdir, unit, k)) for k in checkpoints]
  return records if all(r is not None for r in records) else None


def finished_records(workdir: pathlib.Path, spec: SweepSpec) -> dict[str, list[dict]]:
  """Unit name -> its cell records, for units whose every cell is on disk."""
  done = {}
  for unit in spec.units():
    records = unit_records(workdir, unit, spec.checkpoints)
    if records is not None:
      done[unit.name] = records
  return done


def run_sweep(spec: SweepSpec, classifiers: dict[tuple[str, str], Any], images, labels,
              targets, key: jax.Array, workdir: pathlib.Path, *,
              progress: bool = True, on_unit: Callable[[Unit], None] | None = None
              ) -> list[dict]:
  """Runs (or resumes) every unit of `spec`; returns all cell records.

  Args:
    spec: the sweep.
    classifiers: (model label, defense label) -> `StochasticClassifier`.
    images: float (B, H, W, C) in [0, 1].
    labels: int (B,) true labels.
    targets: int (B,) target labels for the targeted units.
    key: root PRNG key.
    workdir: run directory; records go to ``workdir/records``.
    progress: show a progress bar over units with an ETA.
    on_unit: called after each finished unit (tests use it to interrupt).

  Returns:
    One record per cell (unit x k), sorted by unit then k.
  """
  workdir = pathlib.Path(workdir)
  done = finished_records(workdir, spec)
  todo = [u for u in spec.units() if u.name not in done]
  clean_predictions = {}
  bar = tqdm(total=len(spec.units()), initial=len(done), desc="sweep units", unit="run",
             disable=not progress)
  for unit in todo:
    pair = (unit.model, unit.defense)
    clf = classifiers[pair]
    if pair not in clean_predictions:
      clean_key = jax.random.fold_in(key, zlib.crc32(f"clean/{pair}".encode()) & 0x7FFFFFFF)
      clean_predictions[pair] = np.asarray(clf.predict(clean_key, images, n=spec.votes))
    bar.set_postfix_str(unit.name, refresh=False)
    start = time.perf_counter()
    unit_key = unit.key(key)
    attack_key, vote_key = jax.random.split(unit_key)
    goal = targets if unit.targeted else labels
    results = attacks.pgd_trajectory_results(
        attack_key, clf, images, goal, eps=spec.eps, alpha=unit.alpha, eot=unit.eot,
        targeted=unit.targeted, checkpoints=tuple(spec.checkpoints),
        eot_chunk_size=spec.eot_chunk_size, true_labels=labels if unit.targeted else None)
    attack_s = time.perf_counter() - start
    for k, result in results.items():
      start = time.perf_counter()
      adversarial = np.asarray(clf.predict(jax.random.fold_in(vote_key, k), result.adversarial,
                                           n=spec.votes))
      rate = attacks.success_rate(clean_predictions[pair], adversarial, labels,
                                  targets if unit.targeted else None, num_votes=spec.votes)
      record = {
          "unit": unit.name, "attack": "pgd", "model": unit.model, "defense": unit.defense,
          "targeted": unit.targeted, "k": int(k), "m": unit.eot, "alpha": unit.alpha,
          "alpha_255": round(unit.alpha * 255, 4), "eps": spec.eps,
          "gradient_computations": int(result.strength),
          "nonfinite_images": int((np.asarray(result.nonfinite_step) >= 0).sum()),
          "attack_seconds_whole_trajectory": round(attack_s, 3),
          "vote_seconds": round(time.perf_counter() - start, 3),
          **rate.as_dict(),
      }
      _records.write_json(cell_path(workdir, unit, k), record)
    done[unit.name] = [read_cell(cell_path(workdir, unit, k)) for k in spec.checkpoints]
    bar.update(1)
    if on_unit is not None:
      on_unit(unit)
  bar.close()
  return [r for unit in spec.units() for r in done[unit.name]]


def best_alpha(records: Sequence[dict]) -> list[dict]:
  """For every (model, defense, targeted, m, k), the record of the best alpha.

  Best is the highest success rate; ties go to the smaller alpha. Every
  alpha stays in the full records; this is the view the study reports.
  """
  best: dict[tuple, dict] = {}
  for r in records:
    cell = (r["model"], r["defense"], r["targeted"], r["m"], r["k"])
    rate = -1.0 if np.isnan(r["rate"]) else r["rate"]
    current = best.get(cell)
    if current is None:
      best[cell] = r
      continue
    current_rate = -1.0 if np.isnan(current["rate"]) else current["rate"]
    if rate > current_rate or (rate == current_rate and r["alpha"] < current["alpha"]):
      best[cell] = r
  return [best[c] for c in sorted(best, key=lambda c: (c[0], c[1], c[2], c[3], c[4]))]
