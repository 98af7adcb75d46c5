"""Data sets: the embedded default (Fashion-MNIST) and, later, ImageNet,
ImageNette and CIFAR-10 loaders. Images come as float32 NHWC in [0, 1]."""

from jaxdef.data._idx import FASHION_MNIST_CLASSES
from jaxdef.data._idx import load_fashion_mnist
from jaxdef.data._idx import read_idx

__all__ = ("FASHION_MNIST_CLASSES", "load_fashion_mnist", "read_idx")
