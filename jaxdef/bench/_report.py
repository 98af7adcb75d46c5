"""bench.md: the benchmark's results as markdown tables."""

from __future__ import annotations

from typing import Any

from jaxdef.bench import _bart_rates
from jaxdef.bench import _conv_shapes
from jaxdef.reports import tables


def _fmt(value: Any, digits: int = 3) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    if value != value:  # NaN
      return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
  return str(value)


def _peak_labels(rows: list[dict]) -> list[str]:
  labels = []
  for row in rows:
    for key in row:
      if key.startswith("fraction_of_") and key[len("fraction_of_"):] not in labels:
        labels.append(key[len("fraction_of_"):])
  return labels


def _paired(rows: list[dict], kind: str) -> list[tuple[dict, dict | None]]:
  """(jaxdef row, its PyTorch twin or None) for every jaxdef row of `kind`."""
  torch_rows = {row["pair_key"]: row for row in rows
                if row["engine"] == "pytorch" and row["kind"] == kind}
  return [(row, torch_rows.get(row["pair_key"])) for row in rows
          if row["engine"] == "jaxdef" and row["kind"] == kind]


def eot_text(row: dict) -> str:
  """A pgd row's EOT m, with its chunks when the draws were not evaluated all at once."""
  chunk = row.get("eot_chunk", row["eot"])
  return f"{row['eot']} (chunks of {chunk})" if chunk < row["eot"] else str(row["eot"])


def _table(rows: list[dict], kind: str) -> str:
  pgd = kind == "pgd"
  rate = "image_gradients_per_second" if pgd else "forward_passes_per_second"
  flops = "flops_per_image_gradient" if pgd else "flops_per_forward"
  peaks = _peak_labels(rows)
  header = (["model", "dtype", "defense"] + (["EOT m", "batch x steps"] if pgd else
                                             ["batch x votes"])
            + ["jaxdef /s", "PyTorch /s", "jaxdef / PyTorch",
               "MFLOP each" if pgd else "MFLOP per pass", "GFLOP/s"]
            + [f"% of {p}" for p in peaks] + ["compile s (jaxdef)", "timed calls"])
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  for ours, theirs in _paired(rows, kind):
    size = (f"{ours['batch']} x {ours['steps']}" if pgd else
            f"{ours['batch']} x {ours['votes']}"
            + (f" ({ours['vote_chunk']} at a time)" if "vote_chunk" in ours else ""))
    cells = [ours["model_label"], ours["dtype"], ours["defense"]]
    cells += [eot_text(ours), size] if pgd else [size]
    cells += [_fmt(ours[rate]), _fmt(theirs[rate]) if theirs else "-",
              _fmt(ours.get("jaxdef_over_pytorch")),
              (_fmt(ours[flops] / 1e6) + (" (lowered)" if ours.get("flops_source") == "lowered"
                                          else "")) if ours.get(flops) else "-",
              _fmt(ours.get("achieved_gflops"))]
    cells += [_fmt(100 * ours[f"fraction_of_{p}"], 2) if f"fraction_of_{p}" in ours else "-"
              for p in peaks]
    cells += [_fmt(ours["compile_s"]), str(ours["timed_calls"])]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _environment(env: dict, peaks: dict) -> list[str]:
  lines = [f"- date: {env['date']}; device: {env['device_kind']} ({env['backend']}, "
           f"{env['device_count']} device(s))",
           f"- CPU: {env['cpu_model']}, {env['cpu_cores']} cores ({env['cpu_logical_usable']} "
           f"usable); 1-minute load average at the start {_fmt(env.get('load_average_1min'))}"
           f", at the end {_fmt(env.get('load_average_1min_end'))}; OMP_WAIT_POLICY "
           f"{env.get('omp_wait_policy')}",
           f"- jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, numpy "
           f"{env['numpy']}, python {env['python']}"]
  if env.get("torch"):
    lines.append(f"- torch {env['torch']} ({env.get('torch_threads')} threads, device "
                 f"{env.get('torch_device')}), torchvision {env.get('torchvision') or 'missing'}, "
                 f"torchattacks {env.get('torchattacks') or 'missing'}; XLA's CPU thread pool "
                 f"has {env.get('jax_cpu_threads')} threads")
  for label, peak in peaks.items():
    lines.append(f"- peak `{label}`: {_fmt(peak['gflops'])} GFLOP/s ({peak['how']})")
  return lines


