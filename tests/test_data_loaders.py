"""Tests of the image-folder, tfds, subset and streaming loaders on data they build.

References: torchvision's Resize(256) + CenterCrop(224) + ToTensor for the
preprocessing, tfds' own data sources (under `tfds.testing.mock_data`, which
generates examples without network) for the tfds loaders.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxdef import data
from jaxdef.data import _tfds

torch = pytest.importorskip("torch")
transforms = pytest.importorskip("torchvision.transforms")


def _random_image(rng, height, width):
  """A smooth RGB image (noise on a gradient), so resizing differences show."""
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 200
  return Image.fromarray((base + rng.integers(0, 56, (height, width, 3))).astype(np.uint8))


def _torchvision_reference(image, resize_size=256, crop_size=224):
  pipeline = transforms.Compose([transforms.Resize(resize_size),
                                 transforms.CenterCrop(crop_size), transforms.ToTensor()])
  return pipeline(image).permute(1, 2, 0).numpy()


def _make_folder(root, rng, layout):
  """layout: {class_name: [(file_name, (height, width)), ...]}; returns {relative path: image}."""
  written = {}
  for class_name, files in layout.items():
    (root / class_name).mkdir(parents=True)
    for file_name, (height, width) in files:
      image = _random_image(rng, height, width)
      image.save(root / class_name / file_name,
                 format="PNG" if file_name.lower().endswith(".png") else "JPEG")
      written[f"{class_name}/{file_name}"] = image
  return written


def _corrupt_files(folder):
  """A truncated JPEG, text named .jpg, an empty .png; returns their names."""
  good = folder / "zz_truncated.JPEG"
  _random_image(np.random.default_rng(1), 40, 40).save(good, format="JPEG")
  good.write_bytes(good.read_bytes()[:200])
  (folder / "zz_text.jpg").write_text("not an image")
  (folder / "zz_empty.png").write_bytes(b"")
  return ["zz_empty.png", "zz_text.jpg", "zz_truncated.JPEG"]


# --- preprocessing --------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(300, 400), (500, 333), (256, 256), (225, 601),
                                          (97, 150), (1001, 257)])
def test_preprocessing_matches_torchvision(height, width):
  image = _random_image(np.random.default_rng(height * width), height, width)
  ours = data.preprocess_image(image)
  reference = _torchvision_reference(image)
  assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
  # The uint8 array path (tfds examples) goes through the same resampling.
  np.testing.assert_array_equal(data.preprocess_image(np.asarray(image)), ours)


def test_preprocessing_is_configurable_and_checks_sizes():
  image = _random_image(np.random.default_rng(0), 320, 427)
  np.testing.assert_allclose(data.preprocess_image(image, resize_size=160, crop_size=128),
                             _torchvision_reference(image, 160, 128), rtol=0, atol=1e-6)
  uncropped = data.preprocess_image(image, resize_size=160, crop_size=None)
  assert uncropped.shape == (160, 213, 3)
  whole = data.preprocess_image(np.asarray(image), resize_size=None, crop_size=None)
  np.testing.assert_array_equal(whole, np.asarray(image) / np.float32(255))
  with pytest.raises(ValueError, match=r"crop_size \(300\) must not exceed resize_size \(256\)"):
    data.preprocess_image(image, crop_size=300)
  with pytest.raises(ValueError, match="resize_size must be a positive int or None; got 0"):
    data.preprocess_image(image, resize_size=0)
  with pytest.raises(ValueError, match="small.png is 427x320 pixels, smaller than crop_size 400"):
    data.preprocess_image(image, resize_size=None, crop_size=400, name="small.png")


# --- class-per-folder directories ---------------------------------------------------------------


def test_image_folder_labels_order_and_pixels(tmp_path):
  written = _make_folder(tmp_path, np.random.default_rng(0), {
      "n02102040": [("b.JPEG", (300, 260)), ("a.png", (260, 300))],
      "n01440764": [("c.jpg", (256, 400))],
  })
  (tmp_path / "n01440764" / "notes.txt").write_text("ignored")
  (tmp_path / ".cache").mkdir()
  folder = data.ImageFolder(tmp_path)
  assert folder.class_names == ("n01440764", "n02102040")
  assert [folder.describe(i) for i in range(len(folder))] == [
      "n01440764/c.jpg", "n02102040/a.png", "n02102040/b.JPEG"]
  np.testing.assert_array_equal(folder.labels, [0, 1, 1])
  for index in range(len(folder)):
    image, label = folder.load(index)
    assert label == folder.labels[index]
    # Decoded from disk (JPEG is lossy), then torchvision's pipeline on the same decode.
    with Image.open(folder.paths[index]) as decoded:
      reference = _torchvision_reference(decoded.convert("RGB"))
    np.testing.assert_allclose(image, reference, rtol=0, atol=1e-6)
  png_image, _ = folder.load(1)  # lossless: equals the image the test made
  np.testing.assert_allclose(png_image, _torchvision_reference(written["n02102040/a.png"]),
                             rtol=0, atol=1e-6)
  images, labels = data.load_image_folder(tmp_path, num_workers=2)
  assert images.shape == (3, 224, 224, 3) and labels.dtype == np.int32
  np.testing.assert_array_equal(labels, [0, 1, 1])


def test_image_folder_with_imagenet_class_order(tmp_path):
  _make_folder(tmp_path, np.random.default_rng(0), {
      "n03888257": [("x.JPEG", (64, 64))], "n01440764": [("y.JPEG", (64, 64))]})
  names = data.imagenet_class_names()
  assert len(names) == 1000 and names[:2] == ("n01440764", "n01443537")
  assert list(names) == sorted(names)
  folder = data.ImageFolder(tmp_path, class_names=names, resize_size=32, crop_size=32)
  np.testing.assert_array_equal(folder.labels, [0, 701])  # tench, parachute
  assert len(folder.class_names) == 1000


def test_image_folder_bad_layouts(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing does not exist"):
    data.ImageFolder(tmp_path / "missing")
  (tmp_path / "file.jpg").write_bytes(b"")
  with pytest.raises(NotADirectoryError, match="file.jpg is not a directory"):
    data.ImageFolder(tmp_path / "file.jpg")
  with pytest.raises(FileNotFoundError, match=r"has no class folders \(1 image files lie directly"):
    data.ImageFolder(tmp_path)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="class folder .*empty holds no images"):
    data.ImageFolder(tmp_path)
  _make_folder(tmp_path / "ok", np.random.default_rng(0), {"cat": [("a.png", (8, 8))],
                                                             "dog": [("b.png", (8, 8))]})
  with pytest.raises(ValueError, match=r"1 folders of .* are not in class_names \(1 names\): dog"):
    data.ImageFolder(tmp_path / "ok", class_names=["cat"])
  with pytest.raises(ValueError, match="class_names has duplicate entries"):
    data.ImageFolder(tmp_path / "ok", class_names=["cat", "dog", "cat"])
  with pytest.raises(ValueError, match="crop_size must be a positive int or None"):
    data.ImageFolder(tmp_path / "ok", crop_size=2.5)


def test_undecodable_files_raise_by_default_or_skip_with_a_warning(tmp_path):
  _make_folder(tmp_path, np.random.default_rng(0), {
      "a": [("good1.JPEG", (60, 70))], "b": [("good2.png", (70, 60))]})
  bad_names = _corrupt_files(tmp_path / "b")
  with pytest.raises(data.UndecodableImageError, match="cannot decode image .*zz_empty.png"):
    data.load_image_folder(tmp_path, resize_size=32, crop_size=32)
  with pytest.warns(data.SkippedImagesWarning, match="skipped 3 of 5 images that could not be "
                    "decoded: " + ", ".join(f"b/{n}" for n in bad_names)):
    images, labels = data.load_image_folder(tmp_path, resize_size=32, crop_size=32,
                                            on_error="skip")
  assert images.shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(labels, [0, 1])
  with pytest.raises(ValueError, match="on_error must be one of raise, skip; got 'ignore'"):
    data.load_image_folder(tmp_path, on_error="ignore")


# --- streaming --------------------------------------------------------------------------------


class _CountingSource(data.ArraySource):
  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.loaded = []

  def load(self, index):
    self.loaded.append(index)
    return super().load(index)


def _array_source(num=10, cls=data.ArraySource):
  rng = np.random.default_rng(0)
  return cls(rng.random((num, 4, 5, 3), dtype=np.float32), rng.integers(0, 10, num))


@pytest.mark.parametrize("prefetch,num_workers", [(0, 0), (2, 0), (1, 3)])
def test_stream_order_partial_batch_and_drop(prefetch, num_workers):
  source = _array_source()
  order = [7, 3, 9, 0, 5]
  batches = list(data.stream_batches(source, order, batch_size=2, prefetch=prefetch,
                                     num_workers=num_workers))
  assert [len(labels) for _, labels in batches] == [2, 2, 1]
  array_type = np.ndarray if prefetch == 0 else jax.Array
  assert all(isinstance(x, array_type) and isinstance(y, array_type) for x, y in batches)
  np.testing.assert_array_equal(np.concatenate([np.asarray(x) for x, _ in batches]),
                                source.images[order])
  np.testing.assert_array_equal(np.concatenate([np.asarray(y) for _, y in batches]),
                                source.labels[order])
  assert batches[0][1].dtype == np.int32 and batches[0][0].dtype == np.float32
  dropped = list(data.stream_batches(source, order, batch_size=2, prefetch=prefetch,
                                     num_workers=num_workers, drop_remainder=True))
  assert [len(labels) for _, labels in dropped] == [2, 2]


def test_stream_decodes_lazily_and_prefetches_the_next_batch():
  for prefetch, expected in [(0, [0, 1]), (1, [0, 1, 2, 3]), (2, [0, 1, 2, 3, 4, 5])]:
    source = _array_source(cls=_CountingSource)
    stream = data.stream_batches(source, batch_size=2, prefetch=prefetch)
    assert source.loaded == []  # nothing decoded before the first batch is asked for
    next(stream)
    assert source.loaded == expected
    stream.close()


def test_stream_skips_undecodable_images_and_refills_batches(tmp_path):
  _make_folder(tmp_path, np.random.default_rng(0), {
      "a": [(f"{i}.png", (20, 20)) for i in range(3)], "c": [("9.png", (20, 20))]})
  (tmp_path / "b").mkdir()
  bad_names = _corrupt_files(tmp_path / "b")
  folder = data.ImageFolder(tmp_path, resize_size=16, crop_size=16)
  assert len(folder) == 7
  stream = data.stream_batches(folder, batch_size=2, prefetch=0, on_error="skip",
                               with_indices=True, num_workers=2)
  with pytest.warns(data.SkippedImagesWarning, match="skipped 3 of 7 images"):
    batches = list(stream)
  assert [len(indices) for _, _, indices in batches] == [2, 2]
  kept = np.concatenate([indices for _, _, indices in batches])
  assert [folder.describe(i) for i in kept] == ["a/0.png", "a/1.png", "a/2.png", "c/9.png"]
  np.testing.assert_array_equal(np.concatenate([labels for _, labels, _ in batches]),
                                [0, 0, 0, 2])
  with pytest.raises(data.UndecodableImageError, match=f"b/{bad_names[0]}"):
    list(data.stream_batches(folder, batch_size=2, prefetch=0))


def test_stream_bad_arguments(tmp_path):
  source = _array_source()
  with pytest.raises(ValueError, match="batch_size must be an int >= 1; got 0"):
    data.stream_batches(source, batch_size=0)
  with pytest.raises(ValueError, match="prefetch must be an int >= 0; got -1"):
    data.stream_batches(source, batch_size=2, prefetch=-1)
  with pytest.raises(IndexError, match=r"2 indices lie outside \[0, 10\) .* \[10, -1\]"):
    data.stream_batches(source, [1, 10, -1], batch_size=2)
  with pytest.raises(ValueError, match="indices must be a 1-D sequence of ints"):
    data.stream_batches(source, [0.5], batch_size=2)
  _make_folder(tmp_path, np.random.default_rng(0), {"a": [("0.png", (20, 20)),
                                                          ("1.png", (20, 30))]})
  uncropped = data.ImageFolder(tmp_path, resize_size=None, crop_size=None)
  with pytest.raises(ValueError, match="images of one batch differ in shape .* a/0.png, a/1.png"):
    list(data.stream_batches(uncropped, batch_size=2, prefetch=0))


# --- fixed subsets ------------------------------------------------------------------------------


def test_subsets_are_fixed_by_seed():
  chosen = data.choose_subset(50_000, 1_000, seed=0)
  assert chosen.shape == (1_000,) and chosen.dtype == np.int64
  assert np.all(np.diff(chosen) > 0) and chosen[0] >= 0 and chosen[-1] < 50_000
  np.testing.assert_array_equal(chosen, data.choose_subset(50_000, 1_000, seed=0))
  assert len(np.intersect1d(chosen, data.choose_subset(50_000, 1_000, seed=1))) < 100
  train, val = data.split_indices(9_469, (0.9, 0.1), seed=0)
  assert (len(train), len(val)) == (8_522, 947)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(9_469))
  np.testing.assert_array_equal(val, data.split_indices(9_469, (0.9, 0.1), seed=0)[1])
  with pytest.raises(ValueError, match=r"size \(11\) must not exceed num_items \(10\)"):
    data.choose_subset(10, 11, seed=0)
  with pytest.raises(ValueError, match="fractions must be two or more positive numbers summing "
                     r"to 1; got \[0.9, 0.2\]"):
    data.split_indices(10, (0.9, 0.2), seed=0)
  with pytest.raises(ValueError, match="seed must be an int >= 0"):
    data.choose_subset(10, 2, seed=1.5)


def test_subset_files_round_trip_and_refuse_other_data(tmp_path):
  path = tmp_path / "results" / "subset.json"
  indices = data.fixed_subset(path, dataset="imagenet2012", split="validation",
                              num_items=50_000, size=1_000, seed=3)
  record = json.loads(path.read_text())
  assert record["dataset"] == "imagenet2012" and record["split"] == "validation"
  assert record["seed"] == 3 and record["indices"] == indices.tolist()
  np.testing.assert_array_equal(indices, data.choose_subset(50_000, 1_000, seed=3))
  # A second run reads the file, even if the generator would now choose differently.
  record["indices"][0] = 49_999
  path.write_text(json.dumps(record))
  again = data.fixed_subset(path, dataset="imagenet2012", split="validation",
                            num_items=50_000, size=1_000, seed=3)
  assert again[0] == 49_999
  with pytest.raises(ValueError, match="records indices of imagenet2012 validation, not of "
                     "imagenette/320px-v2 validation"):
    data.load_subset(path, dataset="imagenette/320px-v2", split="validation")
  with pytest.raises(ValueError, match="records seed 3, size 1000 of 50000 items, not seed 4"):
    data.fixed_subset(path, dataset="imagenet2012", split="validation",
                      num_items=50_000, size=1_000, seed=4)
  data.save_subset(tmp_path / "val.json", [5, 1], dataset="imagenette", split="train", seed=0)
  np.testing.assert_array_equal(
      data.load_subset(tmp_path / "val.json", dataset="imagenette", split="train"), [5, 1])
  (tmp_path / "junk.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="junk.json is not a subset file: it lacks dataset"):
    data.load_subset(tmp_path / "junk.json", dataset="x", split="y")


# --- tensorflow-datasets ------------------------------------------------------------------------


def _raw_examples(name, split, num):
  """The examples tfds' own data source returns under the active mock."""
  source = tfds.data_source(name, split=split, data_dir="/nonexistent", download=False)
  return [source[i] for i in range(num)]


