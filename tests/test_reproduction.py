"""The reproduction: its config's scalings, the verdicts, and the tiny run end to end."""

from __future__ import annotations

import contextlib
import io
import json
import math
import pathlib

import pytest
from conftest import check_rate
from scipy import stats

from configs import reproduce
from jaxdef import experiments
from jaxdef.experiments import _reproduce
from jaxdef.reports import paper
from jaxdef.reports import reproduction
from jaxdef.reports import tables
from jaxdef.reports import verdicts


def _rate(successes: int, denominator: int) -> dict:
  return verdicts.proportion(successes, denominator)


# ------------------------------------------------------------------ verdicts


def test_proportion_interval_is_clopper_pearson_from_scipy():
  record = _rate(7, 20)
  assert record["rate"] == pytest.approx(0.35)
  # Exact binomial interval, independently: the beta quantiles.
  assert record["ci_low"] == pytest.approx(stats.beta.ppf(0.025, 7, 14), abs=1e-9)
  assert record["ci_high"] == pytest.approx(stats.beta.ppf(0.975, 8, 13), abs=1e-9)


@pytest.mark.parametrize("higher, lower, expected", [
    ((90, 100), (20, 100), verdicts.REPRODUCED),
    ((12, 20), (10, 20), verdicts.SAME_NOT_SIGNIFICANT),
    ((20, 100), (90, 100), verdicts.OPPOSITE_SIGNIFICANT),
    ((10, 20), (12, 20), verdicts.OPPOSITE_NOT_SIGNIFICANT),
    ((5, 10), (10, 20), verdicts.NO_DIFFERENCE),
    ((5, 10), (0, 0), verdicts.NO_DATA),
])
def test_direction_verdicts(higher, lower, expected):
  assert verdicts.direction(_rate(*higher), _rate(*lower)) == expected


def test_no_gap_verdicts_name_the_reference():
  assert verdicts.no_gap(_rate(95, 100), _rate(90, 100), "EOT") == (
      "reproduced (no significant gap)")
  assert verdicts.no_gap(_rate(95, 100), _rate(20, 100), "EOT") == (
      "not reproduced (EOT significantly higher)")
  assert verdicts.no_gap(_rate(20, 100), _rate(95, 100), "EOT") == (
      "reproduced (significantly higher than EOT)")


@pytest.mark.parametrize("value, text", [(0.1, "0.1"), (0.001, "0.001"), (0.01, "0.01"),
                                         (0.1 / 255, "0.1/255"), (0.2 / 255, "0.2/255")])
def test_steps_print_as_the_poster_prints_them(value, text):
  assert reproduction._alpha(value) == text


def test_tally_counts_verdict_cells_only():
  lines = ["| a | reproduced |", "| b | same direction, not significant |",
           "reproduced outside a table", "| c | reproduced |"]
  assert reproduction.tally(lines) == {"reproduced": 2, "same direction, not significant": 1}


# ------------------------------------------------------------------ the config's scalings


@pytest.mark.parametrize("row", paper.TABLE1, ids=lambda row: row.defense)
def test_table1_budgets_fit_the_cap_and_keep_k_to_m(row):
  k, m = reproduce.scaled_budget(row.k, row.m)
  assert k * m <= reproduce.TABLE1_QUERY_CAP
  if row.k * row.m > reproduce.TABLE1_QUERY_CAP:
    # k : m kept up to rounding m to an integer.
    assert k / m == pytest.approx(row.k / row.m, rel=0.3)
    assert k * m >= 0.75 * reproduce.TABLE1_QUERY_CAP  # the largest that fits, nearly
  else:
    assert (k, m) == (row.k, row.m)


def test_table1_settings_scale_alpha_as_eps():
  published, ablation, equal = reproduce.table1_settings(1000, 30, 0.1, 1000, 0.001)
  assert (published["k"], published["m"]) == (200, 5)  # sqrt(1000 / 30000) of each
  assert published["alpha_255"] == pytest.approx(0.1 * 255 * 2)
  assert (ablation["k"], ablation["m"], ablation["alpha_255"]) == (1000, 1, 0.51)
  assert (equal["k"], equal["m"]) == (1000, 1)


