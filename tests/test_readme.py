"""The README's Python examples run as written.

The example that needs the user's own ImageNet folder and weights runs on
stand-ins made here: a randomly initialised torchvision ResNet-50 saved as
``resnet50.pth`` and a two-synset folder of JPEGs.
"""

import contextlib
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
  assert len(BLOCKS) >= 4


def _imagenet_stand_ins(root: pathlib.Path) -> None:
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from PIL import Image

  torch.save(torchvision.models.resnet50().state_dict(), root / "resnet50.pth")
  rng = np.random.default_rng(0)
  for synset in ("n01440764", "n03888257"):  # tench, parachute
    folder = root / "val" / synset
    folder.mkdir(parents=True)
    for i in range(2):
      pixels = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_{i}.JPEG")


def _small_audit(code: str, root: pathlib.Path) -> str:
  """The audit example on a stand-in for the main job's model, 8 images, a tiny budget."""
  import jax

  import jaxdef as jd

  path = "runs/models/fashion_small_resnet_w8-16-32_e3_b256_lr0.003/best.msgpack"
  assert path in code
  _, variables = jd.models.small_resnet(10, key=jax.random.key(0), widths=(8, 16, 32))
  jd.models.save_variables(root / "model.msgpack", variables)
  tiny = ('jd.auditing.Budget("tiny", queries=4, eots=(1, 2), alpha_fractions=(0.25,), '
          'votes=3, draws=3)')
  return (code.replace(path, str(root / "model.msgpack"))
          .replace("images[:100], labels[:100]", "images[:8], labels[:8]")
          .replace('budget="quick"', f"budget={tiny}")
          .replace('"runs/audit_example"', repr(str(root / "audit"))))


@contextlib.contextmanager
def _registry_restored():
  """The README registers its own defense ("posterize"): later tests must not see it."""
  from jaxdef.defenses import _core

  saved = dict(_core._REGISTRY)
  try:
    yield
  finally:
    _core._REGISTRY.clear()
    _core._REGISTRY.update(saved)


def test_the_registering_example_leaves_the_registry_as_it_was():
  import jaxdef as jd

  [block] = [code for code in BLOCKS if "jd.defenses.register(" in code]
  before = jd.defenses.available()
  with _registry_restored():
    exec(compile(block, "README.md register block", "exec"), {})
    assert "posterize" in jd.defenses.available()  # the example did register it
  assert jd.defenses.available() == before


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys, tmp_path, monkeypatch):
  code = BLOCKS[index]
  if "resnet50.pth" in code:
    _imagenet_stand_ins(tmp_path)
    code = (code.replace("/data/imagenet/val", str(tmp_path / "val"))
            .replace("size=1000", "size=3").replace("num_workers=8", "num_workers=2"))
    monkeypatch.chdir(tmp_path)
  if "jd.audit(" in code:
    code = _small_audit(code, tmp_path)
  namespace = {}
  with _registry_restored():
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
  printed = capsys.readouterr().out
  if "jd.attacks.evaluate" in code:
    assert "gradient computations per image" in printed and "500 votes" in printed
  if "jd.audit(" in code:
    from jaxdef.reports import tables

    assert printed.startswith("# Audit of my_defense()") and "## Verdicts" in printed
    assert tables.unqualified_rates(printed) == []
  if "resnet50.pth" in code:
    assert 0 <= namespace["correct"] <= 3 and (tmp_path / "resnet50.msgpack").is_file()
