"""BatchNormalization whose training path is TensorFlow's fused kernel.

Keras 3's BatchNormalization computes moments and the affine transform as ~10 separate
element-wise ops; without XLA each one is a full pass over the activation, which on a 2-core CPU
makes BatchNorm the most expensive layer of the network. FusedBatchNormV3 does it in one kernel
(measured ~2x faster forward+backward on this project's stride-2 maps). Inference and every case
the fused op does not cover fall back to the parent, so saved models and the TFLite export see
ordinary BatchNormalization maths and weights are interchangeable with keras.layers.BatchNormalization.
On another Keras backend (JAX, PyTorch) the layer is plain BatchNormalization: XLA fuses it there.
"""
from __future__ import annotations

import keras

FUSED_BACKEND = keras.backend.backend() == "tensorflow"
if FUSED_BACKEND:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="dashcam")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization (same arguments, same weights), fused when training NHWC."""

    def _fusable(self, inputs, training, mask):
        axis = self.axis if isinstance(self.axis, int) else None
        # The fused kernel takes float16, bfloat16 and float32 (a float64 net, e.g. a gradient
        # reference, takes the parent's path).
        return (FUSED_BACKEND and training and self.trainable and mask is None and len(inputs.shape) == 4
                and keras.backend.standardize_dtype(inputs.dtype) in ("float16", "bfloat16", "float32")
                and axis in (-1, 3) and self.scale and self.center and not self.renorm
                and not self.synchronized and self.epsilon >= 1.001e-5)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        # float16/bfloat16 inputs are fine: the fused op keeps its statistics in float32.
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
            epsilon=self.epsilon, data_format="NHWC", is_training=True)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(outputs, self.compute_dtype)
