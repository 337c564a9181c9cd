"""The generated-shapes datasets: shapes, dtypes, determinism, masks that match their images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from runyard import tasks
from runyard.commands.prepare import prepare
from runyard.data import dataset_info, dataset_params, shapes, shapes_seg
from runyard.data import splits as split_store
from runyard.errors import RunyardError
from tests.conftest import assert_one_line_config_error

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(size=16, train_samples=30, val_samples=9, test_samples=12)
SPLIT_NAMES = ("train", "val", "test")


def parts(s, split):
    return getattr(s, f"x_{split}"), getattr(s, f"y_{split}")


def assert_same(a, b):
    for key, arr in a.arrays().items():
        np.testing.assert_array_equal(arr, b.arrays()[key], err_msg=key)


@pytest.fixture(scope="module")
def clean_seg():
    """Noise-free segmentation images: non-zero exactly on the shapes."""
    return shapes_seg.build(shapes_seg.Args(**{**SMALL, "size": 24}, noise=0.0, max_shapes=3), seed=0)


# --------------------------------------------------------------------------- classification


def test_shapes_sizes_dtypes_and_balanced_labels():
    s = shapes.build(shapes.Args(**SMALL), seed=0)
    assert s.sizes() == {"train": 30, "val": 9, "test": 12}
    for split in SPLIT_NAMES:
        x, y = parts(s, split)
        assert x.shape == (len(y), 1, 16, 16) and x.dtype == np.float32
        assert y.dtype == np.int64
        assert np.bincount(y, minlength=3).tolist() == [len(y) // 3] * 3


def test_shapes_one_shape_per_image_and_noise():
    clean = shapes.build(shapes.Args(**SMALL, noise=0.0), seed=0)
    noisy = shapes.build(shapes.Args(**SMALL, noise=0.2), seed=0)
    for x in (clean.x_train, clean.x_test):
        for img in x[:, 0]:
            on = img[img != 0]
            # One shape: a single brightness in [0.5, 1] on an exactly black background.
            assert on.size > 0 and np.unique(on).size == 1 and 0.5 <= on[0] <= 1.0
    # The same shapes, with Gaussian noise of the requested std on top.
    resid = noisy.x_train - clean.x_train
    assert resid.std() == pytest.approx(0.2, rel=0.05)
    np.testing.assert_array_equal(noisy.y_train, clean.y_train)


def test_shapes_deterministic_per_seed_and_split_streams():
    a = shapes.build(shapes.Args(**SMALL), seed=0)
    assert_same(shapes.build(shapes.Args(**SMALL), seed=0), a)
    other = shapes.build(shapes.Args(**SMALL), seed=1)
    assert not np.array_equal(other.x_train, a.x_train)
    # Each split has its own stream: a bigger training split leaves val and test alone.
    bigger = shapes.build(shapes.Args(**{**SMALL, "train_samples": 60}), seed=0)
    np.testing.assert_array_equal(bigger.x_test, a.x_test)
    np.testing.assert_array_equal(bigger.y_val, a.y_val)
    assert not np.array_equal(bigger.x_train[:30], a.x_train)


@pytest.mark.parametrize("kind,area", [("circle", math.pi), ("square", 2.0), ("triangle", 3 * math.sqrt(3) / 4)])
@pytest.mark.parametrize("angle", [0.0, 0.4, 2.0])
def test_shape_geometry_has_the_right_area(kind, area, angle):
    """A shape of circumradius r covers area * r^2 pixels, whatever its rotation."""
    r = 40.0
    c = np.arange(128) + 0.5
    cols, rows = np.meshgrid(c, c)
    inside = shapes._inside(shapes.KINDS.index(kind), cols - 64, rows - 64, r, angle)
    assert inside.sum() == pytest.approx(area * r * r, rel=0.02)
    # Wholly within its circumcircle.
    assert ((cols - 64) ** 2 + (rows - 64) ** 2)[inside].max() <= r * r


def test_info_follows_the_image_size(project):
    assert dataset_info("shapes") == shapes.info(shapes.Args())
    assert dataset_info("shapes").input_shape == (1, 32, 32)
    assert tasks.get(dataset_info("shapes").task).output_shape(dataset_info("shapes")) == (3,)
    info = dataset_info("shapes_seg", shapes_seg.Args(size=20))
    assert info.task == "segmentation" and info.input_shape == (1, 20, 20)
    assert info.num_classes == 4 and tasks.get(info.task).output_shape(info) == (4, 20, 20)
    params = yaml.safe_load(project.params_file.read_text())
    params["catalogue"]["datasets"]["shapes_seg"] = {"size": 24}
    project.params_file.write_text(yaml.safe_dump(params))
    from runyard.project import Project

    info = Project(project.root).dataset_info("shapes_seg")
    assert tasks.get(info.task).output_shape(info) == (4, 24, 24)


@pytest.mark.parametrize(
    "raw,fragments",
    [
        ({"min_radius": 0.3, "max_radius": 0.2},
         ["datasets.shapes: max_radius: must be at least min_radius (0.3) (got 0.2)"]),
        ({"min_radius": 0.35}, ["datasets.shapes: max_radius: must be at least min_radius (0.35) (got 0.3)"]),
        ({"size": 4}, ["datasets.shapes: size:", "greater than or equal to 8"]),
        ({"sizes": 4}, ["datasets.shapes: sizes: unknown key", "size", "noise"]),
        ({"max_shapes": 2}, ["datasets.shapes: max_shapes: unknown key"]),
    ],
)
def test_bad_shapes_args_are_one_line(raw, fragments):
    assert_one_line_config_error(lambda: dataset_params("shapes", raw, "params.yaml: datasets.shapes"), fragments)


# --------------------------------------------------------------------------- segmentation


def test_seg_sizes_and_dtypes(clean_seg):
    assert clean_seg.sizes() == {"train": 30, "val": 9, "test": 12}
    for split in SPLIT_NAMES:
        x, y = parts(clean_seg, split)
        assert x.shape == (len(y), 1, 24, 24) and x.dtype == np.float32
        assert y.shape == (len(y), 24, 24) and y.dtype == np.uint8
        assert set(np.unique(y)) <= {0, 1, 2, 3}


def test_seg_masks_match_their_images(clean_seg):
    counts = []
    for split in SPLIT_NAMES:
        x, y = parts(clean_seg, split)
        # Noise-free images are non-zero exactly on the mask's shapes ...
        np.testing.assert_array_equal(x[:, 0] != 0, y != 0)
        for img, mask in zip(x[:, 0], y, strict=True):
            values = np.unique(img[mask != 0])
            # ... each shape one brightness in [0.5, 1]; at most max_shapes of them.
            assert 1 <= values.size <= 3 and values.min() >= 0.5 and values.max() <= 1.0
            for v in values:
                assert np.unique(mask[img == v]).size == 1  # one shape, one class
            counts.append(values.size)
    assert set(counts) == {1, 2, 3}


def test_seg_deterministic_and_noise_leaves_masks_alone(clean_seg):
    args = shapes_seg.Args(**{**SMALL, "size": 24}, noise=0.0, max_shapes=3)
    assert_same(shapes_seg.build(args, seed=0), clean_seg)
    noisy = shapes_seg.build(args.model_copy(update={"noise": 0.1}), seed=0)
    np.testing.assert_array_equal(noisy.y_train, clean_seg.y_train)
    assert (noisy.x_train - clean_seg.x_train).std() == pytest.approx(0.1, rel=0.05)
    assert not np.array_equal(shapes_seg.build(args, seed=1).y_train, clean_seg.y_train)


def test_seg_one_shape_per_image():
    s = shapes_seg.build(shapes_seg.Args(**SMALL, max_shapes=1), seed=0)
    for mask in s.y_train:
        assert np.unique(mask[mask != 0]).size == 1


def test_prepare_shapes_seg_twice_is_byte_identical_and_stale_data_is_refused(project):
    params = yaml.safe_load(project.params_file.read_text())
    params["catalogue"]["datasets"]["shapes_seg"] = SMALL
    project.params_file.write_text(yaml.safe_dump(params))
    from runyard.project import Project

    project = Project(project.root)
    out = prepare(project, "shapes_seg")
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    second = {p.name: p.read_bytes() for p in prepare(project, "shapes_seg").iterdir()}
    assert first == second
    loaded = split_store.load(out, "data/shapes_seg")
    assert loaded.y_train.dtype == np.uint8 and loaded.x_train.shape == (30, 1, 16, 16)
    # A pipeline reading it after params.yaml changed the size is told to prepare again.
    params["catalogue"]["datasets"]["shapes_seg"] = {**SMALL, "size": 24}
    project.params_file.write_text(yaml.safe_dump(params))
    with pytest.raises(RunyardError) as err:
        Project(project.root).load_inputs("shapes_unet")
    msg = str(err.value)
    assert "data/shapes_seg: inputs have shape (1, 16, 16)" in msg and "(1, 24, 24)" in msg
    assert "runyard prepare shapes_seg" in msg and "\n" not in msg
