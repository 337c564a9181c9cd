"""A DCGAN (Radford, Metz & Chintala 2016) pair for small images: generator and discriminator."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from runyard.models.components.common import Width

LatentDim = Annotated[int, Field(ge=1, le=1024)]
Slope = Annotated[float, Field(ge=0, lt=1)]


class DCGAN(nn.Module):
    """Generator: a linear layer from a ``latent_dim`` normal code to a
    ``generator_channels[0]``-channel map at 1/2^L of the image's side, then L
    transposed convolutions (4x4, stride 2), each doubling the side, with batch norm and
    ReLU between them; a sigmoid gives pixels in [0, 1], the range of runyard's images.
    Discriminator: the mirror image, L strided 4x4 convolutions with leaky ReLU (batch
    norm after all but the first), then one linear logit, "real".

    ``forward(z)`` is the generator: the model that is logged, registered and served
    takes latent codes of shape ``latent_shape`` and returns images. An unconditional
    GAN does not use the labels (``num_outputs``).

    The defaults make an 8x8 digit from a 2x2 map (L = 2): 42,049 parameters in
    the generator, 33,697 in the discriminator.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        latent_dim: LatentDim = 32,
        generator_channels: list[Width] = [64, 32],  # noqa: B006
        discriminator_channels: list[Width] = [32, 64],  # noqa: B006
        leaky_slope: Slope = 0.2,
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"needs images (channels, height, width), got input shape {tuple(input_shape)}")
        c, h, w = input_shape
        for name, widths in (("generator_channels", generator_channels),
                             ("discriminator_channels", discriminator_channels)):
            step = 2 ** len(widths)
            if h % step or w % step:
                raise ValueError(f"{name}: {len(widths)} layers halve the side {len(widths)} times; "
                                 f"{h}x{w} images need a side divisible by {step}")
        self.latent_dim = latent_dim
        self.latent_shape = (latent_dim,)
        self.generator = Generator((c, h, w), latent_dim, generator_channels)
        self.discriminator = Discriminator((c, h, w), discriminator_channels, leaky_slope)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


class Generator(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, channels: list[int]):
        super().__init__()
        c, h, w = image_shape
        scale = 2 ** len(channels)
        self.start = (channels[0], h // scale, w // scale)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, channels[0] * (h // scale) * (w // scale), bias=False),
            nn.BatchNorm1d(channels[0] * (h // scale) * (w // scale)),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels, channels[1:], strict=False):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(channels[-1], c, 4, stride=2, padding=1), nn.Sigmoid()]
        self.upsample = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z):
        # unflatten, not view(len(z), ...): an exported model keeps its batch size free.
        return self.upsample(self.project(z).unflatten(1, self.start))


class Discriminator(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], channels: list[int], slope: float):
        super().__init__()
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip([c, *channels], channels, strict=False)):
            layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=i == 0))
            if i:  # DCGAN: no batch norm on the discriminator's input layer
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(slope))
        scale = 2 ** len(channels)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(channels[-1] * (h // scale) * (w // scale), 1)
        dcgan_init(self)

    def forward(self, x):
        """One logit per image: > 0 means "real"."""
        return self.head(self.features(x)).squeeze(1)


def dcgan_init(module: nn.Module) -> None:
    """The DCGAN paper's initialisation: weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
