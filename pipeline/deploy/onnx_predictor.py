"""An .onnx file (pipeline/deploy/onnx_export.py) in ONNX Runtime, behind the runtimes' predictor interface.

The file holds serving.py's fixed-size model: image float32 [B,H,W,3] 0..255 at the model size ->
boxes, scores, classes, segmentation (class ids), depth at the model size. So it is served exactly
like a TFLite file: frames resized in (serving.resize_frames), results mapped back
(runtimes.at_frame_size). Its batch axis is dynamic: a batch is one run, not one run per frame.
"""
from __future__ import annotations

import numpy as np

from data.errors import UserError
from pipeline.deploy import runtimes, serving


# ONNX Runtime's type names -> NumPy's, as the other formats' describe() write them
ONNX_TYPES = {"float": "float32", "double": "float64"}


class OnnxPredictor(runtimes.Predictor):
    name = "onnx"

    def __init__(self, path, num_threads=None, score_threshold: float | None = None):
        super().__init__(path, num_threads, score_threshold)
        import onnxruntime  # heavy: loaded only when an .onnx model is served

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its graph-optimiser notes are not the user's business
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        # ONNX Runtime's idle threads spin-wait after every run by default, burning the cores that the
        # rest of a pipeline (the clip stage's reader, writer and encoder threads) or the next model
        # needs: on 2 cores, TFLite's invoke() right after an ONNX predict() ran 1.24-1.47x slower with
        # spinning, at its own speed without; ONNX's own call took 5-14 % longer without (docs/performance.md,
        # "What limits the missed targets (the Intel run)").
        for pool in ("intra_op", "inter_op"):
            options.add_session_config_entry(f"session.{pool}.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise UserError(f"{path}: expected one image input, found {[i.name for i in inputs]}")
        self._input = inputs[0]
        shape = self._input.shape
        if len(shape) != 4 or shape[-1] != 3 or not all(isinstance(d, int) for d in shape[1:3]):
            raise UserError(f"{path}: input must be [B,H,W,3] with a fixed H and W; it is {shape}")
        self.input_size = (int(shape[1]), int(shape[2]))
        self._batch = shape[0] if isinstance(shape[0], int) else None  # None: any batch size
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.tasks = runtimes.tasks_from_outputs(self._outputs)
        self.classes = runtimes.card_classes(self.path.parent / "model_card.json")

    def _run(self, x: np.ndarray) -> dict:
        if self._batch is None:
            return dict(zip(self._outputs, self.session.run(self._outputs, {self._input.name: x})))
        runs = [self.session.run(self._outputs, {self._input.name: x[i:i + 1]}) for i in range(len(x))]
        return {name: np.concatenate([r[k] for r in runs]) for k, name in enumerate(self._outputs)}

    def _predict(self, images):
        height, width = images.shape[1:3]
        same = (height, width) == self.input_size
        x = images.astype(np.float32) if same else serving.resize_frames(images, self.input_size).numpy()
        decoded = self._run(x)
        return runtimes.at_frame_size(decoded, self.input_size, height, width, self.score_threshold)

    def describe(self):
        def text(arg):
            dims = [d if isinstance(d, int) else "B" for d in arg.shape]
            dtype = arg.type.removeprefix("tensor(").rstrip(")")
            return f"{ONNX_TYPES.get(dtype, dtype)} {dims}"
        return {"inputs": {self._input.name: text(self._input) + " 0..255 RGB at the model size"},
                "outputs": {o.name: text(o) for o in self.session.get_outputs()}}
