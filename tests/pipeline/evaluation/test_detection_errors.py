"""The what-if breakdown of detection AP: each fix repairs its own kind of error and no other."""
import json

import numpy as np
import pytest

from data.schema import DETECTION_CLASSES
from pipeline.evaluation.metrics import DetectionEvaluator
from pipeline.evaluation.metrics.detection_errors import error_breakdown
from pipeline.evaluation.report import detection_section

VEHICLE, PEDESTRIAN = 0, 1
CAR = [10.0, 10.0, 50.0, 40.0]          # 40 x 30 px
PERSON = [100.0, 10.0, 106.0, 34.0]     # 6 x 24 px


def _breakdown(gt_boxes, gt_classes, pred_boxes, pred_classes, scores=None, ignore=None):
    evaluator = DetectionEvaluator(DETECTION_CLASSES)
    scores = np.linspace(0.9, 0.5, len(pred_boxes)) if scores is None else scores
    evaluator.add("frame-0", np.asarray(gt_boxes, np.float32), gt_classes, np.asarray(pred_boxes, np.float32),
                  scores, pred_classes, ignore_regions=ignore)
    return evaluator.result(), error_breakdown(evaluator)


def test_a_wrong_size_is_fixed_by_fitted_sizes_and_boxes_but_not_by_classes_or_centres():
    # The right centre, twice the width: IoU 0.5 -> AP50 1, AP@[.5:.95] 0.1.
    wide = [103.0 - 6.0, 10.0, 103.0 + 6.0, 34.0]
    result, fixes = _breakdown([PERSON], [PEDESTRIAN], [wide], [PEDESTRIAN])
    assert result["mAP"] == pytest.approx(0.1)
    assert fixes["classes_fixed"]["mAP"] == pytest.approx(0.1)
    assert fixes["fitted_centres"]["mAP"] == pytest.approx(0.1)
    assert fixes["fitted_sizes"]["mAP"] == pytest.approx(1.0)
    assert fixes["fitted_boxes"]["mAP"] == pytest.approx(1.0)
    json.dumps(fixes, allow_nan=False)
    section = detection_section({**result, "if_fixed": fixes})
    assert "| as measured | 0.100 | 1.000 | 0.000 |" in section
    assert "| sizes fitted to the ground truth (own centres) | 1.000 | 1.000 | 1.000 |" in section
    assert "| centres fitted to the ground truth (own sizes) | 0.100 | 1.000 | 0.000 |" in section
    # A metrics.json written before the centres-fitted row existed still renders (report refresh).
    older = {fix: value for fix, value in fixes.items() if fix != "fitted_centres"}
    section = detection_section({**result, "if_fixed": older})
    assert "| sizes fitted to the ground truth (own centres) | 1.000 | 1.000 | 1.000 |" in section
    assert "centres fitted" not in section


def test_a_shifted_box_is_fixed_by_fitted_centres_and_boxes_not_by_sizes():
    # The right size, 2 px off in x on a 6-px-wide person: IoU 4/8 = 0.5.
    shifted = [102.0, 10.0, 108.0, 34.0]
    result, fixes = _breakdown([PERSON], [PEDESTRIAN], [shifted], [PEDESTRIAN])
    assert fixes["fitted_sizes"]["mAP"] == pytest.approx(result["mAP"]) == pytest.approx(0.1)
    assert fixes["fitted_centres"]["mAP"] == pytest.approx(1.0)
    assert fixes["fitted_boxes"]["mAP"] == pytest.approx(1.0)


def test_a_box_wrong_in_centre_and_size_keeps_each_fixs_other_error():
    """2 px off and 1.5x as tall: fitting the centre leaves the height's IoU 24/36, fitting the height
    leaves the shift's 4/8; only the whole box is exact."""
    both = [102.0, 4.0, 108.0, 40.0]  # centre (105, 22) against (103, 22), height 36 against 24
    result, fixes = _breakdown([PERSON], [PEDESTRIAN], [both], [PEDESTRIAN])
    assert result["mAP50"] == pytest.approx(0.0)  # IoU (4 x 24) / (6 x 36 + 6 x 24 - 96) = 0.36
    # IoU 24 / 36 = 0.67: matched at 0.50-0.65, four of the ten thresholds.
    assert fixes["fitted_centres"]["mAP"] == pytest.approx(0.4)
    assert fixes["fitted_centres"]["mAP50"] == pytest.approx(1.0)
    assert fixes["fitted_centres"]["mAP75"] == pytest.approx(0.0)
    # IoU 4 / 8 = 0.5: matched at 0.50 only.
    assert fixes["fitted_sizes"]["mAP"] == pytest.approx(0.1)
    assert fixes["fitted_sizes"]["mAP50"] == pytest.approx(1.0)
    assert fixes["fitted_boxes"]["mAP"] == pytest.approx(1.0)


