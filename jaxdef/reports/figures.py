"""Figures of defenses and results (matplotlib, written as PNG and PDF)."""

from __future__ import annotations

import functools
import os
import pathlib

import numpy as np


@functools.cache
def pyplot():
  """matplotlib.pyplot on the Agg backend (files only; no display on servers and CI).

  Imported on first use: importing it costs about 0.3 s of every command's
  start, and most commands that end early (a mistake, a dry run) draw nothing.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def show_image(axis, image: np.ndarray) -> None:
  """Draws one HWC image in [0, 1] on `axis` (grayscale for C = 1), without ticks."""
  if image.shape[-1] == 1:
    axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
  else:
    axis.imshow(np.clip(image, 0, 1))
  axis.set_xticks([])
  axis.set_yticks([])


def save(figure, path: str | os.PathLike) -> pathlib.Path:
  """Saves `figure` as path.png and path.pdf; returns the PNG's path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path.with_suffix(".png"), dpi=120, bbox_inches="tight")
  figure.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
  pyplot().close(figure)
  return path.with_suffix(".png")


def defense_samples(pictures: dict[str, np.ndarray], clean: np.ndarray, path,
                    per_defense: int = 6) -> pathlib.Path:
  """A grid: one row per defense, the clean image then `per_defense` draws.

  Args:
    pictures: label -> draws of one image, shape (n, H, W, C) in [0, 1].
    clean: the undefended image, shape (H, W, C).
    path: output path without suffix.
    per_defense: draws shown per row.
  """
  rows = len(pictures)
  columns = per_defense + 1
  figure, axes = pyplot().subplots(rows, columns, figsize=(1.3 * columns, 1.3 * rows),
                                   squeeze=False)
  for row, (label, draws) in enumerate(pictures.items()):
    show_image(axes[row, 0], clean)
    axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    for column in range(1, columns):
      if column - 1 < len(draws):
        show_image(axes[row, column], draws[column - 1])
      else:
        axes[row, column].axis("off")
  axes[0, 0].set_title("clean", fontsize=8)
  for column in range(1, columns):
    axes[0, column].set_title(f"draw {column}", fontsize=8)
  figure.suptitle("Defense draws (same image, independent keys)", fontsize=9)
  return save(figure, path)


def _grid(records, rows_key: str, columns_key: str, value_key: str = "rate"):
  rows = sorted({r[rows_key] for r in records})
  columns = sorted({r[columns_key] for r in records})
  grid = np.full((len(rows), len(columns)), np.nan)
  for r in records:
    grid[rows.index(r[rows_key]), columns.index(r[columns_key])] = r[value_key]
  return rows, columns, grid


def success_heatmap(records, path, title: str) -> pathlib.Path:
  """k x m heat map of attack success (best alpha per cell), rates in percent.

  Args:
    records: best-alpha cell records of one (model, defense, target mode),
      each with "k", "m", "rate", "successes", "denominator".
    path: output path without suffix.
    title: figure title.
  """
  ks, ms, grid = _grid(records, "k", "m")
  figure, axis = pyplot().subplots(figsize=(1.2 + 0.9 * len(ms), 1.0 + 0.45 * len(ks)))
  image = axis.imshow(100 * grid, cmap="viridis", vmin=0, vmax=100, aspect="auto",
                      origin="lower")
  for i in range(len(ks)):
    for j in range(len(ms)):
      if np.isfinite(grid[i, j]):
        axis.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=8,
                  color="white" if grid[i, j] < 0.6 else "black")
  axis.set_xticks(range(len(ms)), [str(m) for m in ms])
  axis.set_yticks(range(len(ks)), [str(k) for k in ks])
  axis.set_xlabel("EOT samples m")
  axis.set_ylabel("PGD steps k")
  axis.set_title(title, fontsize=9)
  figure.colorbar(image, ax=axis, label="attack success (%)")
  return save(figure, path)


