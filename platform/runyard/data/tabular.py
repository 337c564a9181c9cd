"""CSV and Parquet tables for ``runyard.data.files``: numeric feature columns and a target.

A feature column must be numeric (booleans count as 0/1) unless it is listed under
``categorical:``, which one-hot encodes it: one column per category, named
``column=value``, categories sorted. A string column that is not listed is an error
naming it, so no column is silently dropped or mangled. Empty cells are errors too.

A CSV's delimiter is the one of ``,``, ``;`` and tab that its header line holds most
(the UCI wine-quality files use ``;``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from runyard.data.file_format import Args, Loaded, Source, closest, integral_labels, listing

SPLIT_VALUES = ("train", "val", "test")


def header(path: Path, fmt: str, src: Source) -> list[str]:
    """The column names, from the header line or the Parquet schema only."""
    try:
        return list(_header(str(path), fmt, _stamp(path)))
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise src.error("source", f"{src.file(path)}: not a readable {fmt} file ({_first_line(e)})") from None


def describe(args: Args, src: Source) -> tuple[int, list[str]]:
    """The number of input features and the class names, reading only the target and
    categorical columns."""
    features = plan(args, src.path, src.format, src)
    needed = tuple(dict.fromkeys([*args.categorical, *([args.target] if args.task == "classification" else [])]))
    table = read(src.path, src.format, needed, src) if needed else None
    width = len(features) - len(args.categorical)
    for c in args.categorical:
        width += len(_categories(table[c]))
    classes: list[str] = []
    if args.task == "classification":
        target = integral_labels(table[args.target].dropna().to_numpy(), src, "target")
        classes = [str(v) for v in np.unique(target)]
    return width, classes


def load(args: Args, src: Source) -> Loaded:
    """Every row: features (one-hot where categorical), raw targets, given split."""
    features = plan(args, src.path, src.format, src)
    columns = [*features, args.target, *([args.split.column] if args.split.column else [])]
    table = read(src.path, src.format, tuple(columns), src)
    check_complete(table, src.rel, src)
    check_target(table[args.target], args, src.rel, src)
    blocks, names = [], []
    for c in features:
        col = table[c]
        if c in args.categorical:
            cats = _categories(col)
            values = col.to_numpy()
            blocks.append(np.stack([values == v for v in cats], axis=1).astype(np.float32))
            names += [f"{c}={v}" for v in cats]
            continue
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            raise src.error("features", f"column {c!r} of {src.rel} is not numeric{_example(col)}; list it "
                                        f"under categorical: to one-hot encode it, or leave it out of features:")
        blocks.append(col.to_numpy(dtype=np.float32).reshape(-1, 1))
        names.append(c)
    x = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(table), 0), np.float32)
    given = given_splits(table, args, src.rel, src)
    meta = {"target": args.target, "features": names}
    return Loaded(x=x, y=table[args.target].to_numpy(), given=given,
                  given_by=f"column {args.split.column!r} of {src.rel}", meta=meta)


def plan(args: Args, path: Path, fmt: str, src: Source) -> list[str]:
    """The feature columns, every named column checked to exist."""
    cols = header(path, fmt, src)
    rel = src.file(path)
    require(src, "target", args.target, cols, rel)
    if args.split.column is not None:
        require(src, "split.column", args.split.column, cols, rel)
    for c in args.features or ():
        require(src, "features", c, cols, rel)
    for c in args.categorical:
        require(src, "categorical", c, cols, rel)
    if args.features is not None:
        return list(args.features)
    features = [c for c in cols if c not in (args.target, args.split.column)]
    if not features:
        raise src.error("features", f"{rel} has no columns besides the target {args.target!r}")
    return features


def require(src: Source, key: str, name: str, cols: list[str], rel: str) -> None:
    """``name`` is one of the columns ``cols`` of ``rel``, or an error suggesting the closest."""
    if name not in cols:
        raise src.error(key, f"{name!r} is not a column of {rel}{closest(name, cols)} (columns: {listing(cols)})")


def read(path: Path, fmt: str, columns: tuple[str, ...], src: Source) -> pd.DataFrame:
    """Only ``columns`` of the table (remembered while the file is unchanged)."""
    try:
        return _read(str(path), fmt, columns, _stamp(path))
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise src.error("source", f"{src.file(path)}: not a readable {fmt} file ({_first_line(e)})") from None


def check_complete(table: pd.DataFrame, rel: str, src: Source) -> None:
    """No empty or NaN cells in the columns read."""
    for c in table.columns:
        missing = table[c].isna().to_numpy()
        if missing.any():
            raise src.error("source", f"column {c!r} of {rel} has {int(missing.sum())} empty or NaN value(s) "
                                      f"(first in row {int(np.argmax(missing)) + 1}); fill or drop them")


def check_target(col: pd.Series, args: Args, rel: str, src: Source) -> None:
    if args.task == "regression" and not pd.api.types.is_numeric_dtype(col):
        raise src.error("target", f"column {args.target!r} of {rel} is not numeric{_example(col)}; a regression "
                                  f"target must be numbers (or set task: classification)")


def given_splits(table: pd.DataFrame, args: Args, rel: str, src: Source) -> np.ndarray | None:
    if args.split.column is None:
        return None
    col = table[args.split.column].astype(str).to_numpy()
    bad = ~np.isin(col, SPLIT_VALUES)
    if bad.any():
        i = int(np.argmax(bad))
        raise src.error("split.column", f"column {args.split.column!r} of {rel} holds {col[i]!r} (row {i + 1}); "
                                        f"allowed: {', '.join(SPLIT_VALUES)}")
    return col


def _categories(col: pd.Series) -> list:
    return list(np.unique(col.dropna().to_numpy()))


def _example(col: pd.Series) -> str:
    bad = (pd.to_numeric(col, errors="coerce").isna() & col.notna()).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        return f" ({col.iloc[i]!r} in row {i + 1})"
    return f" (its type is {col.dtype})"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _delimiter(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    return max([",", ";", "\t"], key=first.count)


@functools.lru_cache(maxsize=16)
def _header(path: str, fmt: str, stamp: tuple[int, int]) -> tuple[str, ...]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        # pandas stores a non-default index as a column of this name; it is not data.
        return tuple(n for n in names if not n.startswith("__index_level_"))
    return tuple(str(c) for c in pd.read_csv(path, nrows=0, sep=_delimiter(path)).columns)


@functools.lru_cache(maxsize=16)
def _read(path: str, fmt: str, columns: tuple[str, ...], stamp: tuple[int, int]) -> pd.DataFrame:
    if fmt == "parquet":
        table = pd.read_parquet(path, columns=list(columns))
    else:
        table = pd.read_csv(path, usecols=list(columns), sep=_delimiter(path))
    return table[list(columns)].reset_index(drop=True)