def test_a_box_of_the_wrong_class_is_fixed_by_classes_only_if_it_overlaps_enough():
    as_cyclist = [[100.0, 10.0, 106.0, 34.0]]
    result, fixes = _breakdown([PERSON], [PEDESTRIAN], as_cyclist, [2])
    assert result["mAP50"] == pytest.approx(0.0)
    assert fixes["classes_fixed"]["mAP50"] == pytest.approx(1.0)
    assert fixes["fitted_boxes"]["mAP50"] == pytest.approx(0.0)  # fits only boxes of its own class
    # Overlapping the person by IoU 3/9 < 0.5 it is a poor box, not a confusion: the class stays.
    _, fixes = _breakdown([PERSON], [PEDESTRIAN], [[103.0, 10.0, 109.0, 34.0]], [2])
    assert fixes["classes_fixed"]["mAP50"] == pytest.approx(0.0)


def test_duplicates_and_misses_stay_errors_after_the_fit():
    """Two detections on the car (the higher-scored one poor) and none on the person: the first takes the
    car's box, the second (exact already) finds it taken and stays a duplicate, the person stays missed."""
    poor = [14.0, 12.0, 44.0, 36.0]  # IoU 0.6 with the car
    _, fixes = _breakdown([CAR, PERSON], [VEHICLE, PEDESTRIAN], [poor, CAR], [VEHICLE, VEHICLE])
    # vehicle AP 1.0 after the fit (its first detection is now exact), pedestrian 0: mean 0.5.
    assert fixes["fitted_boxes"]["mAP"] == pytest.approx(0.5)
    # A background detection (IoU < 0.1 with every box) is not moved onto a box.
    _, fixes = _breakdown([CAR], [VEHICLE], [[200.0, 10.0, 240.0, 40.0], CAR], [VEHICLE, VEHICLE])
    assert fixes["fitted_boxes"]["mAP50"] == pytest.approx(0.5)


def test_side_by_side_boxes_of_one_class_each_keep_their_detection():
    """Two overlapping cars, each found (the second detection is closer to the first car, but COCO gives
    it the second): fitting must not pull both onto the first car and make a duplicate."""
    first, second = [0.0, 0.0, 40.0, 30.0], [10.0, 0.0, 50.0, 30.0]
    result, fixes = _breakdown([first, second], [VEHICLE, VEHICLE], [first, [4.0, 0.0, 44.0, 30.0]],
                               [VEHICLE, VEHICLE])
    assert result["mAP"] < 1.0
    assert fixes["fitted_boxes"]["mAP"] == pytest.approx(1.0)


def test_a_detection_evaluation_ignores_stays_ignored():
    """The highest-scored detection lies inside an ignore region and overlaps the first car by IoU 0.14:
    evaluation ignores it. Moved onto that car it would push the car's own detection (0.8) down to a
    duplicate ranked above the second car's (0.5): AP50 below 1. No fix may move it."""
    in_ignore, first, second = [40.0, 10.0, 80.0, 40.0], [10.0, 10.0, 50.0, 40.0], [120.0, 10.0, 160.0, 40.0]
    result, fixes = _breakdown([first, second], [VEHICLE, VEHICLE], [in_ignore, first, second],
                               [VEHICLE, VEHICLE, VEHICLE], scores=[0.9, 0.8, 0.5],
                               ignore=[[40.0, 10.0, 90.0, 40.0]])
    assert result["mAP"] == pytest.approx(1.0)
    assert all(fix["mAP"] == pytest.approx(1.0) for fix in fixes.values())


def test_a_confused_duplicate_is_dropped_not_moved_to_the_other_class():
    """A pedestrian found as a pedestrian (0.95) and, lower, as a cyclist (0.9), above the real cyclist's
    detection (0.8) and a second pedestrian's (0.85): the cyclist class ranks a false positive first (AP
    0.5). Relabelled, the confused box would be a pedestrian duplicate ranked above the second
    pedestrian; it was a duplicate, so it goes (TIDE's rule): both classes 1.0."""
    cyclist_box, other_person = [200.0, 10.0, 206.0, 34.0], [300.0, 10.0, 306.0, 34.0]
    result, fixes = _breakdown([PERSON, other_person, cyclist_box], [PEDESTRIAN, PEDESTRIAN, 2],
                               [PERSON, PERSON, other_person, cyclist_box], [PEDESTRIAN, 2, PEDESTRIAN, 2],
                               scores=[0.95, 0.9, 0.85, 0.8])
    assert result["mAP50"] == pytest.approx(0.75)
    assert fixes["classes_fixed"]["mAP50"] == pytest.approx(1.0)
