"""The reproduction (config `reproduce`): every experiment of the study, then one report.

``config.parts`` holds one complete experiment config per part (theory,
Table 1, the k x m sweeps, the invariance studies, Tables 3-4, the
perturbation pictures; configs/reproduce.py). Each part runs in
``<workdir>/<part>`` through `jaxdef.experiments.run`, so it resumes from its
own records; ``parts.json`` keeps each finished part's wall time, and a
finished part is not entered again on a rerun (its config is still checked
against the one it ran with). After the last part the report
(`jaxdef.reports.reproduction`) is written from the parts' records.

``config.parallel_parts`` > 1 runs that many parts at once, each in a fresh
(spawned) process, taking the parts in ``config.order``. On the 2-core
machine of BUILD.md two at once gained about 12% of throughput (each part
ran 1.6 to 1.9 times slower beside another): a part alone already keeps
both cores busy much of the time. Parts sharing
a model wait for one another's training through a lock per model folder
(`_fashion_models`), so each model is still trained once. Only this process
writes ``parts.json``.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import pathlib
import sys
import time
from typing import Any

import jax
import ml_collections

from jaxdef import compile_cache
from jaxdef.experiments import _records

# Top-level fields a part takes from the reproduce config, so that one
# --config.models_dir (seed, dtype, ...) reaches every part.
SHARED_FIELDS = ("seed", "progress", "models_dir", "dtype", "device_memory_gb")
PARTS_FILE = "parts.json"


def part_configs(config) -> dict[str, ml_collections.ConfigDict]:
  """Part name -> its experiment config with the shared fields applied.

  Raises:
    ValueError: no parts, a part without a known experiment, or a part name
      that is not a plain folder name.
  """
  from jaxdef import experiments

  parts = config.get("parts")
  if not parts:
    raise ValueError("config.parts must hold at least one experiment config")
  order = tuple(config.get("order") or parts.keys())
  if sorted(order) != sorted(parts.keys()):
    raise ValueError(f"config.order must name every part of config.parts once "
                     f"({', '.join(sorted(parts.keys()))}); got {', '.join(order)}")
  out = {}
  for name in order:
    part = parts[name]
    if not name.isidentifier():
      raise ValueError(f"config.parts.{name}: part names must be identifiers (folder names)")
    sub = ml_collections.ConfigDict(part.to_dict())
    experiment = sub.get("experiment")
    if experiment not in experiments.EXPERIMENTS or experiment == "reproduce":
      allowed = ", ".join(sorted(set(experiments.EXPERIMENTS) - {"reproduce"}))
      raise ValueError(f"config.parts.{name}.experiment must be one of {allowed}; "
                       f"got {experiment!r}")
    for field in SHARED_FIELDS:
      if field in config and (field in sub or field in ("seed", "progress")):
        sub[field] = config[field]
    out[name] = sub
  return out


def _read_parts(workdir: pathlib.Path) -> dict[str, Any]:
  path = workdir / PARTS_FILE
  if not path.exists():
    return {}
  try:
    return json.loads(path.read_text())
  except ValueError:
    return {}  # rewritten below; the parts' own records are intact


def part_cost(sub) -> dict[str, Any]:
  """Image-gradients (an upper bound: counted-only attacks spend fewer) of one part."""
  from jaxdef.experiments import _dry_run
  from jaxdef.experiments import _invariance

  if sub.experiment == "theory":
    return {"experiment": "theory", "image_gradients": 0}
  report = _dry_run.describe(sub)
  gradients = report.get("image_gradients")
  if sub.experiment in ("invariance_smoothing", "invariance_bart"):
    attack = sub.attack
    # Per strength and mode: before, after, and every tracked epoch but the
    # last (which is "after" itself).
    per_strength = 2 + (int(next(iter(sub.models.values())).get("finetune_epochs", 2)) - 1
                        if sub.invariance.get("track_epochs", False) else 0)
    gradients = (len(sub.defenses) * len(_invariance.modes(sub)) * per_strength
                 * int(sub.data.num_images) * int(attack.steps) * int(attack.eot))
  elif sub.experiment == "perturbation_pictures":
    gradients = sum(int(k) * int(m) for k, m in sub.attack.settings) * int(sub.data.num_images)
  return {"experiment": sub.experiment, "image_gradients": int(gradients or 0),
          "models": report.get("models"), "defenses": report.get("defenses")}


def describe(config) -> dict[str, Any]:
  """--dry_run: each part's cost and an estimated time at the configured rate."""
  rate = float(config.report.gradients_per_second)
  parts = {}
  for name, sub in part_configs(config).items():
    cost = part_cost(sub)
    cost["estimated_minutes"] = round(cost["image_gradients"] / rate / 60, 1)
    parts[name] = cost
  total = sum(p["image_gradients"] for p in parts.values())
  at_once = parallel_parts(config)
  return {"experiment": "reproduce", "parts": parts, "image_gradients": total,
          "estimated_attack_minutes": round(total / rate / 60, 1),
          "parallel_parts": at_once,
          "note": (f"attack time of one part after another at {rate:g} image-gradients/s "
                   "(config.report.gradients_per_second); training, votes and counted-only "
                   "savings not included"
                   + (f"; {at_once} parts run at once" if at_once > 1 else ""))}


