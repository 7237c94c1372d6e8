"""FusedBatchNorm: the fused kernel where it applies, keras' BatchNormalization elsewhere."""
import keras
import numpy as np

from models.batch_norm import FusedBatchNorm


def test_float64_trains_on_the_parents_path_and_matches_keras_batch_norm():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(2, 4, 5, 3))
    fused, plain = FusedBatchNorm(dtype="float64"), keras.layers.BatchNormalization(dtype="float64")
    out = fused(x, training=True)  # the fused kernel has no float64: it would raise here
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out),
                               keras.ops.convert_to_numpy(plain(x, training=True)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fused.moving_mean),
                               keras.ops.convert_to_numpy(plain.moving_mean), rtol=1e-12)
