"""Fixed evaluation subsets: indices chosen once by seed, recorded as JSON next to results.

The file holds `{"dataset": ..., "split": ..., "seed": ..., "num_items": ...,
"indices": [...]}`, so a run can be repeated exactly even if the random
generator's stream changes between NumPy versions.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np


def _check_int(arg: str, value, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{arg} must be an int >= {low}; got {value!r}")
  return int(value)


def _permutation(num_items: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).permutation(num_items)


def choose_subset(num_items: int, size: int, *, seed: int) -> np.ndarray:
  """Chooses `size` of `num_items` examples uniformly without replacement.

  Args:
    num_items: examples in the split (e.g. 50,000 ImageNet validation images).
    size: how many to keep (e.g. 1,000).
    seed: the choice is a function of (num_items, size, seed) only.

  Returns:
    int64 (size,) sorted, distinct indices in [0, num_items).
  """
  num_items = _check_int("num_items", num_items, 1)
  size = _check_int("size", size, 1)
  seed = _check_int("seed", seed, 0)
  if size > num_items:
    raise ValueError(f"size ({size}) must not exceed num_items ({num_items})")
  return np.sort(_permutation(num_items, seed)[:size]).astype(np.int64)


def split_indices(num_items: int, fractions: Sequence[float] = (0.9, 0.1), *,
                  seed: int) -> tuple[np.ndarray, ...]:
  """Splits range(num_items) at random into disjoint parts (e.g. ImageNette 90/10 train/val).

  Args:
    num_items: examples to split.
    fractions: positive fractions summing to 1; part i gets
      round(sum(fractions[:i+1]) * num_items) - round(sum(fractions[:i]) * num_items)
      examples.
    seed: the split is a function of (num_items, fractions, seed) only.

  Returns:
    One sorted int64 index array per fraction; together they cover every index once.
  """
  num_items = _check_int("num_items", num_items, 1)
  seed = _check_int("seed", seed, 0)
  fractions = np.asarray(fractions, dtype=np.float64)
  if fractions.ndim != 1 or fractions.size < 2 or np.any(fractions <= 0) or not np.isclose(
      fractions.sum(), 1.0):
    raise ValueError(f"fractions must be two or more positive numbers summing to 1; "
                     f"got {fractions.tolist()}")
  bounds = np.round(np.concatenate([[0.0], np.cumsum(fractions)]) * num_items).astype(int)
  bounds[-1] = num_items
  order = _permutation(num_items, seed)
  parts = tuple(np.sort(order[lo:hi]).astype(np.int64) for lo, hi in zip(bounds[:-1], bounds[1:]))
  empty = [i for i, part in enumerate(parts) if part.size == 0]
  if empty:
    raise ValueError(f"fractions {fractions.tolist()} of {num_items} items leave part(s) "
                     f"{empty} empty")
  return parts


def save_subset(path: str | os.PathLike, indices: Sequence[int] | np.ndarray, *, dataset: str,
                split: str, seed: int, num_items: int | None = None) -> None:
  """Writes chosen indices as JSON (dataset, split, seed, num_items, indices)."""
  indices = np.asarray(indices)
  if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
    raise ValueError(f"indices must be a 1-D sequence of ints; got {indices.dtype} "
                     f"shape {indices.shape}")
  record = {"dataset": str(dataset), "split": str(split), "seed": int(seed),
            "num_items": None if num_items is None else int(num_items),
            "indices": [int(i) for i in indices]}
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record) + "\n")


def load_subset(path: str | os.PathLike, *, dataset: str, split: str) -> np.ndarray:
  """Reads indices written by `save_subset`, checking they are for `dataset` and `split`.

  Returns:
    int64 (n,) indices, in the stored order.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a subset file, or one recorded for another dataset or split.
  """
  path = pathlib.Path(path)
  try:
    record = json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise ValueError(f"{path} is not a subset file (invalid JSON: {err})") from err
  missing = [k for k in ("dataset", "split", "seed", "indices")
             if not isinstance(record, dict) or k not in record]
  if missing:
    raise ValueError(f"{path} is not a subset file: it lacks {', '.join(missing)}")
  if (record["dataset"], record["split"]) != (dataset, split):
    raise ValueError(f"{path} records indices of {record['dataset']} {record['split']}, "
                     f"not of {dataset} {split}")
  indices = np.asarray(record["indices"])
  if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
    raise ValueError(f"{path}: indices must be a list of ints")
  return indices.astype(np.int64)


def fixed_subset(path: str | os.PathLike, *, dataset: str, split: str, num_items: int,
                 size: int, seed: int) -> np.ndarray:
  """The evaluation subset recorded at `path`, choosing and writing it on first use.

  A later run with the same arguments reads the file, so it evaluates exactly
  the same images; a file recorded with another seed, size or split size raises.

  Args:
    path: the JSON file, e.g. next to the results.
    dataset, split: names recorded and checked (e.g. "imagenet2012", "validation").
    num_items: examples in the split.
    size: how many to choose.
    seed: the random choice.

  Returns:
    int64 (size,) sorted indices in [0, num_items).
  """
  path = pathlib.Path(path)
  if not path.exists():
    indices = choose_subset(num_items, size, seed=seed)
    save_subset(path, indices, dataset=dataset, split=split, seed=seed, num_items=num_items)
    return indices
  indices = load_subset(path, dataset=dataset, split=split)
  record = json.loads(path.read_text())
  recorded = (record["seed"], len(indices), record.get("num_items"))
  if recorded != (seed, size, num_items):
    raise ValueError(f"{path} records seed {recorded[0]}, size {recorded[1]} of "
                     f"{recorded[2]} items, not seed {seed}, size {size} of {num_items}; "
                     "delete it or pass another path to choose a new subset")
  return indices