def parallel_parts(config) -> int:
  """``config.parallel_parts`` (default 1) checked: the parts run at once.

  Raises:
    ValueError: not a whole number >= 1.
  """
  value = config.get("parallel_parts", 1)
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"config.parallel_parts must be a whole number >= 1 (parts run at once); "
                     f"got {value!r}")
  return value


def _run_part(sub, part_dir: pathlib.Path) -> float:
  """Runs one part in this process; returns its wall time in seconds."""
  from jaxdef import experiments

  start = time.time()
  experiments.run(sub, part_dir)
  return time.time() - start


def _part_process_setup(jax_settings: dict[str, Any]) -> None:
  """A spawned part process takes the parent's run-time JAX settings (the cache)."""
  for name, value in jax_settings.items():
    jax.config.update(name, value)


def _part_in_process(announce: str, sub_dict: dict, part_dir: str) -> float:
  print(announce, flush=True)  # here, when the part really starts
  return _run_part(ml_collections.ConfigDict(sub_dict), pathlib.Path(part_dir))


# JAX settings a launcher may set at run time, which a spawned process would
# not otherwise see (environment variables and XLA_FLAGS it inherits anyway).
_INHERITED_JAX_SETTINGS = ("jax_compilation_cache_dir",
                           "jax_persistent_cache_min_compile_time_secs")


def run_reproduce(config, workdir: pathlib.Path) -> dict:
  """Runs (or resumes) every part, then writes the report; returns {"parts", "report"}."""
  from jaxdef.reports import reproduction

  subs = part_configs(config)
  at_once = parallel_parts(config)
  finished = _read_parts(workdir)
  todo = []  # (announcement, name, config) of each part still to run
  for index, (name, sub) in enumerate(subs.items()):
    if finished.get(name, {}).get("finished"):
      _records.start_run(sub, workdir / name)  # refuses a changed config, as a fresh run would
    else:
      todo.append((f"[reproduce] part {index + 1}/{len(subs)}: {name} ({sub.experiment})",
                   name, sub))

  def done(name: str, seconds: float) -> None:
    finished[name] = {"finished": True, "experiment": subs[name].experiment,
                      "seconds": round(seconds, 1),
                      "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    _records.write_json(workdir / PARTS_FILE, finished)
    print(f"[reproduce] {name} done in {seconds / 60:.1f} min", flush=True)

  if at_once == 1 or len(todo) <= 1:
    for announce, name, sub in todo:
      print(announce, flush=True)
      done(name, _run_part(sub, workdir / name))
      # Parts share compiled programs (the same models, defenses and attack
      # shapes): the tiny run took 15% less time keeping them. They are
      # dropped only near the process's mapping cap.
      compile_cache.release_if_crowded()
  else:
    _run_parallel(todo, workdir, at_once, done)
  report = reproduction.write(config, workdir)
  return {"parts": finished, "report": str(report)}


def _run_parallel(todo, workdir: pathlib.Path, at_once: int, done) -> None:
  """Runs `todo` ((announcement, name, config) in order), `at_once` processes at a time.

  A failed part cancels the parts not yet started and is raised once the
  running ones end (their records are written cell by cell, so stopping
  them would only lose work a rerun then redoes).
  """
  settings = {name: getattr(jax.config, name) for name in _INHERITED_JAX_SETTINGS}
  # Spawned, not forked: a forked JAX runtime is unsafe. One part per process,
  # so a part's compiled kernels and memory go with it.
  executor = concurrent.futures.ProcessPoolExecutor(
      max_workers=at_once, mp_context=multiprocessing.get_context("spawn"),
      initializer=_part_process_setup, initargs=(settings,), max_tasks_per_child=1)
  failure: tuple[str, BaseException] | None = None
  with executor:
    running = {executor.submit(_part_in_process, announce, sub.to_dict(), str(workdir / name)):
               name for announce, name, sub in todo}
    while running:
      ended, _ = concurrent.futures.wait(running,
                                         return_when=concurrent.futures.FIRST_COMPLETED)
      for future in ended:
        name = running.pop(future)
        if future.cancelled():
          continue
        error = future.exception()
        if error is None:
          done(name, future.result())
          continue
        if failure is None:
          failure = (name, error)
          print(f"[reproduce] part {name} failed: {type(error).__name__}: {error}; the parts "
                f"not started are cancelled, the running ones finish (rerun to resume)",
                file=sys.stderr, flush=True)
          for other in running:
            other.cancel()
  if failure is not None:
    raise failure[1]


__all__ = ("describe", "parallel_parts", "part_configs", "run_reproduce")
