"""Tests of the Fashion-MNIST IDX loader on small files the tests write."""

import gzip
import struct

import numpy as np
import pytest

from jaxdef import data


def _write_idx(path, array, compress=True):
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  payload = header + array.astype(np.uint8).tobytes()
  if compress:
    with gzip.open(path, "wb") as f:
      f.write(payload)
  else:
    path.write_bytes(payload)


@pytest.fixture
def fake_dir(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 5, dtype=np.uint8)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
  _write_idx(tmp_path / "train-images-idx3-ubyte", images[:3], compress=False)
  _write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:3], compress=False)
  return tmp_path, images, labels


def test_reads_gzipped_and_plain_idx(fake_dir):
  directory, images, labels = fake_dir
  x, y = data.load_fashion_mnist("test", str(directory))
  assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
  np.testing.assert_array_equal(x[..., 0], images.astype(np.float32) / np.float32(255))
  np.testing.assert_array_equal(y, labels)
  x, _ = data.load_fashion_mnist("train", str(directory))
  assert x.shape == (3, 28, 28, 1)


def test_environment_variable_points_at_the_folder(fake_dir, monkeypatch):
  directory, _, _ = fake_dir
  monkeypatch.setenv("JAXDEF_FASHION_MNIST_DIR", str(directory))
  assert data.load_fashion_mnist("test")[0].shape[0] == 5


def test_missing_files_say_how_to_get_them(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*"
                     "JAXDEF_FASHION_MNIST_DIR"):
    data.load_fashion_mnist("test", str(tmp_path))


def test_bad_split_and_corrupt_files(fake_dir):
  directory, _, _ = fake_dir
  with pytest.raises(ValueError, match="split must be one of train, test"):
    data.load_fashion_mnist("validation", str(directory))
  truncated = directory / "t10k-labels-idx1-ubyte.gz"
  with gzip.open(truncated, "rb") as f:
    raw = f.read()
  with gzip.open(truncated, "wb") as f:
    f.write(raw[:-2])
  with pytest.raises(ValueError, match="truncated or corrupt"):
    data.load_fashion_mnist("test", str(directory))
  (directory / "junk").write_bytes(b"\x01\x02\x03\x04")
  with pytest.raises(ValueError, match="not an IDX file"):
    data.read_idx(directory / "junk")


def test_the_real_embedded_data_set():
  """The Debian package the set-up installs: 10,000 test images, 10 classes."""
  x, y = data.load_fashion_mnist("test")
  assert x.shape == (10000, 28, 28, 1) and set(np.unique(y)) == set(range(10))
  assert 0.0 <= x.min() and x.max() <= 1.0
