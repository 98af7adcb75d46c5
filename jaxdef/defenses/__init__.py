"""Stochastic pre-processing defenses: callables ``(key, images) -> images``.

Build one by name (``get("bart", kappa=6)``) or directly
(``randomized_smoothing(sigma=0.25)``), combine with `compose`, draw many
samples in one vmapped call with `sample`, and wrap any non-differentiable
step with `bpda`. Any plain function ``(key, images) -> images`` is accepted
wherever a defense is; `from_transform` lifts a per-image random transform.
"""

from jaxdef.defenses._bpda import bpda
from jaxdef.defenses._core import Defense
from jaxdef.defenses._core import as_defense
from jaxdef.defenses._core import available
from jaxdef.defenses._core import compile_sample
from jaxdef.defenses._core import compose
from jaxdef.defenses._core import from_transform
from jaxdef.defenses._core import get
from jaxdef.defenses._core import register
from jaxdef.defenses._core import sample
from jaxdef.defenses._factory import from_factory
from jaxdef.defenses._library import BART_TRANSFORMS
from jaxdef.defenses._library import bart
from jaxdef.defenses._library import bart_order
from jaxdef.defenses._library import fft_perturbation
from jaxdef.defenses._library import gaussian_blur
from jaxdef.defenses._library import identity
from jaxdef.defenses._library import median_blur
from jaxdef.defenses._library import noise_injection
from jaxdef.defenses._library import quantization
from jaxdef.defenses._library import random_crop
from jaxdef.defenses._library import random_resize_pad
from jaxdef.defenses._library import random_rotation
from jaxdef.defenses._library import randomized_smoothing
from jaxdef.defenses._library import swirl

__all__ = (
    "BART_TRANSFORMS",
    "Defense",
    "as_defense",
    "available",
    "bart",
    "bart_order",
    "bpda",
    "compile_sample",
    "compose",
    "fft_perturbation",
    "from_factory",
    "from_transform",
    "gaussian_blur",
    "get",
    "identity",
    "median_blur",
    "noise_injection",
    "quantization",
    "random_crop",
    "random_resize_pad",
    "random_rotation",
    "randomized_smoothing",
    "register",
    "sample",
    "swirl",
)
