"""Datasets from the user's files (runyard.data.files): CSV, Parquet, image folders, arrays.

Each test writes small files into tmp_path, builds them, and checks shapes, dtypes,
splits, stratification and seed determinism; then one test per kind of bad input,
checking the one-line message names the file and the key.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from pydantic import ValidationError

from runyard.data import files
from runyard.data.files import Args
from runyard.errors import RunyardError

WHERE = "params.yaml: datasets.mine"
KEYS = [f"{a}_{s}" for s in ("train", "val", "test") for a in ("x", "y")]


def args(**raw) -> Args:
    return Args.model_validate(raw)


def build(a: Args, root, seed: int = 0):
    return files.build(a, seed, root=root, where=WHERE)


def problem(a: Args, root, seed: int = 0) -> str:
    """The message of the error that building (after info) raises."""
    with pytest.raises(RunyardError) as e:
        files.info(a, root=root, where=WHERE)
        files.build(a, seed, root=root, where=WHERE)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{WHERE}: "), message
    return message


def check_splits(s, info) -> None:
    """Shapes agree with info, dtypes are runyard's, no split is empty."""
    for split in ("train", "val", "test"):
        x, y = getattr(s, f"x_{split}"), getattr(s, f"y_{split}")
        assert len(x) == len(y) > 0, split
        assert x.dtype == np.float32 and x.shape[1:] == info.input_shape
        if info.task == "classification":
            assert y.dtype == np.int64 and y.ndim == 1 and y.min() >= 0 and y.max() < info.num_classes
        else:
            assert y.dtype == np.float32 and y.shape == (len(x), 1)
    if info.task == "classification":
        assert len(s.meta["classes"]) == info.num_classes


def assert_same(a, b) -> None:
    for key in KEYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


# --------------------------------------------------------------------------- files


@pytest.fixture
def wine(tmp_path):
    """scikit-learn's wine data as data/raw/wine.csv, the class as a string column."""
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "cultivar"})
    frame["cultivar"] = np.asarray(bunch.target_names)[bunch.target]
    (tmp_path / "data/raw").mkdir(parents=True)
    frame.to_csv(tmp_path / "data/raw/wine.csv", index=False)
    return tmp_path, frame


@pytest.fixture
def iris(tmp_path):
    """scikit-learn's iris data as data/raw/iris.parquet, the species as a string column."""
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.frame.drop(columns="target")
    frame.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    frame["species"] = np.asarray(bunch.target_names)[bunch.target]
    (tmp_path / "data/raw").mkdir(parents=True)
    frame.to_parquet(tmp_path / "data/raw/iris.parquet")
    return tmp_path, frame


def draw(kind: str, size: tuple[int, int], rng: np.random.Generator, mode: str = "L") -> Image.Image:
    """A circle or a square on black, of a random size and place."""
    w, h = size
    im = Image.new(mode, size)
    r = rng.uniform(0.2, 0.4) * min(w, h)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    fill = 255 if mode == "L" else (255, int(rng.integers(0, 255)), 0)
    box = [cx - r, cy - r, cx + r, cy + r]
    (ImageDraw.Draw(im).ellipse if kind == "circle" else ImageDraw.Draw(im).rectangle)(box, fill=fill)
    return im


def write_images(folder, per_class: int = 10, seed: int = 0, kinds=("circle", "square")) -> None:
    """PNG and JPEG files of mixed sizes and modes, one folder per kind."""
    rng = np.random.default_rng(seed)
    for kind in kinds:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (20, 20) if i % 2 else (28, 24)
            im = draw(kind, size, rng, mode="RGB" if i % 3 == 0 else "L")
            im.save(folder / kind / (f"{i:03d}.jpg" if i % 5 == 4 else f"{i:03d}.png"))


@pytest.fixture
def shapes(tmp_path):
    write_images(tmp_path / "data/raw/shapes", per_class=10)
    return tmp_path


# --------------------------------------------------------------------------- CSV


