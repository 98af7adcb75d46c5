"""ImageNet, ImageNette and CIFAR-10 through tensorflow-datasets, read offline.

Reading uses tfds' random-access data sources (array_record files), which need
neither TensorFlow nor the network; preparing a data set once from its
downloaded archive (`prepare_tfds`) needs TensorFlow.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from jaxdef.data import _images

IMAGENET = "imagenet2012"
IMAGENETTE = "imagenette/320px-v2"
CIFAR10 = "cifar10"
FASHION_MNIST = "fashion_mnist"
# The splits tfds defines, and the archives `prepare_tfds` takes from the manual
# dir instead of downloading (file names as in tfds' checksum files).
_SPLITS = {
    IMAGENET: ("train", "validation", "test"),
    IMAGENETTE: ("train", "validation"),
    CIFAR10: ("train", "test"),
    FASHION_MNIST: ("train", "test"),
}
_ARCHIVES = {
    IMAGENET: ("ILSVRC2012_img_val.tar", "ILSVRC2012_img_train.tar"),
    IMAGENETTE: ("imagenette2-320.tgz",),
    CIFAR10: ("cifar-10-binary.tar.gz",),
    FASHION_MNIST: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_WHERE_FROM = {
    IMAGENET: "https://image-net.org/download-images (registration needed)",
    IMAGENETTE: "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",
    CIFAR10: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    FASHION_MNIST: "https://github.com/zalandoresearch/fashion-mnist",
}


def _tfds():
  import tensorflow_datasets as tfds  # Lazy: a heavy import, only needed here.

  return tfds


def _data_dir_root(data_dir) -> pathlib.Path:
  if data_dir is not None:
    return pathlib.Path(data_dir).expanduser()
  return pathlib.Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def _manual_dir(data_dir, manual_dir) -> pathlib.Path:
  if manual_dir is not None:
    return pathlib.Path(manual_dir).expanduser()
  return _data_dir_root(data_dir) / "downloads" / "manual"


def _how_to_prepare(name: str, data_dir) -> str:
  root = _data_dir_root(data_dir)
  if name not in _ARCHIVES:
    return (f"Prepare it with `tfds build {name} --data_dir={root} --file_format=array_record`.")
  archives = " and/or ".join(_ARCHIVES[name]) if name == IMAGENET else ", ".join(_ARCHIVES[name])
  return (f"Put {archives} (from {_WHERE_FROM[name]}) in {_manual_dir(data_dir, None)} and run "
          f"jaxdef.data.prepare_tfds({name!r}, data_dir={str(root)!r}) once (needs tensorflow), "
          "or pass data_dir= where it is prepared (array_record format).")


def prepare_tfds(name: str, *, data_dir: str | os.PathLike | None = None,
                 manual_dir: str | os.PathLike | None = None, download: bool = False) -> None:
  """Prepares a tfds data set once, offline, from its downloaded archive.

  Writes array_record files (random access, readable without TensorFlow) under
  `data_dir`. With `download=False` nothing is fetched from the network: the
  archive must already be in `manual_dir` (`imagenette2-320.tgz` for ImageNette,
  `ILSVRC2012_img_val.tar` for the ImageNet validation set,
  `cifar-10-binary.tar.gz` for CIFAR-10).

  Args:
    name: "imagenet2012", "imagenette/320px-v2", "cifar10" or "fashion_mnist".
    data_dir: tfds data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
    manual_dir: where the archives are (default <data_dir>/downloads/manual).
    download: let tfds download missing archives (needs the network).

  Raises:
    ValueError: an unsupported name.
    FileNotFoundError: download=False and the archive is not in `manual_dir`.
    ImportError: TensorFlow (which tfds needs to prepare data) is missing.
  """
  if name not in _ARCHIVES:
    raise ValueError(f"name must be one of {', '.join(_ARCHIVES)}; got {name!r}")
  manual = _manual_dir(data_dir, manual_dir)
  if not download:
    present = [a for a in _ARCHIVES[name] if (manual / a).is_file()]
    if name == IMAGENET:  # either archive will do; evaluation needs only the validation one
      missing = [] if present else [" or ".join(_ARCHIVES[name])]
    else:
      missing = [a for a in _ARCHIVES[name] if a not in present]
    if missing:
      raise FileNotFoundError(
          f"cannot prepare {name} offline: {', '.join(missing)} not found in the manual dir "
          f"{manual}. Download it from {_WHERE_FROM[name]} and put it there, or pass "
          "manual_dir= (or download=True when online).")
  _require_tensorflow(name)
  tfds = _tfds()
  builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual), try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=config, file_format="array_record")
  except ModuleNotFoundError as err:
    raise ImportError(f"preparing {name} with tensorflow-datasets needs the missing module "
                      f"{err.name!r}: pip install {err.name}") from err


def _require_tensorflow(name: str) -> None:
  if importlib.util.find_spec("tensorflow") is None:
    raise ImportError(f"preparing {name} with tensorflow-datasets needs TensorFlow "
                      "(pip install tensorflow-cpu importlib_resources); reading the prepared "
                      "data afterwards does not")


class TfdsSource:
  """A prepared tfds split, read by random access; decoded one example at a time.

  Attributes:
    name, split: the tfds data set and split.
    class_names: label id -> name (the data set's, or the given `class_names`).
  """

  def __init__(self, name: str, split: str, *, data_dir: str | os.PathLike | None = None,
               resize_size: int | None = None, crop_size: int | None = None,
               rgb: bool = True, class_names: Sequence[str] | None = None):
    """Opens `name`'s `split` from `data_dir` without downloading anything.

    Args:
      name: tfds name, e.g. "imagenet2012", "imagenette/320px-v2", "cifar10".
      split: e.g. "validation", "train", "test".
      data_dir: tfds data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
      resize_size: shorter side after resizing (None: no resize).
      crop_size: side of the centre crop (None: no crop).
      rgb: give grayscale images 3 channels.
      class_names: relabel: the data set's label names are looked up in this
        list (e.g. `imagenet_class_names()` gives ImageNette ImageNet label ids).

    Raises:
      ValueError: an unknown split, bad sizes, labels missing from class_names,
        or data prepared in a format without random access.
      FileNotFoundError: the data set is not prepared in `data_dir`, saying
        which archive to put where.
    """
    _images.check_sizes(resize_size, crop_size)
    if name in _SPLITS and split not in _SPLITS[name]:
      raise ValueError(f"split of {name} must be one of {', '.join(_SPLITS[name])}; got {split!r}")
    tfds = _tfds()
    self.name, self.split = name, split
    self.resize_size, self.crop_size, self.rgb = resize_size, crop_size, rgb
    builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    try:
      self._data = builder.as_data_source(split)
    except Exception as err:
      if not builder.is_prepared():
        raise FileNotFoundError(f"{name} is not prepared in {builder.data_dir}. "
                                f"{_how_to_prepare(name, data_dir)}") from err
      if isinstance(err, NotImplementedError):
        raise ValueError(
            f"{name} in {builder.data_dir} is stored as {builder.info.file_format.value}, which "
            "has no random access; re-prepare it with jaxdef.data.prepare_tfds (array_record) "
            "or convert it (needs tensorflow and apache-beam): tfds convert_format "
            f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record") from err
      raise
    dataset_names = tuple(builder.info.features["label"].names)
    if class_names is None:
      self.class_names = dataset_names
      self._label_map = None
    else:
      self.class_names = tuple(class_names)
      position = {class_name: label for label, class_name in enumerate(self.class_names)}
      unknown = [n for n in dataset_names if n not in position]
      if unknown:
        raise ValueError(f"{len(unknown)} labels of {name} are not in class_names: "
                         f"{', '.join(unknown[:10])}")
      self._label_map = np.asarray([position[n] for n in dataset_names], np.int32)

  def __len__(self) -> int:
    return len(self._data)

  def describe(self, index: int) -> str:
    return f"{self.name} {self.split}[{index}]"

  def load(self, index: int) -> tuple[np.ndarray, int]:
    """Decodes and preprocesses example `index`.

    Returns:
      (image, label): float32 (H, W, C) in [0, 1] (crop x crop when cropping)
      and the int label id.
    """
    try:
      example = self._data[index]
    except (OSError, ValueError, SyntaxError) as err:
      raise _images.UndecodableImageError(self.describe(index), err) from err
    image = np.asarray(example["image"])
    if self.rgb and image.ndim == 3 and image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    array = _images.preprocess_image(image, resize_size=self.resize_size,
                                     crop_size=self.crop_size, name=self.describe(index))
    label = int(example["label"])
    return array, label if self._label_map is None else int(self._label_map[label])


def imagenet_validation(*, data_dir: str | os.PathLike | None = None, resize_size: int = 256,
                        crop_size: int = 224) -> TfdsSource:
  """The 50,000 ImageNet validation images (tfds `imagenet2012`), 224 x 224 crops.

  Labels are the usual ImageNet class ids (sorted synsets, `imagenet_class_names()`).
  """
  return TfdsSource(IMAGENET, "validation", data_dir=data_dir, resize_size=resize_size,
                    crop_size=crop_size)


def imagenette(split: str = "validation", *, data_dir: str | os.PathLike | None = None,
               resize_size: int = 256, crop_size: int = 224,
               class_names: Sequence[str] | None = None) -> TfdsSource:
  """ImageNette 320 px v2 (tfds `imagenette/320px-v2`): "train" (9,469) or "validation" (3,925).

  Labels are 0..9 (sorted synsets); pass `class_names=imagenet_class_names()`
  for ImageNet class ids.
  """
  return TfdsSource(IMAGENETTE, split, data_dir=data_dir, resize_size=resize_size,
                    crop_size=crop_size, class_names=class_names)


def cifar10(split: str = "test", *, data_dir: str | os.PathLike | None = None) -> TfdsSource:
  """CIFAR-10 (tfds `cifar10`): 32 x 32 RGB, "train" (50,000) or "test" (10,000)."""
  return TfdsSource(CIFAR10, split, data_dir=data_dir)


def load_tfds_arrays(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
                     rgb: bool = False):
  """A whole small prepared tfds split (e.g. Fashion-MNIST) as numpy arrays.

  Returns:
    (images, labels): float32 (N, H, W, C) in [0, 1] and int32 (N,).
  """
  source = TfdsSource(name, split, data_dir=data_dir, rgb=rgb)
  if not len(source):
    raise ValueError(f"{name} {split} holds no examples")
  examples = [source.load(index) for index in range(len(source))]
  images = np.stack([image for image, _ in examples])
  return images, np.asarray([label for _, label in examples], np.int32)
