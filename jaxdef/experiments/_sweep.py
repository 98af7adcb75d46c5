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

Less work for the same answer:
- `batch_alphas`: the units of one (model, defense, targeted, m) *group*
  run as one vmapped, compiled call over their step sizes (and their keys),
  giving the same iterates as separate runs. Compilations then depend on
  the number of (pair, targeted, m), not on k or alpha.
- `sequential_votes`: each vote stops drawing for an image once its label
  is decided (`StochasticClassifier.predict_sequential`); the full n-draw
  vote stays the default for a faithful reproduction. Records keep the
  forward passes actually spent either way.

Several processes (hosts) may run the same sweep on a shared workdir: each
work item (a group, or a unit without `batch_alphas`) is claimed before it
is computed (`_claims`), so none is computed twice; at the end every
process waits for the items others hold and returns all records.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
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
from jaxdef import classifier
from jaxdef import compile_cache
from jaxdef.attacks import _eot
from jaxdef.attacks import _pgd
from jaxdef.experiments import _claims
from jaxdef.experiments import _records

RECORDS_DIR = "records"
CLAIMS_DIR = "claims"
SEQUENTIAL_LOOK_EVERY = 10  # draws between looks of a sequential vote


def sequential_sub_batches(backend: str | None = None) -> int:
  """Passes per look of a sequential vote over the undecided images.

  On a CPU, 8: the model then runs on the images still undecided, an eighth
  of the batch at a time (passes of 13 rows for the default's 100 images),
  which skips the work of decided ones. An accelerator is underused by such
  small passes; there each look evaluates the whole batch in one (1).
  """
  return 8 if (backend or jax.default_backend()) == "cpu" else 1


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
    return named_key(root, self.name)


def named_key(root: jax.Array, name: str) -> jax.Array:
  """A key that depends on `root` and `name` only, not on the order keys are drawn in.

  Every experiment keys its work items this way, so a resumed or reordered
  run draws the same numbers for the same item.
  """
  return jax.random.fold_in(root, zlib.crc32(name.encode()) & 0x7FFFFFFF)


# `counted_only` attacks a multiple of this many images: pairs whose clean
# accuracies round to the same multiple share compiled attacks. Small, since
# every padding image costs a whole trajectory (8 padded the default's base
# model from 17 counted images to 24: 41% more attack work).
SUBSET_BUCKET = 4


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
    votes: draws of each defended prediction (the most, when sequential).
    eot_chunk_size: EOT draws per sequential chunk (None: all at once).
    eot_rows_per_call: most images one model call of an attack step sees
      (attacked images x alphas in the call x EOT draws of a chunk); the EOT
      draws are chunked to stay under it (`eot_chunk`). None: no limit. A
      CPU's caches favour a few hundred rows; a GPU wants no limit.
    batch_alphas: run all alphas of a (model, defense, targeted, m) in one
      vmapped call (memory: len(alphas) times one run's); same numbers.
    sequential_votes: stop voting for an image once its label is decided
      at `vote_error` (`StochasticClassifier.predict_sequential`); False
      votes `votes` times on every image, as the study does.
    vote_error: error level of a sequential vote, in (0, 1).
    counted_only: attack only the images a success rate counts (those the
      defended classifier gets right on the clean vote; padded to a multiple
      of `SUBSET_BUCKET` with others, to share compilations), and, with
      sequential votes, vote only on those. Each counted image sees the
      draws of a whole-batch attack (see `subset` of
      `pgd_trajectory_results`), so the success counts are those of the
      whole-batch sweep up to convolution rounding; deterministic models only
      (a stochastic model attacks the whole batch).
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
  eot_rows_per_call: int | None = None
  batch_alphas: bool = False
  sequential_votes: bool = False
  vote_error: float = 1e-3
  counted_only: bool = False

  def __post_init__(self):
    for name in ("batch_alphas", "sequential_votes", "counted_only"):
      if getattr(self, name) not in (True, False):
        raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
    if (isinstance(self.vote_error, bool) or not isinstance(self.vote_error, (int, float))
        or not 0 < self.vote_error < 1):
      raise ValueError(f"vote_error must be a number in (0, 1), got {self.vote_error!r}")
    for name in ("eot_chunk_size", "eot_rows_per_call"):
      value = getattr(self, name)
      if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                or value < 1):
        raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")

  def eot_chunk(self, eot: int, rows_per_draw: int) -> int:
    """EOT draws evaluated at once in one attack step of `rows_per_draw` images.

    `eot_chunk_size` (all `eot` draws when None), lowered under
    `eot_rows_per_call` to the largest divisor of `eot` whose chunk x
    rows_per_draw fits (at least 1): equal chunks, one compiled loop body.
    """
    return _eot.chunk_under(eot, rows_per_draw, self.eot_rows_per_call, self.eot_chunk_size)

  def units(self) -> list[Unit]:
    return [Unit(model, defense, bool(t), int(m), float(a))
            for model in self.models for defense in self.defenses for t in self.targeted
            for m in self.eots for a in self.alphas]

  def groups(self) -> list[tuple[str, list[Unit]]]:
    """Work items, (name, units): one per unit, or per (pair, targeted, m) with batch_alphas."""
    if not self.batch_alphas:
      return [(unit.name, [unit]) for unit in self.units()]
    groups: dict[str, list[Unit]] = {}
    for unit in self.units():
      groups.setdefault(unit.name[:unit.name.rindex("__a")], []).append(unit)
    return list(groups.items())

  def gradient_computations(self, num_images: int) -> int:
    """Image-gradients the whole sweep costs (for cost estimates)."""
    return (len(self.models) * len(self.defenses) * len(self.targeted) * len(self.alphas)
            * sum(self.eots) * max(self.checkpoints) * num_images)

  def forward_passes(self, num_images: int) -> int:
    """Defended forward passes of full votes (clean once per pair, then each cell).

    An upper bound with `sequential_votes`, which stops early per batch.
    """
    pairs = len(self.models) * len(self.defenses)
    cells = len(self.units()) * len(self.checkpoints)
    return (pairs + cells) * self.votes * num_images


