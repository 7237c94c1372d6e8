"""How tasks share the encoder: hard (one encoder), soft (L2-tied copies), cross-stitch (mixed copies).

- hard: one encoder and one neck; only the heads are per task (Caruana 1997).
- soft: one encoder per task, pulled together by beta * sum of squared differences of
  corresponding weights (Duong et al. 2015). The copies start identical so the penalty starts at 0
  and only task-specific gradients make them drift apart.
- cross_stitch: one encoder per task; after each per-task pyramid level from P2 on a learned T x T
  matrix mixes the task features, out_i = sum_j a_ij x_j (Misra et al. 2016).
With model.freeze_through, soft and cross-stitch copies share the frozen levels; model.shared_through
moves that branch point up (models/multitask.py).
"""
from __future__ import annotations

import re

import keras
from keras import ops

from models.efficientnet_lite import PYRAMID_BLOCKS
from models.encoder import STAGES
from models.neck import shared_layer_name

# A projection in the last encoder stage (builtin, EfficientNet-Lite0): the stream's last one is the
# layer nearest the last cross-stitch unit that belongs to one stream. The stage's block count
# depends on model.encoder_depth, so the last one is found, not named.
LAST_STAGE_PROJECTION = re.compile(rf"^(.*)_(s{len(STAGES)}b\d+|blocks_{PYRAMID_BLOCKS['P5']})_project_conv$")


@keras.saving.register_keras_serializable(package="dashcam")
class CrossStitch(keras.layers.Layer):
    """Mixes T same-shaped task features: out_i = sum_j alpha[i, j] * x_j.

    alpha starts at `diagonal` on the diagonal and (1 - diagonal) / (T - 1) elsewhere: rows sum to
    1 (feature scale is kept) and each task starts mostly from its own stream (Misra et al. used
    0.9 / 0.1). Its variable name contains "stitch" so AdamW does not decay it towards 0.
    """

    def __init__(self, num_tasks, diagonal=0.9, **kwargs):
        super().__init__(**kwargs)
        if int(num_tasks) < 1:
            raise ValueError(f"CrossStitch needs at least one task; Received: num_tasks={num_tasks}")
        if not 0.0 < diagonal <= 1.0:
            raise ValueError(f"CrossStitch diagonal must be in (0, 1]; Received: diagonal={diagonal}")
        self.num_tasks = int(num_tasks)
        self.diagonal = float(diagonal)

    def build(self, input_shape):
        if len(input_shape) != self.num_tasks:
            raise ValueError(f"CrossStitch expects {self.num_tasks} inputs; "
                             f"Received: {len(input_shape)} inputs")
        count = self.num_tasks
        off = (1.0 - self.diagonal) / (count - 1) if count > 1 else 0.0
        initial = [[self.diagonal if i == j else off for j in range(count)] for i in range(count)]
        self.alpha = self.add_weight(shape=(count, count), name="stitch_alpha",
                                     initializer=keras.initializers.Constant(initial))

    def call(self, inputs):
        # A Python loop over T <= 3 tasks lowers to plain MUL/ADD ops (TFLite and int8 friendly).
        alpha = ops.cast(self.alpha, inputs[0].dtype)
        # sum(), not tf.add_n: ADD_N has no int8 TFLite kernel and stayed float in the int8 export.
        return [sum(alpha[i, j] * inputs[j] for j in range(self.num_tasks))
                for i in range(self.num_tasks)]

    def compute_output_shape(self, input_shape):
        return list(input_shape)

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "diagonal": self.diagonal}


def soft_sharing_penalty(encoders, beta=1.0):
    """beta * sum over encoder pairs and corresponding trainable weights of ||W_a - W_b||^2."""
    if beta < 0:
        raise ValueError(f"soft sharing beta must be >= 0; Received: beta={beta}")
    weights = [encoder.trainable_weights for encoder in encoders]
    shapes = [[tuple(w.shape) for w in ws] for ws in weights]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("soft sharing needs encoders of identical structure; "
                         f"Received: {len(encoders)} encoders with different weight shapes")
    total = ops.zeros((), "float32")
    for a in range(len(weights)):
        for b in range(a + 1, len(weights)):
            for wa, wb in zip(weights[a], weights[b]):
                total += ops.sum(ops.square(ops.cast(wa, "float32") - ops.cast(wb, "float32")))
    return beta * total


def task_encoders(net, tasks):
    """The per-task encoder sub-models of a soft-sharing net (empty list for other modes)."""
    names = {layer.name for layer in net.layers}
    return [net.get_layer(f"encoder_{task}") for task in tasks if f"encoder_{task}" in names]


def shared_kernel(net):
    """The weights every task's gradient reaches, where GradNorm measures gradient norms; or None.

    hard: [the neck's final (pointwise) kernel], the last layer all tasks share. cross_stitch: the
    last encoder stage's projection kernel of every task stream; the last stitch mixes all streams
    into every task, so each task's gradient reaches each of them (the stitch matrix itself is
    not shared: its row i reaches task i alone). soft: None (no weight is shared, so GradNorm is
    undefined).
    """
    names = [layer.name for layer in net.layers]
    if shared_layer_name() in names:
        layer = net.get_layer(shared_layer_name())
        return [layer.pointwise_kernel if hasattr(layer, "pointwise_kernel") else layer.kernel]
    if not any(isinstance(layer, CrossStitch) for layer in net.layers):
        return None
    last = {}  # stream prefix -> its last projection; layers come in graph order, deeper blocks later
    for layer in net.layers:
        match = LAST_STAGE_PROJECTION.match(layer.name)
        if match:
            last[match.group(1)] = layer
    return [layer.kernel for layer in last.values()]
