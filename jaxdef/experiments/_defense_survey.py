"""The embedded default's first part: what each defense does to real images.

For every configured defense it draws `num_samples` defended copies of each
evaluation image in one compiled, vmapped call, and reports how far the
draws move the image (mean |change|, PSNR and SSIM: `jaxdef.distortion`) and how
much they vary between draws (a defense that
barely varies gives EOT nothing to average). Attacks join in later parts.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxdef import defenses as defenses_lib
from jaxdef import distortion


def survey(defenses: dict[str, defenses_lib.Defense], key: jax.Array, images: jax.Array,
           num_samples: int, chunk_size: int, *, progress: bool = True
           ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
  """Draws every defense and measures distortion, randomness and speed.

  Args:
    defenses: label -> defense.
    key: PRNG key (each defense gets its own, folded in by position).
    images: float (B, H, W, C) in [0, 1].
    num_samples: draws per image.
    chunk_size: draws computed at once.
    progress: a progress bar over the defenses.

  Returns:
    (records, pictures): one record per defense, and for each label a few
    draws of the first image, shape (n, H', W', C), for figures.
  """
  records, pictures = [], {}
  for index, (label, defense) in enumerate(tqdm(defenses.items(), desc="defenses", unit="def",
                                                     disable=not progress)):
    draw_key = jax.random.fold_in(key, index)
    start = time.perf_counter()
    compiled = defenses_lib.compile_sample(defense, draw_key, images, num_samples,
                                           chunk_size=chunk_size)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    samples = jax.block_until_ready(compiled(draw_key, images))
    run_s = time.perf_counter() - start
    same_shape = samples.shape[2:] == images.shape[1:]
    moved = (distortion.summary(images, samples) if same_shape  # PSNR, SSIM from dm-pix
             else {"mean_abs_change": None, "psnr_db": None, "ssim": None})
    spread = float(jnp.mean(jnp.std(samples, axis=0)))
    records.append({
        "label": label,
        "defense": defense.describe(),
        "num_images": int(images.shape[0]),
        "num_samples": int(num_samples),
        "output_shape": list(samples.shape[2:]),
        **moved,
        "std_across_draws": spread,
        "draws_per_second": num_samples * images.shape[0] / run_s,
        "compile_s": compile_s,
        "value_range": [float(samples.min()), float(samples.max())],
    })
    pictures[label] = np.asarray(samples[:, 0])
  return records, pictures
