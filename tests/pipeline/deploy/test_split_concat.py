"""split_concat: a concat -> 1x1 conv computes as a sum of convs while exporting (same values in float),
the layers get their own call back afterwards, and int8 keeps the small-range part precise.

The net is dense_head's decoder in miniature: a ReLU feature of range ~0..1 concatenated with a skip
of range ~+-40, then a 1x1 conv to one output.
"""
import numpy as np

from pipeline.deploy import split_concat


def decoder():
    import keras
    image = keras.Input((8, 8, 4), name="image")
    feature = keras.layers.Conv2D(8, 1, activation="relu", name="squeeze")(image)
    skip = keras.layers.Conv2D(8, 1, name="skip")(image)
    skip = keras.layers.Rescaling(40.0, name="wide")(skip)
    x = keras.layers.Concatenate(name="concat")([feature, skip])
    out = keras.layers.Conv2D(1, 1, name="logits")(x)
    net = keras.Model(image, out)
    rng = np.random.default_rng(0)
    net.get_layer("skip").set_weights([rng.normal(0, 0.3, (1, 1, 4, 8)).astype("float32"), np.zeros(8, "float32")])
    # The output leans on the small feature: the skip's weights are small.
    kernel = np.concatenate([rng.normal(0, 1.0, (1, 1, 8, 1)), rng.normal(0, 0.002, (1, 1, 8, 1))], axis=2)
    net.get_layer("logits").set_weights([kernel.astype("float32"), np.array([0.1], "float32")])
    return net


def frames(count=16, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (count, 8, 8, 4)).astype("float32")


def test_pairs_are_found_computed_as_sums_and_restored():
    net = decoder()
    pairs = split_concat.concat_conv_pairs(net)
    assert [(a.name, b.name) for a, b in pairs] == [("concat", "logits")]
    x = frames(4)
    expected = np.asarray(net(x))
    with split_concat.split_concat_convs(net) as names:
        assert names == ["logits"]
        calls = []
        original = net.get_layer("logits").convolution_op
        net.get_layer("logits").convolution_op = lambda *a: calls.append(a[1].shape) or original(*a)
        np.testing.assert_allclose(np.asarray(net(x)), expected, rtol=1e-5, atol=1e-5)
        del net.get_layer("logits").convolution_op
        assert [tuple(s) for s in calls] == [(1, 1, 8, 1), (1, 1, 8, 1)]  # one conv per part
    assert "call" not in vars(net.get_layer("logits")) and "call" not in vars(net.get_layer("concat"))
    np.testing.assert_allclose(np.asarray(net(x)), expected, rtol=1e-6)


def int8_error(net, split: bool, tmp_path) -> tuple[float, set]:
    """RMS error of the int8 file against the float net on fresh frames, and the file's op names."""
    import contextlib

    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    path = tmp_path / f"split_{split}.tflite"
    calibration = frames(16, seed=2)

    def representative():
        for frame in calibration:
            yield [frame[None]]
    with split_concat.split_concat_convs(net) if split else contextlib.nullcontext():
        net.export(str(path), format="litert", input_signature=[tf.TensorSpec([1, 8, 8, 4], tf.float32)],
                   verbose=False, optimizations=[tf.lite.Optimize.DEFAULT], representative_dataset=representative,
                   target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]})
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    errors = []
    for frame in frames(16, seed=3):
        interpreter.set_tensor(inp["index"], frame[None])
        interpreter.invoke()
        errors.append(interpreter.get_tensor(out["index"]) - np.asarray(net(frame[None])))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    return float(np.sqrt(np.mean(np.square(errors)))), ops


def test_int8_keeps_the_small_part_precise(tmp_path):
    net = decoder()
    joined, joined_ops = int8_error(net, False, tmp_path)
    split, split_ops = int8_error(net, True, tmp_path)
    assert "CONCATENATION" in joined_ops and "CONCATENATION" not in split_ops
    assert split < 0.5 * joined, (split, joined)
