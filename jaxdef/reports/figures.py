"""Figures of defenses and results (matplotlib, written as PNG and PDF)."""

from __future__ import annotations

import os
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _show(axis, image: np.ndarray) -> None:
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
  plt.close(figure)
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
  figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.3 * rows), squeeze=False)
  for row, (label, draws) in enumerate(pictures.items()):
    _show(axes[row, 0], clean)
    axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    for column in range(1, columns):
      if column - 1 < len(draws):
        _show(axes[row, column], draws[column - 1])
      else:
        axes[row, column].axis("off")
  axes[0, 0].set_title("clean", fontsize=8)
  for column in range(1, columns):
    axes[0, column].set_title(f"draw {column}", fontsize=8)
  figure.suptitle("Defense draws (same image, independent keys)", fontsize=9)
  return save(figure, path)
