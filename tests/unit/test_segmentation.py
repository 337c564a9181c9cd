"""Segmentation: IoU/Dice on hand-made masks, the U-Net, the system, the evaluator, and
in-process learning on tiny generated shapes (the U-Net and the shapes CNN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runyard import tasks
from runyard.checks import check_model_fits
from runyard.config import Experiment
from runyard.data import dataset_info, shapes, shapes_seg
from runyard.errors import RunyardError
from runyard.evaluation.metrics import overlap, pixel_confusion, segmentation
from runyard.models import build_model
from runyard.tasks.system import TaskSystem, build_system
from tests.learning import untrained_vs_trained

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- IoU and Dice

# Two 4x4 masks, classes 0 (background), 1 and 2.
TRUE = [[0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 2],
        [0, 0, 0, 2]]
PRED = [[1, 1, 1, 0],   # class 1: 6 predicted, 4 true, 3 in common
        [1, 1, 0, 0],
        [1, 0, 0, 0],   # class 2: 2 true, none predicted
        [0, 0, 0, 0]]
# Class 1: IoU 3 / (4 + 6 - 3) = 3/7, Dice 2*3 / (4 + 6) = 0.6. Class 2: IoU 0, Dice 0.
# Background is not averaged in.


def masks(*rows) -> torch.Tensor:
    return torch.tensor(rows)


def iou_dice(true, pred, num_classes=3) -> tuple[float, float]:
    iou, dice = overlap(pixel_confusion(masks(true), masks(pred), num_classes))
    return iou.item(), dice.item()


def test_hand_example():
    assert iou_dice(TRUE, PRED) == pytest.approx((3 / 7 / 2, 0.6 / 2))


def test_confusion_matrix_counts_pixels():
    cm = pixel_confusion(masks(TRUE), masks(PRED), 3)
    assert cm.tolist() == [[7, 3, 0],   # 10 true background: 7 kept, 3 called class 1
                           [1, 3, 0],
                           [2, 0, 0]]


def test_perfect_all_background_and_absent_classes():
    assert iou_dice(TRUE, TRUE) == (1.0, 1.0)
    empty = [[0] * 4] * 4
    assert iou_dice(TRUE, empty) == (0.0, 0.0)   # finds nothing: 0, whatever the background
    assert iou_dice(empty, empty) == (1.0, 1.0)  # nothing to find, nothing found
    # A class in neither mask (3 here) does not count; one only predicted counts as 0.
    assert iou_dice(TRUE, PRED, num_classes=4) == iou_dice(TRUE, PRED)
    only_predicted = [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 2], [3, 0, 0, 2]]
    assert iou_dice(TRUE, only_predicted, num_classes=4) == pytest.approx(((1 + 1 - 0) / 3 + 0, (2 - 0) / 3))


def test_iou_dice_relation_and_batches():
    # For one class Dice = 2 IoU / (1 + IoU); a batch pools its pixels.
    a = [[1, 1, 0, 0]] * 4
    b = [[0, 1, 1, 0]] * 4
    iou, dice = iou_dice(a, b, num_classes=2)
    assert iou == pytest.approx(1 / 3) and dice == pytest.approx(2 * iou / (1 + iou))
    batch = overlap(pixel_confusion(masks(a, a), masks(b, a), 2))
    assert batch[0].item() == pytest.approx(12 / 20)  # 4 + 8 hits over 12 + 8 pixels in the union


def test_numpy_test_metrics_match():
    values, cm = segmentation(np.array([TRUE], np.uint8), np.array([PRED]), 3)
    assert values == pytest.approx({"test/iou": 3 / 14, "test/dice": 0.3, "test/pixel_acc": 10 / 16})
    assert all(type(v) is float for v in values.values())
    assert cm.tolist() == pixel_confusion(masks(TRUE), masks(PRED), 3).tolist()


def test_segmenter_system_loss_and_metrics():
    logits = 10 * F.one_hot(masks(PRED), 3).permute(0, 3, 1, 2).float()  # scores favouring PRED
    system = build_system("segmentation", torch.nn.Identity(), {"epochs": 1})
    assert type(system) is TaskSystem and system.task is tasks.get("segmentation")
    loss, metrics = system.task.loss_and_metrics(system.net, (logits, masks(TRUE).to(torch.uint8)))
    assert set(metrics) == {"loss", "iou", "dice"}
    assert metrics["iou"].item() == pytest.approx(3 / 14) and metrics["dice"].item() == pytest.approx(0.3)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, masks(TRUE)).item())
    assert set(tasks.get("segmentation").metrics) >= {"val/iou", "val/dice", "val/loss"}


# --------------------------------------------------------------------------- the U-Net and fitting checks

SEG = dataset_info("shapes_seg")


@pytest.mark.parametrize("shape", [(1, 32, 32), (1, 17, 23), (3, 8, 8)])
def test_unet_output_shape(shape):
    net = build_model({"name": "unet", "channels": [4, 8, 16]}, shape, 5)
    out = net(torch.randn(2, *shape))
    assert out.shape == (2, 5, *shape[1:])
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_default_size_and_skip_connections():
    net = build_model({"name": "unet"}, (1, 32, 32), 4)
    assert sum(p.numel() for p in net.parameters()) == 117_124
    # Each decoder level merges the upsampled features with the encoder's at that scale.
    assert [m[0].in_channels for m in net.merge] == [64, 32]
    assert [u.out_channels for u in net.up] == [32, 16]


def test_check_model_fits_uses_the_output_shape():
    check_model_fits({"name": "unet"}, SEG, "shapes_seg", where="p.yaml: model")
    cases = [
        ({"name": "cnn2d"}, SEG, "shapes_seg",
         "cnn2d gives outputs (4,) per sample, shapes_seg needs (4, 32, 32)"),
        ({"name": "unet"}, dataset_info("shapes"), "shapes",
         "unet gives outputs (3, 32, 32) per sample, shapes needs (3,)"),
        ({"name": "unet", "channels": [4] * 7}, SEG, "shapes_seg", "7 levels need images of at least 64x64"),
        ({"name": "unet"}, dataset_info("mnist1d"), "mnist1d", "needs images (channels, height, width)"),
    ]
    for spec, info, name, fragment in cases:
        with pytest.raises(RunyardError) as err:
            check_model_fits(spec, info, name, where="p.yaml: model")
        assert str(err.value).startswith("p.yaml: model: ") and fragment in str(err.value), str(err.value)


# --------------------------------------------------------------------------- the evaluator


def test_segmentation_evaluator_writes_metrics_and_mask_grid(tmp_path):
    s = shapes_seg.build(shapes_seg.Args(size=16, train_samples=3, val_samples=3, test_samples=10), seed=0)
    info = dataset_info("shapes_seg", shapes_seg.Args(size=16))
    perfect = 5 * F.one_hot(torch.tensor(s.y_test).long(), 4).permute(0, 3, 1, 2).numpy()
    values = tasks.get("segmentation").evaluate("shapes_unet", info, s, perfect, tmp_path, lambda x: perfect)
    assert values == {"test/iou": 1.0, "test/dice": 1.0, "test/pixel_acc": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "masks.png"]
    assert (tmp_path / "masks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert segmentation(s.y_test, np.zeros_like(s.y_test), 4)[0]["test/iou"] == 0.0  # all background


# --------------------------------------------------------------------------- learning


# Budgets and thresholds, measured over seeds 0-2 on 1 thread (~5 s a fit on an idle core):
# U-Net val IoU untrained 0.047-0.054, all background 0, after 8 epochs 0.634-0.647;
# shapes CNN val acc untrained 0.34-0.36 (chance 1/3), after 8 epochs 0.76-0.79.
# Each threshold sits in the middle of its gap.


def test_unet_learns_to_segment_shapes():
    args = shapes_seg.Args(size=16, train_samples=256, val_samples=128, test_samples=3,
                           max_shapes=2, min_radius=0.2, max_radius=0.3)
    s = shapes_seg.build(args, seed=0)
    assert segmentation(s.y_val, np.zeros_like(s.y_val), 4)[0]["test/iou"] == 0.0  # all background
    exp = Experiment(name="learn", dataset="shapes_seg", model={"name": "unet", "channels": [8, 16]},
                     recipe={"lr": 0.02, "batch_size": 16, "epochs": 8, "schedule": {"name": "cosine"}})
    before, after, _ = untrained_vs_trained(exp, dataset_info("shapes_seg", args), s, "val/iou")
    assert before < 0.35 <= after, (before, after)


def test_shapes_cnn_learns_to_classify():
    """With augmentation on: it must not keep the net from learning."""
    args = shapes.Args(size=16, train_samples=600, val_samples=150, test_samples=3, min_radius=0.2, max_radius=0.35)
    s = shapes.build(args, seed=0)
    exp = Experiment(name="learn", dataset="shapes", model={"name": "cnn2d", "channels": [8, 16, 32]},
                     recipe={"lr": 0.01, "batch_size": 32, "epochs": 8, "schedule": {"name": "cosine"},
                             "augment": {"shift": 1, "rotate_deg": 10, "noise": 0.05}})
    before, after, _ = untrained_vs_trained(exp, dataset_info("shapes", args), s, "val/acc")
    assert before < 0.55 <= after, (before, after)
