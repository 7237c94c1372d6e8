"""Metric library: each metric checked against a hand-computed value or a plain NumPy reference."""
import contextlib
import io
import json

import numpy as np
import pytest

from data.schema import DETECTION_CLASSES, IGNORE, SEGMENTATION_CLASSES
from pipeline.evaluation.metrics import (STANDARD_METRICS, DepthEvaluator, DetectionEvaluator, SegmentationEvaluator, absent,
                              box_iou, delta_m, is_absent, negative_transfer, relative_differences, task_gains)

GT_BOX = [10.0, 10.0, 30.0, 30.0]  # 20 x 20 px


def _detect(pred_boxes, pred_scores, gt_boxes=(GT_BOX,), gt_classes=None, pred_classes=None, ignore=None,
            image_height=None):
    evaluator = DetectionEvaluator(DETECTION_CLASSES, image_height=image_height)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    pred_boxes = np.asarray(pred_boxes, np.float32).reshape(-1, 4)
    evaluator.add("frame-0", gt_boxes, np.zeros(len(gt_boxes)) if gt_classes is None else gt_classes,
                  pred_boxes, pred_scores, np.zeros(len(pred_boxes)) if pred_classes is None else pred_classes,
                  ignore_regions=ignore)
    return evaluator.result()


# ---------------------------------------------------------------------------------------------- detection
def test_perfect_detections_give_map_one():
    result = _detect([GT_BOX], [0.9])
    assert result["mAP"] == pytest.approx(1.0)
    assert result["mAP50"] == pytest.approx(1.0)
    assert result["mAP75"] == pytest.approx(1.0)
    assert result["AR100"] == pytest.approx(1.0)
    assert result["examples"] == 1 and result["ground_truth_boxes"] == 1
    json.dumps(result)  # the evaluate stage writes it as JSON


@pytest.mark.parametrize("shift, iou, ap50, ap", [
    # Shifted right by d px, a 20x20 box overlaps (20-d)*20: IoU = (20-d)/(20+d).
    (4, 16 / 24, 1.0, 0.4),  # IoU 0.667 passes thresholds .50 .55 .60 .65 of the ten -> AP 4/10
    (8, 12 / 28, 0.0, 0.0),  # IoU 0.429 < 0.5: a false positive and a missed box
])
def test_shifted_box_has_known_iou_and_ap(shift, iou, ap50, ap):
    shifted = [GT_BOX[0] + shift, GT_BOX[1], GT_BOX[2] + shift, GT_BOX[3]]
    assert box_iou([GT_BOX], [shifted])[0, 0] == pytest.approx(iou)
    result = _detect([shifted], [0.9])
    assert result["mAP50"] == pytest.approx(ap50)
    assert result["mAP"] == pytest.approx(ap)


def test_higher_scored_false_positive_halves_ap():
    # Ranked: FP (0.9) then TP (0.8) -> precision 0, then 1/2 at recall 1. COCO's interpolated precision
    # is the running max from the right, 0.5 at every recall threshold, so AP = 0.5 (from 1.0 without it).
    result = _detect([[60, 60, 80, 80], GT_BOX], [0.9, 0.8])
    assert result["mAP50"] == pytest.approx(0.5)
    assert result["mAP"] == pytest.approx(0.5)


def test_false_positive_between_true_positives():
    # Two GT; ranked TP, FP, TP -> (recall, precision) = (.5, 1), (.5, .5), (1, 2/3). Interpolated: 1 for the
    # 51 recall thresholds 0.00..0.50, 2/3 for the 50 thresholds 0.51..1.00 -> AP = (51 + 50 * 2/3) / 101.
    second = [40, 40, 60, 60]
    result = _detect([GT_BOX, [60, 60, 80, 80], second], [0.9, 0.8, 0.7], gt_boxes=[GT_BOX, second])
    assert result["mAP50"] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_detection_in_ignore_region_is_not_a_false_positive():
    dont_care = [[55, 55, 85, 85]]
    assert _detect([[60, 60, 80, 80], GT_BOX], [0.9, 0.8], ignore=dont_care)["mAP"] == pytest.approx(1.0)
    assert _detect([[60, 60, 80, 80], GT_BOX], [0.9, 0.8])["mAP"] == pytest.approx(0.5)


