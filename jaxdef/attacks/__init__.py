"""White-box adaptive attacks on stochastic classifiers: PGD, APGD, EOT, BPDA.

Every attack is pure and compiled end to end; the defense is always in the
loop. Functions named like the API return adversarial images; the
``*_result`` variants return an `AttackResult` with gradient accounting
(strength = steps x EOT draws).
"""

from jaxdef.attacks._apgd import apgd
from jaxdef.attacks._apgd import apgd_result
from jaxdef.attacks._apgd import checkpoint_schedule
from jaxdef.attacks._common import AttackResult
from jaxdef.attacks._eot import eot_value
from jaxdef.attacks._eot import eot_value_and_grad
from jaxdef.attacks._losses import cross_entropy
from jaxdef.attacks._losses import dlr
from jaxdef.attacks._losses import margin
from jaxdef.attacks._losses import targeted_dlr
from jaxdef.attacks._pgd import pgd
from jaxdef.attacks._pgd import pgd_result
from jaxdef.attacks._pgd import pgd_trajectory
from jaxdef.attacks._pgd import pgd_trajectory_results
from jaxdef.attacks._success import SuccessRate
from jaxdef.attacks._success import clopper_pearson
from jaxdef.attacks._success import evaluate
from jaxdef.attacks._success import success_rate

__all__ = (
    "AttackResult",
    "SuccessRate",
    "apgd",
    "apgd_result",
    "checkpoint_schedule",
    "clopper_pearson",
    "cross_entropy",
    "dlr",
    "eot_value",
    "eot_value_and_grad",
    "evaluate",
    "margin",
    "pgd",
    "pgd_result",
    "pgd_trajectory",
    "pgd_trajectory_results",
    "success_rate",
    "targeted_dlr",
)
