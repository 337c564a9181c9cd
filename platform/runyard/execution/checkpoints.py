"""What a training leaves in Ray's storage, and how it is read back.

Rank 0 writes Lightning checkpoints (``CKPT_FILE``) during training and the final
network weights (``MODEL_FILE``) at its end; the driver, a resumed run and a
search's best trial read them here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

MODEL_FILE = "model.pt"
"""The final network weights rank 0 leaves in the final checkpoint."""
CKPT_FILE = "state.ckpt"
"""A Lightning checkpoint (weights, optimiser, epoch) inside a Ray checkpoint."""


@contextmanager
def resume_path(checkpoint: Any | None) -> Iterator[str | None]:
    """The Lightning checkpoint file inside a Ray checkpoint, or None to start afresh."""
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as d:
        yield str(Path(d) / CKPT_FILE)


NETWORK_PREFIX = "runyard_network_prefix"
"""Key of a Lightning checkpoint: the prefix of the network's weights in its ``state_dict``
(``net.`` in runyard's systems, nothing in a user's LightningModule, which is its own network)."""


def net_weights(lightning_checkpoint: Path | str) -> dict[str, torch.Tensor]:
    """The network's weights from a Lightning checkpoint file (its system's ``net.*``)."""
    ckpt = torch.load(lightning_checkpoint, map_location="cpu", weights_only=False)
    prefix = ckpt.get(NETWORK_PREFIX, "net.")
    return {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def discard_storage(storage_path: Path | str, exp_name: str, run_id: str) -> None:
    """Drop a finished run's intermediate checkpoints (local storage only)."""
    path = Path(str(storage_path)) / f"{exp_name}-{run_id}"
    if "://" not in str(storage_path):
        shutil.rmtree(path, ignore_errors=True)