def test_ap50_by_height_scores_each_band_on_its_own_objects():
    """An 8-px object found below a higher-scored 8-px false positive, a 30-px object found cleanly: the
    small band's AP50 is 0.5 (FP first), the tall band's 1.0 (the small FP is outside it, so ignored),
    the band between has no ground truth (None); over all heights: FP, TP, TP -> 2/3."""
    small, tall, small_fp = [10, 10, 14, 18], [40, 10, 60, 40], [80, 10, 84, 18]
    result = _detect([small_fp, tall, small], [0.99, 0.9, 0.5], gt_boxes=[small, tall])
    assert result["mAP50"] == pytest.approx(2 / 3)
    by_height = result["AP50_by_height"]
    assert by_height["bands_px"] == [[0.0, 12.0], [12.0, 24.0], [24.0, None]]
    assert by_height["per_class"] == {"vehicle": [pytest.approx(0.5), None, pytest.approx(1.0)]}
    json.dumps(result, allow_nan=False)  # strict JSON: the open band is null, not Infinity
    from pipeline.evaluation.report import detection_section
    section = detection_section(result)
    assert "| class | 0-12 px | 12-24 px | >= 24 px |" in section and "| vehicle | 0.500 | — | 1.000 |" in section


def test_height_bands_scale_with_the_image_height():
    """At a 192-px input the bands are 0-18, 18-36, >= 36 px: a 16-px object (the 12-24 band at 128 px)
    falls in the first, a 30-px one (>= 24 at 128 px) in the second; the same objects as at 128 px
    have 2/3 of those heights."""
    short, taller = [10, 10, 16, 26], [40, 10, 60, 40]
    result = _detect([short, taller], [0.9, 0.8], gt_boxes=[short, taller], image_height=192)
    by_height = result["AP50_by_height"]
    assert by_height["bands_px"] == [[0.0, 18.0], [18.0, 36.0], [36.0, None]]
    assert by_height["per_class"] == {"vehicle": [pytest.approx(1.0), pytest.approx(1.0), None]}
    at_128 = _detect([short, taller], [0.9, 0.8], gt_boxes=[short, taller], image_height=128)
    assert at_128["AP50_by_height"]["per_class"] == {"vehicle": [None, pytest.approx(1.0), pytest.approx(1.0)]}


def test_classes_without_ground_truth_are_absent_not_zero():
    # Class 0 found, class 1 has GT but is missed, class 2 has no GT (only a stray detection).
    result = _detect([GT_BOX, [50, 50, 70, 70]], [0.9, 0.8], gt_boxes=[GT_BOX, [0, 40, 10, 60]],
                     gt_classes=[0, 1], pred_classes=[0, 2])
    assert result["per_class_AP"] == pytest.approx({"vehicle": 1.0, "pedestrian": 0.0})
    assert "cyclist" not in result["per_class_AP50"]
    assert result["mAP"] == pytest.approx(0.5)  # mean over the two classes with GT
    curves = result["pr_curves"]
    assert len(curves["recall"]) == 101 and set(curves["precision"]) == {"vehicle", "pedestrian"}
    assert curves["precision"]["vehicle"] == pytest.approx([1.0] * 101)


def test_no_ground_truth_at_all_is_reported_absent():
    result = _detect([GT_BOX], [0.9], gt_boxes=np.zeros((0, 4)))
    assert result["mAP"] is None and result["mAP50"] is None and is_absent(result)
    assert "no ground-truth" in result["reason"]


