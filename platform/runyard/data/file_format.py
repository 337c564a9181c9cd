"""What runyard.data.files and its format readers (tabular, images) share: the
``datasets:``/``files:`` arguments of a file dataset, a resolved source, the loaded samples,
and the helpers of their one-line errors.

It imports none of them, so imports point one way: files -> tabular, images -> file_format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runyard.data.splits import Splits
from runyard.errors import RunyardError

FORMATS = ("csv", "parquet", "images", "npz", "npy")
TABULAR = ("csv", "parquet")
SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
DEFAULT_FRACTION = 0.15

# Keys that only some formats read: setting one for another format is an error, not ignored.
ONLY_FOR = {
    "target": ("csv", "parquet", "images"),
    "features": TABULAR,
    "categorical": TABULAR,
    "labels": ("images",),
    "image_size": ("images",),
    "color": ("images",),
}


class Split(BaseModel):
    """How samples are split: fractions drawn with the seed, or a column that says."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    val: Annotated[float, Field(gt=0, lt=1)] = DEFAULT_FRACTION
    """Fraction of the samples for validation (of ``train`` where the files give the others)."""
    test: Annotated[float, Field(gt=0, lt=1)] = DEFAULT_FRACTION
    """Fraction of the samples for testing (of ``train`` where the files give the others)."""
    column: str | None = None
    """A table's column holding each row's split: train, val or test."""

    @model_validator(mode="after")
    def _fractions_fit(self):
        if self.fraction("val") + self.fraction("test") >= 1:
            raise ValueError(f"val + test must be below 1 (got {self.fraction('val')} + {self.fraction('test')})")
        return self

    def fraction(self, split: str) -> float:
        return getattr(self, split)


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    """A file or folder, relative to the project root (track it with ``dvc add``)."""
    format: Literal["csv", "parquet", "images", "npz", "npy"] | None = None
    """None: from the suffix, or for a folder from what it holds."""
    task: Literal["classification", "regression"] = "classification"
    # Segmentation would be a third task here: masks as a second image folder (or a
    # ``y`` array of shape (n, H, W)) read like the inputs, without the class encoding.
    target: str | None = None
    """Tables: the column to predict. Images: the column of ``labels:`` to predict."""
    features: tuple[str, ...] | None = None
    """Tables: the input columns, in this order (None: every other column)."""
    categorical: tuple[str, ...] = ()
    """Tables: columns one-hot encoded (categories sorted); any other column must be numeric."""
    labels: str | None = None
    """Images: a CSV or Parquet file (relative to the project root) with a ``file`` column
    (the image's path inside ``source``) and the ``target`` column, instead of class folders."""
    split: Split = Split()
    image_size: tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]] | None = None
    """Images: every image is resized to [height, width] (one number: a square)."""
    color: Literal["grayscale", "rgb"] = "rgb"
    """Images: 1 channel or 3."""
    stream: bool = False
    """Train from Parquet shards that Ray Data streams to each worker (its shard only),
    not from arrays every worker holds whole: for data larger than a worker's memory
    (``runyard.data.streaming``)."""

    @field_validator("source", "labels")
    @classmethod
    def _inside_project(cls, value: str | None):
        if value is None:
            return value
        path = PurePosixPath(value.replace("\\", "/"))
        if not value.strip() or path.is_absolute() or ".." in path.parts:
            raise ValueError(f"must be a path inside the project, relative to its root (got {value!r})")
        return value

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, value):
        return (value, value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("features", "categorical")
    @classmethod
    def _no_repeats(cls, value):
        repeated = sorted({c for c in value or () if list(value).count(c) > 1})
        if repeated:
            raise ValueError(f"columns repeat: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _columns_agree(self):
        if self.features is not None:
            for name in (self.target, self.split.column):
                if name is not None and name in self.features:
                    raise ValueError(f"features: {name!r} is the target or split column; leave it out")
            outside = [c for c in self.categorical if c not in self.features]
            if outside:
                raise ValueError(f"categorical: {', '.join(outside)} not in features")
        if self.split.column is not None and self.split.column == self.target:
            raise ValueError("split.column: is the target column")
        return self


@dataclass
class FileSplits(Splits):
    """The splits and what the arrays mean: class names, feature names, where they came from."""

    meta: dict = field(default_factory=dict)


@dataclass
class Source:
    """A resolved ``source``: its path on disk, as written in params.yaml, and its format."""

    path: Path
    rel: str
    format: str
    root: Path
    where: str

    def error(self, key: str, message: str) -> RunyardError:
        return error(self.where, key, message)

    def file(self, path: Path) -> str:
        """A path under the project, as the user writes it."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


@dataclass
class Loaded:
    """A format's samples before splitting: inputs, raw targets, and the split each
    sample is given by the files (None: drawn)."""

    x: np.ndarray
    y: np.ndarray
    given: np.ndarray | None
    given_by: str
    meta: dict


def error(where: str, key: str, message: str) -> RunyardError:
    return RunyardError(f"{where}: {key}: {message}" if where else f"{key}: {message}")


def listing(names, most: int = 20) -> str:
    names = list(names)
    more = f", ... ({len(names) - most} more)" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def closest(name: str, names) -> str:
    """"; did you mean 'x'?" when a name is close to one of ``names``."""
    import difflib

    names = list(names)
    match = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if not match:
        lower = {n.lower(): n for n in names}
        match = [lower[name.lower()]] if name.lower() in lower else []
    return f"; did you mean {match[0]!r}?" if match else ""


def integral_labels(y: np.ndarray, src: Source, key: str) -> np.ndarray:
    """Float labels that are whole numbers as int64; other floats are an error (regression?)."""
    if y.dtype.kind != "f":
        return y
    frac = ~np.isfinite(y) | (y != np.round(y))
    if frac.any():
        i = int(np.argmax(frac))
        raise src.error(key, f"{src.rel} has non-integer class labels ({y[i]!r} at row {i + 1}); for a "
                             f"numeric target set task: regression")
    return y.astype(np.int64)
