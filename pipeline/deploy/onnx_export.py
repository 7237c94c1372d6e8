"""model.onnx: the multi-task net for ONNX Runtime, through Keras' own ONNX export.

`model.export(path, format="onnx")` (Keras 3.15, TensorFlow backend) traces the model with Keras'
ExportArchive and converts the graph with tf2onnx. The graph is serving.py's fixed-size model (b),
the one the TFLite files hold: image float32 [B,H,W,3] 0..255 at the model size -> boxes x1,y1,x2,y2
(model pixels), scores, classes, segmentation (class ids), depth (metres), decoding included (top-K
peaks, no NMS op, so nothing outside the standard ONNX op set). The batch axis stays dynamic.
The runtime (pipeline/deploy/onnx_predictor.py) resizes frames in and maps results back.
"""
from __future__ import annotations

import logging
import pathlib
import warnings

import tensorflow as tf

from pipeline import trained
from pipeline.deploy import serving

# A pinned opset keeps the file the same whatever tf2onnx's default becomes; 17 (ONNX 1.12, 2022) has
# every op this graph needs and older ONNX Runtimes read it too.
OPSET = 17


def write_onnx(net, path: pathlib.Path, top_k: int) -> dict:
    """Writes `path`; returns notes for parity.json."""
    import onnx  # tf2onnx's dependency: the file is checked with its checker below
    import tf2onnx

    height, width = trained.input_size(net)
    model = serving.fixed_size_model(net, top_k)
    signature = [{"image": tf.TensorSpec([None, height, width, 3], tf.float32, name="image")}]
    # tf2onnx logs its rewrites at INFO and WARNING; the stage prints its own one line.
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # Keras' numpy-2 patch of tf2onnx sets np.object; numpy warns about it. Not ours to fix.
        warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
        model.export(str(path), format="onnx", input_signature=signature, verbose=False, opset_version=OPSET)
    onnx.checker.check_model(str(path))
    return {"converter": f"keras model.export(format='onnx') -> tf2onnx {tf2onnx.__version__}",
            "opset": OPSET, "onnx": onnx.__version__,
            "input": f"image float32 [B,{height},{width},3] 0..255 (dynamic batch)"}
