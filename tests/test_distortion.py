"""PSNR and SSIM (dm-pix) against scikit-image, and where the reports show them."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from skimage import metrics

from jaxdef import defenses
from jaxdef import distortion
from jaxdef.experiments import _defense_survey


def _pair(shape, noise, seed=0):
  rng = np.random.default_rng(seed)
  clean = rng.uniform(size=shape).astype(np.float32)
  noisy = np.clip(clean + noise * rng.normal(size=shape), 0, 1).astype(np.float32)
  return clean, noisy


@pytest.mark.parametrize("shape", [(4, 28, 28, 1), (3, 32, 32, 3)])
def test_psnr_is_scikit_images_over_all_pixels(shape):
  clean, noisy = _pair(shape, 0.1)
  expected = metrics.peak_signal_noise_ratio(clean, noisy, data_range=1.0)
  assert distortion.psnr_db(clean, noisy) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("shape", [(4, 28, 28, 1), (3, 32, 32, 3)])
def test_ssim_is_scikit_images_gaussian_ssim_averaged_over_images(shape):
  clean, noisy = _pair(shape, 0.1)
  expected = np.mean([
      metrics.structural_similarity(c, n, data_range=1.0, channel_axis=-1,
                                    gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
      for c, n in zip(clean, noisy)])
  assert distortion.mean_ssim(clean, noisy) == pytest.approx(expected, abs=1e-4)


def test_draws_broadcast_against_their_images_and_edge_cases():
  clean, noisy = _pair((2, 16, 16, 1), 0.05)
  draws = np.stack([noisy, clean])  # (S=2, B=2, H, W, C)
  pooled = metrics.peak_signal_noise_ratio(np.stack([clean, clean]), draws, data_range=1.0)
  assert distortion.psnr_db(clean, draws) == pytest.approx(pooled, abs=1e-3)
  assert distortion.psnr_db(clean, clean) is None  # nothing changed: infinite PSNR
  assert distortion.mean_ssim(clean, clean) == pytest.approx(1.0, abs=1e-6)
  assert distortion.mean_ssim(clean[:, :8, :8], noisy[:, :8, :8]) is None  # under the window
  summary = distortion.summary(clean, noisy)
  assert summary["mean_abs_change"] == pytest.approx(np.abs(noisy - clean).mean(), rel=1e-5)
  with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
    distortion.psnr_db(clean[0, 0], noisy[0, 0])


def test_the_defense_survey_reports_psnr_and_ssim_of_its_draws():
  images, _ = _pair((3, 28, 28, 1), 0.0, seed=1)
  smoothing = defenses.randomized_smoothing(sigma=0.1)
  key = jax.random.key(0)
  records, _ = _defense_survey.survey({"smoothing": smoothing}, key, images, num_samples=4,
                                      chunk_size=4)
  # The survey draws defense 0 with fold_in(key, 0): the same draws, by scikit-image.
  draw_key = jax.random.fold_in(key, 0)
  draws = np.asarray(defenses.sample(smoothing, draw_key, images, 4))
  record = records[0]
  reference = np.broadcast_to(images, draws.shape)
  assert record["psnr_db"] == pytest.approx(
      metrics.peak_signal_noise_ratio(reference, draws, data_range=1.0), abs=1e-2)
  ssim = np.mean([metrics.structural_similarity(
      r, d, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False) for r, d in zip(reference.reshape(-1, 28, 28, 1),
                                                   draws.reshape(-1, 28, 28, 1))])
  assert record["ssim"] == pytest.approx(ssim, abs=1e-3)