def test_full_config_follows_the_paper_where_it_fits():
  config = reproduce.get_config()
  assert sorted(config.order) == sorted(config.parts.keys())
  assert config.parts.table1.data.num_images >= 200
  for name in config.order:
    part = config.parts[name]
    if name.startswith("kxm_"):
      assert part.data.num_images >= 200
      assert tuple(part.attack.alphas_255) == tuple(2 * a for a in paper.KXM_ALPHAS_255)
      assert set(part.attack.eots) <= set(paper.KXM_EOTS)
      assert set(part.attack.steps) <= set(paper.KXM_STEPS)
    if name.startswith("invariance_"):
      assert part.data.num_images >= 500
      assert (part.attack.steps, part.attack.eot) == (200, 1)  # APGD-200 without EOT
    if name.startswith("tables34_"):
      assert (part.attack.steps, part.attack.eots, part.attack.targeted) == ((100,), (20,),
                                                                              (True,))
      assert part.attack.alphas_255 == (2.0,)  # 1/255 at eps 8/255, scaled to 16/255
      sigma = next(iter(part.defenses.values())).sigma
      assert round(sigma, 2) in paper.TABLES34
  assert config.parts.theory.theory.sigma == config.parts.theory.theory.eps == 1.0


def test_dry_run_prices_every_part():
  config = reproduce.get_config()
  report = experiments.dry_run(config)
  assert list(report["parts"]) == list(config.order)
  assert report["parts"]["theory"]["image_gradients"] == 0
  kxm = config.parts.kxm_smoothing_025
  expected = 200 * sum(kxm.attack.eots) * max(kxm.attack.steps) * len(kxm.attack.alphas_255) * 2
  assert report["parts"]["kxm_smoothing_025"]["image_gradients"] == expected
  total = sum(part["image_gradients"] for part in report["parts"].values())
  assert report["image_gradients"] == total
  assert report["estimated_attack_minutes"] == pytest.approx(
      total / config.report.gradients_per_second / 60, abs=0.1)


def test_bad_reproduce_configs_are_refused_by_name():
  config = reproduce.get_config("tiny")
  config.order = tuple(config.order)[:-1]
  with pytest.raises(ValueError, match=r"config.order must name every part"):
    experiments.dry_run(config)
  config = reproduce.get_config("tiny")
  config.parts.theory.experiment = "nope"
  with pytest.raises(ValueError, match=r"config.parts.theory.experiment must be one of"):
    experiments.dry_run(config)
  config = reproduce.get_config("tiny")
  config.parts.table1.attack.stpes = 3
  with pytest.raises(ValueError, match=r"config.parts.table1: .*config.attack.stpes"):
    experiments.dry_run(config)
  with pytest.raises(ValueError, match="allowed: fashion, tiny"):
    reproduce.get_config("imagenet")


# ------------------------------------------------------------------ the tiny run, end to end


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("reproduce")
  config = reproduce.get_config("tiny")
  config.models_dir = str(root / "models")
  config.progress = False
  # One part at a time, in this process: the parts share its compiled
  # programs (less CPU time than two spawned processes each compiling their
  # own, and the suite's other worker keeps the second core busy). Parts run
  # at once are tested on theory parts below.
  config.parallel_parts = 1
  workdir = root / "run"
  experiments.run(config, workdir)
  return config, workdir


def test_tiny_run_writes_every_section(tiny_run):
  config, workdir = tiny_run
  text = (workdir / "REPRODUCTION.md").read_text()
  for title in reproduction.SECTION_TITLES:
    assert f"## {title}" in text
  parts = json.loads((workdir / "parts.json").read_text())
  assert sorted(parts) == sorted(config.order)
  assert all(entry["finished"] and entry["seconds"] >= 0 for entry in parts.values())
  assert "parts at a time" not in text  # one by one (parts at once: see below)
  # The theory rows are the paper's, and every linked figure was copied.
  assert "84.1% / 59.4%" in text and "71.1% / 70.4%" in text and "76.0% / 65.8%" in text
  for link in text.split("](")[1:]:
    target = workdir / link.split(")")[0]
    assert target.exists(), target


def _part(tiny_run, name):
  """(the part's experiment config, its folder) in the tiny run."""
  config, workdir = tiny_run
  return _reproduce.part_configs(config)[name], workdir / name


