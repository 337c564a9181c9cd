"""Detection: box geometry, Hungarian matching, DETR's loss, mAP on hand-made cases, the
shapes_det dataset, the DETR component, the evaluator, and in-process learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from runyard import tasks
from runyard.checks import check_model_fits
from runyard.config import Experiment
from runyard.data import dataset_info, shapes, shapes_det, shapes_seg
from runyard.errors import RunyardError
from runyard.evaluation.boxes import iou_and_giou, xyxy
from runyard.evaluation.metrics import average_precision, mean_average_precision
from runyard.models import build_model
from runyard.tasks.detection import match, set_loss
from runyard.tasks.system import TaskSystem, build_system
from tests.conftest import assert_one_line_config_error
from tests.learning import untrained_vs_trained

pytestmark = pytest.mark.usefixtures("one_thread")

C = 3  # object classes; a detector's rows are C + 1 scores and a box


def box(x0, y0, x1, y1) -> torch.Tensor:
    return torch.tensor([x0, y0, x1, y1], dtype=torch.float32)


def detections(*rows, num_classes=C) -> np.ndarray:
    """Detector outputs for one image from (class, score, cx, cy, w, h) rows: the class's
    probability is ``score`` (the rest on "no object"); class None is "no object"."""
    out = np.zeros((len(rows), num_classes + 5), np.float32)
    for q, (cls, score, *b) in enumerate(rows):
        logits = np.full(num_classes + 1, -20.0)
        if cls is None:
            logits[-1] = 0.0
        else:
            logits[cls], logits[-1] = np.log(score), np.log(1 - score)
        out[q] = [*logits, *b]
    return out


def targets(*rows, max_objects=3) -> np.ndarray:
    """Padded targets of one image from (class, cx, cy, w, h) rows."""
    y = np.zeros((max_objects, 5), np.float32)
    y[:, 0] = -1
    y[: len(rows)] = rows
    return y


# --------------------------------------------------------------------------- boxes


def test_iou_and_giou_by_hand():
    a = box(0, 0, 2, 2)
    assert [v.item() for v in iou_and_giou(a, a)] == [1.0, 1.0]
    iou, giou = iou_and_giou(a, box(1, 0, 3, 2))  # overlap 2, union 6, enclosing 6
    assert (iou.item(), giou.item()) == pytest.approx((1 / 3, 1 / 3))
    iou, giou = iou_and_giou(a, box(3, 0, 5, 2))  # disjoint: union 8, enclosing 10
    assert (iou.item(), giou.item()) == pytest.approx((0.0, -0.2))
    far = iou_and_giou(a, box(8, 0, 10, 2))[1].item()
    assert -1 < far < giou.item()  # GIoU still ranks disjoint boxes by distance
    assert xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4])).tolist() == pytest.approx([0.4, 0.3, 0.6, 0.7])


# --------------------------------------------------------------------------- matching and loss

TRUE = targets((2, 0.25, 0.25, 0.2, 0.2), (0, 0.7, 0.7, 0.3, 0.2))


def test_matching_pairs_each_object_with_its_query_and_skips_padding():
    # Query 0 "no object", query 1 finds object 1, query 2 object 0, query 3 a poor copy of object 1.
    out = detections((None, 0, 0.5, 0.5, 0.1, 0.1), (0, 0.9, 0.7, 0.7, 0.3, 0.2),
                     (2, 0.9, 0.25, 0.25, 0.2, 0.2), (0, 0.6, 0.6, 0.6, 0.3, 0.3))
    [(queries, objects)] = match(torch.from_numpy(out[None]), torch.from_numpy(TRUE[None]))
    assert dict(zip(objects.tolist(), queries.tolist(), strict=True)) == {0: 2, 1: 1}


def test_set_loss_of_perfect_and_of_worse_detections():
    perfect = torch.from_numpy(detections((None, 0, 0.5, 0.5, 0.1, 0.1), (2, 0.999, 0.25, 0.25, 0.2, 0.2),
                                          (0, 0.999, 0.7, 0.7, 0.3, 0.2))[None])
    y = torch.from_numpy(TRUE[None])
    loss, parts = set_loss(perfect, y)
    assert parts["l1"].item() == pytest.approx(0, abs=1e-6) and parts["giou"].item() == pytest.approx(0, abs=1e-6)
    assert parts["ce"].item() < 0.01
    shifted = perfect.clone()
    shifted[..., -4] += 0.05  # every box 0.05 to the right: L1 0.05 per matched box
    assert set_loss(shifted, y)[1]["l1"].item() == pytest.approx(0.05, abs=1e-6)
    wrong = perfect.clone()
    wrong[0, 1, [C - 1, C]] = wrong[0, 1, [C, C - 1]]  # query 1 now says "no object" for object 0
    assert set_loss(wrong, y)[1]["ce"].item() > 1


def test_detector_system_sums_every_layers_loss():
    net = build_model({"name": "detr", "channels": [4, 8], "d_model": 16, "ff": 16, "queries": 3,
                       "decoder_layers": 3}, (1, 16, 16), C)
    system = build_system("detection", net, {"epochs": 1})
    x, y = torch.randn(4, 1, 16, 16), torch.from_numpy(np.stack([TRUE] * 4))
    torch.manual_seed(0)
    loss, metrics = system.task.loss_and_metrics(system.net, (x, y))
    layers = net.forward_layers(x)
    assert layers.shape == (3, 4, 3, C + 5)
    assert loss.item() == pytest.approx(sum(set_loss(out, y)[0].item() for out in layers), rel=1e-5)
    assert set(metrics) == {"loss", "map50", "ce", "l1", "giou"} and 0 <= metrics["map50"].item() <= 1
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert type(system) is TaskSystem and system.task is tasks.get("detection")
    assert "val/map50" in tasks.get("detection").metrics


# --------------------------------------------------------------------------- mAP


def test_average_precision_by_hand():
    assert average_precision(np.array([True, True]), 2) == 1.0
    assert average_precision(np.array([False, True]), 1) == 0.5  # a false positive ranked first
    # Hit, miss, hit of 3: precision 1 up to recall 1/3, then 2/3 up to 2/3; the third is never found.
    assert average_precision(np.array([True, False, True]), 3) == pytest.approx(1 / 3 + 2 / 3 * 1 / 3)
    assert average_precision(np.array([], bool), 2) == 0.0


def test_map_by_hand():
    def map50(*rows, y=TRUE):
        return mean_average_precision(y[None], detections(*rows)[None], C, iou_threshold=0.5)

    both = [(2, 0.9, 0.25, 0.25, 0.2, 0.2), (0, 0.8, 0.7, 0.7, 0.3, 0.2)]
    assert map50(*both, (None, 0, 0.5, 0.5, 0.1, 0.1)) == 1.0
    # Classes without a true box (1) are left out, so a detection of one costs nothing.
    assert map50(*both, (1, 0.95, 0.5, 0.5, 0.1, 0.1)) == 1.0
    # A second box on a found object is a false positive: ranked above another hit, it costs.
    twins = targets((2, 0.25, 0.25, 0.2, 0.2), (2, 0.7, 0.7, 0.3, 0.2))
    assert map50((2, 0.9, 0.25, 0.25, 0.2, 0.2), (2, 0.85, 0.26, 0.25, 0.2, 0.2), (2, 0.8, 0.7, 0.7, 0.3, 0.2),
                 y=twins) == pytest.approx(1 / 2 + 1 / 2 * 2 / 3)  # hit, false, hit
    # IoU below 0.5 is a miss (0.3 x 0.2 box moved by 0.15: IoU 1/3); the wrong class too.
    assert map50(both[0], (0, 0.8, 0.85, 0.7, 0.3, 0.2)) == pytest.approx(0.5)
    assert map50(both[0], (1, 0.8, 0.7, 0.7, 0.3, 0.2)) == pytest.approx(0.5)
    # Pooled over images: per class, detections of every image are ranked together.
    y = np.stack([TRUE, targets((2, 0.5, 0.5, 0.4, 0.4))])
    out = np.stack([detections(*both), detections((2, 0.95, 0.1, 0.1, 0.1, 0.1), (2, 0.5, 0.5, 0.5, 0.4, 0.4))])
    # Class 2: 0.95 false, 0.9 hit, 0.5 hit of 2 true boxes: precision 1/2 at recall 1/2, but
    # made non-increasing it is the 2/3 reached at recall 1; AP 2/3. Class 0: AP 1.
    assert mean_average_precision(y, out, C, 0.5) == pytest.approx((1 + 2 / 3) / 2)


# --------------------------------------------------------------------------- the dataset

SMALL = shapes_det.Args(size=24, train_samples=40, val_samples=10, test_samples=10)


def test_shapes_det_boxes_are_the_shapes_tight_boxes():
    s = shapes_det.build(SMALL, seed=3)
    seg = shapes_seg.build(shapes_seg.Args(**SMALL.model_dump(exclude={"train_samples"}), train_samples=40), seed=3)
    np.testing.assert_array_equal(s.x_train, seg.x_train)  # the same images as shapes_seg
    assert s.y_train.shape == (40, 3, 5) and s.y_train.dtype == np.float32
    real = shapes_det.objects(s.y_train)
    assert real[:, 0].all() and (real.sum(1) >= 1).all() and real.sum() > 40  # 1 to 3 shapes, padded after
    assert (s.y_train[~real] == [shapes_det.PAD, 0, 0, 0, 0]).all()
    for y, mask in zip(s.y_train, seg.y_train, strict=True):
        covered = np.zeros_like(mask)
        for kind, cx, cy, w, h in y[shapes_det.objects(y)] * [1, 24, 24, 24, 24]:
            x0, y0, x1, y1 = (round(v) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
            inside = mask[y0:y1, x0:x1]
            # The box holds pixels of its kind on each of its four edges (tight) ...
            assert all((edge == kind + 1).any() for edge in (inside[0], inside[-1], inside[:, 0], inside[:, -1]))
            covered[y0:y1, x0:x1] = 1
        assert (covered[mask > 0] == 1).all()  # ... and the boxes hold every shape pixel
    again = shapes_det.build(SMALL, seed=3)
    np.testing.assert_array_equal(again.y_test, s.y_test)
    assert not np.array_equal(shapes_det.build(SMALL, seed=4).y_test, s.y_test)


def test_shapes_seg_unchanged_by_the_shared_generator():
    """shapes_seg and shapes draw the same images as before boxes were recorded."""
    s = shapes_seg.build(shapes_seg.Args(size=16, train_samples=3, val_samples=3, test_samples=3), seed=0)
    assert s.y_train.shape == (3, 16, 16) and s.x_train.shape == (3, 1, 16, 16)
    images, masks = shapes.draw(np.random.default_rng(0), shapes.Args(size=16), [[0, 1]])
    again, _, boxes = shapes.draw_with_boxes(np.random.default_rng(0), shapes.Args(size=16), [[0, 1]])
    np.testing.assert_array_equal(images, again)
    assert [b[0] for b in boxes[0]] == sorted({int(k) - 1 for k in np.unique(masks) if k})


# --------------------------------------------------------------------------- the model and config checks

DET = dataset_info("shapes_det")


def test_detr_output_and_fit_checks():
    net = build_model({"name": "detr"}, (1, 32, 32), C)
    out = net(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 6, C + 5)
    assert ((out[..., -4:] > 0) & (out[..., -4:] < 1)).all()  # boxes in the image
    check_model_fits({"name": "detr"}, DET, "shapes_det", where="p.yaml: model")
    cases = [
        ({"name": "detr", "queries": 2}, DET, "shapes_det",
         "detr gives outputs (2, 8) per sample, shapes_det needs (>= 3 queries, 8)"),
        ({"name": "cnn2d"}, DET, "shapes_det", "cnn2d gives outputs (3,) per sample"),
        ({"name": "detr"}, dataset_info("shapes"), "shapes", "shapes needs (3,)"),
        ({"name": "detr", "channels": [4] * 6}, DET, "shapes_det", "6 levels need images of at least 64x64"),
        ({"name": "detr", "d_model": 30}, DET, "shapes_det", "d_model (30) must be divisible by 4"),
    ]
    for spec, info, name, fragment in cases:
        with pytest.raises(RunyardError) as err:
            check_model_fits(spec, info, name, where="p.yaml: model")
        assert str(err.value).startswith("p.yaml: model: ") and fragment in str(err.value), str(err.value)


def test_shipped_pipeline_loads_and_augment_is_refused(project):
    exp = project.experiment("shapes_detr")
    assert (exp.dataset, exp.model_name, exp.optimized_metric) == ("shapes_det", "detr", "val/map50")
    path = project.pipeline_file("shapes_detr")
    raw = yaml.safe_load(path.read_text())
    raw["recipe"]["augment"] = {"shift": 1}
    path.write_text(yaml.safe_dump(raw))
    assert_one_line_config_error(lambda: project.experiment("shapes_detr"),
                                 ["pipelines/shapes_detr.yaml: recipe.augment: not supported for detection"])


def test_exported_detr_takes_any_batch_size():
    """The train stage logs the net with MLflow, which exports it (``torch.export``, the
    batch dimension ``Dim.AUTO``): the export must not fix the batch size of its example."""
    from torch.export import Dim, export

    net = build_model({"name": "detr", "channels": [4, 8], "d_model": 16, "ff": 16}, (1, 16, 16), C).eval()
    exported = export(net, (torch.zeros(5, 1, 16, 16),), dynamic_shapes=({0: Dim.AUTO},)).module()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x))


# --------------------------------------------------------------------------- the evaluator


def test_detection_evaluator_writes_metrics_boxes_and_csv(tmp_path):
    s = shapes_det.build(SMALL, seed=0)
    perfect = np.stack([detections(*[(int(k), 0.99, *b) if k >= 0 else (None, 0, 0.5, 0.5, 0.1, 0.1)
                                     for k, *b in y]) for y in s.y_test])
    values = tasks.get("detection").evaluate("shapes_detr", DET, s, perfect, tmp_path, lambda x: perfect)
    assert values == {"test/map50": 1.0, "test/map75": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.png", "detections.csv"]
    assert (tmp_path / "boxes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "detections.csv").read_text().splitlines()
    assert rows[0] == "image,class,score,x0,y0,x1,y1" and len(rows) == 1 + shapes_det.objects(s.y_test).sum()


# --------------------------------------------------------------------------- learning


def test_detr_learns_to_detect_shapes():
    """In-process Lightning on tiny data (16x16 images, 1-2 shapes, 512 of them).

    Measured on 1 thread over data seeds 0-2: val mAP@0.5 untrained 0.009-0.028, after
    10 epochs 0.44-0.50, 5-7 s of CPU a fit. The threshold sits between them. No encoder
    layer: with one, the same budget gave 0.35-0.56 and took a third longer."""
    args = shapes_det.Args(size=16, train_samples=512, val_samples=128, test_samples=3,
                           max_shapes=2, min_radius=0.2, max_radius=0.3)
    s = shapes_det.build(args, seed=0)
    exp = Experiment(name="learn", dataset="shapes_det",
                     model={"name": "detr", "channels": [8, 16], "d_model": 32, "ff": 64, "queries": 4,
                            "encoder_layers": 0},
                     recipe={"optimizer": "adamw", "lr": 0.002, "batch_size": 32, "epochs": 10})
    before, after, _ = untrained_vs_trained(exp, dataset_info("shapes_det", args), s, "val/map50")
    assert before < 0.1 and after >= 0.25, (before, after)
