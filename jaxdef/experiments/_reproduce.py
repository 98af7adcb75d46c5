"""The reproduction (config `reproduce`): every experiment of the study, then one report.

``config.parts`` holds one complete experiment config per part (theory,
Table 1, the k x m sweeps, the invariance studies, Tables 3-4, the
perturbation pictures; configs/reproduce.py). Each part runs in
``<workdir>/<part>`` through `jaxdef.experiments.run`, so it resumes from its
own records; ``parts.json`` keeps each finished part's wall time, and a
finished part is not entered again on a rerun (its config is still checked
against the one it ran with). After the last part the report
(`jaxdef.reports.reproduction`) is written from the parts' records.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

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
  return {"experiment": "reproduce", "parts": parts, "image_gradients": total,
          "estimated_attack_minutes": round(total / rate / 60, 1),
          "note": (f"attack time at {rate:g} image-gradients/s (config.report."
                   "gradients_per_second); training, votes and counted-only savings not "
                   "included")}


def run_reproduce(config, workdir: pathlib.Path) -> dict:
  """Runs (or resumes) every part, then writes the report; returns {"parts", "report"}."""
  from jaxdef import experiments
  from jaxdef.reports import reproduction

  subs = part_configs(config)
  finished = _read_parts(workdir)
  for index, (name, sub) in enumerate(subs.items()):
    part_dir = workdir / name
    if finished.get(name, {}).get("finished"):
      _records.start_run(sub, part_dir)  # refuses a changed config, as a fresh run would
      continue
    print(f"[reproduce] part {index + 1}/{len(subs)}: {name} ({sub.experiment})", flush=True)
    start = time.time()
    experiments.run(sub, part_dir)
    seconds = time.time() - start
    finished[name] = {"finished": True, "experiment": sub.experiment,
                      "seconds": round(seconds, 1),
                      "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    _records.write_json(workdir / PARTS_FILE, finished)
    print(f"[reproduce] {name} done in {seconds / 60:.1f} min", flush=True)
    compile_cache.release()  # parts share no programs; their kernels would crowd the process
  report = reproduction.write(config, workdir)
  return {"parts": finished, "report": str(report)}


__all__ = ("describe", "part_configs", "run_reproduce")
