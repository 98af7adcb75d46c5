"""Files jaxdef reads are data: a file carrying pickled code is refused, and the code never runs.

Each loader gets a crafted pickle whose unpickling would create a marker
file (standing in for arbitrary code); the loader must fail with an error
naming the file (or, for a sweep record, warn and recompute), and the
marker must not exist afterwards. `.pth` files: tests/test_models_convert.py
(`test_pickled_code_is_refused`, through torch.load(weights_only=True)).
"""

import pathlib
import pickle

import pytest

from jaxdef import models
from jaxdef.experiments import _sweep
from jaxdef.train import _checkpoint


class _TouchOnUnpickle:
  """Unpickling this object creates a file: stands in for arbitrary code."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def crafted(tmp_path):
  """(write(path) -> path, marker): writes the pickle at path; marker proves execution."""
  marker = tmp_path / "code_ran"
  payload = pickle.dumps({"params": _TouchOnUnpickle(marker)})

  def write(path):
    path.write_bytes(payload)
    return path

  # The payload is live: unpickling it here would create the marker.
  assert not marker.exists()
  return write, marker


def test_variables_file_with_pickled_code_is_refused(crafted, tmp_path):
  write, marker = crafted
  path = write(tmp_path / "model.msgpack")
  with pytest.raises(ValueError, match="model.msgpack"):
    models.load_variables(path)
  assert not marker.exists()


def test_training_checkpoint_with_pickled_code_is_refused(crafted, tmp_path):
  write, marker = crafted
  path = write(_checkpoint.epoch_path(tmp_path, 1))
  with pytest.raises(ValueError, match="epoch_001"):
    _checkpoint.load_checkpoint(path)
  assert not marker.exists()


def test_sweep_record_with_pickled_code_is_recomputed_not_trusted(crafted, tmp_path):
  write, marker = crafted
  path = write(tmp_path / "cell.json")
  with pytest.warns(RuntimeWarning, match="cell.json: unreadable or truncated record"):
    assert _sweep.read_cell(path) is None
  assert not marker.exists()


def test_the_payload_does_run_when_unpickled(crafted, tmp_path):
  """The control: the crafted file really would run code under pickle.load."""
  write, marker = crafted
  path = write(tmp_path / "control.pkl")
  with open(path, "rb") as f:
    pickle.load(f)
  assert marker.exists()