def test_tfds_sources_decode_resize_and_label(tmp_path):
  with tfds.testing.mock_data(num_examples=6):
    raw = _raw_examples("imagenet2012", "validation", 6)
    source = data.imagenet_validation(data_dir=tmp_path)
    assert len(source) == 6 and len(source.class_names) == 1000
    for index in (0, 5):
      image, label = source.load(index)
      assert image.shape == (224, 224, 3) and 0 <= image.min() and image.max() <= 1
      np.testing.assert_allclose(
          image, _torchvision_reference(Image.fromarray(raw[index]["image"])), atol=1e-6, rtol=0)
      assert label == raw[index]["label"]
    batches = list(data.stream_batches(source, [5, 0, 2, 3, 1], batch_size=2, num_workers=2))
    assert [x.shape for x, _ in batches] == [(2, 224, 224, 3)] * 2 + [(1, 224, 224, 3)]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]),
                                  [raw[i]["label"] for i in [5, 0, 2, 3, 1]])

    raw = _raw_examples("imagenette/320px-v2", "train", 6)
    names = data.imagenet_class_names()
    nette = data.imagenette("train", data_dir=tmp_path, class_names=names)
    imagenette_synsets = tfds.builder("imagenette/320px-v2").info.features["label"].names
    for index in range(6):
      _, label = nette.load(index)
      assert names[label] == imagenette_synsets[raw[index]["label"]]
    assert data.imagenette("validation", data_dir=tmp_path).load(0)[1] < 10

    raw = _raw_examples("cifar10", "test", 6)
    images, labels = data.load_arrays(data.cifar10(data_dir=tmp_path))
    assert images.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(images, np.stack([r["image"] for r in raw]) / np.float32(255))
    np.testing.assert_array_equal(labels, [r["label"] for r in raw])