def test_csv_classification_stratified_and_seeded(wine):
    root, frame = wine
    a = args(source="data/raw/wine.csv", target="cultivar")
    info = files.info(a, root=root)
    assert (info.task, info.input_shape, info.num_classes) == ("classification", (13,), 3)
    s = build(a, root)
    check_splits(s, info)
    assert s.meta["classes"] == ["class_0", "class_1", "class_2"]  # string labels, sorted
    assert s.meta["features"] == [c for c in frame.columns if c != "cultivar"]
    assert s.meta["format"] == "csv" and s.meta["split_by"] == "seed"
    n = len(frame)
    sizes = s.sizes()
    assert sum(sizes.values()) == n
    assert sizes["test"] == math.ceil(0.15 * n)
    assert abs(sizes["val"] - 0.15 * n) <= 1
    # Stratified: each split's class counts are the whole's, to within one sample.
    whole = np.bincount(frame["cultivar"].map({"class_0": 0, "class_1": 1, "class_2": 2}), minlength=3) / n
    for split, size in sizes.items():
        counts = np.bincount(getattr(s, f"y_{split}"), minlength=3)
        assert np.all(np.abs(counts - whole * size) <= 1), (split, counts)
    # Every row lands in exactly one split, its features intact.
    rows = np.concatenate([s.x_train, s.x_val, s.x_test])
    expected = frame.drop(columns="cultivar").to_numpy(np.float32)
    np.testing.assert_array_equal(np.unique(rows, axis=0), np.unique(expected, axis=0))
    # The same seed gives the same splits; another seed others.
    assert_same(s, build(a, root))
    other = build(a, root, seed=1)
    assert not np.array_equal(other.x_test, s.x_test)


def test_csv_semicolon_delimiter_and_regression(wine):
    root, frame = wine
    frame.drop(columns="cultivar").to_csv(root / "data/raw/wine2.csv", sep=";", index=False)
    a = args(source="data/raw/wine2.csv", target="alcohol", task="regression", split={"val": 0.2, "test": 0.1})
    info = files.info(a, root=root)
    assert (info.task, info.input_shape, info.num_classes) == ("regression", (12,), None)
    s = build(a, root)
    check_splits(s, info)
    assert s.sizes()["test"] == math.ceil(0.1 * len(frame))
    assert abs(s.sizes()["val"] - 0.2 * len(frame)) <= 1
    assert "classes" not in s.meta
    targets = np.sort(np.concatenate([s.y_train, s.y_val, s.y_test]).ravel())
    np.testing.assert_allclose(targets, np.sort(frame["alcohol"].to_numpy(np.float32)))


def test_csv_features_and_split_column(wine):
    root, frame = wine
    frame["fold"] = np.where(np.arange(len(frame)) % 5 == 0, "test", "train")
    frame.to_csv(root / "data/raw/wine.csv", index=False)
    a = args(source="data/raw/wine.csv", target="cultivar", features=["proline", "alcohol"], split={"column": "fold"})
    info = files.info(a, root=root)
    assert info.input_shape == (2,)
    s = build(a, root)
    check_splits(s, info)
    assert s.meta["features"] == ["proline", "alcohol"]
    assert s.meta["split_by"] == "column 'fold' of data/raw/wine.csv"
    test_rows = frame[frame["fold"] == "test"]
    np.testing.assert_array_equal(s.x_test, test_rows[["proline", "alcohol"]].to_numpy(np.float32))
    # val is drawn from the train rows, 0.15 of them, stratified
    n_train = (frame["fold"] == "train").sum()
    assert s.sizes() == {"train": n_train - math.ceil(0.15 * n_train), "val": math.ceil(0.15 * n_train),
                         "test": len(test_rows)}
    assert set(np.unique(s.y_val)) == {0, 1, 2}


