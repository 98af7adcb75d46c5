"""Data sets and how to read them: images come as float32 NHWC in [0, 1], labels int32.

- Fashion-MNIST, the embedded default (Debian's dataset-fashion-mnist; tfds fallback).
- Class-per-folder image directories (ImageNet validation, ImageNette as downloaded).
- ImageNet, ImageNette and CIFAR-10 from tensorflow-datasets, read offline.
- Fixed evaluation subsets chosen once by seed and recorded as JSON.
- A streaming batch iterator with lazy decoding and prefetch to the device.
"""

from jaxdef.data._folder import IMAGE_EXTENSIONS
from jaxdef.data._folder import ImageFolder
from jaxdef.data._folder import imagenet_class_names
from jaxdef.data._folder import load_image_folder
from jaxdef.data._idx import FASHION_MNIST_CLASSES
from jaxdef.data._idx import load_fashion_mnist
from jaxdef.data._idx import read_idx
from jaxdef.data._images import UndecodableImageError
from jaxdef.data._images import preprocess_image
from jaxdef.data._stream import ArraySource
from jaxdef.data._stream import SkippedImagesWarning
from jaxdef.data._stream import Source
from jaxdef.data._stream import load_arrays
from jaxdef.data._stream import stream_batches
from jaxdef.data._subsets import choose_subset
from jaxdef.data._subsets import fixed_subset
from jaxdef.data._subsets import load_subset
from jaxdef.data._subsets import save_subset
from jaxdef.data._subsets import split_indices
from jaxdef.data._tfds import TfdsSource
from jaxdef.data._tfds import cifar10
from jaxdef.data._tfds import imagenet_validation
from jaxdef.data._tfds import imagenette
from jaxdef.data._tfds import load_tfds_arrays
from jaxdef.data._tfds import prepare_tfds

__all__ = (
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "ArraySource",
    "ImageFolder",
    "SkippedImagesWarning",
    "Source",
    "TfdsSource",
    "UndecodableImageError",
    "choose_subset",
    "cifar10",
    "fixed_subset",
    "imagenet_class_names",
    "imagenet_validation",
    "imagenette",
    "load_arrays",
    "load_fashion_mnist",
    "load_image_folder",
    "load_subset",
    "load_tfds_arrays",
    "prepare_tfds",
    "preprocess_image",
    "read_idx",
    "save_subset",
    "split_indices",
    "stream_batches",
)
