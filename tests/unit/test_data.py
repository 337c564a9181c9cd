"""Datasets: exact reference data, stratified/deterministic splits, the on-disk format."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from runyard.commands.prepare import prepare
from runyard.data import DATASETS, builder, dataset_info, digits, mnist1d, regression1d
from runyard.data import splits as split_store
from runyard.data.splits import Splits
from runyard.errors import RunyardError
from tests.conftest import files_under, runyard_cli

KEYS = [f"{a}_{s}" for s in ("train", "val", "test") for a in ("x", "y")]
SPLIT_FILES = {f"{k}.npy" for k in KEYS} | {"meta.json"}


def assert_same_splits(a: Splits, b: Splits) -> None:
    for key in KEYS:
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype, key
        np.testing.assert_array_equal(x, y, err_msg=key)


# --------------------------------------------------------------------------- mnist1d


@pytest.fixture(scope="module")
def mnist1d_default() -> Splits:
    return mnist1d.build(mnist1d.Args(), seed=0)


@pytest.fixture(scope="module")
def mnist1d_reference() -> dict:
    from mnist1d.data import get_dataset_args, make_dataset

    return make_dataset(get_dataset_args())


def test_mnist1d_train_test_are_the_papers_default_dataset(mnist1d_default, mnist1d_reference):
    s, ref = mnist1d_default, mnist1d_reference
    assert s.sizes() == {"train": 4000, "val": 1000, "test": 1000}
    for ours, theirs in [("x_train", "x"), ("y_train", "y"), ("x_test", "x_test"), ("y_test", "y_test")]:
        np.testing.assert_array_equal(getattr(s, ours), ref[theirs].astype(getattr(s, ours).dtype))
    for key in ("x_train", "x_val", "x_test"):
        assert getattr(s, key).dtype == np.float32
        assert getattr(s, key).shape[1:] == (40,)
    for key in ("y_train", "y_val", "y_test"):
        assert getattr(s, key).dtype == np.int64


def test_mnist1d_val_split(mnist1d_default):
    s = mnist1d_default
    assert len(s.x_val) == len(s.y_val) == mnist1d.Args().val_samples
    assert set(np.unique(s.y_val)) == set(range(10))
    # An independent draw: no validation signal is a copy of a training one.
    train_rows = {row.tobytes() for row in s.x_train}
    assert not any(row.tobytes() in train_rows for row in s.x_val)


@pytest.fixture(scope="module")
def mnist1d_again() -> Splits:
    return mnist1d.build(mnist1d.Args(), seed=0)


def test_mnist1d_building_twice_is_identical(mnist1d_default, mnist1d_again):
    assert mnist1d_again is not mnist1d_default
    assert_same_splits(mnist1d_again, mnist1d_default)


SMALL_MNIST1D = mnist1d.Args(num_samples=200, val_samples=15)


def test_mnist1d_val_samples_not_a_multiple_of_ten():
    s = mnist1d.build(SMALL_MNIST1D, seed=0)
    assert s.sizes() == {"train": 160, "val": 15, "test": 40}


def test_mnist1d_global_seed_does_not_change_the_data():
    # The data's identity is the generator seed in Args, not params.yaml's seed.
    assert_same_splits(mnist1d.build(SMALL_MNIST1D, seed=0), mnist1d.build(SMALL_MNIST1D, seed=7))
    other = mnist1d.build(SMALL_MNIST1D.model_copy(update={"seed": 1}), seed=0)
    assert not np.array_equal(other.x_train, mnist1d.build(SMALL_MNIST1D, seed=0).x_train)


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_splits() -> Splits:
    return digits.build(digits.Args(), seed=0)


def test_digits_sizes_shapes_and_range(digits_splits):
    s = digits_splits
    sizes = s.sizes()
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == math.ceil(1797 * 0.2)
    assert sizes["val"] == pytest.approx(1797 * 0.15, abs=2)
    for split in ("train", "val", "test"):
        x, y = getattr(s, f"x_{split}"), getattr(s, f"y_{split}")
        assert x.shape == (len(y), 1, 8, 8)
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert max(s.x_train.max(), s.x_test.max()) == 1.0  # scaled by 16, not by the sample max


def test_digits_splits_are_stratified_and_disjoint(digits_splits):
    s = digits_splits
    for split in ("train", "val", "test"):
        counts = np.bincount(getattr(s, f"y_{split}"), minlength=10)
        assert (counts > 0).all(), (split, counts)
        # Stratified: each class's share is within 2 samples of its overall share.
        share = counts / counts.sum()
        overall = np.bincount(np.concatenate([s.y_train, s.y_val, s.y_test])) / 1797
        assert np.abs(share - overall).max() * counts.sum() <= 2
    # Every image of the dataset appears exactly once across the splits.
    from sklearn.datasets import load_digits

    every = np.concatenate([s.x_train, s.x_val, s.x_test]).reshape(1797, 64) * 16
    original = load_digits().data
    assert sorted(map(bytes, np.rint(every).astype(np.uint8))) == sorted(
        map(bytes, original.astype(np.uint8))
    )


def test_digits_deterministic_per_seed(digits_splits):
    assert_same_splits(digits.build(digits.Args(), seed=0), digits_splits)
    other = digits.build(digits.Args(), seed=1)
    assert other.sizes() == digits_splits.sizes()
    assert not np.array_equal(other.y_train, digits_splits.y_train)
    assert not np.array_equal(other.x_test, digits_splits.x_test)


# --------------------------------------------------------------------------- regression1d


def reference_target(x):
    return 0.2 + 0.4 * x**3 + 0.3 * x * math.sin(15 * x) + 0.05 * math.cos(20 * x)


@pytest.mark.parametrize("x", [-1.0, -0.5, -0.1, 0.0, 0.3, 0.77, 1.0])
def test_regression_target_formula(x):
    assert regression1d.target(np.array(x)) == pytest.approx(reference_target(x), abs=1e-12)


def test_regression_target_at_zero_and_one():
    assert regression1d.target(np.array(0.0)) == pytest.approx(0.25)
    assert regression1d.target(np.array(1.0)) == pytest.approx(
        0.6 + 0.3 * math.sin(15) + 0.05 * math.cos(20)
    )


def test_regression_test_split_is_clean_even_grid():
    args = regression1d.Args(noise=0.5)
    s = regression1d.build(args, seed=0)
    assert s.sizes() == {"train": 1000, "val": 200, "test": 500}
    grid = np.linspace(-1, 1, args.test_samples).reshape(-1, 1)
    assert s.x_test.shape == (500, 1) and s.x_test.dtype == np.float32
    np.testing.assert_array_equal(s.x_test, grid.astype(np.float32))
    assert s.x_test[0, 0] == -1.0 and s.x_test[-1, 0] == 1.0
    np.testing.assert_allclose(np.diff(s.x_test[:, 0]), 2 / 499, rtol=1e-4)
    # Test targets are exact (no noise) ...
    np.testing.assert_array_equal(s.y_test, regression1d.target(grid).astype(np.float32))
    np.testing.assert_allclose(s.y_test, regression1d.target(s.x_test.astype(np.float64)), atol=1e-6)
    # ... while train/val get the requested noise.
    resid = s.y_train - regression1d.target(s.x_train.astype(np.float64))
    assert resid.std() == pytest.approx(0.5, rel=0.1)


def test_regression_without_noise_and_determinism():
    s = regression1d.build(regression1d.Args(), seed=3)
    for split in ("train", "val"):
        x, y = getattr(s, f"x_{split}"), getattr(s, f"y_{split}")
        assert x.shape == y.shape == (len(y), 1)
        assert x.min() >= -1 and x.max() <= 1
        np.testing.assert_allclose(y, regression1d.target(x.astype(np.float64)), atol=1e-6)
    assert_same_splits(regression1d.build(regression1d.Args(), seed=3), s)
    assert not np.array_equal(regression1d.build(regression1d.Args(), seed=4).x_train, s.x_train)


# --------------------------------------------------------------------------- registry of datasets


@pytest.mark.parametrize("name", list(DATASETS))
def test_dataset_info(name):
    info = dataset_info(name)
    assert info.num_outputs == (info.num_classes or 1)
    assert (info.task == "regression") == (info.num_classes is None)


def test_unknown_dataset_lists_allowed():
    with pytest.raises(RunyardError, match="unknown dataset 'nosuch'; allowed: mnist1d, digits, regression1d"):
        builder("nosuch")


# --------------------------------------------------------------------------- splits on disk


def tiny_splits(offset: float = 0.0) -> Splits:
    rng = np.random.default_rng(0)

    def part(n):
        return (rng.standard_normal((n, 3)).astype(np.float32) + offset,
                rng.integers(0, 4, n).astype(np.int64))

    return Splits(*part(7), *part(3), *part(4))


def test_splits_save_load_round_trip(tmp_path):
    out = tmp_path / "data" / "toy"
    s = tiny_splits()
    split_store.save(s, out, {"dataset": "toy"})
    assert {p.name for p in out.iterdir()} == SPLIT_FILES
    assert_same_splits(split_store.load(out, "data/toy"), s)
    meta = json.loads((out / "meta.json").read_text())
    assert meta == {"dataset": "toy", "sizes": {"train": 7, "val": 3, "test": 4}}


def test_splits_load_names_missing_file_and_hint(tmp_path):
    out = tmp_path / "data" / "digits"
    split_store.save(tiny_splits(), out, {})
    (out / "y_val.npy").unlink()
    with pytest.raises(RunyardError) as err:
        split_store.load(out, "data/digits")
    msg = str(err.value)
    assert msg.startswith("data/digits: missing y_val.npy;")
    assert "x_train.npy" not in msg
    assert "stage prepare@digits" in msg and "`runyard prepare digits`" in msg
    assert "\n" not in msg


def test_splits_load_on_absent_dir_names_every_file(tmp_path):
    with pytest.raises(RunyardError) as err:
        split_store.load(tmp_path / "mnist1d", "data/mnist1d")
    assert all(f"{k}.npy" in str(err.value) for k in KEYS)
    assert "runyard prepare mnist1d" in str(err.value)


def test_splits_save_is_atomic_and_replaces(tmp_path):
    out = tmp_path / "toy"
    split_store.save(tiny_splits(), out, {"v": 1})
    (out / "stale.txt").write_text("left over from an older version")
    new = tiny_splits(offset=10.0)
    split_store.save(new, out, {"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no .toy.tmp left behind
    assert {p.name for p in out.iterdir()} == SPLIT_FILES
    assert_same_splits(split_store.load(out, "toy"), new)
    assert json.loads((out / "meta.json").read_text())["v"] == 2


def test_splits_failed_save_keeps_previous_data(tmp_path, monkeypatch):
    out = tmp_path / "toy"
    old = tiny_splits()
    split_store.save(old, out, {"v": 1})
    calls = []

    def failing_save(path, arr):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        with open(path, "wb") as f:
            np.lib.format.write_array(f, arr)

    monkeypatch.setattr(split_store.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        split_store.save(tiny_splits(offset=10.0), out, {"v": 2})
    monkeypatch.undo()
    # The data dir under its final name is still the complete old one.
    assert {p.name for p in out.iterdir()} == SPLIT_FILES
    assert_same_splits(split_store.load(out, "toy"), old)
    assert json.loads((out / "meta.json").read_text())["v"] == 1


# --------------------------------------------------------------------------- the prepare stage


def test_cli_prepare_writes_splits_and_meta(project_dir):
    before = files_under(project_dir)
    result = runyard_cli("prepare", "digits", cwd=project_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "prepared data/digits" in result.stdout
    assert files_under(project_dir) - before == {f"data/digits/{f}" for f in SPLIT_FILES}
    meta = json.loads((project_dir / "data/digits/meta.json").read_text())
    assert meta["dataset"] == "digits" and meta["task"] == "classification"
    assert meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    assert meta["args"] == digits.Args().model_dump()
    assert sum(meta["sizes"].values()) == 1797
    on_disk = split_store.load(project_dir / "data/digits", "data/digits")
    assert_same_splits(on_disk, digits.build(digits.Args(), seed=0))  # params.yaml seed: 0


def test_cli_prepare_unknown_dataset(project_dir):
    before = files_under(project_dir)
    result = runyard_cli("prepare", "nosuch", cwd=project_dir)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runyard: error: ")
    assert "'nosuch'" in lines[0] and all(name in lines[0] for name in DATASETS)
    assert "Traceback" not in result.stderr
    assert files_under(project_dir) == before


def read_bytes(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("name", ["digits", "regression1d"])
def test_prepare_twice_is_byte_identical(project, name):
    first = read_bytes(prepare(project, name))
    assert set(first) == SPLIT_FILES
    second = read_bytes(prepare(project, name))
    assert first == second


def test_prepare_uses_params_seed(project):
    first = read_bytes(prepare(project, "digits"))
    params = project.params_file
    params.write_text(params.read_text().replace("seed: 0", "seed: 1", 1))
    from runyard.project import Project

    second = read_bytes(prepare(Project(project.root), "digits"))
    assert first["meta.json"] == second["meta.json"]
    assert first["y_train.npy"] != second["y_train.npy"]


def test_mnist1d_files_byte_identical(tmp_path, mnist1d_default, mnist1d_again):
    meta = {"dataset": "mnist1d", "args": mnist1d.Args().model_dump()}
    split_store.save(mnist1d_default, tmp_path / "a", meta)
    split_store.save(mnist1d_again, tmp_path / "b", meta)
    assert read_bytes(tmp_path / "a") == read_bytes(tmp_path / "b")
