"""The audit's budgets: how much attack work each level spends per image."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Budget:
  """One audit budget, in gradient computations per image.

  Every attack spends the same number of gradient queries, `queries`: PGD
  without EOT (k = queries, at each step size), APGD-CE and APGD-DLR
  (queries steps, no EOT), and PGD with EOT at k = queries // m steps of m
  draws for each m > 1 of `eots` (at each step size). The comparison of the
  last against the first is the paper's: EOT at an equal number of queries.

  Attributes:
    name: "quick" | "standard" | "thorough" | "smoke".
    queries: gradient computations per image of each attack run, >= 1.
    eots: EOT draws m per step of the PGD runs; 1 is PGD without EOT.
    alpha_fractions: PGD step sizes as fractions of eps.
    votes: draws of each judged prediction (majority vote).
    draws: single draws for the single-draw accuracy and the rate of
      invariance.
    sanity_draws: draws compared by the pre-attack sanity check.
  """
  name: str
  queries: int
  eots: tuple[int, ...]
  alpha_fractions: tuple[float, ...]
  votes: int
  draws: int
  sanity_draws: int = 4

  def __post_init__(self):
    from jaxdef import _validate

    for field in ("queries", "votes", "draws"):
      _validate.check_number(getattr(self, field), field, low=1, integer=True)
    _validate.check_number(self.sanity_draws, "sanity_draws", low=2, integer=True)
    if not self.eots or any(not isinstance(m, int) or not 1 <= m <= self.queries
                            for m in self.eots):
      raise ValueError(f"eots must be integers in [1, queries = {self.queries}], got "
                       f"{self.eots!r}")
    if not self.alpha_fractions or any(not 0 < a <= 1 for a in self.alpha_fractions):
      raise ValueError(f"alpha_fractions must be fractions of eps in (0, 1], got "
                       f"{self.alpha_fractions!r}")

  @property
  def attack_runs(self) -> int:
    """PGD runs (each m, each step size) and the two APGD runs."""
    return len(self.eots) * len(self.alpha_fractions) + 2

  @property
  def gradients_per_image(self) -> int:
    """Gradient computations per attacked image over the whole audit."""
    return self.attack_runs * self.queries


BUDGETS = {
    # The whole audit of 100 Fashion-MNIST images in a few minutes on 2 CPU cores.
    "quick": Budget("quick", queries=100, eots=(1, 5, 10), alpha_fractions=(1 / 4, 1 / 10),
                    votes=50, draws=20),
    "standard": Budget("standard", queries=500, eots=(1, 5, 10, 20),
                       alpha_fractions=(1 / 4, 1 / 10, 1 / 40), votes=100, draws=50),
    "thorough": Budget("thorough", queries=2000, eots=(1, 5, 10, 20, 50),
                       alpha_fractions=(1 / 4, 1 / 10, 1 / 40), votes=500, draws=100),
    # The protocol end to end at toy size (tests, a first try of a new
    # defense): its rates say little, its compile time dominates.
    "smoke": Budget("smoke", queries=10, eots=(1, 5), alpha_fractions=(1 / 4,), votes=10,
                    draws=4),
}


def resolve(budget) -> Budget:
  """A `Budget` from its name or itself; a clear error for anything else."""
  if isinstance(budget, Budget):
    return budget
  if isinstance(budget, str) and budget in BUDGETS:
    return BUDGETS[budget]
  raise ValueError(f"budget must be one of {', '.join(BUDGETS)} or a jaxdef.auditing.Budget, "
                   f"got {budget!r}")