def test_integer_classes_keep_their_order(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([3, 10, 2], 20)
    pd.DataFrame({"a": rng.normal(size=60), "quality": y}).to_csv(tmp_path / "q.csv", index=False)
    s = build(args(source="q.csv", target="quality"), tmp_path)
    assert s.meta["classes"] == ["2", "3", "10"]  # numeric order, not string order


# --------------------------------------------------------------------------- Parquet


def test_parquet_regression_with_categorical(iris):
    root, frame = iris
    a = args(source="data/raw/iris.parquet", target="petal_width", task="regression", categorical=["species"])
    info = files.info(a, root=root)
    assert info.input_shape == (3 + 3,)  # three numeric columns, three species one-hot
    s = build(a, root)
    check_splits(s, info)
    species = ["setosa", "versicolor", "virginica"]
    assert s.meta["features"] == ["sepal_length", "sepal_width", "petal_length"] + [f"species={v}" for v in species]
    x = np.concatenate([s.x_train, s.x_val, s.x_test])
    np.testing.assert_array_equal(x[:, 3:].sum(axis=1), 1)  # exactly one category each
    assert set(np.unique(x[:, 3:])) == {0.0, 1.0}


def test_parquet_classification(iris):
    root, _ = iris
    a = args(source="data/raw/iris.parquet", target="species")
    assert files.info(a, root=root).num_classes == 3
    s = build(a, root, seed=3)
    check_splits(s, files.info(a, root=root))
    assert s.meta["classes"] == ["setosa", "versicolor", "virginica"]
    for split in ("train", "val", "test"):
        counts = np.bincount(getattr(s, f"y_{split}"), minlength=3)
        assert counts.max() - counts.min() <= 1  # iris is balanced, so are its splits


# --------------------------------------------------------------------------- images


def test_image_folders_grayscale(shapes):
    a = args(source="data/raw/shapes", image_size=[16, 12], color="grayscale")
    info = files.info(a, root=shapes)
    assert (info.task, info.input_shape, info.num_classes) == ("classification", (1, 16, 12), 2)
    s = build(a, shapes)
    check_splits(s, info)
    assert s.meta["classes"] == ["circle", "square"] and s.meta["format"] == "images"
    assert sum(s.sizes().values()) == 20
    for split in ("train", "val", "test"):
        assert set(np.unique(getattr(s, f"y_{split}"))) == {0, 1}  # stratified
    x = np.concatenate([s.x_train, s.x_val, s.x_test])
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    assert_same(s, build(a, shapes))


def test_image_folders_rgb_square_size_and_given_splits(tmp_path):
    for split, n in [("train", 8), ("test", 3)]:
        write_images(tmp_path / "imgs" / split, per_class=n, seed=len(split))
    a = args(source="imgs", image_size=8)
    info = files.info(a, root=tmp_path)
    assert info.input_shape == (3, 8, 8)
    s = build(a, tmp_path)
    check_splits(s, info)
    assert s.sizes()["test"] == 6
    assert s.sizes()["train"] + s.sizes()["val"] == 16
    assert s.meta["split_by"] == "the train/ test/ folders of imgs"


def test_images_with_a_labels_csv_for_regression(shapes):
    folder = shapes / "data/raw/shapes"
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*"))
    pd.DataFrame({"file": names, "area": np.linspace(0, 1, len(names))}).to_csv(shapes / "labels.csv", index=False)
    a = args(source="data/raw/shapes", labels="labels.csv", target="area", task="regression", image_size=[10, 10])
    info = files.info(a, root=shapes)
    assert (info.task, info.input_shape) == ("regression", (3, 10, 10))
    check_splits(build(a, shapes), info)
    assert files.sources(a) == ["data/raw/shapes", "labels.csv"]


# --------------------------------------------------------------------------- arrays


def test_npz_x_y(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(90, 2, 5)), np.repeat([0, 1, 2], 30)
    np.savez(tmp_path / "arrays.npz", x=x, y=y)
    a = args(source="arrays.npz")
    info = files.info(a, root=tmp_path)
    assert (info.input_shape, info.num_classes) == ((2, 5), 3)
    s = build(a, tmp_path)
    check_splits(s, info)
    assert s.meta["classes"] == ["0", "1", "2"]
    assert_same(s, build(a, tmp_path))


def test_npz_given_splits_and_regression(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x_train=rng.normal(size=(40, 3)), y_train=rng.normal(size=(40, 1)),
             x_test=rng.normal(size=(10, 3)).astype(np.float32), y_test=rng.normal(size=10))
    a = args(source="a.npz", task="regression", split={"val": 0.25})
    s = build(a, tmp_path)
    check_splits(s, files.info(a, root=tmp_path))
    assert s.sizes() == {"train": 30, "val": 10, "test": 10}
    assert s.meta["split_by"] == "the arrays of a.npz"


def test_npy_folder(tmp_path):
    (tmp_path / "arr").mkdir()
    np.save(tmp_path / "arr/x.npy", np.arange(60 * 4, dtype=np.uint8).reshape(60, 4))
    np.save(tmp_path / "arr/y.npy", np.array(["cat", "dog"] * 30))
    a = args(source="arr")
    info = files.info(a, root=tmp_path)
    assert (info.input_shape, info.num_classes) == ((4,), 2)
    s = build(a, tmp_path)
    check_splits(s, info)
    assert s.meta["format"] == "npy" and s.meta["classes"] == ["cat", "dog"]


# --------------------------------------------------------------------------- bad input


def test_missing_source_says_dvc_add(tmp_path):
    msg = problem(args(source="data/raw/wine.csv", target="y"), tmp_path)
    assert msg == (f"{WHERE}: source: data/raw/wine.csv not found; put the data there and track it with "
                   f"`dvc add data/raw/wine.csv`")


def test_unknown_format(tmp_path):
    (tmp_path / "wine.xlsx").write_bytes(b"PK")
    msg = problem(args(source="wine.xlsx", target="y"), tmp_path)
    assert "source: cannot tell the format of wine.xlsx from its suffix '.xlsx'" in msg
    assert "csv, parquet, images, npz, npy" in msg
    with pytest.raises(ValidationError, match="'csv', 'parquet', 'images', 'npz' or 'npy'"):
        args(source="wine.xlsx", format="xlsx")


def test_misspelt_target_suggests_the_closest_column(wine):
    root, _ = wine
    msg = problem(args(source="data/raw/wine.csv", target="cultivars"), root)
    assert msg.startswith(f"{WHERE}: target: 'cultivars' is not a column of data/raw/wine.csv; "
                          f"did you mean 'cultivar'? (columns: alcohol, malic_acid")
    msg = problem(args(source="data/raw/wine.csv"), root)
    assert "target: required for csv data: the column to predict; columns of data/raw/wine.csv: alcohol" in msg


def test_string_feature_column_is_named(wine):
    root, frame = wine
    frame["region"] = np.where(np.arange(len(frame)) % 2, "north", "south")
    frame.to_csv(root / "data/raw/wine.csv", index=False)
    msg = problem(args(source="data/raw/wine.csv", target="cultivar"), root)
    assert msg == (f"{WHERE}: features: column 'region' of data/raw/wine.csv is not numeric ('south' in row 1); "
                   f"list it under categorical: to one-hot encode it, or leave it out of features:")
    # Listed as categorical, it is one-hot encoded.
    s = build(args(source="data/raw/wine.csv", target="cultivar", categorical=["region"]), root)
    assert s.meta["features"][-2:] == ["region=north", "region=south"]


def test_empty_values_are_counted(wine):
    root, frame = wine
    frame.loc[[4, 9, 30], "magnesium"] = np.nan
    frame.to_csv(root / "data/raw/wine.csv", index=False)
    msg = problem(args(source="data/raw/wine.csv", target="cultivar"), root)
    assert msg == (f"{WHERE}: source: column 'magnesium' of data/raw/wine.csv has 3 empty or NaN value(s) "
                   f"(first in row 5); fill or drop them")


def test_nan_in_arrays(tmp_path):
    x = np.ones((30, 2))
    x[7, 1] = np.nan
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(30) % 2)
    msg = problem(args(source="a.npz"), tmp_path)
    assert msg == f"{WHERE}: source: a.npz: x has 1 sample(s) with NaN or infinite values (first: sample 8)"


