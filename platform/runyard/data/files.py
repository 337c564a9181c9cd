"""Datasets from the user's own files (tracked with DVC): CSV, Parquet, image folders, arrays.

A ``datasets:`` entry with a ``source:`` key is built here::

    datasets:
      wine:
        source: data/raw/wine.csv     # a file or folder, relative to the project root
        target: quality               # tables: the column to predict
        task: classification          # or regression
        split: {val: 0.15, test: 0.15}

The format comes from ``source``'s suffix (``.csv``/``.tsv``, ``.parquet``/``.pq``,
``.npz``) or, for a folder, from what it holds (``x.npy``/``x_train.npy``: arrays;
otherwise images in one subfolder per class); ``format:`` overrides it.

Splits are drawn with ``seed`` (stratified for classification): ``test`` is that
fraction of all samples, ``val`` that fraction of all samples. The files may give the
splits instead: ``train/ val/ test/`` folders of images, ``x_train``, ``x_val``,
``x_test`` arrays, or a table's column (``split: {column: split}``) holding ``train``,
``val`` or ``test``. A split they leave out (often ``val``) is drawn from ``train``,
that fraction of it.

Inputs are float32. Classification labels are int64 indices into the sorted distinct
target values (class folder names for images); the class names are kept in the
prepared data's meta.json (``FileSplits.meta``). Regression targets are float32 (n, 1).

Every problem with the files is a ``RunyardError`` naming the file and the key, raised
before anything is written. Row numbers in messages count data rows from 1 (the header
is not a row).
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from runyard.data import DatasetInfo, images, tabular
from runyard.data.file_format import (  # noqa: F401 (re-exported: files.Args is the builder contract)
    DEFAULT_FRACTION,
    FORMATS,
    ONLY_FOR,
    SUFFIXES,
    TABULAR,
    Args,
    FileSplits,
    Loaded,
    Source,
    Split,
    closest,
    error,
    integral_labels,
    listing,
)
from runyard.data.splits import SPLITS


def sources(args: Args) -> list[str]:
    """The project-relative paths the dataset reads (DVC dependencies of its prepare stage)."""
    return [args.source] + ([args.labels] if args.labels else [])


def info(args: Args, root: Path | None = None, where: str = "") -> DatasetInfo:
    """Task and shapes, cheaply: a table's header (and its target and categorical columns),
    a listing of image folders, the headers of arrays (and the labels)."""
    src = resolve(args, root, where)
    if src.format in TABULAR:
        width, classes = tabular.describe(args, src)
        shape: tuple[int, ...] = (width,)
    elif src.format == "images":
        classes = images.describe(args, src)
        shape = (1 if args.color == "grayscale" else 3, *args.image_size)
    else:
        shape, classes = _describe_arrays(args, src)
    if args.task == "regression":
        return DatasetInfo(task="regression", input_shape=shape)
    return DatasetInfo(task="classification", input_shape=shape, num_classes=len(classes))


def build(args: Args, seed: int, root: Path | None = None, where: str = "") -> FileSplits:
    """Read, check, encode and split the files; nothing is written."""
    src = resolve(args, root, where)
    if src.format in TABULAR:
        loaded = tabular.load(args, src)
    elif src.format == "images":
        loaded = images.load(args, src)
    else:
        loaded = _load_arrays(args, src)

    meta = {"source": args.source, "format": src.format, **loaded.meta}
    classes: list[str] = []
    if args.task == "classification":
        classes, y = encode_classes(loaded.y, src, "target" if args.target else "source")
        meta["classes"] = classes
    else:
        y = loaded.y.astype(np.float32).reshape(-1, 1)
    parts = assign_splits(len(y), y if classes else None, classes, loaded.given, loaded.given_by, args, seed, src)
    meta["split_by"] = loaded.given_by if loaded.given is not None else "seed"
    if args.stream:
        meta["stream"] = True  # splits.save writes the Parquet shards too
    x = loaded.x
    return FileSplits(*(a for s in SPLITS for a in (x[parts[s]], y[parts[s]])), meta=meta)


# --------------------------------------------------------------------------- source


def resolve(args: Args, root: Path | None, where: str) -> Source:
    """The source's path and format, and the keys checked against that format."""
    root = Path.cwd() if root is None else Path(root)
    path = root / args.source
    if not path.exists():
        raise error(where, "source", f"{args.source} not found; put the data there and track it with "
                                     f"`dvc add {args.source}`")
    fmt = args.format or _infer_format(path, args.source, where)
    if fmt in ("images", "npy") and not path.is_dir():
        raise error(where, "source", f"{args.source} is a file; format {fmt} reads a folder")
    if fmt not in ("images", "npy") and path.is_dir():
        raise error(where, "source", f"{args.source} is a folder; format {fmt} reads a file")
    src = Source(path=path, rel=args.source, format=fmt, root=root, where=where)
    _check_keys(args, src)
    return src


