"""What the study published, for side-by-side comparison (from the team's PAPER_RESULTS.md).

Gao, Shumailov, Fawaz, Papernot, "On the Limitations of Stochastic
Pre-processing Defenses", NeurIPS 2022: its appendix and its poster. Rates
are fractions in [0, 1]; step sizes alpha on the [0, 1] pixel scale.
The theory's published figures live with the closed forms
(`jaxdef.theory.PAPER_CASE`).
"""

from __future__ import annotations

from typing import NamedTuple

# The paper attacks ImageNet / CIFAR-10 models at eps = 8/255.
EPS_255 = 8.0


class Table1Row(NamedTuple):
  """One earlier defense: its published EOT attack and the no-EOT ablation."""
  defense: str  # jaxdef's defense name
  title: str
  k: int
  m: int
  alpha: float
  success: float
  ablation_k: int
  ablation_alpha: float
  ablation_success: float


TABLE1 = (
    Table1Row("random_crop", "random crop, Guo et al. 2018", 1000, 30, 0.1, 1.00,
              1000, 0.001, 0.990),
    Table1Row("resize_pad", "resize and pad, Xie et al. 2018", 1000, 30, 0.1, 1.00,
              200, 0.1, 1.00),
    Table1Row("sap", "SAP, Dhillon et al. 2018", 500, 10, 0.1, 1.00, 500, 0.1, 1.00),
    Table1Row("kwta", "k-WTA, Xiao et al. 2020", 100, 1000, 0.01, 1.00, 40000, 0.1 / 255, 0.984),
    Table1Row("odds_are_odd", "odds are odd, Roth et al. 2019", 100, 40, 0.2 / 255, 1.00,
              4000, 0.1 / 255, 0.961),
)

# Section 6.2 / Appendix E.1: the k x m grid.
KXM_STEPS = (10, 20, 50, 100, 200, 500, 1000)
KXM_EOTS = (1, 5, 10, 20)
KXM_ALPHAS_255 = (0.5, 1.0, 2.0, 4.0)

# Appendix E.4, Tables 3 and 4 (CIFAR-10, Cohen et al.'s ResNet-110):
# sigma -> (benign accuracy before, after; attack success before, after).
TABLES34 = {
    0.12: (0.234, 0.836, 0.521, 0.631),
    0.25: (0.147, 0.779, 0.011, 0.295),
    0.50: (0.123, 0.711, 0.000, 0.181),
    1.00: (0.101, 0.567, 0.000, 0.123),
}
TABLES34_PROTOCOL = ("targeted PGD, 100 steps, eps = 8/255, alpha = 1/255, target class 9, "
                     "EOT m = 20; the same attack before and after fine-tuning on Gaussian-noise "
                     "data")
