"""The study reproduced on Fashion-MNIST: every experiment of SPEC.md section 7, one report.

  python -m launch.run --config=configs/reproduce.py --workdir=runs/reproduce
  python -m launch.run --config=configs/reproduce.py --dry_run    # the cost of each part
Variants:
  fashion (default): the reproduction, sized for two CPU cores (about two
    hours from scratch, models included; BUILD.md has the measured time).
    Writes REPRODUCTION.md and docs/reproduction/ in the repository root.
  tiny: every part at toy size, for tests and CI; the report goes to the
    workdir. Table 1 keeps two of its rows (a deterministic model and SAP's
    random one) and the invariance studies one strength each (the eps-8
    study its two sigmas): the parts' code paths, at a third of the cost
    (every Table 1 row runs in tests/test_lack_of_randomness.py).

Each part is a complete config of one experiment (``config.parts.<name>``),
run in ``<workdir>/<name>`` and resumable there; a finished part is skipped
on a rerun (parts.json). Two parts run at once (``config.parallel_parts``).
Any field can be overridden, e.g. ``--config.parts.table1.data.num_images=100``
or ``--config.parallel_parts=1``.

Every setting below is fixed before any result was looked at; where the
paper's setting does not fit 28 x 28 images or two CPU cores it is scaled,
and the scaling is stated here and in the report's sections:
  * eps: 16/255 instead of the paper's 8/255 (Fashion-MNIST models need a
    larger budget to be broken, configs/default.py); step sizes alpha are
    scaled as eps is (x 2).
  * Table 1: every published budget k x m above `TABLE1_QUERY_CAP`
    gradient queries per image is shrunk to fit it, keeping k : m; the
    ablation's steps are capped at it too.
  * k x m: k up to 50 (the paper: 1,000) and m up to 10 (the paper: 20).
  * BaRT: kappa 1 and 2 (the paper: 1..6), in the k x m sweep and in the
    invariance study. The first full run planned kappa 2 and 4 (k x m) and
    1, 2 and 4 (invariance); its BaRT-2 k x m part alone took 18 minutes,
    so kappa 4 was cut, on cost alone, before any BaRT result was read
    (BaRT-4's transforms cost about twice BaRT-2's per gradient).
Judging: every part but Table 1 votes sequentially (at most 100 draws, each
image stopping once its label is decided at error 1e-3); every part attacks
only the images its success rate counts (Table 1's SAP row, a random model,
excepted). The first full run judged the invariance parts with 100 full
votes on every image; at 134.7 minutes it was over the two-hour budget, and
these judging settings, the k x m parts' own, were adopted for cost alone.
"""

from __future__ import annotations

import math

import ml_collections

from configs import invariance_smoothing
from configs import kxm_sweep
from configs import lack_of_randomness
from configs import perturbation_pictures
from configs import theory as theory_config
from jaxdef.reports import paper

EPS_255 = 16.0  # Fashion-MNIST's budget in 1/255 units
ALPHA_SCALE = EPS_255 / paper.EPS_255  # step sizes scale as eps does (x 2)
TABLE1_QUERY_CAP = 1000  # gradient queries per image of one Table 1 setting

SIGMAS = (0.12, 0.25, 0.5, 1.0)  # Tables 3-4, and the invariance study over sigma
KAPPAS = (1, 2)  # the invariance study over BaRT's kappa
KXM_DEFENSES = ("smoothing_025", "smoothing_050", "kappa_1", "kappa_2")