def test_truncated_image_is_named(shapes):
    bad = shapes / "data/raw/shapes/square/003.png"
    bad.write_bytes(bad.read_bytes()[:60])
    msg = problem(args(source="data/raw/shapes", image_size=[8, 8]), shapes)
    assert msg.startswith(f"{WHERE}: source: data/raw/shapes/square/003.png: not a readable image (")
    (shapes / "data/raw/shapes/square/003.png").write_bytes(b"not a png at all")
    assert "square/003.png: not a readable image" in problem(args(source="data/raw/shapes", image_size=8), shapes)


def test_too_few_samples_for_classes_and_splits(tmp_path):
    pd.DataFrame({"a": range(8), "y": list("abcd") * 2}).to_csv(tmp_path / "t.csv", index=False)
    msg = problem(args(source="t.csv", target="y"), tmp_path)
    assert msg == (f"{WHERE}: split: t.csv has 8 samples, fewer than 4 classes x 3 splits; stratified splits "
                   f"need every class in every split")
    pd.DataFrame({"a": range(12), "y": list("aaaaaaaaaabb")}).to_csv(tmp_path / "t.csv", index=False)
    msg = problem(args(source="t.csv", target="y", split={"test": 0.3, "val": 0.3}), tmp_path)
    assert msg == (f"{WHERE}: split: class 'b' has 2 sample(s) in t.csv, fewer than the 3 splits it is "
                   f"stratified into; add samples of it or leave it out")


