"""The fields each experiment reads, so a misspelt config key is refused up front.

ml_collections already refuses a command-line override of a field the
config does not have; this catches the other way a typo gets in: a field
added in a config file (or with ``config.attack.stpes = ...`` in Python)
that no experiment reads and that would otherwise be silently ignored.
Model entries, defense entries and lack-of-randomness rows are checked by
their own loaders.
"""

from __future__ import annotations

import math
import numbers

_COMMON = frozenset({"experiment", "seed", "progress", "models_dir", "data", "attack", "models",
                     "defenses", "dtype", "device_memory_gb"})
# Experiments that attack and so run the pre-attack sanity check (`jaxdef.checks`).
_SANITY = frozenset({"sanity_check"})
_DATA = frozenset({"name", "source", "split", "dir", "num_images", "target_label"})
_SWEEP_ATTACK = frozenset({"eps_255", "steps", "eots", "alphas_255", "targeted", "votes",
                           "vote_chunk_size", "vote_rows_per_call", "eot_chunk_size",
                           "eot_rows_per_call",
                           "batch_alphas",
                           "sequential_votes", "vote_error", "counted_only"})
_THEORY = frozenset({"eps", "sigma", "k_min", "k_max", "num_k", "num_votes", "mc_samples"})

# experiment -> {section: allowed fields}; the None entry lists top-level
# fields beyond `_COMMON`.
SCHEMA: dict[str, dict[str | None, frozenset]] = {
    "default": {None: frozenset({"survey", "theory"}) | _SANITY, "attack": _SWEEP_ATTACK,
                "theory": _THEORY,
                "survey": frozenset({"num_images", "num_samples", "chunk_size",
                                     "pictures_per_defense", "defenses"})},
    "kxm_sweep": {None: _SANITY, "attack": _SWEEP_ATTACK},
    "lack_of_randomness": {None: frozenset({"rows"}) | _SANITY,
                           "attack": frozenset({"eps_255", "alpha_255", "steps",
                                                "vote_chunk_size", "vote_rows_per_call",
                                                "eot_chunk_size", "counted_only"})},
    "invariance_smoothing": {None: frozenset({"invariance"}) | _SANITY,
                             "attack": frozenset({"eps_255", "steps", "eot", "loss", "targeted",
                                                  "votes",
                                                  "vote_chunk_size", "vote_rows_per_call",
                                                  "invariance_draws",
                                                  "eot_chunk_size", "sequential_votes",
                                                  "vote_error", "counted_only"}),
                             "invariance": frozenset({"parameter", "track_epochs"})},
    "finetune": {None: frozenset({"evaluation"}), "attack": frozenset(),
                 "evaluation": frozenset({"draws", "vote_chunk_size", "vote_rows_per_call"})},
    "theory": {None: frozenset({"theory"}), "theory": _THEORY},
    "perturbation_pictures": {None: frozenset({"num_pictures"}) | _SANITY,
                              "attack": frozenset({"eps_255", "alpha_255", "settings",
                                                   "random_start", "votes", "vote_chunk_size",
                                                   "vote_rows_per_call",
                                                   "eot_chunk_size"})},
    "audit": {None: frozenset({"defense", "audit"}),
              "attack": frozenset({"eps_255", "eps_l2", "norm", "eot_chunk_size",
                                   "vote_chunk_size", "vote_rows_per_call"}),
              "defense": frozenset({"name", "factory", "params"}),
              "audit": frozenset({"budget", "targeted"})},
    "reproduce": {None: frozenset({"parts", "order", "report", "parallel_parts"}),
                  "report": frozenset({"path", "figures_dir", "gradients_per_second"})},
}
SCHEMA["invariance_bart"] = SCHEMA["invariance_smoothing"]


def check_fields(config) -> None:
  """Raises ValueError naming every field `config.experiment` does not read.

  Args:
    config: an experiment ConfigDict (its `experiment` already validated).
  """
  schema = SCHEMA[config.experiment]
  unknown = []
  allowed_top = _COMMON | schema[None]
  for key in config.keys():
    if key not in allowed_top:
      unknown.append((f"config.{key}", sorted(allowed_top)))
  for section, allowed in schema.items():
    if section is None or section not in config or not hasattr(config[section], "keys"):
      continue
    for key in config[section].keys():
      if key not in allowed:
        unknown.append((f"config.{section}.{key}", sorted(allowed)))
  if "data" in config and hasattr(config.data, "keys"):
    unknown += [(f"config.data.{key}", sorted(_DATA)) for key in config.data.keys()
                if key not in _DATA]
  if unknown:
    lines = "; ".join(f"{name} (known: {', '.join(known) or 'none'})" for name, known in unknown)
    raise ValueError(f"the {config.experiment} experiment has no field {lines}: a typo? "
                     "Remove it or use a known name.")
  check_values(config)
  if config.experiment == "reproduce":
    from jaxdef.experiments import _reproduce

    for name, part in _reproduce.part_configs(config).items():
      try:
        check_fields(part)
      except ValueError as error:
        raise ValueError(f"config.parts.{name}: {error}") from None


# --- values ------------------------------------------------------------------

def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(float(value)))


def _count(low: int = 1):
  def check(value):
    if not (_is_int(value) and value >= low):
      return f"an integer >= {low}"
  return check


