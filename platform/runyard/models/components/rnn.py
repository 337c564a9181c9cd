"""Recurrent nets over a 1-D signal read one value per time step."""

from __future__ import annotations

from typing import Literal

from torch import nn

from runyard.models.components.common import Dropout, Init, Width, init_weights


class RNN(nn.Module):
    """GRU or LSTM; the outputs of every step are flattened into one linear layer.

    Defaults are the MNIST-1D paper's GRU: bidirectional, hidden 6 (5,134 parameters).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        cell: Literal["gru", "lstm"] = "gru",
        hidden: Width = 6,
        layers: Width = 1,
        bidirectional: bool = True,
        dropout: Dropout = 0.0,
        init: Init = "default",
    ):
        super().__init__()
        rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(
            1, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        seq_len = input_shape[0]
        self.head = nn.Linear(seq_len * hidden * (2 if bidirectional else 1), num_outputs)
        init_weights(self.head, init)

    def forward(self, x):
        out, _ = self.rnn(x.unsqueeze(-1))
        return self.head(out.flatten(1))