def _infer_format(path: Path, rel: str, where: str) -> str:
    if path.is_dir():
        return "npy" if (path / "x.npy").is_file() or (path / "x_train.npy").is_file() else "images"
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise error(where, "source", f"cannot tell the format of {rel} from its suffix {path.suffix!r}; "
                                     f"set format: to one of {', '.join(FORMATS)}")
    return fmt


def _check_keys(args: Args, src: Source) -> None:
    given = args.model_fields_set
    for key, formats in ONLY_FOR.items():
        if key in given and src.format not in formats:
            raise src.error(key, f"not read for {src.format} data ({src.rel}); only for {', '.join(formats)}")
    if args.split.column is not None and not (src.format in TABULAR or args.labels):
        raise src.error("split.column", f"{src.rel} is {src.format} data, which has no columns; "
                                        f"its splits come from the files or from split fractions")
    if src.format in TABULAR and args.target is None:
        raise src.error("target", f"required for {src.format} data: the column to predict; columns of "
                                  f"{src.rel}: {listing(tabular.header(src.path, src.format, src))}")
    if src.format == "images":
        if args.image_size is None:
            raise src.error("image_size", "required for images: the [height, width] every image is "
                                          "resized to, e.g. image_size: [32, 32]")
        if args.labels is None and args.target is not None:
            raise src.error("target", "images take their classes from their folders; to read a target "
                                      "column, set labels: to a CSV with file and target columns")
        if args.labels is not None and args.target is None:
            raise src.error("target", f"required with labels: the column of {args.labels} to predict")
        if args.labels is None and args.task == "regression":
            raise src.error("task", "regression on images needs labels: a CSV with a file column and "
                                    "the target column")


# --------------------------------------------------------------------------- targets and splits


def encode_classes(y: np.ndarray, src: Source, key: str) -> tuple[list[str], np.ndarray]:
    """Sorted distinct values as class names, and each sample's index among them (int64)."""
    y = integral_labels(y, src, key)
    values, codes = np.unique(y, return_inverse=True)
    if len(values) < 2:
        raise src.error(key, f"{src.rel} has a single class ({values[0]!r} for every sample); "
                             f"classification needs at least 2")
    return [str(v) for v in values], codes.reshape(-1).astype(np.int64)


def assign_splits(n: int, y: np.ndarray | None, classes: list[str], given: np.ndarray | None, given_by: str,
                  args: Args, seed: int, src: Source) -> dict[str, np.ndarray]:
    """Sample indices per split: the files' own, the missing ones drawn from ``train``
    (or from all samples), stratified on the class indices ``y`` (None: regression)."""
    if given is None:
        pool, parts = np.arange(n), {}
    else:
        parts = {s: np.flatnonzero(given == s) for s in SPLITS}
        pool = parts.pop("train")
        if not len(pool):
            raise src.error("split", f"{given_by} give no train samples")
        for s in ("val", "test"):
            if len(parts[s]) and s in args.split.model_fields_set:
                raise src.error(f"split.{s}", f"the {s} split is given by {given_by}; remove split.{s}")
        parts = {s: idx for s, idx in parts.items() if len(idx)}
    drawn = [s for s in ("test", "val") if s not in parts]
    what = src.rel if given is None else f"the train split of {src.rel}"
    if drawn:
        _check_enough(pool, y, classes, len(drawn) + 1, what, src)
    if drawn == ["test", "val"]:
        test = args.split.fraction("test")
        pool, parts["test"] = _draw(pool, y, test, seed, "split.test", what, src)
        pool, parts["val"] = _draw(pool, y, args.split.fraction("val") / (1 - test), seed, "split.val", what, src)
    elif drawn:
        key = f"split.{drawn[0]}"
        pool, parts[drawn[0]] = _draw(pool, y, args.split.fraction(drawn[0]), seed, key, what, src)
    parts["train"] = pool
    return parts


def _check_enough(pool: np.ndarray, y: np.ndarray | None, classes: list[str], splits: int, what: str,
                  src: Source) -> None:
    if y is None:
        if len(pool) < splits:
            raise src.error("split", f"{what} has {len(pool)} samples, fewer than the {splits} splits")
        return
    values, counts = np.unique(y[pool], return_counts=True)
    if len(pool) < len(values) * splits:
        raise src.error("split", f"{what} has {len(pool)} samples, fewer than {len(values)} classes x {splits} "
                                 f"splits; stratified splits need every class in every split")
    least = int(np.argmin(counts))
    if counts[least] < splits:
        raise src.error("split", f"class {classes[values[least]]!r} has {counts[least]} sample(s) in {what}, "
                                 f"fewer than the {splits} splits it is stratified into; add samples of it "
                                 f"or leave it out")


