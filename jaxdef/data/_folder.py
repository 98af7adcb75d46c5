"""Class-per-folder image directories: root/<class_name>/*.JPEG (ImageNet val, ImageNette)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from jaxdef.data import _images
from jaxdef.data import _stream

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def imagenet_class_names() -> tuple[str, ...]:
  """The 1,000 ImageNet synsets (e.g. "n01440764") in the usual class-index order.

  This is the order of torchvision's and Cohen et al.'s ImageNet classifiers (the
  sorted synsets), read from tensorflow-datasets' `imagenet2012` label file. Pass it
  as `class_names` to give an ImageNette folder ImageNet label ids.
  """
  import tensorflow_datasets as tfds  # Lazy: a heavy import.

  path = tfds.core.tfds_path("datasets/imagenet2012/labels.txt")
  names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
  if len(names) != 1000:
    raise RuntimeError(f"{path} lists {len(names)} ImageNet classes, expected 1000")
  return names


class ImageFolder:
  """A class-per-folder image directory, decoded lazily one image at a time.

  The layout people download for ImageNet validation or ImageNette:
  `root/<class_name>/<image>.JPEG` (also .jpg and .png, any case). Class folders
  sorted by name give label ids 0, 1, ...; or `class_names` fixes the order (e.g.
  `imagenet_class_names()`). Images are decoded with PIL, converted to RGB and
  preprocessed like torchvision's Resize(resize_size) + CenterCrop(crop_size).

  Attributes:
    root: the directory.
    class_names: label id -> class name.
    paths: the image files, sorted by class folder then file name.
    labels: int32 (N,) label ids of `paths`.
  """

  def __init__(self, root: str | os.PathLike, *, class_names: Sequence[str] | None = None,
               resize_size: int | None = 256, crop_size: int | None = 224,
               extensions: Sequence[str] = IMAGE_EXTENSIONS):
    """Scans `root`; nothing is decoded yet.

    Args:
      root: the directory holding one folder per class.
      class_names: label order; folders must be a subset of it (folders absent
        from `root` are allowed, e.g. ImageNette's 10 of ImageNet's 1,000).
        Default: the sorted folder names.
      resize_size: shorter side after resizing (None: no resize).
      crop_size: side of the centre crop (None: no crop).
      extensions: file endings counted as images, case-insensitive.

    Raises:
      FileNotFoundError: `root` does not exist, or a layout without images.
      NotADirectoryError: `root` is a file.
      ValueError: bad sizes, folders missing from `class_names`, duplicate names.
    """
    _images.check_sizes(resize_size, crop_size)
    self.root = pathlib.Path(root)
    self.resize_size, self.crop_size = resize_size, crop_size
    if not self.root.exists():
      raise FileNotFoundError(f"image folder {self.root} does not exist")
    if not self.root.is_dir():
      raise NotADirectoryError(f"image folder {self.root} is not a directory; expected "
                               "root/<class_name>/<image>.JPEG")
    endings = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
      loose = [p.name for p in self.root.iterdir() if p.suffix.lower() in endings]
      hint = (f" ({len(loose)} image files lie directly in it: move them into one folder per "
              "class)"
              if loose else "")
      raise FileNotFoundError(f"image folder {self.root} has no class folders{hint}; expected "
                              "root/<class_name>/<image>.JPEG")
    if class_names is None:
      self.class_names = tuple(folder.name for folder in folders)
    else:
      self.class_names = tuple(class_names)
      if len(set(self.class_names)) != len(self.class_names):
        raise ValueError("class_names has duplicate entries")
      unknown = [f.name for f in folders if f.name not in set(self.class_names)]
      if unknown:
        raise ValueError(f"{len(unknown)} folders of {self.root} are not in class_names "
                         f"({len(self.class_names)} names): {', '.join(unknown[:10])}")
    label_of = {name: label for label, name in enumerate(self.class_names)}
    paths, labels = [], []
    for folder in folders:
      files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in endings)
      if not files:
        raise FileNotFoundError(f"class folder {folder} holds no images "
                                f"(allowed endings: {', '.join(endings)})")
      paths.extend(files)
      labels.extend([label_of[folder.name]] * len(files))
    self.paths = tuple(paths)
    self.labels = np.asarray(labels, dtype=np.int32)

  def __len__(self) -> int:
    return len(self.paths)

  def describe(self, index: int) -> str:
    """The image's path relative to `root` (for messages)."""
    return str(self.paths[index].relative_to(self.root))

  def load(self, index: int) -> tuple[np.ndarray, int]:
    """Decodes and preprocesses image `index`.

    Returns:
      (image, label): float32 (crop, crop, 3) in [0, 1] and the int label id.

    Raises:
      UndecodableImageError: the file cannot be decoded (its path in the message).
    """
    path = self.paths[index]
    image = _images.decode_image_file(path)
    array = _images.preprocess_image(image, resize_size=self.resize_size,
                                     crop_size=self.crop_size, name=str(path))
    return array, int(self.labels[index])


def load_image_folder(root: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                      resize_size: int | None = 256, crop_size: int | None = 224,
                      on_error: str = "raise", num_workers: int = 0):
  """Loads a whole class-per-folder directory into memory (small folders only).

  For ImageNet-sized folders stream instead: `stream_batches(ImageFolder(root), ...)`.

  Args:
    root, class_names, resize_size, crop_size: as for `ImageFolder`.
    on_error: "raise" (default) fails on the first undecodable file, naming it;
      "skip" leaves such files out and warns with their count and names.
    num_workers: threads decoding in parallel (0: in the calling thread).

  Returns:
    (images, labels): float32 (N, crop, crop, 3) in [0, 1] and int32 (N,).
  """
  folder = ImageFolder(root, class_names=class_names, resize_size=resize_size,
                       crop_size=crop_size)
  return _stream.load_arrays(folder, on_error=on_error, num_workers=num_workers)
