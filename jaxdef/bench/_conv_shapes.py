"""Every distinct convolution of a model, timed alone: jaxdef against PyTorch.

For each distinct convolution shape a model runs (recorded by tracing it,
`jaxdef.models._conv.recording`), at the batch the attack rows use:

* the forward pass and the input gradient in both of jaxdef's formulations
  (XLA's convolution and unfold + matmul, `jaxdef.models._conv`), each a
  jitted call whose kernel is an argument, as it is inside an attack loop;
* the formulation `_conv.plan` picks, so a row shows whether the rule chose
  the faster one;
* PyTorch's ``conv2d`` and ``torch.nn.grad.conv2d_input`` (the kernel
  autograd runs for the input gradient) on the same arrays, NCHW.

Ratios are speeds, jaxdef / PyTorch (above 1: jaxdef is faster). Times are
the median of at most `repeats` calls after a compiling one.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdef.bench import _throughput
from jaxdef.models import _conv


def distinct_shapes(logits_fn: Callable[[jax.Array], jax.Array], image_shape: tuple[int, ...],
                    batch: int) -> list[tuple[_conv.ConvShape, int]]:
  """(shape, how often the model runs it) for every distinct convolution, in first-call order.

  Args:
    logits_fn: the model, images (B, H, W, C) -> logits, built on `_conv`.
    image_shape: (H, W, C) of one image.
    batch: B of the recorded shapes.
  """
  with _conv.recording() as shapes:
    # A fresh function: a cached trace of `logits_fn` itself would record nothing.
    jax.eval_shape(lambda x: logits_fn(x),
                   jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32))
  counts = collections.Counter(shapes)
  return [(shape, counts[shape]) for shape in dict.fromkeys(shapes)]


def _seconds(call: Callable[[], Any], repeats: int, budget_s: float,
             sync: Callable[[Any], Any]) -> float:
  return _throughput.time_calls(lambda _: call(), repeats=repeats, budget_s=budget_s,
                                sync=sync)["seconds"]


def _jax_seconds(shape: _conv.ConvShape, x: np.ndarray, kernel: np.ndarray, grad: np.ndarray,
                 repeats: int, budget_s: float) -> dict[str, float]:
  strides, padding = shape.strides, shape.padding
  x, kernel, grad = jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(grad)
  seconds = {}
  for formulation in _conv.FORMULATIONS:
    forward = jax.jit(lambda x, k, f=formulation: _conv.forward(x, k, strides, padding, f))
    backward = jax.jit(lambda g, k, f=formulation: _conv.input_gradient(
        g, k, x.shape, strides, padding, f))
    seconds[f"{formulation}_forward"] = _seconds(lambda: forward(x, kernel), repeats, budget_s,
                                                 jax.block_until_ready)
    seconds[f"{formulation}_gradient"] = _seconds(lambda: backward(grad, kernel), repeats,
                                                  budget_s, jax.block_until_ready)
  return seconds


def _torch_seconds(shape: _conv.ConvShape, x: np.ndarray, kernel: np.ndarray, grad: np.ndarray,
                   repeats: int, budget_s: float) -> dict[str, float] | None:
  from jaxdef.bench import _torch

  (top, bottom), (left, right) = shape.padding
  if top != bottom or left != right:
    return None  # torch's conv2d pads symmetrically
  torch = _torch.torch_module()
  to_torch = lambda a, order: torch.from_numpy(np.ascontiguousarray(a.transpose(order))).to(
      _torch.device())
  tx, tk, tg = to_torch(x, (0, 3, 1, 2)), to_torch(kernel, (3, 2, 0, 1)), to_torch(
      grad, (0, 3, 1, 2))
  options = {"stride": shape.strides, "padding": (top, left)}
  with torch.inference_mode():
    forward = lambda: torch.nn.functional.conv2d(tx, tk, **options)
    backward = lambda: torch.nn.grad.conv2d_input(tx.shape, tk, tg, **options)
    return {"torch_forward": _seconds(forward, repeats, budget_s, _torch.synchronize),
            "torch_gradient": _seconds(backward, repeats, budget_s, _torch.synchronize)}


@dataclasses.dataclass(frozen=True)
class _Arrays:
  x: np.ndarray
  kernel: np.ndarray
  grad: np.ndarray


def _arrays(shape: _conv.ConvShape, seed: int) -> _Arrays:
  rng = np.random.default_rng(seed)
  out = _conv.output_size(shape.x_shape, shape.kernel_shape, shape.strides, shape.padding)
  return _Arrays(rng.standard_normal(shape.x_shape, dtype=np.float32),
                 rng.standard_normal(shape.kernel_shape, dtype=np.float32),
                 rng.standard_normal((shape.x_shape[0], *out, shape.kernel_shape[3]),
                                     dtype=np.float32))


def measure(logits_fn: Callable[[jax.Array], jax.Array], image_shape: tuple[int, ...],
            batch: int, *, torch: bool, model_label: str, repeats: int = 5,
            budget_s: float = 2.0, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """One row per distinct convolution of the model (see the module docstring).

  Returns:
    Rows with the shape (``x_shape`` (B, H, W, C_in), ``kernel_shape``
    (KH, KW, C_in, C_out), ``strides``, ``padding``), ``count`` in the
    model, ``plan`` {"forward", "input_gradient"}, ``seconds`` per engine
    and pass, ``jaxdef_forward_s`` / ``jaxdef_gradient_s`` (the planned
    formulations), and with torch ``forward_vs_torch`` /
    ``gradient_vs_torch`` (speed ratios) and ``rule_picked_faster`` per pass.
  """
  rows = []
  for index, (shape, count) in enumerate(distinct_shapes(logits_fn, image_shape, batch)):
    arrays = _arrays(shape, index)
    chosen = _conv.plan(shape.x_shape, shape.kernel_shape, shape.strides, shape.padding)
    seconds = _jax_seconds(shape, arrays.x, arrays.kernel, arrays.grad, repeats, budget_s)
    if torch:
      seconds.update(_torch_seconds(shape, arrays.x, arrays.kernel, arrays.grad, repeats,
                                    budget_s) or {})
    row = {"model_label": model_label, "x_shape": list(shape.x_shape),
           "kernel_shape": list(shape.kernel_shape), "strides": list(shape.strides),
           "padding": [list(p) for p in shape.padding], "count": count,
           "plan": {"forward": chosen.forward, "input_gradient": chosen.input_gradient},
           "seconds": seconds,
           "jaxdef_forward_s": seconds[f"{chosen.forward}_forward"],
           "jaxdef_gradient_s": seconds[f"{chosen.input_gradient}_gradient"]}
    for kind, picked in (("forward", chosen.forward), ("gradient", chosen.input_gradient)):
      best = min(_conv.FORMULATIONS, key=lambda f, kind=kind: seconds[f"{f}_{kind}"])
      row[f"rule_picked_faster_{kind}"] = picked == best
      if f"torch_{kind}" in seconds:
        row[f"{kind}_vs_torch"] = seconds[f"torch_{kind}"] / row[f"jaxdef_{kind}_s"]
    rows.append(row)
    log(f"conv {model_label} {describe(row)}: forward {1e3 * row['jaxdef_forward_s']:.2f} ms"
        f" ({chosen.forward}), input gradient {1e3 * row['jaxdef_gradient_s']:.2f} ms "
        f"({chosen.input_gradient})" + (
            f"; vs PyTorch {row['forward_vs_torch']:.2f}x / {row['gradient_vs_torch']:.2f}x"
            if "forward_vs_torch" in row else ""))
  return rows


def describe(row: dict[str, Any]) -> str:
  """'B x H x W x C_in -> C_out, KxK stride S' of a row."""
  batch, height, width, c_in = row["x_shape"]
  kh, kw, _, c_out = row["kernel_shape"]
  return (f"{batch} x {height} x {width} x {c_in} -> {c_out}, {kh}x{kw} stride "
          f"{row['strides'][0]}" + ("" if row["strides"][0] == row["strides"][1] else
                                    f"x{row['strides'][1]}"))


def _ms(seconds: float | None) -> str:
  return "-" if seconds is None else f"{1e3 * seconds:.2f}"


def _ratio(value: float | None) -> str:
  return "-" if value is None else f"**{value:.2f}x**" if value < 0.5 else f"{value:.2f}x"


def markdown(rows: list[dict[str, Any]]) -> str:
  """A table per model: the planned formulation, its time and PyTorch's, and both formulations."""
  lines = []
  for label in dict.fromkeys(row["model_label"] for row in rows):
    mine = [row for row in rows if row["model_label"] == label]
    worst = [row[key] for row in mine for key in ("forward_vs_torch", "gradient_vs_torch")
             if key in row]
    lines += [f"**{label}** ({len(mine)} distinct convolutions"
              + (f"; slowest against PyTorch: {min(worst):.2f}x" if worst else "") + ")", "",
              "| convolution (B x H x W x C_in -> C_out) | in model | forward: plan | ms | "
              "PyTorch ms | speed vs PyTorch | input gradient: plan | ms | PyTorch ms | "
              "speed vs PyTorch | XLA conv fwd / grad ms | unfold fwd / grad ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in mine:
      seconds, plan = row["seconds"], row["plan"]
      mark = lambda kind: "" if row[f"rule_picked_faster_{kind}"] else " (slower)"
      lines.append(
          f"| {describe(row)} | {row['count']} | {plan['forward']}{mark('forward')} | "
          f"{_ms(row['jaxdef_forward_s'])} | {_ms(seconds.get('torch_forward'))} | "
          f"{_ratio(row.get('forward_vs_torch'))} | {plan['input_gradient']}"
          f"{mark('gradient')} | {_ms(row['jaxdef_gradient_s'])} | "
          f"{_ms(seconds.get('torch_gradient'))} | {_ratio(row.get('gradient_vs_torch'))} | "
          f"{_ms(seconds['xla_forward'])} / {_ms(seconds['xla_gradient'])} | "
          f"{_ms(seconds['unfold_forward'])} / {_ms(seconds['unfold_gradient'])} |")
    lines.append("")
  return "\n".join(lines)
