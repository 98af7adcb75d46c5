"""`jaxdef.audit`: the study's evaluation protocol on any stochastic classifier.

The paper's advice to evaluators (Appendix F.2), as one call: check the
classifier before attacking it; measure what the defense costs in accuracy
and how invariant the model is to it; run standard attacks (PGD at several
step sizes, APGD-CE, APGD-DLR) before EOT; then EOT at the same number of
gradient queries; and judge robustness by the per-image worst case over
every attack, as AutoAttack counts its ensemble.

Each step is a record; with a `workdir` each is written when it finishes
and read back on a rerun, so an interrupted audit resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
import zlib

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxdef import _files
from jaxdef import _validate
from jaxdef import attacks
from jaxdef import checks
from jaxdef import classifier as classifier_lib
from jaxdef import compile_cache
from jaxdef.attacks import _common
from jaxdef.attacks import _pgd
from jaxdef.auditing import _stats
from jaxdef.auditing._budgets import Budget
from jaxdef.auditing._budgets import resolve
from jaxdef.auditing._report import AuditReport
from jaxdef.auditing._report import build_report


@dataclasses.dataclass(frozen=True)
class _Run:
  """One attack run of the audit: PGD (any m) at one step size, or APGD."""
  name: str  # record file name
  label: str  # how the report names it
  attack: str  # "pgd" | "apgd"
  k: int
  m: int
  alpha_fraction: float | None = None  # PGD step size / eps
  loss: str = "ce"


def plan(budget: Budget, num_classes: int) -> list[_Run]:
  """The attack runs of a budget, in the order the audit runs them (standard first)."""
  runs = []
  for m in sorted(budget.eots):
    for index, fraction in enumerate(budget.alpha_fractions):
      runs.append(_Run(f"pgd_m{m}_alpha{index}", f"PGD k={budget.queries // m} m={m} "
                       f"alpha=eps/{1 / fraction:g}", "pgd", budget.queries // m, m, fraction))
    if m == 1:
      runs.append(_Run("apgd_ce", f"APGD-CE k={budget.queries}", "apgd", budget.queries, 1))
      if num_classes >= 4:  # targeted DLR needs 4 classes, untargeted 3; keep one rule
        runs.append(_Run("apgd_dlr", f"APGD-DLR k={budget.queries}", "apgd", budget.queries,
                         1, loss="dlr"))
  return runs


def _named_key(root: jax.Array, name: str) -> jax.Array:
  """A key for one named step: the same whatever ran before it."""
  return jax.random.fold_in(root, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _targets(targeted, labels: np.ndarray, num_classes: int) -> np.ndarray | None:
  """Per-image target labels, or None for an untargeted audit."""
  if targeted is None or targeted is False:
    return None
  if isinstance(targeted, (bool, np.bool_)):
    raise ValueError("targeted must be None (untargeted), a class index or an int array of "
                     "per-image targets; got True (which class?)")
  if np.ndim(targeted) == 0:
    _validate.check_number(targeted, "targeted", low=0, high=num_classes - 1, integer=True)
    target = int(targeted)
    fallback = 0 if target != 0 else 1  # images of the target class aim at another
    return np.where(labels == target, fallback, target).astype(np.int32)
  targets = np.asarray(_common.check_labels(targeted, "targeted", labels.size, num_classes))
  if np.any(targets == labels):
    raise ValueError(f"targeted must differ from the true label for every image; image "
                     f"{int(np.argmax(targets == labels))} targets its own class")
  return targets.astype(np.int32)


def _fingerprint(clf, images, labels, targets, eps: float, norm: str, budget: Budget) -> dict:
  digest = hashlib.sha256(np.asarray(images).tobytes())
  digest.update(np.asarray(labels).tobytes())
  if targets is not None:
    digest.update(targets.tobytes())
  return {"defense": repr(clf.defense), "stochastic_model": bool(clf.stochastic_model),
          "eps": float(eps), "norm": norm, "budget": dataclasses.asdict(budget),
          "num_images": int(np.asarray(labels).size), "targeted": targets is not None,
          "data_sha256": digest.hexdigest()[:16]}


class _Store:
  """The audit's records: in memory, and in ``workdir/records`` when given."""

  def __init__(self, workdir, settings: dict):
    settings = json.loads(json.dumps(settings))  # tuples as lists, as read back
    self.records: dict[str, dict] = {}
    self.root = None if workdir is None else pathlib.Path(workdir)
    if self.root is None:
      return
    path = self.root / "settings.json"
    if path.exists():
      old = json.loads(path.read_text())
      changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
      if changed:
        raise ValueError(f"workdir {self.root} holds an audit with other settings "
                         f"({', '.join(changed)} differ); use another workdir or delete it")
    else:
      _files.write_json(path, settings)

  def get(self, name: str) -> dict | None:
    if name not in self.records and self.root is not None:
      path = self.root / "records" / f"{name}.json"
      try:
        self.records[name] = json.loads(path.read_text())
      except (OSError, ValueError):
        return None  # not run yet, or truncated by a crash: computed again
    return self.records.get(name)

  def put(self, name: str, record: dict) -> dict:
    self.records[name] = record
    if self.root is not None:
      _files.write_json(self.root / "records" / f"{name}.json", record)
    compile_cache.release_if_crowded()
    return record


