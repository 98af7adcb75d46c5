"""The embedded default's results, pinned exactly: a change that weakens the attack fails here.

The default run's two trained models and its 100 fixed images go through the
default config's whole sweep again (`regression_default.sweep_records`: 48
cells, untargeted and targeted, m = 1 and 5, both step sizes, k = 10, 20,
50). Everything in it is deterministic on a CPU (fixed weights, keys,
images, summation order), so on a CPU every cell's success count and
denominator must equal the pinned ones exactly
(tests/data/default_run/pinned.json, "exact_cpu"). Weakening the attack
changes many of them: halving alpha 33 of the 48 cells, one PGD step fewer
27 (`python -m tests.regression_default`, 2-core Intel Xeon, 2026-12-05).
On another backend float results differ in the last bits, so the
fallback there is the interval check against the 2026-11-23 run's
untargeted EOT-1 cells ("cells": each count inside that run's 95%
Clopper-Pearson interval).
"""

import json

import jax
import optimization
import pytest
import regression_default


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  with optimization.full_optimization():  # the pins are the programs users run
    return regression_default.sweep_records(tmp_path_factory.mktemp("sweep"))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="exact pins hold on a CPU only")
def test_every_cell_equals_its_exact_cpu_pin(records):
  pinned = json.loads(regression_default.PINNED.read_text())["exact_cpu"]["cells"]
  assert len(pinned) == len(records) == 48
  changed = regression_default.differences(records, pinned)
  assert not changed, "pinned success counts changed: " + "; ".join(changed)
  found = {regression_default.cell_key(r): r for r in records}
  for cell in pinned:
    record = found[regression_default.cell_key(cell)]
    assert record["gradient_computations"] == cell["gradient_computations"]


def test_untargeted_eot1_cells_stay_in_the_first_runs_intervals(records):
  """The cross-platform fallback: the 2026-11-23 run's cells and 95% intervals."""
  first_run = json.loads(regression_default.PINNED.read_text())["cells"]
  found = {regression_default.cell_key(r): r for r in records}
  outside = []
  for cell in first_run:
    record = found[regression_default.cell_key(cell)]
    assert record["denominator"] == cell["denominator"], cell  # the clean vote is unchanged
    if not cell["ci_low"] <= record["rate"] <= cell["ci_high"]:
      outside.append(f"{cell['model']} alpha {cell['alpha_255']}/255 k={cell['k']}: "
                     f"{record['successes']}/{record['denominator']}, pinned "
                     f"[{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]")
  assert not outside, "attack success left its 95% interval: " + "; ".join(outside)
