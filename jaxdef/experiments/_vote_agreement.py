"""How often the sequential vote agrees with the full n-draw vote, and what it saves.

Run on a sweep config's own images (`launch/vote_agreement.py`): the clean
evaluation images and the adversarial iterates of every sweep unit (at the
largest k, or at every k), each batch voted with the key the sweep gives
it. For each number of votes n, every batch is voted three ways:
- the full vote, `predict(key, images, n)` (the study's rule);
- the sequential vote with the same key (`predict_sequential`), which
  equals the full vote on every image that runs to n draws;
- a second full vote with an independent key: how often two full votes
  agree, the yardstick for the sequential vote's disagreements.
Forward passes are counted as computed: n x B for a full vote, the
returned `forward_passes` for the sequential one.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from tqdm import tqdm

from jaxdef.attacks import _eot
from jaxdef.attacks import _pgd
from jaxdef.experiments import _kxm
from jaxdef.experiments import _records
from jaxdef.experiments import _sources
from jaxdef.experiments import _sweep
from jaxdef.reports import tables

SUMMARY_COLUMNS = [
    ("votes", "n"), ("kind", "images"), ("num_images", "count"),
    ("agreement", "sequential = full"), ("baseline_agreement", "two full votes agree"),
    ("full_forward_passes", "full: forward passes"),
    ("sequential_forward_passes", "sequential: forward passes"),
    ("saved", "saved"), ("mean_draws", "mean draws counted")]


def _batches(config, classifiers, dataset, spec, steps: str, progress: bool):
  """(kind, pair, name, vote key, images) of every batch the sweep votes on."""
  root = jax.random.key(config.seed)
  batches = [("clean", pair, "clean", _sweep.clean_vote_key(root, pair), dataset.images)
             for pair in classifiers]
  kept = spec.checkpoints if steps == "all" else (max(spec.checkpoints),)
  for _, units in tqdm(spec.groups(), desc="attacks (sweep units)", disable=not progress):
    first = units[0]
    keys = [jax.random.split(unit.key(root)) for unit in units]
    trajectories = _pgd.pgd_trajectory_results_batch(
        jax.numpy.stack([attack_key for attack_key, _ in keys]),
        classifiers[(first.model, first.defense)], dataset.images,
        dataset.targets if first.targeted else dataset.labels, [u.alpha for u in units],
        eps=spec.eps, eot=first.eot, targeted=first.targeted, checkpoints=spec.checkpoints,
        eot_chunk_size=_eot.as_chunk_size(
            spec.eot_chunk(first.eot, len(dataset.labels) * len(units)), first.eot),
        true_labels=dataset.labels if first.targeted else None)
    for unit, (_, vote_key), results in zip(units, keys, trajectories):
      for k in kept:
        batches.append(("adversarial", (unit.model, unit.defense), f"{unit.name}__k{k}",
                        jax.random.fold_in(vote_key, k), results[k].adversarial))
  return batches


def measure(config, workdir: pathlib.Path, *, votes=(50, 500), error: float = 1e-3,
            chunk: int = 10, steps: str = "last", baseline: bool = True,
            progress: bool = True) -> dict:
  """Votes every batch of the config's sweep both ways; writes and returns the numbers.

  Args:
    config: a sweep config (`default` or `kxm_sweep`); its models are
      loaded from the models cache (trained first if missing).
    workdir: the run's workdir (its indices.json fixes the images); writes
      vote_agreement.json and vote_agreement.md there.
    votes: the numbers of draws n to compare at.
    error: the sequential vote's error level.
    chunk: draws between the sequential vote's looks.
    steps: "last" (the adversarial iterates at the largest k) or "all".
    baseline: also vote a second time with an independent key.
    progress: progress bars.

  Returns:
    {"settings", "summary" (rows per n and kind), "batches" (rows per batch),
    "markdown"}.
  """
  if steps not in ("last", "all"):
    raise ValueError(f"steps must be 'last' or 'all', got {steps!r}")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dataset = _sources.load_eval_data(config, workdir)
  logits_fns = _sources.load_models(config, workdir)
  defenses = _sources.build_defenses(config.defenses)
  classifiers = _sources.classifiers(config, logits_fns, defenses)
  spec = _kxm.sweep_spec(config, logits_fns, defenses)
  batches = _batches(config, classifiers, dataset, spec, steps, progress)

  rows = []
  work = [(int(n), batch) for n in votes for batch in batches]
  for n, (kind, pair, name, key, images) in tqdm(work, desc="votes", disable=not progress):
    clf = classifiers[pair]
    full = np.asarray(clf.predict(key, images, n=n))
    sequential = clf.predict_sequential(key, images, n, chunk=min(chunk, n), error=error)
    row = {"votes": n, "kind": kind, "model": pair[0], "defense": pair[1], "batch": name,
           "num_images": int(full.size),
           "agree": int(np.sum(np.asarray(sequential.labels) == full)),
           "full_forward_passes": n * int(full.size),
           "sequential_forward_passes": int(sequential.forward_passes),
           "draws_counted": int(np.sum(sequential.draws))}
    if baseline:
      other = np.asarray(clf.predict(jax.random.fold_in(key, 1), images, n=n))
      row["baseline_agree"] = int(np.sum(other == full))
    rows.append(row)

  summary = []
  for n in sorted({r["votes"] for r in rows}):
    for kind in ("clean", "adversarial", "all"):
      group = [r for r in rows if r["votes"] == n and kind in ("all", r["kind"])]
      count = sum(r["num_images"] for r in group)
      full_passes = sum(r["full_forward_passes"] for r in group)
      sequential_passes = sum(r["sequential_forward_passes"] for r in group)
      summary.append({
          "votes": n, "kind": kind, "num_images": count,
          "agreement": sum(r["agree"] for r in group) / count,
          "baseline_agreement": (sum(r["baseline_agree"] for r in group) / count
                                 if baseline else float("nan")),
          "full_forward_passes": full_passes, "sequential_forward_passes": sequential_passes,
          "saved": 1 - sequential_passes / full_passes,
          "mean_draws": sum(r["draws_counted"] for r in group) / count})
  settings = {"experiment": config.experiment, "workdir": str(workdir), "error": error,
              "chunk": chunk, "steps": steps, "votes": [int(n) for n in votes],
              "checkpoints": list(spec.checkpoints), "num_images": int(dataset.images.shape[0]),
              "pairs": [list(p) for p in classifiers]}
  shown = [dict(r, agreement=f"{r['agreement']:.2%}",
                baseline_agreement=("n/a" if not baseline else f"{r['baseline_agreement']:.2%}"),
                saved=f"{r['saved']:.1%}", mean_draws=f"{r['mean_draws']:.1f}") for r in summary]
  kept = spec.checkpoints if steps == "all" else (max(spec.checkpoints),)
  text = "\n".join([
      "# Sequential vs full votes", "",
      f"Config `{config.experiment}`, {settings['num_images']} images; adversarial images: the "
      f"sweep units' iterates at k = {', '.join(map(str, kept))}, each batch voted with the "
      f"sweep's key. Sequential: Clopper-Pearson stopping at error "
      f"{error:g}, a look every {chunk} draws, the model run only on undecided images.", "",
      tables.markdown(shown, SUMMARY_COLUMNS), ""])
  result = {"settings": settings, "summary": summary, "batches": rows, "markdown": text}
  _records.write_json(workdir / "vote_agreement.json",
                      {k: v for k, v in result.items() if k != "markdown"})
  _records.write_atomic(workdir / "vote_agreement.md", text)
  return result