def _draw(pool: np.ndarray, y: np.ndarray | None, fraction: float, seed: int, key: str, what: str,
          src: Source) -> tuple[np.ndarray, np.ndarray]:
    """Split ``fraction`` of ``pool`` off (stratified on ``y``): (kept, drawn)."""
    from sklearn.model_selection import train_test_split

    n = len(pool)
    n_out = math.ceil(fraction * n)
    k = len(np.unique(y[pool])) if y is not None else 1
    if n_out < k or n - n_out < k:
        raise src.error(key, f"{fraction:g} of the {n} samples of {what} makes splits of {n_out} and {n - n_out}"
                             + (f", fewer than its {k} classes; use a larger fraction or more data" if k > 1
                                else "; use another fraction or more data"))
    try:
        kept, out = train_test_split(pool, test_size=n_out, random_state=seed,
                                     stratify=y[pool] if y is not None else None)
    except ValueError as e:
        raise src.error(key, f"cannot draw {fraction:g} of {what} stratified by class: {e}") from None
    return np.asarray(kept), np.asarray(out)


# --------------------------------------------------------------------------- arrays (.npz, folder of .npy)

ARRAY_NAMES = ("x", "y", *(f"{a}_{s}" for s in SPLITS for a in ("x", "y")))


def _array_headers(src: Source) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's shape and dtype, from the .npy headers only (no data read)."""
    from numpy.lib import format as npy

    def header(f, label: str):
        try:
            version = npy.read_magic(f)
            shape, _, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(f)
        except (ValueError, OSError) as e:
            raise src.error("source", f"{label}: not a readable .npy array ({e})") from None
        return tuple(shape), dtype

    found: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    if src.format == "npz":
        try:
            with zipfile.ZipFile(src.path) as z:
                for member in z.namelist():
                    name = member.removesuffix(".npy")
                    with z.open(member) as f:
                        found[name] = header(f, f"{src.rel}: {member}")
        except (zipfile.BadZipFile, OSError) as e:
            raise src.error("source", f"{src.rel}: not a readable .npz file ({e})") from None
    else:
        for p in sorted(src.path.glob("*.npy")):
            with p.open("rb") as f:
                found[p.stem] = header(f, src.file(p))
    unknown = [n for n in found if n not in ARRAY_NAMES]
    if unknown or not found:
        what = f"unexpected array {unknown[0]!r}" if unknown else "no arrays"
        raise src.error("source", f"{src.rel}: {what}; allowed: x and y, or x_train, y_train and any of "
                                  f"x_val, y_val, x_test, y_test")
    if "x" in found or "y" in found:
        if set(found) != {"x", "y"}:
            raise src.error("source", f"{src.rel}: holds {', '.join(sorted(found))}; give x and y, or per-split "
                                      f"arrays (x_train, y_train, ...), not both")
    else:
        for s in SPLITS:
            pair = [f"x_{s}", f"y_{s}"]
            have = [n for n in pair if n in found]
            if len(have) == 1 or s == "train" and not have:
                missing = next(n for n in pair if n not in found)
                raise src.error("source", f"{src.rel}: has no array {missing!r} to go with the others")
    return found


def _describe_arrays(args: Args, src: Source) -> tuple[tuple[int, ...], list[str]]:
    headers = _array_headers(src)
    shape = _check_arrays(headers, args, src)
    classes: list[str] = []
    if args.task == "classification":
        ys = [_read_array(src, n) for n in headers if n.startswith("y")]
        classes = [str(v) for v in np.unique(np.concatenate([integral_labels(y, src, "source") for y in ys]))]
    return shape, classes


