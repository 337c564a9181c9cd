"""Data augmentation of image batches in plain torch: random shifts, rotations, noise.

Applied by the training loader (``loaders.TensorBatches``) to training batches only.
Every sample gets its own shift and angle from the generator it is given, so a seed
fixes the whole sequence. A target with the image's height and width is a mask
(segmentation): it gets the very same geometric transform, sampled nearest-neighbour
so it keeps its class values. A target of the image's own shape (reconstruction: the
clean image) gets the same transform as the image. Other targets (labels) pass through
unchanged. Noise touches the image only: a denoising autoencoder learns to remove it.
What the transform brings in from outside the image is 0, the background of every
image dataset here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from runyard.config import Augment


def augment(x: torch.Tensor, y: torch.Tensor, cfg: Augment, generator: torch.Generator):
    """Augmented copies of images ``x`` (n, channels, height, width) and their targets ``y``."""
    n = len(x)
    if cfg.shift or cfg.rotate_deg:
        angles = (2 * torch.rand(n, generator=generator) - 1) * math.radians(cfg.rotate_deg)
        shifts = torch.randint(-cfg.shift, cfg.shift + 1, (n, 2), generator=generator)
        x, y = transform(x, y, angles, shifts)
    if cfg.noise:
        x = x + cfg.noise * torch.randn(x.shape, generator=generator).to(x)
    return x, y


def is_mask(x: torch.Tensor, y: torch.Tensor) -> bool:
    return y.dim() == 3 and tuple(y.shape) == (len(x), *x.shape[-2:])


def transform(x: torch.Tensor, y: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor):
    """Rotate each image by ``angles`` (radians, about its centre; positive turns the
    picture clockwise as displayed, rows running downwards), then move it by ``shifts``
    (whole pixels, (right, down)); masks alike. The shift is exact (no resampling)."""
    if y.shape == x.shape:  # an image target moves with its image
        both, _ = transform(torch.cat([x, y.to(x)], 1), y[:, :0], angles, shifts)
        return both[:, : x.shape[1]], both[:, x.shape[1] :].to(y)
    mask = is_mask(x, y)
    if bool((angles != 0).any()):
        grid = _rotation_grid(angles, x.shape)
        x = F.grid_sample(x, grid.to(x), mode="bilinear", padding_mode="zeros", align_corners=False)
        if mask:
            turned = F.grid_sample(y.unsqueeze(1).to(torch.float32), grid, mode="nearest",
                                   padding_mode="zeros", align_corners=False)
            y = turned.squeeze(1).round().to(y.dtype)
    if bool((shifts != 0).any()):
        x = _shift(x, shifts)
        if mask:
            y = _shift(y.unsqueeze(1), shifts).squeeze(1)
    return x, y


def _rotation_grid(angles: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The sampling grid: output pixel p reads the input at R(-angle) p, in pixel units
    about the centre, converted to grid_sample's [-1, 1] coordinates (x scaled by 2/w,
    y by 2/h, so non-square images turn without shearing)."""
    h, w = shape[-2:]
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.zeros(len(angles), 2, 3)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = sin * h / w
    theta[:, 1, 0] = -sin * w / h
    theta[:, 1, 1] = cos
    return F.affine_grid(theta, [len(angles), 1, h, w], align_corners=False)


def _shift(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move each of ``images`` (n, channels, h, w) by its (right, down) ``shifts``, zeros coming in."""
    n, _, h, w = images.shape
    pad = int(shifts.abs().max())
    padded = F.pad(images, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (n, h + 2 pad, w + 2 pad, channels)
    rows = torch.arange(h) - shifts[:, 1:2] + pad  # output row i reads row i - down
    cols = torch.arange(w) - shifts[:, 0:1] + pad
    picked = padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2)
