"""Bad input to experiments: full disks, unusable workdirs, misspelt names, unknown fields."""

import errno
import os
import pathlib

import pytest

from configs import kxm_sweep
from jaxdef import _files
from jaxdef import experiments
from jaxdef.experiments import _records
from jaxdef.experiments import _sources

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_full_disk_keeps_the_previous_file_and_names_the_path(tmp_path, monkeypatch):
  record = tmp_path / "records" / "cell.json"
  _files.write_json(record, {"successes": 3})
  before = record.read_bytes()

  def no_space(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "fsync", no_space)
  with pytest.raises(OSError, match=r"cannot write .*cell.json \(No space left on device\)") as e:
    _files.write_json(record, {"successes": 4})
  assert e.value.errno == errno.ENOSPC
  assert record.read_bytes() == before
  assert sorted(p.name for p in record.parent.iterdir()) == ["cell.json"]  # no temp file left


def test_workdir_that_cannot_be_created_is_named(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  config = kxm_sweep.get_config("tiny")
  with pytest.raises(OSError, match=r"workdir=.*a_file/run: cannot create the folder"):
    _records.start_run(config, blocker / "run")
  assert blocker.read_text() == "not a folder"


def test_unwritable_workdir_is_refused(tmp_path, monkeypatch):
  # Tests may run as root, for whom every folder is writable: simulate it.
  monkeypatch.setattr(os, "access", lambda path, mode: False)
  with pytest.raises(OSError, match=r"workdir=.*/run: the folder is not writable"):
    _records.start_run(kxm_sweep.get_config("tiny"), tmp_path / "run")


def test_misspelt_defense_name_is_named_with_the_choices():
  config = kxm_sweep.get_config("tiny")
  config.defenses.smoothing_025.name = "randomised_smoothing"
  with pytest.raises(ValueError, match="randomised_smoothing") as e:
    _sources.build_defenses(config.defenses)
  assert "randomized_smoothing" in str(e.value)  # the allowed names are listed
  with pytest.raises(ValueError, match="randomised_smoothing"):
    experiments.dry_run(config)


@pytest.mark.parametrize("name, variants", [
    ("default", (None, "tiny")), ("kxm_sweep", (None, "fashion", "tiny")),
    ("lack_of_randomness", (None, "fashion", "tiny")),
    ("invariance_smoothing", (None, "fashion", "tiny")),
    ("invariance_bart", (None, "fashion", "tiny")), ("finetune", (None, "tiny")),
    ("theory", (None, "tiny")), ("perturbation_pictures", (None, "imagenet", "tiny"))])
def test_every_shipped_config_passes_the_field_check(name, variants):
  import importlib

  from jaxdef.experiments import _schema

  module = importlib.import_module(f"configs.{name}")
  for variant in variants:
    _schema.check_fields(module.get_config(variant))


def test_a_field_no_experiment_reads_is_refused_before_anything_is_written(tmp_path):
  config = kxm_sweep.get_config("tiny")
  config.attack.stpes = (1, 2)  # a typo of steps, added in Python (or a config file)
  config.extra_section = 3
  with pytest.raises(ValueError, match=r"no field config\.extra_section .*config\.attack\.stpes "
                                       r"\(known: .*steps"):
    experiments.run(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()
  with pytest.raises(ValueError, match="stpes"):
    experiments.dry_run(config)
