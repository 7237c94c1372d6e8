"""The TFLite runtime's NumPy copy of the decoder's neighbourhood refinement (int8 files leave it to
the runtime) gives the graph's boxes, for files with the neighbourhood and for files exported before."""
import numpy as np

from data.vocabulary import STRIDE
from models.detection_decode import PEAK, decode_detections, decode_parts, refine
from pipeline.deploy.runtimes import boxes_of_parts, refined_parts


def test_the_tflite_runtime_refines_as_the_graph_does():
    """int8 files leave the neighbourhood to the runtime (NumPy); it must give the graph's boxes."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 5, 9)).astype(np.float32)
    logits[0, 0] = -200.0  # every weight underflows: the peak's own box
    offsets = rng.uniform(0, 1, (2, 5, 9, 2)).astype(np.float32)
    sizes = rng.uniform(0.5, 20, (2, 5, 9, 2)).astype(np.float32)
    graph = [t.numpy() for t in refine(logits, offsets, sizes)]
    runtime = refined_parts(logits, offsets, sizes)
    for a, b in zip(graph, runtime):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runtime[0][0, 0], offsets[0, 0, 4], atol=1e-6)
    np.testing.assert_allclose(runtime[1][0, 0], sizes[0, 0, 4], rtol=1e-5)


def test_int8_box_parts_compose_to_the_graphs_boxes_in_both_layouts():
    rng = np.random.default_rng(1)
    batch, h, w, classes = 2, 6, 8, 3
    out = np.concatenate([rng.normal(0, 2.5, (batch, h, w, classes)), rng.uniform(0.2, 9, (batch, h, w, 2)),
                          rng.uniform(0, 1, (batch, h, w, 2))], -1).astype(np.float32)
    parts = {name: value.numpy() for name, value in decode_parts(
        out[..., :classes], out[..., classes:classes + 2], out[..., classes + 2:], 20, box_parts=True).items()}
    size = (h * STRIDE, w * STRIDE)
    composed = boxes_of_parts(parts, size)
    assert not any(name.startswith("box_") for name in composed)
    np.testing.assert_allclose(composed["boxes"], decode_detections(out, 20)["boxes"].numpy(), atol=1e-3)
    # a file exported before the neighbourhood: the peak cell's own offset and size, [B,K,2]
    old = {**{k: v for k, v in parts.items() if k != "box_logits"},
           "box_offsets": parts["box_offsets"][:, :, PEAK], "box_sizes": parts["box_sizes"][:, :, PEAK]}
    np.testing.assert_allclose(boxes_of_parts(old, size)["boxes"],
                               decode_detections(out, 20, neighbourhood=False)["boxes"].numpy(), atol=1e-3)