def clean_vote_key(root: jax.Array, pair: tuple[str, str]) -> jax.Array:
  """Key of a (model, defense) pair's vote on the clean images (a function of its name)."""
  return named_key(root, f"clean/{pair}")


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


def vote(clf, key: jax.Array, images, spec: SweepSpec, skip: np.ndarray | None = None, *,
         split: int = 1) -> tuple[np.ndarray, dict]:
  """Defended labels of `images` by the spec's vote (`vote_labels` with its settings)."""
  return vote_labels(clf, key, images, votes=spec.votes, sequential=spec.sequential_votes,
                     error=spec.vote_error, skip=skip, split=split)


def vote_labels(clf, key: jax.Array, images, *, votes: int, sequential: bool, error: float,
                skip: np.ndarray | None = None, split: int = 1) -> tuple[np.ndarray, dict]:
  """Defended labels of `images` by a full or a sequential vote, and what it cost.

  `skip` (bool (B,)) marks images whose label is not needed; a sequential
  vote spends nothing on them and labels them -1 (a full vote ignores it).
  `split` >= 1 divides the memory of a pass without changing a vote: a
  full vote evaluates vote_chunk_size / split draws at a time, a sequential
  vote runs the model on 1 / (`sequential_sub_batches` x split) of the batch
  at a time.

  Args:
    votes: draws per image (a sequential vote's most).
    sequential: stop each image's vote once its label is decided at `error`
      (`StochasticClassifier.predict_sequential`); False votes `votes` times.
    error: error level of a sequential vote, in (0, 1).

  Returns:
    (labels int (B,), cost): cost holds ``vote_forward_passes`` (model
    evaluations actually computed for the batch) and ``vote_draws_mean``
    (draws counted per image, on average).
  """
  batch = int(images.shape[0])
  if not sequential:
    if split > 1:
      drawn = classifier.draws_per_call(clf, votes, batch)
      clf = type(clf)(clf.logits_fn, clf.defense, stochastic_model=clf.stochastic_model,
                      vote_chunk_size=max(1, drawn // split),
                      vote_rows_per_call=clf.vote_rows_per_call)
    labels = np.asarray(clf.predict(key, images, n=votes))
    return labels, {"vote_forward_passes": votes * batch, "vote_draws_mean": float(votes)}
  chunk = classifier.draws_per_call(clf, min(SEQUENTIAL_LOOK_EVERY, votes), batch)
  labels, draws, forward_passes = clf.predict_sequential(
      key, images, votes, chunk=chunk, error=error, skip=skip,
      sub_batches=sequential_sub_batches() * split)
  return np.asarray(labels), {"vote_forward_passes": int(forward_passes),
                              "vote_draws_mean": round(float(np.mean(draws)), 3)}


def describe_vote(record: dict) -> str:
  """How a cell record's predictions were voted, for reports: '50 votes' or the sequential rule."""
  if record.get("vote_rule") == "sequential":
    return (f"sequential votes (at most {record['num_votes']} draws, each image stopping once "
            f"its label is decided at error {record['vote_error']:g})")
  return f"{record['num_votes']} votes"


# What XLA says when an allocation fails (GPU or host memory).
_OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def is_out_of_memory(error: BaseException) -> bool:
  """True for XLA's allocation failure (a `jax.errors.JaxRuntimeError`)."""
  return (isinstance(error, jax.errors.JaxRuntimeError)
          and any(marker in str(error) for marker in _OUT_OF_MEMORY))


def with_memory_retries(run: Callable[[int], Any], first: int, last: int, *, what: str,
                        where: str, fitted: dict | None = None, shape: Any = None
                        ) -> tuple[Any, int, int]:
  """``run(level)`` from `first`, doubling the level after each out-of-memory error.

  The level divides the memory of one compiled call (an EOT chunk of m /
  level draws, a vote pass of 1 / level of the images); nothing is written
  before `run` returns, so a failed try leaves no partial cell.

  With `fitted` (a dict kept for the whole run) the level that fitted a call
  of this `shape` is remembered, and the next call of that shape starts
  there: one failure per shape, not one per cell.

  Returns:
    (result, level that fitted, retries).

  Raises:
    MemoryError: it did not fit even at `last` (names `where` and the levels
      tried); other errors propagate unchanged.
  """
  level, tried = first, []
  if fitted is not None:
    level = min(max(first, fitted.get(shape, first)), last)
  while True:
    try:
      result = run(level)
      if fitted is not None:
        fitted[shape] = level
      return result, level, len(tried)
    except jax.errors.JaxRuntimeError as error:
      if not is_out_of_memory(error):
        raise
      tried.append(level)
      if level >= last:
        raise MemoryError(
            f"{where}: out of memory at every {what} tried ({', '.join(map(str, tried))}); "
            "attack fewer images at a time, turn batch_alphas off, or use a device with more "
            "memory") from error
      level = min(2 * level, last)
      warnings.warn(f"{where}: out of memory; retrying with {what} {level}", RuntimeWarning,
                    stacklevel=2)


def counted_subset(spec: SweepSpec, clf, clean_labels, labels
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
  """The images to attack and the vote's skip flags under `spec.counted_only`.

  Returns:
    (subset, skip): int indices of the initially correct images, padded up
    to a multiple of `SUBSET_BUCKET` (at most B) with the first others, and
    bool (B,) flags of the images no rate counts; (None, None) when the
    whole batch is attacked and voted.
  """
  if not spec.counted_only or clf.stochastic_model:
    return None, None
  counted = np.asarray(clean_labels) == np.asarray(labels)
  return padded_subset(counted), ~counted


def padded_subset(counted: np.ndarray) -> np.ndarray:
  """Sorted indices of the `counted` images (bool (B,)), padded with the first
  others up to a multiple of `SUBSET_BUCKET` (at least one bucket, at most B)."""
  wanted = min(counted.size, max(SUBSET_BUCKET, -(-int(counted.sum()) // SUBSET_BUCKET)
                                 * SUBSET_BUCKET))
  order = np.argsort(~counted, kind="stable")  # counted images first
  return np.sort(order[:wanted])


def run_sweep(spec: SweepSpec, classifiers: dict[tuple[str, str], Any], images, labels,
              targets, key: jax.Array, workdir: pathlib.Path, *,
              progress: bool = True, on_unit: Callable[[Unit], None] | None = None,
              claim_stale_s: float = 600.0, wait_timeout_s: float | None = None,
              poll_s: float = 2.0, message_every_s: float = 60.0) -> list[dict]:
  """Runs (or resumes, or shares with other processes) every unit of `spec`.

  Work items (`SweepSpec.groups`) whose cells are all on disk are skipped;
  the others are claimed in ``workdir/claims`` before they are computed
  (see `_claims` for how a dead process's claim is recovered), so processes
  sharing the workdir never compute an item twice. When nothing is left to
  claim, the process waits for the items other processes hold, printing
  which every `message_every_s`, until their records are on disk (or their
  claims go stale, and it computes them itself).

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
    claim_stale_s: a claim whose owner's heartbeat is older than this is
      taken over (a dead process on this host is detected at once).
    wait_timeout_s: give up waiting for other processes after this long
      (TimeoutError naming the items and their owners); None: no limit.
    poll_s: seconds between looks while waiting.
    message_every_s: seconds between progress messages while waiting.

  Returns:
    One record per cell (unit x k), sorted by unit then k.
  """
  workdir = pathlib.Path(workdir)
  groups = spec.groups()
  claims = _claims.Claims(workdir / CLAIMS_DIR, stale_after_s=claim_stale_s)
  clean: dict[tuple[str, str], tuple[np.ndarray, dict]] = {}
  missing = lambda units: [u for u in units
                           if unit_records(workdir, u, spec.checkpoints) is None]
  counted: set[str] = set()
  fitted: dict = {}  # the memory split that fitted, per call shape (`with_memory_retries`)
  bar = tqdm(total=len(spec.units()), desc="sweep units", unit="run", disable=not progress)

  def count(units):
    fresh = [u for u in units if u.name not in counted]
    counted.update(u.name for u in fresh)
    bar.update(len(fresh))

  def compute(units: list[Unit]) -> None:
    first = units[0]
    pair = (first.model, first.defense)
    clf = classifiers[pair]
    if pair not in clean:
      labels_cost, split, retries = with_memory_retries(
          lambda split: vote(clf, clean_vote_key(key, pair), images, spec, split=split), 1,
          max(int(images.shape[0]), clf.vote_chunk_size), what="vote split",
          where=f"clean vote of {pair}", fitted=fitted, shape=("vote", pair))
      clean[pair] = (labels_cost[0], dict(labels_cost[1], vote_split=split,
                                           vote_oom_retries=retries))
    bar.set_postfix_str(first.name if len(units) == 1 else f"{first.name} +{len(units) - 1}",
                        refresh=False)
    attack_keys, vote_keys = zip(*(jax.random.split(unit.key(key)) for unit in units))
    goal = targets if first.targeted else labels
    options = dict(eps=spec.eps, eot=first.eot, targeted=first.targeted,
                   checkpoints=tuple(spec.checkpoints),
                   true_labels=labels if first.targeted else None)
    clean_labels, clean_cost = clean[pair]
    subset, skip = counted_subset(spec, clf, clean_labels, labels)
    attacked = int(images.shape[0] if subset is None else len(subset))
    in_call = len(units) if spec.batch_alphas else 1
    full_chunk = spec.eot_chunk(first.eot, attacked * in_call)  # before any memory split
    start = time.perf_counter()

    def attack(split: int):
      """The group's trajectories with each EOT chunk split in `split`."""
      settings = dict(options, eot_chunk_size=_eot.as_chunk_size(-(-full_chunk // split),
                                                                  first.eot))
      if spec.batch_alphas:
        return _pgd.pgd_trajectory_results_batch(
            jax.numpy.stack(attack_keys), clf, images, goal, [u.alpha for u in units],
            subset=subset, **settings), settings["eot_chunk_size"]
      return [attacks.pgd_trajectory_results(attack_keys[0], clf, images, goal,
                                             alpha=first.alpha, subset=subset,
                                             **settings)], settings["eot_chunk_size"]

    (trajectories, eot_chunk), _, attack_retries = with_memory_retries(
        attack, 1, full_chunk, what="EOT split",
        where=f"attack of {first.name}" + (f" +{len(units) - 1}" if len(units) > 1 else ""),
        fitted=fitted, shape=("attack", pair, first.eot, attacked, in_call))
    # One call for all alphas: each unit's share of its time.
    attack_s = (time.perf_counter() - start) / len(units)
    for unit, vote_key, results in zip(units, vote_keys, trajectories):
      for k, result in results.items():
        if read_cell(cell_path(workdir, unit, k)) is not None:
          # Written before a kill: the trajectory is recomputed for the later
          # k, but a finished record is never rewritten.
          continue
        start = time.perf_counter()
        (adversarial, cost), split, vote_retries = with_memory_retries(
            lambda split: vote(clf, jax.random.fold_in(vote_key, k), result.adversarial, spec,
                               skip, split=split), 1,
            max(int(images.shape[0]), clf.vote_chunk_size), what="vote split",
            where=f"vote of {unit.name} at k={k}", fitted=fitted, shape=("vote", pair))
        rate = attacks.success_rate(clean_labels, adversarial, labels,
                                    targets if unit.targeted else None, num_votes=spec.votes)
        record = {
            "unit": unit.name, "attack": "pgd", "model": unit.model, "defense": unit.defense,
            "targeted": unit.targeted, "k": int(k), "m": unit.eot, "alpha": unit.alpha,
            "alpha_255": round(unit.alpha * 255, 4), "eps": spec.eps,
            "gradient_computations": int(result.strength),
            "nonfinite_images": int((np.asarray(result.nonfinite_step) >= 0).sum()),
            "attack_seconds_whole_trajectory": round(attack_s, 3),
            "alphas_in_call": len(units),
            "attacked_images": attacked,
            # Out-of-memory retries (0 normally) and the sizes that fitted.
            "eot_chunk_size_used": eot_chunk, "attack_oom_retries": attack_retries,
            "vote_split": split, "vote_oom_retries": vote_retries,
            "vote_seconds": round(time.perf_counter() - start, 3),
            "vote_rule": "sequential" if spec.sequential_votes else "full",
            "vote_error": spec.vote_error if spec.sequential_votes else None,
            **cost,
            "clean_vote_forward_passes": clean_cost["vote_forward_passes"],
            **rate.as_dict(),
        }
        _records.write_json(cell_path(workdir, unit, k), record)
        compile_cache.release_if_crowded()
      count([unit])
      if on_unit is not None:
        on_unit(unit)

  def attempt(item: str, units: list[Unit]) -> bool:
    """Finishes `item` here if it can; False while another live process holds it."""
    if not missing(units):
      count(units)
      return True
    if not claims.acquire(item):
      return False
    try:
      todo = missing(units)  # another process may have finished it since the first look
      if todo:
        compute(todo)
      count(units)
    finally:
      claims.release(item)
    return True

  try:
    waiting = [(item, units) for item, units in groups if not attempt(item, units)]
    started, last_message = time.monotonic(), -math.inf
    while waiting:
      waited = time.monotonic() - started
      if wait_timeout_s is not None and waited > wait_timeout_s:
        raise TimeoutError(
            f"gave up after {waited:.0f} s waiting for {len(waiting)} work item(s) claimed by "
            f"other processes: {'; '.join(claims.describe(i) for i, _ in waiting)}. If those "
            f"processes are dead, rerun (claims older than claim_stale_s={claim_stale_s:g} s "
            f"are taken over) or delete {claims.directory} while no process runs")
      if time.monotonic() - last_message >= message_every_s:
        shown = "; ".join(claims.describe(i) for i, _ in waiting[:5])
        more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
        print(f"sweep: waiting {waited:.0f} s for {len(waiting)} work item(s) claimed by other "
              f"processes: {shown}{more}", file=sys.stderr, flush=True)
        last_message = time.monotonic()
      time.sleep(poll_s)
      waiting = [(item, units) for item, units in waiting if not attempt(item, units)]
  finally:
    claims.close()
    bar.close()
  records = []
  for unit in spec.units():
    cells = unit_records(workdir, unit, spec.checkpoints)
    if cells is None:
      raise RuntimeError(f"unit {unit.name} has no complete records in {workdir / RECORDS_DIR} "
                         "after the sweep; were records deleted while it ran?")
    records += cells
  return records


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
