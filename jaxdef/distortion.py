"""How far a defense's draws or an attack move images: mean |change|, PSNR and SSIM.

PSNR and SSIM come from dm-pix (`dm_pix.psnr`, `dm_pix.ssim`: SSIM with an
11 x 11 Gaussian window of sigma 1.5, k1 = 0.01, k2 = 0.03, as Wang et al.
2004 and scikit-image's `structural_similarity(gaussian_weights=True,
use_sample_covariance=False)`); images are in [0, 1], so the data range is 1.

  distortion.summary(images, defended)  # {"mean_abs_change", "psnr_db", "ssim"}
"""

from __future__ import annotations

from typing import Any

import dm_pix
import jax.numpy as jnp
import numpy as np

# dm-pix's SSIM window: images narrower than this have no SSIM.
SSIM_WINDOW = 11


def _pairs(reference: Any, distorted: Any) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Both as float32 (N, H, W, C): the reference broadcast over the distorted's leading axes."""
  distorted = jnp.asarray(distorted, jnp.float32)
  reference = jnp.broadcast_to(jnp.asarray(reference, jnp.float32), distorted.shape)
  if distorted.ndim < 3:
    raise ValueError(f"images must be (..., H, W, C), got shape {distorted.shape}")
  shape = (-1, *distorted.shape[-3:])
  return reference.reshape(shape), distorted.reshape(shape)


def psnr_db(reference: Any, distorted: Any) -> float | None:
  """PSNR in dB of all pairs pooled (the mean squared error over every pixel).

  Args:
    reference: float (..., H, W, C) in [0, 1], broadcastable to `distorted`
      (e.g. the images (B, H, W, C) against draws (S, B, H, W, C)).
    distorted: float (..., H, W, C) in [0, 1].

  Returns:
    10 log10(1 / MSE); None when nothing changed (infinite PSNR).
  """
  reference, distorted = _pairs(reference, distorted)
  height, width, channels = distorted.shape[1:]
  pooled = (1, -1, width, channels)  # one tall image: dm-pix averages over all of it
  value = float(dm_pix.psnr(reference.reshape(pooled), distorted.reshape(pooled))[0])
  return None if not np.isfinite(value) else value


def mean_ssim(reference: Any, distorted: Any) -> float | None:
  """Mean SSIM over the pairs (1 = identical); None for images under 11 x 11 pixels.

  Args:
    reference, distorted: as `psnr_db`; colour images get SSIM per channel,
      averaged.
  """
  reference, distorted = _pairs(reference, distorted)
  if min(distorted.shape[1:3]) < SSIM_WINDOW:
    return None
  return float(jnp.mean(dm_pix.ssim(reference, distorted, max_val=1.0)))


def summary(reference: Any, distorted: Any) -> dict[str, float | None]:
  """{"mean_abs_change", "psnr_db", "ssim"} of `distorted` against `reference`."""
  pair = _pairs(reference, distorted)
  return {"mean_abs_change": float(jnp.mean(jnp.abs(pair[1] - pair[0]))),
          "psnr_db": psnr_db(*pair), "ssim": mean_ssim(*pair)}