def scaled_budget(k: int, m: int, cap: int = TABLE1_QUERY_CAP) -> tuple[int, int]:
  """(k, m) of a published setting shrunk to at most `cap` queries, keeping k : m.

  Both are multiplied by sqrt(cap / (k m)); m is rounded and k is the most
  steps that fit beside it. Budgets that fit are kept.
  """
  if k * m <= cap:
    return k, m
  factor = math.sqrt(cap / (k * m))
  small_m = max(1, round(m * factor))
  return max(1, cap // small_m), small_m


def table1_settings(published_k, m, alpha, ablation_k, ablation_alpha, cap=TABLE1_QUERY_CAP):
  """The three settings of one Table 1 row, alphas in 1/255 units scaled as eps."""
  k, small_m = scaled_budget(published_k, m, cap)
  to_255 = lambda a: round(a * 255 * ALPHA_SCALE, 4)
  return (
      {"name": "published", "k": k, "m": small_m, "alpha_255": to_255(alpha)},
      {"name": "ablation", "k": min(ablation_k, cap), "m": 1, "alpha_255": to_255(ablation_alpha)},
      {"name": "equal_queries", "k": k * small_m, "m": 1, "alpha_255": to_255(ablation_alpha)},
  )


def _base_model(tiny: bool) -> dict:
  """The small ResNet every part shares (trained once into models_dir)."""
  if tiny:
    return {"source": "fashion_small_resnet", "widths": (4, 8), "epochs": 1,
            "batch_size": 64, "learning_rate": 1e-2, "train_images": 1024,
            "finetune_epochs": 1, "finetune_learning_rate": 3e-4}
  return {"source": "fashion_small_resnet", "widths": (8, 16, 32), "epochs": 4,
          "batch_size": 256, "learning_rate": 1e-3, "train_images": 0,
          "finetune_epochs": 2, "finetune_learning_rate": 3e-4}


def _smoothing(sigma: float) -> dict:
  return {"name": "randomized_smoothing", "sigma": sigma}


def _bart(kappa: int) -> dict:
  return {"name": "bart", "kappa": kappa}


def _defense(label: str) -> dict:
  if label.startswith("smoothing_"):
    return _smoothing(int(label.split("_")[1]) / 100)
  return _bart(int(label.split("_")[1]))


def _models(base: dict, finetuned_on: tuple[str, ...], with_base: bool = True) -> dict:
  out = {"base": dict(base, finetune_defense="")} if with_base else {}
  for label in finetuned_on:
    out[f"finetuned_{label}"] = dict(base, finetune_defense=label)
  return out


def _theory(tiny: bool) -> ml_collections.ConfigDict:
  config = theory_config.get_config("tiny" if tiny else None)
  config.theory.sigma = 1.0  # the paper's case: sigma = 1, eps = 1
  config.theory.eps = 1.0
  return config


def _table1(base: dict, tiny: bool) -> ml_collections.ConfigDict:
  config = lack_of_randomness.get_config("tiny" if tiny else "fashion")
  config.data.num_images = 6 if tiny else 200
  config.attack.eps_255 = EPS_255
  # 10 draws per model call: k-WTA's 100 EOT draws of 200 images at once
  # would hold 20,000 gradient rows.
  config.attack.eot_chunk_size = 2 if tiny else 10
  config.attack.counted_only = True  # as in every other part
  if not tiny:
    config.models = ml_collections.ConfigDict({
        "base": dict(base, finetune_defense=""),
        "base_sap": dict(base, finetune_defense="", activation="sap", sap_ratio=1.0),
        "kwta": dict(base, finetune_defense="", activation="kwta", kwta_ratio=0.1),
    })
  if tiny:
    lack_of_randomness.keep_rows(config, lack_of_randomness.SAMPLE_ROWS)
  cap = 8 if tiny else TABLE1_QUERY_CAP
  for published in paper.TABLE1:  # the paper's settings, scaled
    if published.defense not in config.rows:
      continue
    row = config.rows[published.defense]
    row.eot = max(2, scaled_budget(published.k, published.m, cap)[1])
    row.settings = table1_settings(published.k, published.m, published.alpha,
                                   published.ablation_k, published.ablation_alpha, cap)
  return config


def _kxm(base: dict, defense: str, tiny: bool) -> ml_collections.ConfigDict:
  config = kxm_sweep.get_config("tiny" if tiny else "fashion")
  config.data.num_images = 8 if tiny else 200
  config.attack.eps_255 = EPS_255
  config.defenses = ml_collections.ConfigDict({defense: _defense(defense)})
  config.models = ml_collections.ConfigDict(_models(base, (defense,), with_base=False))
  if tiny:
    return config
  config.attack.steps = (10, 20, 50)
  config.attack.eots = (1, 5, 10)
  config.attack.alphas_255 = tuple(a * ALPHA_SCALE for a in (0.5, 1.0, 2.0, 4.0))
  config.attack.votes = 100
  config.attack.sequential_votes = True
  config.attack.counted_only = True
  return config


def _invariance(base: dict, study: str, tiny: bool, eps_255: float = EPS_255,
                targeted: tuple[bool, ...] = (False, True), sigmas: tuple[float, ...] = SIGMAS
                ) -> ml_collections.ConfigDict:
  """One invariance part; a smoothing study runs over `sigmas` (tiny too)."""
  if study == "smoothing":
    defenses = {invariance_smoothing.label_of(s): _smoothing(s) for s in sigmas}
    config = invariance_smoothing.build("invariance_smoothing", "sigma", defenses,
                                        "tiny" if tiny else "fashion")
  else:
    # Tiny: kappa 2 alone, the smallest BaRT that draws an order of its
    # transforms, so CI trains, attacks and votes through BaRT's routing.
    defenses = {f"kappa_{k}": _bart(k) for k in (KAPPAS[1:] if tiny else KAPPAS)}
    config = invariance_smoothing.build("invariance_bart", "kappa", defenses,
                                        "tiny" if tiny else "fashion")
  config.attack.eps_255 = eps_255
  config.attack.targeted = targeted
  # The k x m parts' judging: sequential votes, only counted images attacked.
  config.attack.sequential_votes = True
  config.attack.counted_only = True
  config.models = ml_collections.ConfigDict(_models(base, tuple(defenses)))
  return config


def _tables34(base: dict, sigma: float, tiny: bool) -> ml_collections.ConfigDict:
  """Appendix E.4's protocol: targeted PGD-100, alpha 1/255 (scaled), EOT-20, class 9."""
  label = invariance_smoothing.label_of(sigma)
  config = kxm_sweep.get_config("tiny" if tiny else "fashion")
  config.data.num_images = 8 if tiny else 200
  config.attack.eps_255 = EPS_255
  config.defenses = ml_collections.ConfigDict({label: _smoothing(sigma)})
  config.models = ml_collections.ConfigDict(_models(base, (label,)))
  config.attack.steps = (2,) if tiny else (100,)
  config.attack.eots = (2,) if tiny else (20,)
  config.attack.alphas_255 = (1.0 * ALPHA_SCALE,)
  config.attack.targeted = (True,)
  config.attack.votes = 8 if tiny else 100
  config.attack.sequential_votes = True
  config.attack.counted_only = True
  return config


def _pictures(base: dict, tiny: bool) -> ml_collections.ConfigDict:
  config = perturbation_pictures.get_config("tiny" if tiny else "fashion")
  config.attack.eps_255 = EPS_255
  config.defenses = ml_collections.ConfigDict({"smoothing_025": _smoothing(0.25)})
  config.models = ml_collections.ConfigDict(_models(base, ("smoothing_025",), with_base=False))
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "fashion"
  if variant not in ("fashion", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of configs/reproduce.py; "
                     "allowed: fashion, tiny")
  tiny = variant == "tiny"
  base = _base_model(tiny)
  config = ml_collections.ConfigDict()
  config.experiment = "reproduce"
  config.seed = 0
  config.progress = True
  config.models_dir = "runs/models"
  config.dtype = "float32"
  config.device_memory_gb = 0.0
  # Parts run at once, each in its own process (models are still trained
  # once; see jaxdef/experiments/_reproduce.py): on two cores about 12% more
  # throughput than one by one (BENCHMARKS.md). 1 runs them one by one.
  config.parallel_parts = 2
  # Where the report goes: "" is the workdir; the full run writes the
  # committed REPRODUCTION.md and its figures in the repository root.
  config.report = ml_collections.ConfigDict({
      "path": "" if tiny else "REPRODUCTION.md",
      "figures_dir": "" if tiny else "docs/reproduction",
      # What --dry_run divides image-gradients by to estimate minutes: the
      # small ResNet behind smoothing with EOT on two CPU cores, measured
      # 2,700 to 4,100 per second (BaRT-4: about 1,500), rounded down.
      "gradients_per_second": 2500.0,
  })
  parts = {"theory": _theory(tiny), "table1": _table1(base, tiny)}
  for defense in (KXM_DEFENSES[:1] if tiny else KXM_DEFENSES):
    parts[f"kxm_{defense}"] = _kxm(base, defense, tiny)
  parts["invariance_smoothing"] = _invariance(base, "smoothing", tiny,
                                              sigmas=SIGMAS[1:2] if tiny else SIGMAS)
  parts["invariance_bart"] = _invariance(base, "bart", tiny)
  # The controlled comparison for the invariance finding: the same study at
  # the paper's eps, 8/255, untargeted (settings fixed before any result).
  # Sigmas 0.12 and 0.25, where the untargeted finding went the other way
  # in the first try (issue 16). The tiny variant keeps both sigmas here: its
  # one invariance part over more than one strength.
  parts["invariance_smoothing_eps8"] = _invariance(base, "smoothing", tiny, eps_255=8.0,
                                                   targeted=(False,), sigmas=SIGMAS[:2])
  for sigma in (SIGMAS[1:2] if tiny else SIGMAS):
    parts[f"tables34_{invariance_smoothing.label_of(sigma)}"] = _tables34(base, sigma, tiny)
  parts["pictures"] = _pictures(base, tiny)
  config.parts = ml_collections.ConfigDict(parts)
  # The order the parts run in (a ConfigDict lists its keys sorted).
  config.order = tuple(parts)
  return config