def test_map_matches_cocoeval_summary_on_random_data():
    # Our reading of COCOeval.eval must equal COCO's own printed summary (stats[0..2], stats[8]).
    rng = np.random.default_rng(0)
    evaluator = DetectionEvaluator(DETECTION_CLASSES)
    for image in range(6):
        xy = rng.uniform(0, 60, (5, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 30, (5, 2))], 1)
        pred = gt + rng.normal(0, 3, gt.shape)
        evaluator.add(image, gt, rng.integers(0, 3, 5), pred, rng.uniform(size=5), rng.integers(0, 3, 5))
    result = evaluator.result()
    from pycocotools.cocoeval import COCOeval
    coco = COCOeval(evaluator._coco(evaluator._ground_truth), evaluator._coco(evaluator._detections), "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        coco.evaluate(), coco.accumulate(), coco.summarize()
    assert [result["mAP"], result["mAP50"], result["mAP75"], result["AR100"]] == pytest.approx(
        [coco.stats[0], coco.stats[1], coco.stats[2], coco.stats[8]])


def test_detection_rejects_bad_input():
    evaluator = DetectionEvaluator(DETECTION_CLASSES)
    with pytest.raises(ValueError, match="gt_classes"):
        evaluator.add(0, [GT_BOX], [7], [], [], [])
    evaluator.add(0, [GT_BOX], [0], [], [], [])
    with pytest.raises(ValueError, match="twice"):
        evaluator.add(0, [GT_BOX], [0], [], [], [])


# ------------------------------------------------------------------------------------------- segmentation
def test_perfect_segmentation_gives_miou_one():
    mask = np.random.default_rng(1).integers(0, 9, (2, 16, 24))
    evaluator = SegmentationEvaluator(9, class_names=SEGMENTATION_CLASSES)
    evaluator.add(mask, mask)
    result = evaluator.result()
    assert result["mIoU"] == 1.0 and result["pixel_accuracy"] == 1.0
    assert result["examples"] == 2 and result["pixels"] == 2 * 16 * 24
    json.dumps(result)


def test_segmentation_iou_matches_hand_computation_and_skips_ignore():
    gt = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [IGNORE, IGNORE, 2, 2]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 0, 1],
                     [2, 2, 2, 2]])  # the two 2s under IGNORE must not count as false positives of class 2
    evaluator = SegmentationEvaluator(4)
    evaluator.add(gt, pred)
    result = evaluator.result()
    # class 0: TP 3, GT 4, pred 4 -> 3 / (4 + 4 - 3) = 3/5; class 1: TP 3, GT 4, pred 4 -> 3/5;
    # class 2: TP 2, GT 2, pred 2 (ignore excluded) -> 1; class 3: never seen -> None, left out of the mean.
    assert result["per_class_IoU"] == {"0": pytest.approx(0.6), "1": pytest.approx(0.6), "2": 1.0, "3": None}
    assert result["mIoU"] == pytest.approx((0.6 + 0.6 + 1.0) / 3)
    assert result["pixel_accuracy"] == pytest.approx(8 / 10) and result["pixels"] == 10
    assert result["confusion_matrix"][0] == [3, 1, 0, 0]


def test_segmentation_all_ignore_is_absent():
    evaluator = SegmentationEvaluator(3)
    evaluator.add(np.full((4, 4), IGNORE), np.zeros((4, 4)))
    assert evaluator.result()["mIoU"] is None and is_absent(evaluator.result())


# ------------------------------------------------------------------------------------------------- depth
def _reference_depth(gt, pred, min_depth, max_depth):
    """The monodepth2 compute_errors, applied once to every valid pixel of the split."""
    valid = (gt > min_depth) & (gt <= max_depth)
    g, p = gt[valid], np.clip(pred[valid], min_depth, max_depth)
    thresh = np.maximum(g / p, p / g)
    return {"abs_rel": np.mean(np.abs(g - p) / g), "sq_rel": np.mean((g - p) ** 2 / g),
            "rmse": np.sqrt(np.mean((g - p) ** 2)), "rmse_log": np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)),
            "delta1": np.mean(thresh < 1.25), "delta2": np.mean(thresh < 1.25 ** 2),
            "delta3": np.mean(thresh < 1.25 ** 3)}


def test_perfect_depth():
    gt = np.random.default_rng(2).uniform(1, 80, (2, 8, 12)).astype(np.float32)
    evaluator = DepthEvaluator()
    evaluator.add(gt, gt[..., None])  # model output [B, H, W, 1]
    result = evaluator.result()
    assert result["abs_rel"] == pytest.approx(0.0) and result["rmse"] == pytest.approx(0.0)
    assert result["delta1"] == 1.0 and result["examples"] == 2


def test_depth_matches_numpy_reference_with_invalid_pixels():
    rng = np.random.default_rng(3)
    gt = rng.uniform(0.5, 100, (3, 16, 20))
    gt[rng.uniform(size=gt.shape) < 0.3] = 0.0           # no LiDAR return
    pred = gt * rng.uniform(0.6, 1.5, gt.shape) + 0.1    # some predictions exceed max_depth: clipped
    evaluator = DepthEvaluator(max_depth=80.0)
    evaluator.add(gt[:2], pred[:2])                      # streamed in two calls ...
    evaluator.add(gt[2], pred[2])
    result = evaluator.result()
    reference = _reference_depth(gt, pred, 1e-3, 80.0)   # ... equals one pass over everything
    assert {m: result[m] for m in reference} == pytest.approx(reference)
    assert result["pixels"] == int(np.sum((gt > 1e-3) & (gt <= 80)))
    per_image = [_reference_depth(gt[i], pred[i], 1e-3, 80.0) for i in range(3)]
    assert result["per_image_mean"]["abs_rel"] == pytest.approx(np.mean([r["abs_rel"] for r in per_image]))
    by_distance = result["by_distance"]
    assert by_distance["bin_edges_m"] == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    assert sum(by_distance["pixels"]) == result["pixels"]
    assert sum(result["log_error_histogram"]["counts"]) == result["pixels"]
    json.dumps(result)


