"""split_concat: a concat -> 1x1 conv computes as a sum of convs while exporting (same values in float),
the layers get their own call back afterwards, and int8 keeps the small-range part precise; a skip
that is a linear projection (1x1 conv -> BatchNorm, as the encoder's stride-2 skip) is folded into one
conv on the projection's input.

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


def projected_decoder(nested: bool):
    """The decoder above with the real skip's shape: ReLU6 feature -> 1x1 projection -> BatchNorm
    (no activation, range about +-30), inside a nested encoder model when `nested`. The logits read
    small differences between large skip channels (paired channels, weights +1 / -1), as a decoder
    that reads fine detail off a wide-range skip does: rounding the skip to int8 costs most there."""
    import keras
    image = keras.Input((8, 8, 4), name="image")
    inner = keras.layers.Conv2D(8, 1, name="expand")(image)
    inner = keras.layers.ReLU(6.0, name="relu6")(inner)
    project = keras.layers.Conv2D(6, 1, use_bias=False, name="project")(inner)
    skip = keras.layers.BatchNormalization(name="project_bn")(project)
    if nested:
        encoder = keras.Model(image, {"P1": skip, "feature": inner}, name="encoder")
        outputs = encoder(image)
        skip, inner = outputs["P1"], outputs["feature"]
    feature = keras.layers.Conv2D(4, 1, activation="relu", name="squeeze")(inner)
    x = keras.layers.Concatenate(name="concat")([feature, skip])
    net = keras.Model(image, keras.layers.Conv2D(1, 1, name="logits")(x))
    rng = np.random.default_rng(0)
    layer = (encoder if nested else net).get_layer
    layer("expand").set_weights([rng.normal(0, 2.0, (1, 1, 4, 8)).astype("float32"), np.ones(8, "float32")])
    base = rng.normal(0, 1.0, (8, 3))
    pairs = np.concatenate([base, base + rng.normal(0, 0.05, (8, 3))], axis=1)
    layer("project").set_weights([pairs[None, None].astype("float32")])
    layer("project_bn").set_weights([np.full(6, 4.0), rng.normal(0, 0.1, 6), rng.normal(0, 0.1, 6),
                                     rng.uniform(0.8, 1.2, 6)])
    kernel = np.concatenate([rng.normal(0, 0.01, 4), [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]])
    net.get_layer("logits").set_weights([kernel.reshape(1, 1, 10, 1).astype("float32"), np.zeros(1, "float32")])
    return net


def test_a_projected_skip_folds_into_one_conv_with_the_same_values():
    for nested in (False, True):
        net = projected_decoder(nested)
        (concat, _), = split_concat.concat_conv_pairs(net)
        _, skip = concat._inbound_nodes[0].input_tensors
        project, norm = split_concat.linear_projection(skip)
        assert (project.name, norm.name) == ("project", "project_bn")
        x = frames(4)
        expected = np.asarray(net(x))
        with split_concat.split_concat_convs(net):
            calls = []
            original = net.get_layer("logits").convolution_op
            net.get_layer("logits").convolution_op = lambda *a: calls.append(a[1].shape) or original(*a)
            np.testing.assert_allclose(np.asarray(net(x)), expected, rtol=1e-4, atol=1e-4)
            del net.get_layer("logits").convolution_op
        # The skip's term reads the projection's 8-channel input, not the 6-channel projection.
        assert [tuple(s) for s in calls] == [(1, 1, 4, 1), (1, 1, 8, 1)], nested
        assert "call" not in vars(project) and "call" not in vars(norm)


def test_int8_folding_the_projected_skip_removes_its_rounding(tmp_path, monkeypatch):
    net = projected_decoder(nested=True)
    folded, _ = int8_error(net, True, tmp_path)
    monkeypatch.setattr(split_concat, "linear_projection", lambda tensor: None)
    unfolded, _ = int8_error(net, True, tmp_path)
    assert folded < 0.5 * unfolded, (folded, unfolded)
