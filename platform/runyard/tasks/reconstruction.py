"""Reconstruction (autoencoders): the inputs are the targets (``runyard.data.view``).

Trained as a regression of the input; a denoising autoencoder gets noisy inputs from
``recipe.augment`` (training batches only) and the clean image as its target.
"""

from __future__ import annotations

import numpy as np

from runyard.evaluation import plots
from runyard.tasks.regression import Regression

DENOISE_NOISE = 0.3
"""Std of the Gaussian noise on the test images a (denoising) autoencoder is scored on
(``test/mse_noisy``; the noisy images alone are at MSE 0.09 from the clean ones)."""
SHOWN = 8
"""Test images shown in the grid (the first ones of the split)."""


class Reconstruction(Regression):
    name = "reconstruction"

    def output_shape(self, info):
        return tuple(info.input_shape)

    def evaluate(self, name, info, splits, out, staging, predict):
        """MSE of the reconstructions of clean and of noisy test images (seeded noise), and a
        grid: noisy inputs, their reconstructions, the clean images."""
        clean = splits.x_test
        noisy = clean + DENOISE_NOISE * np.random.default_rng(0).standard_normal(clean.shape).astype(clean.dtype)
        denoised = predict(noisy)
        values = {"test/mse": float(np.mean((out - clean) ** 2)),
                  "test/mse_noisy": float(np.mean((denoised - clean) ** 2))}
        if len(info.input_shape) == 3:  # images: show the first channel
            k, style = SHOWN, {"cmap": "gray", "vmin": 0, "vmax": 1}
            plots.image_grid([(f"noisy ({DENOISE_NOISE})", noisy[:k, 0], style),
                              ("reconstructed", denoised[:k, 0], style), ("clean", clean[:k, 0], style)],
                             f"{name}: test mse {values['test/mse']:.4f}, from noisy {values['test/mse_noisy']:.4f}",
                             staging / "reconstructions.png")
        return values


TASK = Reconstruction()
