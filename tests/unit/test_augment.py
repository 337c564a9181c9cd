"""Data augmentation: shapes kept, off is the identity, masks move with their images,
the geometry is right, draws are seeded, and only training batches are touched."""

from __future__ import annotations

import math

import pytest
import torch

from runyard.config import Augment
from runyard.data import shapes_seg
from runyard.data.augment import augment, transform
from runyard.data.loaders import SplitsDataModule, TensorBatches
from runyard.project import Project
from tests.conftest import assert_one_line_config_error

pytestmark = pytest.mark.usefixtures("one_thread")

ON = Augment(shift=2, rotate_deg=20, noise=0.1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def seg():
    """Noise-free shapes: image pixels are 0 exactly where the mask is 0."""
    s = shapes_seg.build(shapes_seg.Args(size=24, train_samples=24, val_samples=6, test_samples=6, noise=0.0),
                         seed=0)
    return torch.tensor(s.x_train), torch.tensor(s.y_train), s


def test_shapes_and_dtypes_are_kept(seg):
    x, masks, _ = seg
    labels = torch.arange(len(x)) % 3
    ax, ay = augment(x, labels, ON, gen())
    assert ax.shape == x.shape and ax.dtype == x.dtype
    assert torch.equal(ay, labels)  # class labels pass through untouched
    ax, am = augment(x, masks, ON, gen())
    assert am.shape == masks.shape and am.dtype == torch.uint8
    assert set(am.unique().tolist()) <= {0, 1, 2, 3}  # nearest-neighbour: no blended classes
    digits = torch.rand(5, 1, 8, 8)
    assert augment(digits, torch.arange(5), ON, gen())[0].shape == (5, 1, 8, 8)


def test_all_zero_is_the_identity(seg):
    x, masks, _ = seg
    ax, am = augment(x, masks, Augment(), gen())
    assert torch.equal(ax, x) and torch.equal(am, masks)


def test_off_loader_yields_the_data_as_it_is(seg):
    x, masks, _ = seg
    for aug in (None, Augment()):
        batches = list(TensorBatches(x, masks, 10, augment=aug))
        assert torch.equal(torch.cat([b[0] for b in batches]), x)
        assert torch.equal(torch.cat([b[1] for b in batches]), masks)


def test_shift_moves_image_and_mask_identically(seg):
    x, masks, _ = seg
    ax, am = augment(x, masks, Augment(shift=3), gen())
    # The noise-free image's shapes are exactly where the mask's are, after the move too ...
    assert torch.equal(ax[:, 0] != 0, am != 0)
    assert not torch.equal(am, masks)
    # ... and each sample is a whole-pixel translate of the original, the same for both.
    for i in range(len(x)):
        found = [(dx, dy) for dx in range(-3, 4) for dy in range(-3, 4)
                 if torch.equal(shifted(masks[i], dx, dy), am[i]) and torch.equal(shifted(x[i, 0], dx, dy), ax[i, 0])]
        assert found, i


def shifted(img: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``img`` moved dx right and dy down, zeros coming in."""
    out = torch.zeros_like(img)
    h, w = img.shape
    src = img[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = src
    return out


def test_rotation_turns_image_and_mask_together(seg):
    x, masks, _ = seg
    ax, am = augment(x, masks, Augment(rotate_deg=30), gen())
    assert not torch.equal(am, masks)
    # Bilinear image and nearest-neighbour mask disagree at most on the shapes' rims.
    agree = ((ax[:, 0] > 0.25) == (am != 0)).float().mean().item()
    assert agree > 0.97, agree
    # Rotation about the centre keeps the shapes' areas.
    assert (am != 0).sum().item() == pytest.approx((masks != 0).sum().item(), rel=0.05)


def test_exact_geometry_quarter_turn_and_shift():
    x = torch.arange(30.0).reshape(1, 1, 5, 6)
    y = torch.arange(30).reshape(1, 5, 6)
    no_move = torch.zeros(1, 2, dtype=torch.long)
    square = torch.arange(16.0).reshape(1, 1, 4, 4)
    turned, turned_mask = transform(square, square[:, 0].long(), torch.tensor([math.pi / 2]), no_move)
    assert torch.allclose(turned[0, 0], torch.rot90(square[0, 0], -1), atol=1e-4)  # clockwise, as displayed
    assert torch.equal(turned_mask[0], torch.rot90(square[0, 0], -1).long())
    moved, moved_mask = transform(x, y, torch.zeros(1), torch.tensor([[2, -1]]))  # 2 right, 1 up
    assert torch.allclose(moved[0, 0], shifted(x[0, 0], 2, -1), atol=1e-5)
    assert torch.equal(moved_mask[0], shifted(y[0], 2, -1))


def test_noise_is_on_images_only(seg):
    x, masks, _ = seg
    ax, am = augment(x, masks, Augment(noise=0.3), gen())
    assert torch.equal(am, masks)
    assert (ax - x).std().item() == pytest.approx(0.3, rel=0.05)


def loader_batches(x, y, **kw):
    return [tuple(t.clone() for t in b) for b in TensorBatches(x, y, 8, shuffle=True, augment=ON, **kw)]


def same(a, b):
    return all(torch.equal(p, q) for bp, bq in zip(a, b, strict=True) for p, q in zip(bp, bq, strict=True))


def test_draws_are_seeded_per_seed_epoch_and_rank(seg):
    x, masks, _ = seg
    assert same(loader_batches(x, masks, seed=3), loader_batches(x, masks, seed=3))
    assert not same(loader_batches(x, masks, seed=3), loader_batches(x, masks, seed=4))
    two_epochs = TensorBatches(x, masks, 24, augment=ON, seed=3)
    first, second = next(iter(two_epochs)), next(iter(two_epochs))
    assert not torch.equal(first[0], second[0])  # same samples, fresh draws every epoch
    resumed = TensorBatches(x, masks, 24, augment=ON, seed=3)
    resumed.epoch = 1  # what a checkpoint restores
    assert torch.equal(next(iter(resumed))[0], second[0])
    rank0 = TensorBatches(x, masks, 24, augment=Augment(noise=0.1), seed=3, rank=0, world_size=1)
    rank1 = TensorBatches(x, masks, 24, augment=Augment(noise=0.1), seed=3, rank=1, world_size=2)
    assert not torch.equal(next(iter(rank0))[0][1::2] - x[1::2], next(iter(rank1))[0] - x[1::2])


def test_only_training_batches_are_augmented(seg):
    _, _, s = seg
    data = SplitsDataModule(s, 8, seed=0, augment=ON)
    train = torch.cat([b[0] for b in data.train_dataloader()])
    assert not torch.equal(train.sort(0).values, torch.tensor(s.x_train).sort(0).values)
    for loader, split in ((data.val_dataloader(), "val"), (data.test_dataloader(), "test")):
        (x, y), = list(loader)
        assert torch.equal(x, torch.tensor(getattr(s, f"x_{split}")))
        assert torch.equal(y, torch.tensor(getattr(s, f"y_{split}")))


# --------------------------------------------------------------------------- configuration


def test_augmented_pipelines_load(project):
    for name in ("digits_cnn_augmented", "shapes_cnn_augmented"):
        exp = project.experiment(name)
        assert exp.recipe.augment is not None and exp.recipe.augment.shift >= 1
        plain = project.experiment(name.removesuffix("_augmented"))
        assert plain.recipe.augment is None
        # The pair differs in augmentation only.
        assert exp.model == plain.model
        assert exp.recipe.model_copy(update={"augment": None}) == plain.recipe


def write_pipeline(project, name, recipe_extra, dataset="digits", model=None):
    import yaml

    raw = {"dataset": dataset, "model": model or {"name": "cnn2d"},
           "recipe": {"epochs": 1, **recipe_extra}}
    project.pipeline_file(name).write_text(yaml.safe_dump(raw))
    return lambda: Project(project.root).experiment(name)


@pytest.mark.parametrize(
    "extra,fragments",
    [
        ({"augment": {"shift": -1}}, ["pipelines/bad.yaml: recipe.augment.shift:", "greater than or equal to 0"]),
        ({"augment": {"rotate": 10}}, ["recipe.augment.rotate: unknown key; allowed: shift, rotate_deg, noise"]),
        ({"augment": {"rotate_deg": 200}}, ["recipe.augment.rotate_deg:", "less than or equal to 180"]),
        ({"augment": "on"}, ["recipe.augment:", "'on'"]),
    ],
)
def test_bad_augment_is_one_line(project, extra, fragments):
    assert_one_line_config_error(write_pipeline(project, "bad", extra), fragments)


def test_augment_needs_an_image_dataset(project):
    load = write_pipeline(project, "bad", {"augment": {"noise": 0.1}}, dataset="mnist1d", model={"name": "mlp"})
    assert_one_line_config_error(load, ["pipelines/bad.yaml: recipe.augment: needs images (channels, height, width)",
                                        "mnist1d inputs have shape (40,)"])
    assert write_pipeline(project, "ok", {"augment": None})().recipe.augment is None

