"""The fields each experiment reads, so a misspelt config key is refused up front.

ml_collections already refuses a command-line override of a field the
config does not have; this catches the other way a typo gets in: a field
added in a config file (or with ``config.attack.stpes = ...`` in Python)
that no experiment reads and that would otherwise be silently ignored.
Model entries, defense entries and lack-of-randomness rows are checked by
their own loaders.
"""

from __future__ import annotations

_COMMON = frozenset({"experiment", "seed", "progress", "models_dir", "data", "attack", "models",
                     "defenses"})
_DATA = frozenset({"name", "source", "split", "dir", "num_images", "target_label"})
_SWEEP_ATTACK = frozenset({"eps_255", "steps", "eots", "alphas_255", "targeted", "votes",
                           "vote_chunk_size", "eot_chunk_size", "batch_alphas",
                           "sequential_votes", "vote_error", "counted_only"})
_THEORY = frozenset({"eps", "sigma", "k_min", "k_max", "num_k", "num_votes", "mc_samples"})

# experiment -> {section: allowed fields}; the None entry lists top-level
# fields beyond `_COMMON`.
SCHEMA: dict[str, dict[str | None, frozenset]] = {
    "default": {None: frozenset({"survey", "theory"}), "attack": _SWEEP_ATTACK,
                "theory": _THEORY,
                "survey": frozenset({"num_images", "num_samples", "chunk_size",
                                     "pictures_per_defense", "defenses"})},
    "kxm_sweep": {None: frozenset(), "attack": _SWEEP_ATTACK},
    "lack_of_randomness": {None: frozenset({"rows"}),
                           "attack": frozenset({"eps_255", "alpha_255", "steps",
                                                "vote_chunk_size", "eot_chunk_size"})},
    "invariance_smoothing": {None: frozenset({"invariance"}),
                             "attack": frozenset({"eps_255", "steps", "eot", "loss", "votes",
                                                  "vote_chunk_size", "invariance_draws",
                                                  "eot_chunk_size"}),
                             "invariance": frozenset({"parameter", "track_epochs"})},
    "finetune": {None: frozenset({"evaluation"}), "attack": frozenset(),
                 "evaluation": frozenset({"draws", "vote_chunk_size"})},
    "theory": {None: frozenset({"theory"}), "theory": _THEORY},
    "perturbation_pictures": {None: frozenset({"num_pictures"}),
                              "attack": frozenset({"eps_255", "alpha_255", "settings",
                                                   "random_start", "votes", "vote_chunk_size",
                                                   "eot_chunk_size"})},
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
