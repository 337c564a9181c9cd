"""Pieces shared by components: weight init, and the typed options they accept."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field
from torch import nn

Init = Literal["default", "xavier", "he"]
Activation = Literal["relu", "tanh", "gelu"]
Dropout = Annotated[float, Field(ge=0, lt=1)]
Width = Annotated[int, Field(gt=0)]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def init_weights(module: nn.Module, scheme: Init) -> nn.Module:
    """Re-initialise linear and conv weights: xavier (Glorot) or he (Kaiming); biases to 0."""
    if scheme == "default":
        return module
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def flat_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