def test_tfds_not_prepared_says_where_to_put_what(tmp_path):
  manual = str(tmp_path / "downloads" / "manual")
  with pytest.raises(FileNotFoundError, match=f"imagenet2012 is not prepared in {tmp_path}.*"
                     f"Put ILSVRC2012_img_val.tar .* in {manual}"):
    data.imagenet_validation(data_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match=f"Put imagenette2-320.tgz .* in {manual}"):
    data.imagenette("train", data_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match="Put cifar-10-binary.tar.gz"):
    data.cifar10(data_dir=tmp_path)
  with pytest.raises(ValueError, match="split of cifar10 must be one of train, test; got 'val'"):
    data.cifar10("val", data_dir=tmp_path)


def test_prepare_tfds_offline_needs_the_archive(tmp_path, monkeypatch):
  manual = tmp_path / "downloads" / "manual"
  with pytest.raises(FileNotFoundError, match=f"imagenette2-320.tgz not found in the manual dir "
                     f"{manual}"):
    data.prepare_tfds("imagenette/320px-v2", data_dir=tmp_path)
  with pytest.raises(ValueError, match="name must be one of imagenet2012, imagenette/320px-v2"):
    data.prepare_tfds("mnist", data_dir=tmp_path)
  manual.mkdir(parents=True)
  (manual / "imagenette2-320.tgz").write_bytes(b"")
  calls = []
  monkeypatch.setattr(_tfds, "_require_tensorflow", lambda name: None)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      lambda self, **kwargs: calls.append((self.name, kwargs)))
  data.prepare_tfds("imagenette/320px-v2", data_dir=tmp_path)
  (name, kwargs), = calls
  assert name == "imagenette" and kwargs["file_format"] == "array_record"
  config = kwargs["download_config"]
  assert str(config.manual_dir) == str(manual) and config.try_download_gcs is False
  monkeypatch.undo()
  monkeypatch.setattr(_tfds.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ImportError, match="needs TensorFlow"):
    data.prepare_tfds("imagenette/320px-v2", data_dir=tmp_path)


# --- Fashion-MNIST fallback -----------------------------------------------------------------------


def test_fashion_mnist_without_files_or_tfds_names_both_options(tmp_path):
  (tmp_path / "idx").mkdir()
  (tmp_path / "tfds").mkdir()
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*"
                     "JAXDEF_FASHION_MNIST_DIR.*tensorflow-datasets fallback.*"
                     "fashion_mnist is not prepared in"):
    data.load_fashion_mnist("test", str(tmp_path / "idx"), tfds_data_dir=tmp_path / "tfds",
                            download=False)


def test_fashion_mnist_falls_back_to_tfds(tmp_path):
  with tfds.testing.mock_data(num_examples=5):
    raw = _raw_examples("fashion_mnist", "test", 5)
    images, labels = data.load_fashion_mnist("test", str(tmp_path), tfds_data_dir=tmp_path,
                                             download=False)
  assert images.shape == (5, 28, 28, 1) and images.dtype == np.float32
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(images, np.stack([r["image"] for r in raw]) / np.float32(255))
  np.testing.assert_array_equal(labels, [r["label"] for r in raw])