def _check_sanity(run, summary: str, pairs: set, votes: int) -> None:
  """Every attacked (model, defense) pair was sanity-checked first, at the run's votes."""
  sanity = json.loads((run / "sanity.json").read_text())
  assert {(r["model"], r["defense_label"]) for r in sanity} == pairs
  for record in sanity:
    assert record["num_votes"] == votes and record["random"] and record["finite_logits"]
    assert 0 <= record["vote_correct"] <= record["num_images"]
  assert "## Sanity check before attacking" in summary


def _invariance_records(run) -> list[dict]:
  """The study's cells in records/, without the fine-tuning epochs' cells (epochs.csv)."""
  records = [json.loads(p.read_text()) for p in sorted((run / "records").glob("*.json"))]
  return [r for r in records if "epoch" not in r]


@pytest.mark.parametrize("part", ["invariance_smoothing", "invariance_smoothing_eps8",
                                  "invariance_bart"])
def test_invariance_part_measures_every_strength_before_after_and_per_epoch(tiny_run, part):
  """Trained invariance end to end (BaRT included): fine-tuning, APGD, votes, epoch tracking."""
  import csv

  config, run = _part(tiny_run, part)
  records = _invariance_records(run)
  parameter = config.invariance.parameter
  modes = tuple(config.attack.targeted)
  expected = sorted(float(e[parameter]) for e in config.defenses.values())
  if part == "invariance_smoothing_eps8":
    assert len(expected) == 2  # the tiny run's invariance over two strengths
  assert len(records) == 2 * len(config.defenses) * len(modes)
  for role in ("before", "after"):
    for targeted in modes:
      assert sorted(r["strength"] for r in records
                    if r["role"] == role and r["targeted"] == targeted) == expected
  for record in records:
    check_rate(record)
    assert record["num_images"] == config.data.num_images
    assert record["num_votes"] == config.attack.votes
    assert record["steps"] == config.attack.steps and record["eot"] == 1
    assert record["gradient_computations"] == config.attack.steps
    assert record["vote_accuracy"] == pytest.approx(record["denominator"] / record["num_images"])
    assert record["robust_accuracy"] == pytest.approx(
        (record["denominator"] - record["successes"]) / record["num_images"])
    assert 0 <= record["invariance"] <= 1 and 0 <= record["clean_accuracy"] <= 1
    if record["role"] == "before":
      assert record["model"] == "base"
    else:
      assert record["model"] == f"finetuned_{record['defense']}"
  # The base model's clean accuracy is one number whatever the defense.
  assert len({r["clean_accuracy"] for r in records if r["role"] == "before"}) == 1
  # Robustness during fine-tuning: epoch 0 is the base model's cell, the last
  # epoch's checkpoint is the fine-tuned model measured with the same draws.
  assert config.invariance.track_epochs
  tracked = list(csv.DictReader((run / "epochs.csv").open()))
  epochs = int(next(iter(config.models.values())).finetune_epochs)
  assert len(tracked) == (epochs + 1) * len(config.defenses) * len(modes)
  measured = ("successes", "denominator", "invariance", "clean_accuracy", "vote_accuracy")
  for record in records:
    role_epoch = 0 if record["role"] == "before" else epochs
    row = next(r for r in tracked if r["defense"] == record["defense"]
               and (r["targeted"] == "True") == record["targeted"]
               and int(r["epoch"]) == role_epoch)
    for field in measured:
      assert float(row[field]) == pytest.approx(record[field]), (record["role"], field)
  # The last epoch's cell is the "after" record itself, not written twice.
  assert len(list((run / "records").glob("*.json"))) == len(records) + (epochs - 1) * len(
      config.defenses) * len(modes)
  for suffix in ("png", "pdf"):
    assert (run / "figures" / f"invariance_tradeoff.{suffix}").is_file()
    assert (run / "figures" / f"invariance_epochs.{suffix}").is_file()
  summary = (run / "summary.md").read_text()
  assert f"{parameter} sweep" in summary and "During fine-tuning" in summary
  assert not tables.unqualified_rates(summary)
  _check_sanity(run, summary, {(r["model"], r["defense"]) for r in records},
                config.attack.votes)


def test_a_rerun_of_a_finished_invariance_part_recomputes_nothing(tiny_run, monkeypatch):
  from jaxdef.experiments import _invariance

  config, run = _part(tiny_run, "invariance_smoothing")
  before = _invariance_records(run)
  monkeypatch.setattr(_invariance, "measure_cell", _must_not_run)
  again = experiments.run(config, run)["records"]
  # What the summary adds to the records ("success", "mode") is not on disk.
  strip = lambda rs: sorted(({k: v for k, v in r.items() if k not in ("success", "mode")}
                             for r in rs),
                            key=lambda r: (r["defense"], r["model"], r["targeted"]))
  assert strip(again) == strip(before)


