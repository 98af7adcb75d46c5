"""Fashion-MNIST from IDX files (the Debian package dataset-fashion-mnist)."""

from __future__ import annotations

import gzip
import logging
import os
import pathlib
import struct

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "JAXDEF_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes (http://yann.lecun.com/exdb/mnist/): only unsigned bytes here.
_UBYTE = 0x08


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) of unsigned bytes.

  Returns:
    uint8 array with the shape stored in the file's header.

  Raises:
    ValueError: the file is not a well-formed IDX file of unsigned bytes.
  """
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4:
    raise ValueError(f"{path} is not an IDX file: {len(raw)} bytes")
  zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
  if zero != 0 or dtype_code != _UBYTE or not 1 <= ndim <= 4:
    raise ValueError(f"{path} is not an IDX file of unsigned bytes (header {raw[:4].hex()})")
  header_end = 4 + 4 * ndim
  shape = struct.unpack(f">{ndim}I", raw[4:header_end])
  expected = int(np.prod(shape))
  if len(raw) - header_end != expected:
    raise ValueError(f"{path} is truncated or corrupt: header says {shape} "
                     f"({expected} bytes), file holds {len(raw) - header_end}")
  return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(shape)


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  for name in (stem + ".gz", stem):
    if (directory / name).is_file():
      return directory / name
  return None


def load_fashion_mnist(split: str = "test", data_dir: str | None = None, *,
                       tfds_data_dir: str | os.PathLike | None = None, download: bool = True):
  """Loads Fashion-MNIST from IDX files, else through tensorflow-datasets.

  Looks in `data_dir`, else $JAXDEF_FASHION_MNIST_DIR, else
  /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist). Without
  the files there, reads tfds `fashion_mnist` prepared in `tfds_data_dir`, or
  (with `download`) downloads and prepares it, which needs the network and
  TensorFlow.

  Args:
    split: "train" (60,000 images) or "test" (10,000).
    data_dir: folder holding the IDX files (.gz or plain).
    tfds_data_dir: tfds data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
    download: let tfds download the data when it is not prepared.

  Returns:
    (images, labels): float32 (N, 28, 28, 1) in [0, 1] and int32 (N,).

  Raises:
    ValueError: unknown split.
    FileNotFoundError: no files, with the ways to get them.
  """
  if split not in _FILES:
    raise ValueError(f"split must be one of {', '.join(_FILES)}; got {split!r}")
  directory = pathlib.Path(data_dir or os.environ.get(ENV_VAR) or DEFAULT_DIR)
  image_stem, label_stem = _FILES[split]
  image_path, label_path = _find(directory, image_stem), _find(directory, label_stem)
  if image_path is None or label_path is None:
    try:
      return _load_with_tfds(split, tfds_data_dir, download)
    except Exception as err:  # Whatever failed in tfds, the user needs both options.
      raise FileNotFoundError(
          f"Fashion-MNIST {split} files ({image_stem}[.gz], {label_stem}[.gz]) not found in "
          f"{directory}. Install them with `sudo apt-get install dataset-fashion-mnist` "
          f"(files land in {DEFAULT_DIR}), or set {ENV_VAR} / data_dir to a folder holding "
          "them. The tensorflow-datasets fallback (fashion_mnist, prepared in tfds_data_dir "
          f"or downloaded when online) failed too: {err}"
      ) from err
  images, labels = read_idx(image_path), read_idx(label_path)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(f"Fashion-MNIST files disagree: images {images.shape}, labels {labels.shape}")
  return (images[..., None].astype(np.float32) / 255.0), labels.astype(np.int32)


def _load_with_tfds(split: str, tfds_data_dir, download: bool):
  # tensorflow-datasets logs a warning for every folder it probes; when it
  # fails, its error is part of the caller's message, so the log is noise.
  tfds_log = logging.getLogger("absl")
  level = tfds_log.level
  tfds_log.setLevel(logging.ERROR)
  try:
    return _tfds_arrays(split, tfds_data_dir, download)
  finally:
    tfds_log.setLevel(level)


def _tfds_arrays(split: str, tfds_data_dir, download: bool):
  from jaxdef.data import _tfds  # Lazy: imports tensorflow-datasets.

  try:
    return _tfds.load_tfds_arrays(_tfds.FASHION_MNIST, split, data_dir=tfds_data_dir)
  except FileNotFoundError as not_prepared:
    if not download:
      raise
    try:
      _tfds.prepare_tfds(_tfds.FASHION_MNIST, data_dir=tfds_data_dir, download=True)
    except Exception as err:
      raise FileNotFoundError(f"{not_prepared} Downloading it failed: {err}") from err
  return _tfds.load_tfds_arrays(_tfds.FASHION_MNIST, split, data_dir=tfds_data_dir)