def _number(low: float, high: float, low_inclusive: bool = False, high_inclusive: bool = True,
            unit: str = ""):
  left, right = "[" if low_inclusive else "(", "]" if high_inclusive else ")"

  def check(value):
    ok = _is_number(value) and (value >= low if low_inclusive else value > low) and (
        value <= high if high_inclusive else value < high)
    if not ok:
      return f"a number in {left}{low:g}, {high:g}{right}{unit}"
  return check


def _flag(value):
  if not isinstance(value, bool):
    return "True or False"


def _sequence_of(element, what: str):
  def check(value):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not len(value):
      return f"a non-empty sequence of {what}"
    for item in value:
      if element(item) is not None:
        return f"a non-empty sequence of {what} ({item!r} is not)"
  return check


def _count_or_counts(value):
  if _is_int(value):
    return _count()(value)
  return _sequence_of(_count(), "integers >= 1")(value)


def _choice(*allowed):
  def check(value):
    if value not in allowed:
      return "one of " + ", ".join(repr(a) for a in allowed)
  return check


def _rows_per_call(value):
  if value is None or value == "auto":
    return None
  if _count(0)(value) is not None:
    return "'auto', 0 (no limit) or an integer >= 1 (model rows per call)"


def _pairs_of_counts(value):
  pair = lambda item: None if (isinstance(item, (tuple, list)) and len(item) == 2 and all(
      _count()(v) is None for v in item)) else "no"
  return _sequence_of(pair, "(k, m) pairs of integers >= 1")(value)


_IN_255 = " (1/255 units)"
# (section or None for top level, field) -> check returning None or what is allowed.
VALUES = {
    (None, "seed"): _count(0),
    (None, "progress"): _flag,
    (None, "sanity_check"): _flag,
    (None, "num_pictures"): _count(),
    ("attack", "eps_255"): _number(0, 255, unit=_IN_255),
    ("attack", "alpha_255"): _number(0, 255, unit=_IN_255),
    ("attack", "alphas_255"): _sequence_of(_number(0, 255), "numbers in (0, 255] (1/255 units)"),
    ("attack", "steps"): _count_or_counts,
    ("attack", "eots"): _sequence_of(_count(), "integers >= 1"),
    ("attack", "eot"): _count(),
    ("attack", "votes"): _count(),
    ("attack", "vote_chunk_size"): _count(),
    # 0 or None: all draws at once; no row limit.
    ("attack", "eot_chunk_size"): lambda value: None if value is None else _count(0)(value),
    ("attack", "eot_rows_per_call"): _rows_per_call,
    ("attack", "vote_rows_per_call"): _rows_per_call,
    ("evaluation", "vote_rows_per_call"): _rows_per_call,
    (None, "dtype"): _choice("float32", "bfloat16"),
    (None, "device_memory_gb"): _number(0, math.inf, low_inclusive=True, high_inclusive=False,
                                        unit=" (0: the device's own)"),
    ("attack", "invariance_draws"): _count(),
    ("attack", "targeted"): _sequence_of(_flag, "True/False"),
    ("attack", "batch_alphas"): _flag,
    ("attack", "sequential_votes"): _flag,
    ("attack", "counted_only"): _flag,
    ("attack", "random_start"): _flag,
    ("attack", "vote_error"): _number(0, 1, high_inclusive=False),
    ("attack", "loss"): _choice("ce", "dlr"),
    ("attack", "settings"): _pairs_of_counts,
    ("evaluation", "draws"): _count(),
    ("evaluation", "vote_chunk_size"): _count(),
    ("survey", "num_images"): _count(),
    ("survey", "num_samples"): _count(),
    ("survey", "chunk_size"): _count(),
    ("survey", "pictures_per_defense"): _count(0),
    ("theory", "eps"): _number(0, math.inf, low_inclusive=True, high_inclusive=False),
    ("theory", "sigma"): _number(0, math.inf, low_inclusive=True, high_inclusive=False),
    ("theory", "k_min"): _number(-math.inf, math.inf, high_inclusive=False),
    ("theory", "k_max"): _number(-math.inf, math.inf, high_inclusive=False),
    ("theory", "num_k"): _count(),
    ("theory", "num_votes"): _count(),
    ("theory", "mc_samples"): _count(),
}


def check_values(config) -> None:
  """Raises ValueError naming every field whose value is out of range.

  Checked before anything is loaded or written, so that a budget of -8, zero
  votes or an empty list of steps fails at once instead of deep inside an
  attack, with the config's own name for the field. Fields a config does not
  set are skipped (their defaults are checked by the code that reads them).
  """
  problems = []
  for (section, field), check in VALUES.items():
    holder = config if section is None else config.get(section)
    if holder is None or not hasattr(holder, "keys") or field not in holder:
      continue
    value = holder[field]
    allowed = check(value)
    if allowed is not None:
      name = f"config.{field}" if section is None else f"config.{section}.{field}"
      problems.append(f"{name} must be {allowed}, got {value!r}")
  theory = config.get("theory")
  if (hasattr(theory, "keys") and _is_number(theory.get("k_min"))
      and _is_number(theory.get("k_max")) and theory.k_min > theory.k_max):
    problems.append(f"config.theory.k_min must not exceed config.theory.k_max, got "
                    f"{theory.k_min!r} > {theory.k_max!r}")
  if problems:
    raise ValueError("bad config values: " + "; ".join(problems))