def _must_not_run(*args, **kwargs):
  raise AssertionError("a finished cell was computed again")


def test_pictures_part_shows_one_budget_split_every_way(tiny_run):
  config, run = _part(tiny_run, "pictures")
  records = json.loads((run / "records.json").read_text())
  assert len(records) == len(config.attack.settings)
  budgets = {r["k"] * r["m"] for r in records}
  assert len(budgets) == 1 and {r["gradient_computations"] for r in records} == budgets
  assert {r["m"] for r in records} >= {1} and max(r["m"] for r in records) > 1
  eps = config.attack.eps_255 / 255
  for record in records:
    check_rate(record)
    assert record["num_images"] == config.data.num_images
    assert record["max_abs_delta"] <= eps + 1e-6
    assert 0 <= record["mean_abs_delta_over_eps"] <= 1 + 1e-6
    assert 0 <= record["saturated_fraction"] <= 1
  # One evaluation key for every setting: the same clean votes, the same denominator.
  assert len({r["denominator"] for r in records}) == 1
  (model,), (defense,) = config.models.keys(), config.defenses.keys()
  for suffix in ("png", "pdf"):
    assert (run / "figures" / f"perturbations__{model}__{defense}.{suffix}").is_file()
  summary = (run / "summary.md").read_text()
  assert not tables.unqualified_rates(summary)
  for k, m in config.attack.settings:
    assert f"k={k} x m={m}" in summary
  assert f"/{records[0]['denominator']}" in summary and "CI" in summary
  _check_sanity(run, summary, {(model, defense)}, config.attack.votes)


def test_second_run_enters_no_part_and_writes_the_same_report(tiny_run):
  config, workdir = tiny_run
  before = (workdir / "REPRODUCTION.md").read_text()
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    experiments.run(config, workdir)
  assert "[reproduce] part" not in output.getvalue()
  assert (workdir / "REPRODUCTION.md").read_text() == before


def test_a_changed_record_changes_the_report(tiny_run, tmp_path):
  config, workdir = tiny_run
  original = (workdir / "REPRODUCTION.md").read_text()
  records = sorted((workdir / "tables34_smoothing_025" / "records").glob("*.json"))
  before = next(p for p in records if json.loads(p.read_text())["model"] == "base")
  record = json.loads(before.read_text())
  changed = dict(record, successes=7, denominator=8, num_images=8, rate=7 / 8,
                 ci_low=verdicts.proportion(7, 8)["ci_low"],
                 ci_high=verdicts.proportion(7, 8)["ci_high"])
  copy = tmp_path / "run"
  import shutil

  shutil.copytree(workdir, copy)
  (copy / before.relative_to(workdir)).write_text(json.dumps(changed))
  text, _ = reproduction.build(config, copy, tmp_path / "figures", tmp_path)
  assert text != original.replace("reproduction_figures", "figures")
  assert "88% (7/8" in text  # the changed record's rate, with its counts
  assert math.isfinite(changed["ci_low"])


def test_part_configs_share_the_top_level_fields():
  config = reproduce.get_config("tiny")
  config.models_dir = "somewhere/models"
  config.seed = 3
  parts = _reproduce.part_configs(config)
  assert all(part.seed == 3 for part in parts.values())
  assert all(part.models_dir == "somewhere/models" for name, part in parts.items()
             if name != "theory")
  assert pathlib.Path("configs/reproduce.py").exists()


def test_which_defenses_the_finding_expects_eot_to_help():
  assert reproduction.is_more_random({"name": "randomized_smoothing", "sigma": 0.5})
  assert not reproduction.is_more_random({"name": "randomized_smoothing", "sigma": 0.25})
  assert reproduction.is_more_random({"name": "bart", "kappa": 4})
  assert not reproduction.is_more_random({"name": "bart", "kappa": 2})


def _theory_only(tmp_path):
  import ml_collections

  config = reproduce.get_config("tiny")
  config.parts = ml_collections.ConfigDict({"theory": config.parts.theory.to_dict()})
  config.order = ("theory",)
  config.models_dir = str(tmp_path / "models")
  config.progress = False
  return config