def _utility(clf, key, images, labels: np.ndarray, budget: Budget) -> dict:
  """Accuracies without and with the defense, and the rate of invariance."""
  undefended_key, draws_key, vote_key = jax.random.split(key, 3)
  undefended = np.asarray(np.argmax(classifier_lib._undefended_logits(clf, undefended_key,
                                                                      images), -1))
  draws = np.asarray(np.argmax(clf.draw_logits(draws_key, images, budget.draws), -1))
  vote = np.asarray(clf.predict(vote_key, images, n=budget.votes))
  return {
      "undefended_labels": undefended.tolist(), "vote_labels": vote.tolist(),
      "undefended_accuracy": _stats.rate(int((undefended == labels).sum()), labels.size,
                                         votes=1, gradients=0),
      "single_draw_accuracy": _stats.clustered_rate((draws == labels[None]).sum(0),
                                                    draws=budget.draws),
      "vote_accuracy": _stats.rate(int((vote == labels).sum()), labels.size,
                                   votes=budget.votes, gradients=0),
      # R = Pr[F(t(x)) = F(x)] (the paper's eq. 4): one draw against the
      # undefended model's label, whatever the true label.
      "invariance": _stats.clustered_rate((draws == undefended[None]).sum(0),
                                          draws=budget.draws),
      "vote_vs_undefended": _stats.paired_test(undefended == labels, vote == labels),
  }


def _apgd(run: _Run, clf, key, images, goal, true_labels, eps: float, norm: str,
          targeted: bool, eot_chunk_size) -> jax.Array:
  """The adversarial images of one APGD run (the attacked images only)."""
  result = attacks.apgd_result(key, clf, images, goal, eps=eps, steps=run.k, eot=run.m,
                               norm=norm, targeted=targeted, loss=run.loss,
                               true_labels=true_labels, eot_chunk_size=eot_chunk_size)
  return result.adversarial


def _pgd_group(runs: list[_Run], clf, key, images, goal, true_labels, eps, norm, targeted,
               eot_chunk_size) -> list[jax.Array]:
  """The runs of one m, all step sizes in one compiled call (`pgd_trajectory_results_batch`)."""
  keys = jax.numpy.stack([_named_key(key, run.name) for run in runs])
  results = _pgd.pgd_trajectory_results_batch(
      keys, clf, images, goal, [run.alpha_fraction * eps for run in runs], eps=eps,
      eot=runs[0].m, norm=norm, targeted=targeted, checkpoints=(runs[0].k,),
      eot_chunk_size=eot_chunk_size, true_labels=true_labels)
  return [result[runs[0].k].adversarial for result in results]


def _judge(run: _Run, clf, key, adversarial, attacked: np.ndarray, labels: np.ndarray,
           targets: np.ndarray | None, budget: Budget, seconds: float) -> dict:
  """The record of one run: its success over the attacked (initially correct) images."""
  broken = np.zeros(0, bool)
  if attacked.size:
    voted = np.asarray(clf.predict(key, adversarial, n=budget.votes))
    broken = voted != labels[attacked] if targets is None else voted == targets[attacked]
  return {"name": run.name, "label": run.label, "attack": run.attack, "loss": run.loss,
          "k": run.k, "m": run.m, "alpha_fraction": run.alpha_fraction,
          "broken_images": attacked[broken].tolist(), "seconds": round(seconds, 3),
          **_stats.rate(int(broken.sum()), attacked.size, votes=budget.votes,
                        gradients=run.k * run.m, num_images=int(labels.size),
                        targeted=targets is not None)}


