"""The TFLite runtime's NumPy copy of the decoder's neighbourhood refinement (int8 files leave it to
the runtime) gives the graph's boxes."""
import numpy as np

from models.detection_decode import refine
from pipeline.deploy.runtimes import refined_parts


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