def test_a_finished_part_refuses_a_changed_config_and_a_new_part_runs(tmp_path):
  import ml_collections

  config = _theory_only(tmp_path)
  workdir = tmp_path / "run"
  experiments.run(config, workdir)
  # Sections of parts the plan does not have say so instead of failing.
  text = (workdir / "REPRODUCTION.md").read_text()
  assert "Not run" in text and "84.1% / 59.4%" in text
  changed = _theory_only(tmp_path)
  changed.parts.theory.theory.num_k = 5
  with pytest.raises(ValueError, match="holds results of a different config"):
    experiments.run(changed, workdir)
  grown = _theory_only(tmp_path)
  grown.parts.more_theory = ml_collections.ConfigDict(grown.parts.theory.to_dict())
  grown.order = ("theory", "more_theory")
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    experiments.run(grown, workdir)
  assert "part 2/2: more_theory" in output.getvalue()
  assert "part 1/2" not in output.getvalue()
  assert sorted(json.loads((workdir / "parts.json").read_text())) == ["more_theory", "theory"]


# ------------------------------------------------------------------ parts at once


@pytest.mark.parametrize("value", [0, -1])
def test_parallel_parts_must_be_a_whole_number(tmp_path, value):
  config = _theory_only(tmp_path)
  config.parallel_parts = value
  with pytest.raises(ValueError, match=r"config.parallel_parts must be a whole number >= 1"):
    experiments.run(config, tmp_path / "run")
  assert not (tmp_path / "run" / "parts.json").exists()


def test_parts_at_once_record_each_and_a_failed_part_is_raised_then_resumed(tmp_path):
  import ml_collections

  config = _theory_only(tmp_path)
  theory = config.parts.theory.to_dict()
  config.parts = ml_collections.ConfigDict({name: theory for name in ("theory", "two", "three")})
  config.order = ("theory", "two", "three")
  config.parallel_parts = 2
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "two").write_text("a file where the part's folder goes")
  with pytest.raises(OSError):
    experiments.run(config, workdir)
  parts = json.loads((workdir / "parts.json").read_text())
  assert "theory" in parts and "two" not in parts  # the parts that finished are kept
  (workdir / "two").unlink()
  experiments.run(config, workdir)
  parts = json.loads((workdir / "parts.json").read_text())
  assert sorted(parts) == ["theory", "three", "two"]
  assert all(entry["finished"] for entry in parts.values())
  text = (workdir / "REPRODUCTION.md").read_text()
  assert "84.1% / 59.4%" in text and "2 parts at a time" in text


def _hold_and_log(lock: str, log: str, name: str) -> None:
  import time

  from jaxdef import _files

  with _files.held_exclusively(lock):
    with open(log, "a") as out:
      out.write(f"{name} in\n")
      out.flush()
      time.sleep(0.5)
      out.write(f"{name} out\n")


def test_a_model_lock_lets_one_process_in_at_a_time(tmp_path):
  import multiprocessing

  context = multiprocessing.get_context("spawn")
  lock, log = tmp_path / "models" / "m.lock", tmp_path / "log"
  workers = [context.Process(target=_hold_and_log, args=(str(lock), str(log), name))
             for name in ("a", "b", "c")]
  for worker in workers:
    worker.start()
  for worker in workers:
    worker.join(timeout=120)
  assert [worker.exitcode for worker in workers] == [0, 0, 0]
  lines = log.read_text().split()
  pairs = list(zip(lines[0::4], lines[1::4], lines[2::4], lines[3::4]))
  assert len(lines) == 12 and all(a == c and b == "in" and d == "out" for a, b, c, d in pairs)


def test_the_report_times_parts_run_at_once_from_first_start_to_last_end():
  entries = [{"finished_at": "2026-12-05 10:30:00", "seconds": 1800.0},  # 10:00 -> 10:30
             {"finished_at": "2026-12-05 10:50:00", "seconds": 2400.0},  # 10:10 -> 10:50
             {"finished_at": "2026-12-05 11:00:00", "seconds": 600.0}]  # 10:50 -> 11:00
  assert reproduction._span_minutes(entries) == pytest.approx(60.0)
  assert reproduction._span_minutes([{"seconds": 3.0}]) is None  # an older parts.json