def _study(study: dict) -> list[str]:
  if study.get("skipped"):
    return [f"Skipped: {study['skipped']}"]
  ref, ours = study["reference_jax"], study["jaxdef"]
  lines = [f"The embedded default's sweep ({study['cells']} cells: {study['grid']}), "
           f"{study['num_images']} images, {study['votes']} votes; models: {study['models']}.",
           "",
           "| way | seconds | image-gradients | defended forward passes | single-draw calls |",
           "|---|---|---|---|---|",
           f"| reference way, JAX (attack per k, EOT loop, full votes) | {_fmt(ref['seconds'])} | "
           f"{ref['image_gradients']:,} | {ref['forward_passes']:,} | {ref['calls']:,} |"]
  torch = study.get("reference_torch") or {}
  if torch.get("seconds") is not None:
    how = ("" if not torch["extrapolated"] else
           f" (measured on {torch['units_run']} of {study['units']} units in "
           f"{_fmt(torch['seconds_measured'])} s, extrapolated per m)")
    lines.append(f"| reference way, PyTorch{how} | {_fmt(torch['seconds'])} | "
                 f"{torch['image_gradients_all']:,} | {torch['forward_passes_all']:,} | - |")
  lines.append(f"| jaxdef (`run_sweep`, {ours['settings_text']}), first run | "
               f"{_fmt(ours['seconds'])} | {ours['image_gradients']:,} | "
               f"{ours['forward_passes']:,} | - |")
  again = study.get("jaxdef_again")
  if again:
    lines.append(f"| jaxdef again, compiled programs reused (a rerun with the persistent "
                 f"compilation cache) | {_fmt(again['seconds'])} | same | same | - |")
  lines += ["", f"- reference way (JAX) / jaxdef: **{_fmt(study['ratio_reference_jax'])}x** "
            f"first run" + (f", {_fmt(study['ratio_reference_jax_again'])}x again" if again
                            else "")]
  if study.get("ratio_reference_torch") is not None:
    lines.append(f"- reference way (PyTorch) / jaxdef: **{_fmt(study['ratio_reference_torch'])}x**"
                 f" first run" + (f", {_fmt(study['ratio_reference_torch_again'])}x again"
                                  if again else ""))
  if again and not again["same_counts"]:
    lines.append("- WARNING: the second jaxdef run's success counts differ from the first's")
  if torch.get("skipped"):
    lines.append(f"- PyTorch reference way skipped: {torch['skipped']}")
  agree = study["success_counts"]
  lines.append(f"- success counts (successes, initially correct) identical in "
               f"{agree['cells_identical']} of {agree['cells_compared']} cells "
               f"({agree['expected']})")
  for mismatch in agree["mismatches"][:10]:
    lines.append(f"  - {mismatch['unit']} k={mismatch['k']}: jaxdef {mismatch['jaxdef']}, "
                 f"reference {mismatch['reference']}")
  return lines


def _notes(result: dict[str, Any]) -> list[str]:
  if not result.get("notes"):
    return []
  return ["## Notes", "", *[f"- {note}" for note in result["notes"]], ""]


def markdown(result: dict[str, Any]) -> str:
  """The whole report: environment, attack and vote tables, whole study, notes."""
  rows = result["results"]
  lines = ["# jaxdef benchmark", "", f"Command: `{result['command']}`", "",
           *_environment(result["environment"], result["peaks"]), ""]
  if result.get("bart_rates"):
    lines += ["## BaRT against the cost of its transforms", "",
              _bart_rates.markdown(result["bart_rates"]), ""]
  if not rows and not result.get("study"):  # --bart_rates=only
    return "\n".join(lines + _notes(result))
  lines += ["## Attack steps: PGD with EOT-m, image-gradients per second", "",
            "An EOT-m step counts m image-gradients per image. Compilation is excluded (first "
            "call minus the median steady call, reported separately). PyTorch: the same "
            "architecture and weights, torchattacks `EOTPGD` against randomized smoothing "
            "written in torch. FLOPs: XLA's cost analysis of one single-draw gradient of the "
            "compiled program (of the lowered one where marked).", "",
            _table(rows, "pgd"), "",
            "## Votes: defended forward passes per second", "",
            "jaxdef: `StochasticClassifier.predict`; PyTorch: chunks of draws stacked into one "
            "batch under `torch.inference_mode`.", "", _table(rows, "vote"), ""]
  if result.get("conv_shapes"):
    lines += ["## Convolutions one by one: jaxdef against PyTorch", "",
              "Every distinct convolution of each ImageNet ResNet, alone, at the attack rows' "
              "batch: the forward pass and the input gradient in the formulation jaxdef plans "
              "(`jaxdef/models/_conv.py`), PyTorch's `conv2d` and `conv2d_input` on the same "
              "arrays, and both jaxdef formulations (XLA's convolution; unfold + matmul). Speed "
              "vs PyTorch above 1: jaxdef is faster; below 0.5 in bold; \"(slower)\": the "
              "other formulation was faster here. Median ms after a compiling call.", "",
              _conv_shapes.markdown(result["conv_shapes"])]
  lines += ["## Whole study: the default's k x m sweep, reference way vs jaxdef", "",
            *_study(result.get("study") or {"skipped": "not run"}), ""]
  lines += _notes(result)
  lines += ["Raw rows (bench.json):", "",
            tables.markdown(rows, [
                ("engine", "engine"), ("model_label", "model"), ("dtype", "dtype"),
                ("defense", "defense"), ("kind", "kind"), ("batch", "batch"),
                ("steps", "steps"), ("eot", "EOT m"), ("eot_chunk", "EOT chunk"),
                ("votes", "votes"), ("vote_chunk", "vote chunk"),
                ("image_gradients_per_second", "image-gradients/s"),
                ("forward_passes_per_second", "forward passes/s"), ("seconds", "s per call"),
                ("compile_s", "compile s")]), ""]
  return "\n".join(lines)