def _check_arrays(headers, args: Args, src: Source) -> tuple[int, ...]:
    """The per-sample input shape; every array's type and length checked."""
    sample: tuple[int, ...] | None = None
    for name in [n for n in ARRAY_NAMES if n.startswith("x") and n in headers]:
        shape, dtype = headers[name]
        y_name = "y" + name[1:]
        y_shape, y_dtype = headers[y_name]
        if dtype.kind not in "biuf" or not shape:
            raise src.error("source", f"{src.rel}: {name} holds {dtype} {shape}; inputs must be a numeric array "
                                      f"with one row per sample")
        if sample is not None and shape[1:] != sample:
            raise src.error("source", f"{src.rel}: {name} has samples of shape {shape[1:]}, other splits {sample}")
        sample = shape[1:]
        if not y_shape or y_shape[0] != shape[0]:
            raise src.error("source", f"{src.rel}: {y_name} has {y_shape[0] if y_shape else 0} labels for "
                                      f"{shape[0]} samples in {name}")
        # A y shaped like each sample's image (H, W) would be a segmentation mask: the door
        # for task: segmentation (labels per pixel, no class encoding of whole samples).
        if len(y_shape) > 2 or len(y_shape) == 2 and y_shape[1] != 1:
            raise src.error("source", f"{src.rel}: {y_name} has shape {y_shape}; targets must be one per "
                                      f"sample: shape (n,) or (n, 1)")
        if args.task == "regression" and y_dtype.kind not in "biuf":
            raise src.error("task", f"regression needs numeric targets; {src.rel}: {y_name} holds {y_dtype}")
        if args.task == "classification" and y_dtype.kind not in "biufUS":
            raise src.error("source", f"{src.rel}: {y_name} holds {y_dtype}; class labels must be numbers or "
                                      f"strings")
    assert sample is not None
    return sample


def _read_array(src: Source, name: str) -> np.ndarray:
    try:
        if src.format == "npz":
            with np.load(src.path, allow_pickle=False) as z:
                return z[name]
        return np.load(src.path / f"{name}.npy", allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise src.error("source", f"{src.rel}: {name}: not a readable array ({e})") from None


def _load_arrays(args: Args, src: Source) -> Loaded:
    headers = _array_headers(src)
    _check_arrays(headers, args, src)
    names = ["x"] if "x" in headers else [f"x_{s}" for s in SPLITS if f"x_{s}" in headers]
    xs, ys, given = [], [], []
    for name in names:
        x, y = _read_array(src, name), _read_array(src, "y" + name[1:])
        if x.dtype.kind == "f":
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if bad.any():
                raise src.error("source", f"{src.rel}: {name} has {int(bad.sum())} sample(s) with NaN or "
                                          f"infinite values (first: sample {int(np.argmax(bad)) + 1})")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            bad = ~np.isfinite(y.reshape(len(y), -1)).all(axis=1)
            raise src.error("source", f"{src.rel}: y{name[1:]} has {int(bad.sum())} NaN or infinite "
                                      f"value(s) (first: sample {int(np.argmax(bad)) + 1})")
        xs.append(x.astype(np.float32))
        ys.append(y.reshape(len(y)) if y.ndim == 2 else y)
        given.append(np.full(len(x), name.removeprefix("x_")))
    return Loaded(
        x=np.concatenate(xs), y=np.concatenate(ys),
        given=None if names == ["x"] else np.concatenate(given),
        given_by=f"the arrays of {src.rel}", meta={},
    )


# --------------------------------------------------------------------------- DVC


def dvc_tracked(path: str | Path, root: Path) -> bool:
    """Whether DVC tracks ``path`` (project-relative): a ``.dvc`` file beside it or a folder
    above it lists it, or a stage of a dvc.yaml / dvc.lock in the project makes it."""
    import yaml

    root = Path(root)
    target = Path(os.path.normpath(path))

    wanted = os.path.normpath(root / path)

    def covers(out: str, base: Path) -> bool:
        out = os.path.normpath(base / out)
        return wanted == out or wanted.startswith(out + os.sep)

    def outs_of(file: Path) -> list[str]:
        try:
            doc = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return []
        entries = list(doc.get("outs") or [])
        for stage in (doc.get("stages") or {}).values():
            if isinstance(stage, dict):
                entries += (stage.get("do") or stage).get("outs") or []
        found = []
        for e in entries:
            if isinstance(e, str):
                found.append(e)
            elif isinstance(e, dict) and e:
                found.append(e["path"] if isinstance(e.get("path"), str) else next(iter(e)))
        return [f for f in found if isinstance(f, str)]

    # .dvc files: dvc add / import-url write them beside what they track.
    for folder in [root / p for p in [*reversed(target.parents)]]:
        if folder.is_dir():
            for file in folder.glob("*.dvc"):
                if file.is_file() and any(covers(o, folder) for o in outs_of(file)):
                    return True
    # Pipeline stages may live anywhere in the project.
    skip = {"__pycache__", "node_modules", "mlruns"}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in skip
                   and not (Path(folder) / d / "pyvenv.cfg").exists()]
        for name in ("dvc.yaml", "dvc.lock"):
            if name in files and any(covers(o, Path(folder)) for o in outs_of(Path(folder) / name)):
                return True
    return False
