"""The GPU check's reference: the per-step losses a curve is read from, and how it is held to the CPU's."""
import keras
import numpy as np
import pytest

from models.portable_trainer import StepLosses, tiled
from pipeline.bench.gpu_reference import curve_comparison


def test_step_losses_are_each_steps_own_loss_not_the_running_mean_keras_logs():
    rng = np.random.default_rng(0)
    # Targets scaled per batch, so each batch's loss differs and a running mean could not pass.
    batches = [({"x": rng.normal(size=(4, 3)).astype("float32")},
                {"y": (i + 1) * rng.normal(size=(4, 1)).astype("float32")}) for i in range(3)]
    x, y = tiled(batches, size=4, steps=5)
    np.testing.assert_array_equal(x["x"][16:20], batches[1][0]["x"])  # step 5 cycles back to batch 1
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # no update: a step's loss is its batch's
    recorder = StepLosses()
    # Two epochs: Keras' running mean starts again with the second; each step still gets its own loss.
    model.fit(x["x"], y["y"], batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[recorder])
    expected = [float(np.mean((model.predict_on_batch(x["x"][4 * i:4 * i + 4]) - y["y"][4 * i:4 * i + 4]) ** 2))
                for i in range(5)]
    np.testing.assert_allclose(recorder.losses, expected * 2, rtol=1e-5)
    assert len(recorder.ends) == 10 and recorder.ends == sorted(recorder.ends)


def test_a_curve_is_held_to_the_reference_step_for_step():
    reference = np.array([1.0, 0.9, 0.8, 0.7, 0.5, 0.45, 0.4, 0.35])
    close = curve_comparison(reference * (1 + 1e-3), reference, 1e-2, cycle=4)
    assert close["within_tolerance"] and close["max_relative_difference"] == pytest.approx(1e-3)
    assert close["reference_last_over_first_pass"] == pytest.approx(0.425 / 0.85)
    off = reference.copy()
    off[5] *= 1.02
    result = curve_comparison(off, reference, 1e-2, cycle=4)
    assert not result["within_tolerance"] and result["step_of_max"] == 5
    diverged = reference.copy()
    diverged[2] = np.nan
    assert not curve_comparison(diverged, reference, 1e-2, cycle=4)["within_tolerance"]
    short = curve_comparison(reference[:3], reference, 1e-2, cycle=4)
    assert short["steps"] == 3 and short["reference_last_over_first_pass"] is None
