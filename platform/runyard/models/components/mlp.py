"""Logistic regression, multilayer perceptrons and the shallow universal approximator."""

from __future__ import annotations

from torch import nn

from runyard.models.components.common import (
    ACTIVATIONS,
    Activation,
    Dropout,
    Init,
    Width,
    flat_size,
    init_weights,
)


class LogisticRegression(nn.Module):
    """One linear layer on the flattened input; softmax is in the loss."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, init: Init = "default"):
        super().__init__()
        self.net = init_weights(
            nn.Sequential(nn.Flatten(), nn.Linear(flat_size(input_shape), num_outputs)), init
        )

    def forward(self, x):
        return self.net(x)


class MLP(nn.Module):
    """Fully connected net: [Linear -> (BatchNorm) -> activation -> (Dropout)] x len(hidden).

    The MNIST-1D paper's MLP is ``hidden: [100, 100]`` (15,210 parameters).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        hidden: list[Width] = [100, 100],  # noqa: B006 (read-only; pydantic validates it)
        activation: Activation = "relu",
        dropout: Dropout = 0.0,
        batch_norm: bool = False,
        init: Init = "default",
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = flat_size(input_shape)
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(ACTIVATIONS[activation]())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        self.net = init_weights(nn.Sequential(*layers), init)

    def forward(self, x):
        return self.net(x)


def shallow(
    input_shape: tuple[int, ...],
    num_outputs: int,
    width: Width = 2000,
    activation: Activation = "relu",
    init: Init = "default",
) -> MLP:
    """One hidden layer of ``width`` units: the universal approximation theorem's net."""
    return MLP(input_shape, num_outputs, hidden=[width], activation=activation, init=init)