def test_empty_class_folder(shapes):
    (shapes / "data/raw/shapes/triangle").mkdir()
    msg = problem(args(source="data/raw/shapes", image_size=8), shapes)
    assert msg == (f"{WHERE}: source: data/raw/shapes/triangle/ is an empty class folder; add images of "
                   f"'triangle' or remove it")


def test_image_layout_problems(shapes):
    folder = shapes / "data/raw/shapes"
    Image.new("L", (4, 4)).save(folder / "loose.png")
    assert "data/raw/shapes has images outside class folders" in problem(args(source="data/raw/shapes",
                                                                              image_size=8), shapes)
    (folder / "loose.png").unlink()
    (folder / "circle/notes.txt").write_text("x")
    assert "data/raw/shapes/circle/notes.txt: not an image in a class folder; allowed: .png, .jpg, .jpeg" in problem(
        args(source="data/raw/shapes", image_size=8), shapes)
    msg = problem(args(source="data/raw/shapes"), shapes)
    assert msg.startswith(f"{WHERE}: image_size: required for images")


def test_keys_for_another_format_are_refused(wine):
    root, _ = wine
    msg = problem(args(source="data/raw/wine.csv", target="cultivar", image_size=8), root)
    assert msg == f"{WHERE}: image_size: not read for csv data (data/raw/wine.csv); only for images"


def test_classification_of_a_fractional_target_suggests_regression(wine):
    root, _ = wine
    msg = problem(args(source="data/raw/wine.csv", target="alcohol"), root)
    assert msg.startswith(f"{WHERE}: target: data/raw/wine.csv has non-integer class labels (")
    assert msg.endswith("for a numeric target set task: regression")


def test_regression_on_a_string_target(wine):
    root, _ = wine
    msg = problem(args(source="data/raw/wine.csv", target="cultivar", task="regression"), root)
    assert msg.startswith(f"{WHERE}: target: column 'cultivar' of data/raw/wine.csv is not numeric ('class_0'")


def test_bad_split_column_values(wine):
    root, frame = wine
    frame["fold"] = "validation"
    frame.to_csv(root / "data/raw/wine.csv", index=False)
    msg = problem(args(source="data/raw/wine.csv", target="cultivar", split={"column": "fold"}), root)
    assert msg == (f"{WHERE}: split.column: column 'fold' of data/raw/wine.csv holds 'validation' (row 1); "
                   f"allowed: train, val, test")


def test_split_fraction_for_a_split_the_files_give(tmp_path):
    for split in ("train", "val", "test"):
        write_images(tmp_path / "imgs" / split, per_class=3)
    msg = problem(args(source="imgs", image_size=8, split={"test": 0.2}), tmp_path)
    assert msg == f"{WHERE}: split.test: the test split is given by the train/ val/ test/ folders of imgs; " \
                  f"remove split.test"


def test_args_refuse_paths_outside_the_project_and_bad_fractions():
    with pytest.raises(ValidationError, match="must be a path inside the project"):
        args(source="../elsewhere.csv")
    with pytest.raises(ValidationError, match="must be a path inside the project"):
        args(source="/abs/wine.csv")
    with pytest.raises(ValidationError, match="val \\+ test must be below 1"):
        args(source="a.csv", split={"val": 0.5, "test": 0.5})
    with pytest.raises(ValidationError, match="categorical: b not in features"):
        args(source="a.csv", features=["a"], categorical=["b"])


def test_dvc_tracked(tmp_path):
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/wine.csv").write_text("a\n1\n")
    assert not files.dvc_tracked("data/raw/wine.csv", tmp_path)
    (tmp_path / "data/raw/wine.csv.dvc").write_text("outs:\n- md5: 0\n  path: wine.csv\n")
    assert files.dvc_tracked("data/raw/wine.csv", tmp_path)
    (tmp_path / "data/raw/wine.csv.dvc").unlink()
    (tmp_path / "data/raw.dvc").write_text("outs:\n- path: raw\n")  # the folder above it
    assert files.dvc_tracked("data/raw/wine.csv", tmp_path)
    (tmp_path / "data/raw.dvc").unlink()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/dvc.yaml").write_text("stages:\n  get:\n    cmd: x\n    outs:\n    - ../data/raw/wine.csv:\n"
                                           "        cache: false\n")
    assert files.dvc_tracked("data/raw/wine.csv", tmp_path)
    assert not files.dvc_tracked("data/raw/other.csv", tmp_path)