def audit(key: jax.Array, classifier, images, labels, *, eps: float = 8 / 255, norm: str = "inf",
          budget: str | Budget = "standard", targeted=None, workdir=None,
          eot_chunk_size: int | None = None, progress: bool = True) -> AuditReport:
  """Audits a stochastic classifier with the study's protocol; returns the report.

  Steps, each with denominators and 95% intervals: (1) the pre-attack
  sanity check (`jaxdef.checks.sanity_check`: random across keys, logits,
  finite, gradient masking); (2) utility: undefended, single-draw and vote
  accuracy, and the rate of invariance R = Pr[F(t(x)) = F(x)]; (3) standard
  attacks: PGD without EOT at each step size, APGD-CE, APGD-DLR; (4) PGD
  with EOT at the same number of gradient queries (k x m = queries), best
  step size per m; (5) robust accuracy under the per-image worst case of
  every run (an image is robust only if every attack failed on it); (6)
  verdicts: does EOT add anything at equal budget, how much robustness the
  strongest attacks take away, red flags.

  Attacks run on the images the defended vote classifies correctly (the
  success rates' denominator); each judged prediction is a majority vote
  of `budget.votes` draws.

  Args:
    key: PRNG key; every step draws from its own named sub-key.
    classifier: a `jaxdef.StochasticClassifier` (any defense, a user's
      ``(key, images) -> images`` function, or a stochastic model).
    images: float (B, H, W, C) in [0, 1].
    labels: int (B,) true labels.
    eps: the attack budget in pixel units of the norm ("inf": <= 1; the
      default 8/255 is the paper's ImageNet budget).
    norm: "inf" | "2".
    budget: "quick" | "standard" | "thorough" | "smoke" (`jaxdef.auditing.BUDGETS`) or a
      `jaxdef.auditing.Budget`.
    targeted: None (untargeted), a class index (every image aims at it;
      images of that class aim at class 0, or 1 when the target is 0), or
      int (B,) per-image targets.
    workdir: a folder for the step records (resumable), or None.
    eot_chunk_size: EOT draws evaluated at once (memory), None: all.
    progress: show a progress bar over the steps.

  Returns:
    An `AuditReport` (``to_markdown()``, ``to_json()``, ``save_figures(dir)``).
  """
  if not isinstance(classifier, classifier_lib.StochasticClassifier):
    raise TypeError(f"classifier must be a jaxdef.StochasticClassifier, got "
                    f"{type(classifier).__name__}")
  _validate.check_key(key)
  images = _validate.check_images(images)
  _validate.check_choice(norm, "norm", _common.NORMS)
  _common.check_step_size(eps, norm, "eps")
  budget = resolve(budget)
  num_classes = classifier.num_classes(images)
  labels = np.asarray(_common.check_labels(labels, "labels", images.shape[0], num_classes))
  targets = _targets(targeted, labels, num_classes)
  if eot_chunk_size is not None:
    _validate.check_number(eot_chunk_size, "eot_chunk_size", low=1, integer=True)
  settings = _fingerprint(classifier, images, labels, targets, eps, norm, budget)
  store = _Store(workdir, settings)
  runs = plan(budget, num_classes)
  bar = tqdm(total=2 + len(runs), desc="audit", unit="step", disable=not progress)
  started = time.perf_counter()

  def step(name: str, compute) -> dict:
    record = store.get(name)
    if record is None:
      bar.set_postfix_str(name, refresh=False)
      record = store.put(name, compute())
    bar.update(1)
    return record

  sanity = step("sanity", lambda: checks.sanity_check(
      classifier, _named_key(key, "sanity"), images, labels, num_votes=budget.votes,
      num_draws=budget.sanity_draws, warn=False).as_dict())
  utility = step("utility", lambda: _utility(classifier, _named_key(key, "utility"), images,
                                             labels, budget))
  attacked = np.flatnonzero(np.asarray(utility["vote_labels"]) == labels)
  goal = labels if targets is None else targets
  options = dict(eps=float(eps), norm=norm, targeted=targets is not None,
                 eot_chunk_size=eot_chunk_size)
  subset = (images[attacked], goal[attacked],
            None if targets is None else labels[attacked])
  for m in sorted({run.m for run in runs}):
    group = [run for run in runs if run.attack == "pgd" and run.m == m]
    missing = [run for run in group if store.get(run.name) is None]
    if missing:
      bar.set_postfix_str(f"PGD m={m}", refresh=False)
      start = time.perf_counter()
      adversarial = (_pgd_group(missing, classifier, _named_key(key, f"pgd_m{m}"), *subset,
                                **options) if attacked.size else [images[:0]] * len(missing))
      seconds = (time.perf_counter() - start) / len(missing)  # one call for all step sizes
      for run, points in zip(missing, adversarial):
        store.put(run.name, _judge(run, classifier, _named_key(key, f"judge/{run.name}"),
                                   points, attacked, labels, targets, budget, seconds))
    bar.update(len(group))
    for run in (r for r in runs if r.attack == "apgd" and r.m == m):
      def compute(run=run):
        start = time.perf_counter()
        adversarial = (_apgd(run, classifier, _named_key(key, run.name), *subset, **options)
                       if attacked.size else images[:0])
        return _judge(run, classifier, _named_key(key, f"judge/{run.name}"), adversarial,
                      attacked, labels, targets, budget, time.perf_counter() - start)
      step(run.name, compute)
  records = [store.get(run.name) for run in runs]
  bar.close()
  return build_report(settings=settings, budget=budget, sanity=sanity, utility=utility,
                      runs=records, seconds=time.perf_counter() - started)


__all__ = ("audit", "plan")