def success_curves(records, path, title: str) -> pathlib.Path:
  """Success vs. PGD steps and vs. gradient computations, one line per m.

  The two panels are the study's two views of the same runs: at equal
  steps more EOT samples help; at equal gradient computations (k x m) they
  may not. Error bars are the 95% Clopper-Pearson intervals.
  """
  figure, axes = pyplot().subplots(1, 2, figsize=(9, 3.4), sharey=True)
  for m in sorted({r["m"] for r in records}):
    line = sorted((r for r in records if r["m"] == m), key=lambda r: r["k"])
    rate = np.array([100 * r["rate"] for r in line])
    error = np.array([[100 * (r["rate"] - r["ci_low"]) for r in line],
                      [100 * (r["ci_high"] - r["rate"]) for r in line]])
    for axis, x in ((axes[0], [r["k"] for r in line]),
                    (axes[1], [r["gradient_computations"] for r in line])):
      axis.errorbar(x, rate, yerr=error, marker="o", markersize=3, capsize=2, label=f"m = {m}")
  axes[0].set_xlabel("PGD steps k")
  axes[1].set_xlabel("gradient computations k x m")
  axes[0].set_ylabel("attack success (%)")
  for axis, key in ((axes[0], "k"), (axes[1], "gradient_computations")):
    axis.set_xscale("log")
    ticks = sorted({r[key] for r in records})
    axis.set_xticks(ticks, [str(t) for t in ticks])  # the grid's own values, not 2x10^1
    axis.minorticks_off()
    axis.grid(alpha=0.3)
  axes[1].legend(fontsize=8)
  figure.suptitle(title, fontsize=9)
  return save(figure, path)


def eot_comparison_bars(records, path, title: str) -> pathlib.Path:
  """Grouped bars: success of published EOT vs. EOT-1 at the largest equal budget.

  One group per defense (record key "defense"), two bars: the "published"
  setting (m draws per step) and "eot1" (one draw per step, k x m steps),
  both at the defense's largest budget k x m. Error bars are the 95%
  Clopper-Pearson intervals; a cell with no initially correct image (NaN
  rate) is drawn empty and marked "n/a".

  Args:
    records: cell records with "defense", "setting", "budget", "m", "rate",
      "ci_low", "ci_high".
    path: output path without suffix.
    title: figure title.
  """
  defenses = sorted({r["defense"] for r in records})
  figure, axis = pyplot().subplots(figsize=(1.6 + 1.3 * len(defenses), 3.4))
  width = 0.38
  for offset, setting, label in ((-width / 2, "published", "published EOT"),
                                 (width / 2, "eot1", "EOT-1, same budget")):
    heights, errors, notes = [], [[], []], []
    for defense in defenses:
      cells = [r for r in records if r["defense"] == defense and r["setting"] == setting]
      top = max(cells, key=lambda r: r["budget"]) if cells else None
      rate = np.nan if top is None else top["rate"]
      finite = np.isfinite(rate)
      heights.append(100 * rate if finite else 0.0)
      errors[0].append(100 * (rate - top["ci_low"]) if finite else 0.0)
      errors[1].append(100 * (top["ci_high"] - rate) if finite else 0.0)
      notes.append("n/a" if not finite else (f"m={top['m']}" if setting == "published"
                                              else f"k={top['k']}"))
    x = np.arange(len(defenses)) + offset
    bars = axis.bar(x, heights, width, yerr=np.array(errors), capsize=3, label=label)
    for bar, note in zip(bars, notes):
      axis.text(bar.get_x() + bar.get_width() / 2, 1, note, ha="center", va="bottom",
                fontsize=6, rotation=90)
  axis.set_xticks(range(len(defenses)), defenses, fontsize=8)
  axis.set_ylim(0, 105)
  axis.set_ylabel("attack success (%)")
  axis.legend(fontsize=8)
  axis.grid(axis="y", alpha=0.3)
  axis.set_title(title, fontsize=9)
  return save(figure, path)


def theory_curves(rows, path, title: str) -> pathlib.Path:
  """Benign accuracy, robust accuracy and invariance R(k) over the threshold k.

  Robust accuracy is the paper's, conditional: Pr[still correct | correct].

  Args:
    rows: `jaxdef.theory.table` rows (with or without the vote columns).
    path: output path without suffix.
    title: figure title.
  """
  ks = [r["k"] for r in rows]
  figure, axis = pyplot().subplots(figsize=(5.5, 3.4))
  for key, label, style in (("accuracy", "benign accuracy", "-"),
                            ("robust_accuracy", "robust accuracy (given correct)", "-"),
                            ("invariance", "invariance R(k)", "-"),
                            ("vote_accuracy", "benign accuracy (vote)", "--"),
                            ("vote_robust_accuracy", "robust accuracy (vote)", "--")):
    if key in rows[0]:
      axis.plot(ks, [r[key] for r in rows], style, label=label)
  axis.axvline(1.0, color="gray", lw=0.8, ls=":")
  axis.set_xlabel("threshold k (k = 1: trained invariance)")
  axis.set_ylabel("rate")
  axis.grid(alpha=0.3)
  axis.legend(fontsize=7)
  axis.set_title(title, fontsize=9)
  return save(figure, path)


# The rates of the sigma and vote curves: one colour each; one line style per k.
_THEORY_RATES = (("accuracy", "benign accuracy"),
                 ("robust_accuracy", "robust accuracy (given correct)"),
                 ("invariance", "invariance R"))


