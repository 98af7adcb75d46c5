"""Streaming batches from a data source: lazy decoding, thread pool, device prefetch.

A *source* is any object with `__len__`, `load(index) -> (image, label)` (float32
HWC in [0, 1], int) and `describe(index) -> str` (a name for messages):
`ArraySource`, `ImageFolder` and `TfdsSource` are sources.
"""

from __future__ import annotations

import collections
import itertools
import warnings
from collections.abc import Iterator
from collections.abc import Sequence
from concurrent import futures
from typing import Protocol

import jax
import numpy as np

from jaxdef.data import _images

_ON_ERROR = ("raise", "skip")
_NAMES_SHOWN = 5


class Source(Protocol):
  """Random access to decoded examples; see the module docstring."""

  def __len__(self) -> int: ...

  def load(self, index: int) -> tuple[np.ndarray, int]: ...

  def describe(self, index: int) -> str: ...


class SkippedImagesWarning(UserWarning):
  """Some images could not be decoded and were left out (counted in the message)."""


class ArraySource:
  """A source over in-memory arrays (e.g. `load_fashion_mnist`'s).

  Attributes:
    images: (N, H, W, C) float32 in [0, 1].
    labels: int32 (N,).
    class_names: label id -> name, or None.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *,
               class_names: Sequence[str] | None = None):
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4:
      raise ValueError(f"images must be (N, H, W, C); got shape {images.shape}")
    if labels.shape != images.shape[:1]:
      raise ValueError(f"labels must be ({images.shape[0]},) like images; got {labels.shape}")
    self.images = images.astype(np.float32, copy=False)
    self.labels = labels.astype(np.int32, copy=False)
    self.class_names = None if class_names is None else tuple(class_names)

  def __len__(self) -> int:
    return len(self.images)

  def load(self, index: int) -> tuple[np.ndarray, int]:
    return self.images[index], int(self.labels[index])

  def describe(self, index: int) -> str:
    return f"array example {index}"


def _check_indices(source: Source, indices) -> np.ndarray:
  if indices is None:
    return np.arange(len(source))
  indices = np.asarray(indices)
  if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
    raise ValueError(f"indices must be a 1-D sequence of ints; got {indices.dtype} "
                     f"shape {indices.shape}")
  bad = indices[(indices < 0) | (indices >= len(source))]
  if bad.size:
    raise IndexError(f"{bad.size} indices lie outside [0, {len(source)}) of the source, "
                     f"e.g. {bad[:5].tolist()}")
  return indices.astype(np.int64)


def _check_on_error(on_error: str) -> None:
  if on_error not in _ON_ERROR:
    raise ValueError(f"on_error must be one of {', '.join(_ON_ERROR)}; got {on_error!r}")


def _try_load(source: Source, index: int):
  try:
    return source.load(int(index))
  except _images.UndecodableImageError as err:
    return err


def _loaded(source: Source, indices: np.ndarray, num_workers: int,
            window: int) -> Iterator[tuple[int, object]]:
  """Yields (index, (image, label) or UndecodableImageError) in the order of `indices`.

  With workers, up to `window` images are decoded ahead of the consumer.
  """
  if num_workers == 0:
    for index in indices:
      yield int(index), _try_load(source, index)
    return
  pool = futures.ThreadPoolExecutor(num_workers, thread_name_prefix="jaxdef-decode")
  try:
    pending = collections.deque()
    remaining = iter(indices)
    for index in itertools.islice(remaining, window):
      pending.append((int(index), pool.submit(_try_load, source, index)))
    while pending:
      index, future = pending.popleft()
      for following in itertools.islice(remaining, 1):
        pending.append((int(following), pool.submit(_try_load, source, following)))
      yield index, future.result()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def _stack(images: list, names: list) -> np.ndarray:
  shapes = {image.shape for image in images}
  if len(shapes) > 1:
    raise ValueError(f"images of one batch differ in shape ({sorted(shapes)[:3]}), e.g. "
                     f"{', '.join(names[:3])}: set crop_size so that all images share one size")
  return np.stack(images).astype(np.float32, copy=False)


def _host_batches(source: Source, indices: np.ndarray, batch_size: int, drop_remainder: bool,
                  on_error: str, num_workers: int, window: int, skipped: list):
  images, labels, kept = [], [], []
  for index, result in _loaded(source, indices, num_workers, window):
    if isinstance(result, _images.UndecodableImageError):
      if on_error == "raise":
        raise result
      skipped.append(source.describe(index))
      continue
    image, label = result
    images.append(image)
    labels.append(label)
    kept.append(index)
    if len(images) == batch_size:
      yield (_stack(images, [source.describe(i) for i in kept]),
             np.asarray(labels, np.int32), np.asarray(kept, np.int64))
      images, labels, kept = [], [], []
  if images and not drop_remainder:
    yield (_stack(images, [source.describe(i) for i in kept]),
           np.asarray(labels, np.int32), np.asarray(kept, np.int64))


def _warn_skipped(skipped: list, total: int) -> None:
  if skipped:
    shown = ", ".join(skipped[:_NAMES_SHOWN]) + (", ..." if len(skipped) > _NAMES_SHOWN else "")
    warnings.warn(f"skipped {len(skipped)} of {total} images that could not be decoded: "
                  f"{shown}", SkippedImagesWarning, stacklevel=3)


def stream_batches(source: Source, indices: Sequence[int] | np.ndarray | None = None, *,
                   batch_size: int, prefetch: int = 2, num_workers: int = 0,
                   drop_remainder: bool = False, on_error: str = "raise",
                   with_indices: bool = False, device=None) -> Iterator[tuple]:
  """Batches of `source[indices]`, decoded lazily and prefetched to the device.

  Only the batches in flight are in memory, never the whole split: images are
  decoded when their batch is assembled (by `num_workers` threads, which run up
  to `prefetch + 1` batches ahead), and the next `prefetch` batches are
  transferred with `jax.device_put` while the current one is used. The order is
  that of `indices`, whatever the number of workers.

  Args:
    source: an `ArraySource`, `ImageFolder`, `TfdsSource` or any object with
      `__len__`, `load(index)` and `describe(index)`.
    indices: which examples, in order (e.g. `choose_subset(...)`); default all.
    batch_size: images per batch; the last batch may be smaller.
    prefetch: batches put on the device ahead of the one being used; 0 yields
      host numpy arrays and transfers nothing.
    num_workers: decoding threads; 0 decodes in the calling thread.
    drop_remainder: drop a last batch smaller than `batch_size`.
    on_error: "raise" stops at the first undecodable image, naming it; "skip"
      leaves it out (batches are refilled from the following images) and, at
      the end, warns with a `SkippedImagesWarning` giving the count and names.
    with_indices: also yield the int64 (B,) source indices of each batch, which
      tell which images were used when some were skipped.
    device: a `jax.Device` or `jax.sharding.Sharding` for `jax.device_put`
      (default: the default device).

  Yields:
    (images, labels) or (images, labels, indices): images float32
    (B, H, W, C) in [0, 1], labels int32 (B,); jax arrays when `prefetch` > 0,
    numpy arrays otherwise.

  Raises:
    ValueError: bad arguments; images of one batch with different shapes.
    IndexError: indices outside the source.
    UndecodableImageError: with on_error="raise".
  """
  for arg, value, low in (("batch_size", batch_size, 1), ("prefetch", prefetch, 0),
                          ("num_workers", num_workers, 0)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"{arg} must be an int >= {low}; got {value!r}")
  _check_on_error(on_error)
  indices = _check_indices(source, indices)
  return _stream(source, indices, batch_size, prefetch, num_workers, drop_remainder,
                 on_error, with_indices, device)


def _stream(source, indices, batch_size, prefetch, num_workers, drop_remainder, on_error,
            with_indices, device):
  skipped = []
  batches = _host_batches(source, indices, batch_size, drop_remainder, on_error, num_workers,
                          (prefetch + 1) * batch_size, skipped)
  if not with_indices:
    batches = (batch[:2] for batch in batches)
  if prefetch == 0:
    yield from batches
  else:
    # Start the transfer of the next batches before handing out the current one.
    queue = collections.deque()
    queue.extend(jax.device_put(batch, device) for batch in itertools.islice(batches, prefetch))
    while queue:
      current = queue.popleft()
      queue.extend(jax.device_put(batch, device) for batch in itertools.islice(batches, 1))
      yield current
  _warn_skipped(skipped, len(indices))


def load_arrays(source: Source, indices: Sequence[int] | np.ndarray | None = None, *,
                on_error: str = "raise", num_workers: int = 0):
  """Loads `source[indices]` into memory as numpy arrays (small sets only).

  Args:
    source: as for `stream_batches`.
    indices: which examples, in order; default all.
    on_error: "raise" or "skip" (warns with the count and names).
    num_workers: decoding threads.

  Returns:
    (images, labels): float32 (N, H, W, C) in [0, 1] and int32 (N,).
  """
  images, labels = [], []
  for batch_images, batch_labels in stream_batches(source, indices, batch_size=256, prefetch=0,
                                                   num_workers=num_workers, on_error=on_error):
    images.append(batch_images)
    labels.append(batch_labels)
  if not images:
    raise ValueError(f"no images left to load from {len(source)} examples "
                     f"(indices: {0 if indices is None else len(indices)})")
  return np.concatenate(images), np.concatenate(labels)
