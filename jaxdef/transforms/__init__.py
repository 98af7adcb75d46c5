"""Stochastic image transforms: pure functions of one HWC image.

Each transform comes as a deterministic function of the image and its
parameters (``swirl(image, strength, radius, center)``) and a random version
that draws the parameters from a PRNG key (``random_swirl(key, image)``), in
the style of dm-pix. Images are float arrays of shape (H, W, C) with values in
[0, 1]; batch them with `jax.vmap`. All work under `jax.jit` with parameters
as traced values, so per-image random parameters never cause retracing.
"""

from jaxdef.transforms._filters import gaussian_blur
from jaxdef.transforms._filters import gaussian_blur_parameters
from jaxdef.transforms._filters import median_blur
from jaxdef.transforms._filters import random_gaussian_blur
from jaxdef.transforms._filters import random_kernel_size
from jaxdef.transforms._filters import random_median_blur
from jaxdef.transforms._geometry import crop_resize
from jaxdef.transforms._geometry import random_crop_resize
from jaxdef.transforms._geometry import random_resize_pad
from jaxdef.transforms._geometry import random_rotate
from jaxdef.transforms._geometry import random_swirl
from jaxdef.transforms._geometry import resize_pad
from jaxdef.transforms._geometry import rotate
from jaxdef.transforms._geometry import swirl
from jaxdef.transforms._noise import NOISE_KINDS
from jaxdef.transforms._noise import gaussian_noise
from jaxdef.transforms._noise import noise
from jaxdef.transforms._noise import noise_parameters
from jaxdef.transforms._noise import random_noise
from jaxdef.transforms._routing import routed_switch
from jaxdef.transforms._routing import with_output_pullback
from jaxdef.transforms._spectral import fft_fractions
from jaxdef.transforms._spectral import fft_perturb
from jaxdef.transforms._spectral import quantize
from jaxdef.transforms._spectral import quantize_levels
from jaxdef.transforms._spectral import random_fft_perturb
from jaxdef.transforms._spectral import random_quantize

__all__ = (
    "NOISE_KINDS",
    "crop_resize",
    "fft_fractions",
    "fft_perturb",
    "gaussian_blur",
    "gaussian_blur_parameters",
    "gaussian_noise",
    "median_blur",
    "noise",
    "noise_parameters",
    "quantize",
    "quantize_levels",
    "random_crop_resize",
    "random_fft_perturb",
    "random_gaussian_blur",
    "random_kernel_size",
    "random_median_blur",
    "random_noise",
    "random_quantize",
    "random_resize_pad",
    "random_rotate",
    "random_swirl",
    "resize_pad",
    "rotate",
    "routed_switch",
    "swirl",
    "with_output_pullback",
)