def _theory_lines(axis, rows, x_key: str) -> None:
  """One line per (rate, k) of `rows` over `x_key`: colour = rate, style = k."""
  styles = ("-", "--", ":", "-.")
  for index, k in enumerate(sorted({r["k"] for r in rows})):
    line = sorted((r for r in rows if r["k"] == k), key=lambda r: r[x_key])
    name = {0.0: "defended", 1.0: "trained invariance"}.get(k, "threshold")
    for colour, (key, label) in enumerate(_THEORY_RATES):
      axis.plot([r[x_key] for r in line], [r[key] for r in line], styles[index % len(styles)],
                color=f"C{colour}", label=f"{label}, k = {k:g} ({name})")
  axis.set_ylabel("rate")
  axis.grid(alpha=0.3)
  # Outside the axes: six lines span most of the plot's height.
  axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _theory_figure(rows, path, title: str, x_key: str, xlabel: str) -> pathlib.Path:
  figure, axis = pyplot().subplots(figsize=(5.5, 3.4))
  _theory_lines(axis, rows, x_key)
  axis.set_xlabel(xlabel)
  axis.set_title(title, fontsize=9)
  return save(figure, path)


def theory_curves_sigma(rows, path, title: str) -> pathlib.Path:
  """Benign accuracy, robust accuracy (conditional) and R over the defense's sigma.

  Args:
    rows: `jaxdef.theory.table_over_sigma` rows: "k", "sigma" and the rates,
      one line per rate and k (k = 0 solid, k = 1 dashed).
    path: output path without suffix.
    title: figure title.
  """
  return _theory_figure(rows, path, title, "sigma", "defense noise sigma (theta ~ N(1, sigma^2))")


def theory_curves_votes(rows, path, title: str) -> pathlib.Path:
  """The majority vote's benign accuracy, robust accuracy (conditional) and R over votes.

  Args:
    rows: `jaxdef.theory.table_over_votes` rows: "k", "num_votes" and the
      vote's rates, one line per rate and k (k = 0 solid, k = 1 dashed).
    path: output path without suffix.
    title: figure title.
  """
  return _theory_figure(rows, path, title, "num_votes",
                        "votes (majority of independent draws of theta)")


def _interval_errors(records) -> tuple[np.ndarray, np.ndarray]:
  """(heights, error bars) in percent of rate records; an empty denominator draws 0."""
  rates = np.array([r["rate"] if r["denominator"] else np.nan for r in records], float)
  finite = np.isfinite(rates)
  low = np.array([r["ci_low"] for r in records], float)
  high = np.array([r["ci_high"] for r in records], float)
  heights = np.where(finite, 100 * rates, 0.0)
  errors = np.where(finite, 100 * np.stack([rates - low, high - rates]), 0.0)
  return heights, errors


def audit_runs(runs, path, title: str) -> pathlib.Path:
  """Horizontal bars: each audit run's attack success with its 95% interval.

  Args:
    runs: run records with "label", "m", "rate", "ci_low", "ci_high",
      "denominator" (the audit's order: without EOT first).
  """
  heights, errors = _interval_errors(runs)
  figure, axis = pyplot().subplots(figsize=(6.4, 0.9 + 0.32 * len(runs)))
  colors = ["tab:blue" if r["m"] == 1 else "tab:orange" for r in runs]
  y = np.arange(len(runs))[::-1]
  axis.barh(y, heights, xerr=errors, color=colors, capsize=3)
  axis.set_yticks(y, [r["label"] for r in runs], fontsize=7)
  axis.set_xlim(0, 105)
  axis.set_xlabel("attack success over initially correct images (%)")
  axis.grid(axis="x", alpha=0.3)
  axis.set_title(title + "\nblue: no EOT, orange: EOT at the same number of queries",
                 fontsize=8)
  return save(figure, path)


def audit_eot(cells, path, title: str) -> pathlib.Path:
  """Attack success of the best step size per EOT draws m, at k x m fixed.

  Args:
    cells: one record per m with "m", "k", "rate", "ci_low", "ci_high",
      "denominator".
  """
  heights, errors = _interval_errors(cells)
  figure, axis = pyplot().subplots(figsize=(4.6, 3.2))
  axis.errorbar([c["m"] for c in cells], heights, yerr=errors, marker="o", capsize=3)
  axis.set_xscale("log")
  axis.xaxis.set_minor_locator(pyplot().NullLocator())
  axis.set_xticks([c["m"] for c in cells], [f"m={c['m']}\nk={c['k']}" for c in cells],
                  fontsize=7)
  axis.set_ylim(0, 105)
  axis.set_ylabel("attack success (%), best step size")
  axis.grid(alpha=0.3)
  axis.set_title(title, fontsize=8)
  return save(figure, path)
