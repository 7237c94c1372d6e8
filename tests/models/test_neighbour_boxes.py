"""model.detection_neighbour_boxes: the 8 cells around each centre cell learn its box too."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.detection import NeighbourOffset, detection_loss
from models.losses import per_example_losses
from models.multitask import build_model
from pipeline.config import ModelConfig, TrainConfig

CLASSES = 3
GRID = (6, 8)
CENTRE = (2, 3)  # the object's centre cell (row, column)
ABOVE = (1, 3)  # a cell around it


def _one_object():
    """One 2x5-cell object of class 1 centred at (3.5, 2.1) cells, and its box at the cell above."""
    shapes = {"det_heatmap": CLASSES, "det_size": 2, "det_offset": 2, "det_near_box": 4}
    y = {name: np.zeros((1, *GRID, channels), np.float32) for name, channels in shapes.items()}
    y.update({name: np.zeros((1, *GRID), np.float32) for name in ("det_mask", "det_near_weight")})
    row, column = CENTRE
    y["det_heatmap"][0, row, column, 1] = y["det_mask"][0, row, column] = 1.0
    y["det_size"][0, row, column] = [2.0, 5.0]
    y["det_offset"][0, row, column] = [0.5, 0.1]
    y["det_size_weight"] = y["det_mask"]
    y["det_near_box"][0, ABOVE[0], ABOVE[1]] = [2.0, 5.0, 0.5, 1.1]  # the centre, 1.1 cells below its top
    y["det_near_weight"][0, ABOVE[0], ABOVE[1]] = 0.5
    return y


def _output(size, offset):
    """Heat logits -5 everywhere (the same in every loss compared), boxes as given [1, h, w, 2]."""
    return np.concatenate([np.full((1, *GRID, CLASSES), -5.0), size, offset], axis=-1).astype(np.float32)


def test_neighbour_offsets_span_a_cell_beyond_either_side():
    out = NeighbourOffset()(tf.constant([-30.0, 0.0, 30.0])).numpy()
    np.testing.assert_allclose(out, [-1.0, 0.5, 2.0], atol=1e-6)


def test_a_cell_around_the_centre_pays_for_its_box_only_with_neighbour_boxes():
    y = _one_object()
    size = np.broadcast_to(np.array([2.0, 5.0], np.float32), (1, *GRID, 2)).copy()
    offset = np.zeros((1, *GRID, 2), np.float32)
    offset[(0, *CENTRE)] = [0.5, 0.1]
    offset[(0, *ABOVE)] = [0.5, 1.1]
    exact = _output(size, offset)
    offset[(0, *ABOVE)] = [0.5, 0.1]  # the cell above points into itself, not at the centre
    wrong = _output(size, offset)
    assert float(detection_loss(y, wrong)[0]) == float(detection_loss(y, exact)[0])
    plain = float(detection_loss(y, exact, neighbours=True)[0])
    np.testing.assert_allclose(plain, float(detection_loss(y, exact)[0]), rtol=1e-6)
    # offset L1 at the cell above: |0.5 - 0.5| + |0.1 - 1.1| = 1, weight 0.5, / (1 object x 2 coordinates)
    np.testing.assert_allclose(float(detection_loss(y, wrong, neighbours=True)[0]) - plain, 0.25, rtol=1e-5)
    size[(0, *ABOVE)] = [2.0 * np.e, 5.0]  # and a size e times too wide there: log error 1
    np.testing.assert_allclose(float(detection_loss(y, _output(size, offset), neighbours=True)[0]) - plain,
                               0.5, rtol=1e-5)


def test_only_the_training_objective_reads_the_cells_around_a_centre():
    model_config = ModelConfig(detection_neighbour_boxes=True)
    y = _one_object()
    size = np.full((1, *GRID, 2), 3.0, np.float32)
    out = _output(size, np.zeros((1, *GRID, 2), np.float32))
    outputs = {"detection": out}
    training = float(per_example_losses(model_config, TrainConfig())["detection"](y, outputs)[0])
    reported = float(per_example_losses(model_config)["detection"](y, outputs)[0])
    assert np.isclose(reported, float(detection_loss(y, out)[0]))
    assert np.isclose(training, float(detection_loss(y, out, neighbours=True)[0])) and training > reported


def test_a_model_with_neighbour_boxes_saves_and_loads(tmp_path):
    config = ModelConfig(widths=(8, 16, 24, 32), neck_width=16, head_width=16, top_k=10,
                         tasks=["detection"], detection_neighbour_boxes=True)
    net = build_model(config, (64, 64))
    image = {"image": np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)}
    net.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded(image)["detection"].numpy(), net(image)["detection"].numpy(), atol=1e-6)
    assert any(isinstance(layer, NeighbourOffset) for layer in loaded.layers)
