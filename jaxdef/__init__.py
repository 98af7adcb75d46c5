"""jaxdef: fast, honest evaluation of stochastic pre-processing defenses.

The pipeline, in the order of the subpackages: data -> models -> transforms
-> defenses -> classifier -> attacks -> experiments -> reports. The public
API is what this module re-exports (see ``__all__``); modules whose names
start with an underscore are internal.
"""

from jaxdef import attacks
from jaxdef import auditing
from jaxdef import checks
from jaxdef import data
from jaxdef import defenses
from jaxdef import detection
from jaxdef import distortion
from jaxdef import models
from jaxdef import sharding
from jaxdef import theory
from jaxdef import train
from jaxdef import transforms
from jaxdef.auditing import AuditReport
from jaxdef.auditing import audit
from jaxdef.classifier import StochasticClassifier
from jaxdef.defenses import bpda

__version__ = "0.1.0"

__all__ = (
    "AuditReport",
    "StochasticClassifier",
    "attacks",
    "audit",
    "auditing",
    "bpda",
    "checks",
    "data",
    "defenses",
    "detection",
    "distortion",
    "models",
    "sharding",
    "theory",
    "train",
    "transforms",
)