def test_depth_bins_and_histogram_match_numpy():
    """The distance bins and the log-error histogram, computed by division and NumPy's uniform-bin path,
    count exactly what np.histogram over the published edges counts, bin edges and outliers included."""
    rng = np.random.default_rng(4)
    gt = np.concatenate([rng.uniform(0.5, 80.0, 5000), np.arange(10.0, 81.0, 10.0)])  # every bin edge
    factor = np.concatenate([np.exp(rng.uniform(-1.5, 1.5, 5000)), np.ones(8)])      # beyond +-1 too
    evaluator = DepthEvaluator(max_depth=80.0)
    evaluator.add(gt[None], (gt * factor)[None])
    result = evaluator.result()
    edges = np.array(result["by_distance"]["bin_edges_m"], np.float64)
    expected_bins = np.histogram(np.minimum(gt, np.nextafter(edges[-1], 0)), edges)[0]  # 80 m: last bin
    assert result["by_distance"]["pixels"] == expected_bins.tolist()
    pred = np.clip(gt * factor, 1e-3, 80.0)
    log_error = np.clip(np.log(pred) - np.log(gt), -1.0, 1.0)
    expected = np.histogram(log_error, np.array(result["log_error_histogram"]["bin_edges"]))[0]
    assert result["log_error_histogram"]["counts"] == expected.tolist()
    assert expected[0] > 0 and expected[-1] > 0  # the clipped outliers are in the end bins


def test_depth_without_valid_pixels_is_absent():
    evaluator = DepthEvaluator()
    evaluator.add(np.zeros((4, 4)), np.ones((4, 4)))
    assert evaluator.result()["abs_rel"] is None and is_absent(evaluator.result())


# ------------------------------------------------------------------------------------------- multi-task
def test_delta_m_hand_computed():
    multi = {"detection": {"mAP50": 0.55, "mAP": 0.30}, "segmentation": {"mIoU": 0.60},
             "depth": {"abs_rel": 0.12, "rmse": 5.5}}
    single = {"detection": {"mAP50": 0.50, "mAP": 0.30}, "segmentation": {"mIoU": 0.64},
              "depth": {"abs_rel": 0.10, "rmse": 5.0}}
    # detection:    (+(0.55-0.50)/0.50 + (0.30-0.30)/0.30) / 2 * 100 = (10 + 0) / 2 = +5
    # segmentation:  +(0.60-0.64)/0.64 * 100                          = -6.25
    # depth (lower better): (-(0.12-0.10)/0.10 - (5.5-5.0)/5.0) / 2 * 100 = (-20 - 10) / 2 = -15
    # Delta_m = (5 - 6.25 - 15) / 3 = -5.41666...
    assert relative_differences(multi, single)["depth"] == pytest.approx({"abs_rel": -20.0, "rmse": -10.0})
    assert task_gains(multi, single) == pytest.approx({"detection": 5.0, "segmentation": -6.25, "depth": -15.0})
    assert delta_m(multi, single, STANDARD_METRICS) == pytest.approx(-16.25 / 3)
    assert negative_transfer(multi, single) == ["segmentation", "depth"]


def test_delta_m_skips_absent_tasks():
    multi = {"segmentation": {"mIoU": 0.66}, "depth": absent("no depth labels in split 'val'")}
    single = {"segmentation": {"mIoU": 0.60}, "depth": {"abs_rel": 0.1, "rmse": 4.0}}
    assert delta_m(multi, single) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="No task"):
        delta_m({"depth": absent("none")}, single)


# ---------------------------------------------------------------------------------------- absent tasks
def test_absent_task_has_reason_and_is_not_zero():
    report = absent("split 'val' has no segmentation labels")
    assert report == {"absent": True, "reason": "split 'val' has no segmentation labels"}
    assert is_absent(report) and is_absent(None) and not is_absent({"mIoU": 0.0})
    with pytest.raises(ValueError):
        absent("")
