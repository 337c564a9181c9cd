"""Image folders for ``runyard.data.files``: PNG or JPEG, read with Pillow.

Layouts::

    source/<class>/*.png                  classes from the folder names (sorted)
    source/{train,val,test}/<class>/*.png the splits given too (val and test optional)
    source/**/*.png + labels: a CSV       a ``file`` column (path inside source) and the
                                          ``target`` column: classes or regression targets

Each image is turned upright (EXIF orientation), converted to grayscale or RGB, resized
to ``image_size`` (stretched: the aspect ratio is not kept, so mixed sizes are fine) and
scaled to [0, 1]: float32 (channels, height, width). 16-bit grayscale is scaled by 65535.
Files whose names start with a dot are skipped; any other file in a class folder must
be an image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runyard.data import tabular
from runyard.data.file_format import Args, Loaded, Source, closest, integral_labels, listing
from runyard.data.splits import SPLITS

SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
FILE_COLUMN = "file"


def describe(args: Args, src: Source) -> list[str]:
    """The class names (empty for regression), from a folder listing or the labels' target column."""
    if args.labels is not None:
        path, fmt = _labels_file(args, src)
        _check_label_columns(args, path, fmt, src)
        if args.task == "regression":
            return []
        target = tabular.read(path, fmt, (args.target,), src)[args.target].dropna().to_numpy()
        return [str(v) for v in np.unique(integral_labels(target, src, "target"))]
    return sorted({folder.name for folder, _ in class_folders(src)})


def load(args: Args, src: Source) -> Loaded:
    if args.labels is not None:
        files, y, given, given_by = _listed(args, src)
    else:
        found = scan(src)
        files = [f for f, _, _ in found]
        y = np.array([label for _, label, _ in found])
        splits = [s for _, _, s in found]
        given = None if splits[0] is None else np.array(splits)
        given_by = f"the {'/ '.join(sorted({s for s in splits if s}, key=SPLITS.index))}/ folders of {src.rel}"
    height, width = args.image_size
    channels = 1 if args.color == "grayscale" else 3
    x = np.empty((len(files), channels, height, width), np.float32)
    for i, f in enumerate(files):
        x[i] = read_image(f, (height, width), args.color, src)
    meta = {"target": args.target} if args.target else {}
    return Loaded(x=x, y=y, given=given, given_by=given_by, meta=meta)


def scan(src: Source) -> list[tuple[Path, str, str | None]]:
    """Every image with its class folder's name and its split folder's (None: no split folders)."""
    found: list[tuple[Path, str, str | None]] = []
    for class_dir, split in class_folders(src):
        images = _visible(class_dir)
        if not images:
            raise src.error("source", f"{src.file(class_dir)}/ is an empty class folder; add images of "
                                      f"{class_dir.name!r} or remove it")
        for f in images:
            if f.is_dir() or f.suffix.lower() not in SUFFIXES:
                what = "a folder" if f.is_dir() else "not an image"
                raise src.error("source", f"{src.file(f)}: {what} in a class folder; allowed: "
                                          f"{', '.join(SUFFIXES)} files")
            found.append((f, class_dir.name, split))
    return found


def class_folders(src: Source) -> list[tuple[Path, str | None]]:
    """Each class folder and the split folder it is in (None: no split folders); folders
    are listed, their images are not."""
    dirs = [p for p in _visible(src.path) if p.is_dir()]
    split_dirs = sorted((d for d in dirs if d.name in SPLITS), key=lambda d: SPLITS.index(d.name))
    if split_dirs:
        others = [d.name for d in dirs if d.name not in SPLITS]
        if others or split_dirs[0].name != "train":
            raise src.error("source", f"{src.rel} mixes split folders ({', '.join(d.name for d in split_dirs)}) with "
                                      f"{', '.join(others) or 'no train folder'}; use train/ (and val/, test/) "
                                      f"holding one folder per class, or class folders only")
    layout: list[tuple[Path, str | None]] = [(d, d.name) for d in split_dirs] or [(src.path, None)]
    found: list[tuple[Path, str | None]] = []
    for folder, split in layout:
        entries = _visible(folder)
        loose = [p for p in entries if p.suffix.lower() in SUFFIXES and not p.is_dir()]
        classes = [p for p in entries if p.is_dir()]
        if loose or not classes:
            what = "images outside class folders" if loose else "no class folders"
            raise src.error("source", f"{src.file(folder)} has {what}; put the images in one folder per class: "
                                      f"{src.file(folder)}/<class>/*.png")
        found += [(c, split) for c in classes]
    return found


def read_image(path: Path, size: tuple[int, int], color: str, src: Source) -> np.ndarray:
    """One image as float32 (channels, height, width) in [0, 1]."""
    from PIL import Image, ImageOps

    height, width = size
    try:
        with Image.open(path) as im:
            # A JPEG decodes straight to a smaller scale (still at least the size wanted).
            im.draft("L" if color == "grayscale" else "RGB", (max(size),) * 2)
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I") or im.mode == "F":  # 16- or 32-bit grayscale
                scale = 65535.0 if im.mode.startswith("I") else 1.0
                im = Image.fromarray(np.asarray(im, np.float32) / scale)
                arr = np.asarray(im.resize((width, height), Image.Resampling.BILINEAR), np.float32)[None]
                return np.clip(np.repeat(arr, 3, axis=0) if color == "rgb" else arr, 0, 1)
            im = im.convert("L" if color == "grayscale" else "RGB").resize((width, height), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise src.error("source", f"{src.file(path)}: not a readable image ({e})") from None
    arr = np.asarray(im, np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


# --------------------------------------------------------------------------- labels: a CSV


def _labels_file(args: Args, src: Source) -> tuple[Path, str]:
    path = src.root / args.labels
    if not path.is_file():
        raise src.error("labels", f"{args.labels} not found; put the file there and track it with "
                                  f"`dvc add {args.labels}`")
    fmt = LABEL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise src.error("labels", f"{args.labels}: a labels file is CSV or Parquet ({', '.join(LABEL_FORMATS)})")
    return path, fmt


def _check_label_columns(args: Args, path: Path, fmt: str, src: Source) -> None:
    cols = tabular.header(path, fmt, src)
    if FILE_COLUMN not in cols:
        raise src.error("labels", f"{args.labels} has no column {FILE_COLUMN!r} (each image's path inside "
                                  f"{src.rel}){closest(FILE_COLUMN, cols)} (columns: {listing(cols)})")
    tabular.require(src, "target", args.target, cols, args.labels)
    if args.split.column is not None:
        tabular.require(src, "split.column", args.split.column, cols, args.labels)


def _listed(args: Args, src: Source):
    path, fmt = _labels_file(args, src)
    _check_label_columns(args, path, fmt, src)
    columns = (FILE_COLUMN, args.target, *([args.split.column] if args.split.column else []))
    table = tabular.read(path, fmt, columns, src)
    tabular.check_complete(table, args.labels, src)
    tabular.check_target(table[args.target], args, args.labels, src)
    files = [src.path / str(f) for f in table[FILE_COLUMN]]
    missing = [i for i, f in enumerate(files) if not f.is_file()]
    if missing:
        i = missing[0]
        raise src.error("labels", f"{args.labels}: {len(missing)} file(s) not found in {src.rel} (first: "
                                  f"{table[FILE_COLUMN].iloc[i]!r}, row {i + 1})")
    given = tabular.given_splits(table, args, args.labels, src)
    return files, table[args.target].to_numpy(), given, f"column {args.split.column!r} of {args.labels}"
