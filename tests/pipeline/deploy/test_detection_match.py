"""tests/detection_match.py, the tie-aware comparison the deploy tests use: it excuses what float32
rounding may decide either way, and nothing else."""
import numpy as np
import pytest

from detection_match import assert_same_detections


def test_a_moved_peak_is_excused_only_where_the_two_cells_nearly_tie():
    """assert_same_detections itself: the other runtime's peak one cell over, as rounding can put it
    when two neighbours' scores are within NEAR_TIE, passes; one whose neighbour scores clearly more
    (a real difference between the runtimes) does not."""
    def detections(*slots):  # (score, x1) -> one frame of class-0 boxes 4 px wide
        return {"scores": np.array([[s for s, _ in slots]]), "classes": np.zeros((1, len(slots)), np.int32),
                "boxes": np.array([[[x, 0.0, x + 4.0, 4.0] for _, x in slots]])}

    heat = np.full((1, 3, 4, 1), 0.1)
    heat[0, 2, 3, 0] = 0.2  # a peak both runtimes keep, the lowest slot
    heat[0, 0, 0, 0], heat[0, 0, 1, 0] = 0.5 + 5e-7, 0.5  # two neighbours 5e-7 apart
    reference = detections((0.5 + 5e-7, 0.0), (0.2, 12.0))  # the peak in the first cell
    moved = detections((0.5, 4.0), (0.2, 12.0))  # ...and in the second cell
    assert_same_detections(moved, reference, heat)
    with pytest.raises(AssertionError):
        assert_same_detections(moved, reference)  # without the heat map nothing excuses it
    heat[0, 0, 0, 0] = 0.6  # the first cell clearly ahead: the second is no peak in any runtime
    with pytest.raises(AssertionError):
        assert_same_detections(moved, detections((0.6, 0.0), (0.2, 12.0)), heat)
