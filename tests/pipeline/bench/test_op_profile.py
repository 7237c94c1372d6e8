"""The int8 profile tools: cut-out ops reproduce the whole model, placement finds XNNPACK's partitions and
the ops it leaves to TFLite, profiles compare side by side, perf kernels are named, the MobileNetV2
reference is full-integer, and section 4 renders its "where the time goes".

A tiny Keras net (conv, depthwise, bilinear resize, argmax) converted to float32 and int8 stands in for
the real model: seconds instead of minutes, the same op kinds.
"""
import numpy as np
import pytest

from pipeline.bench import kernels, op_profile, op_summary, reference_net
from pipeline.bench import report as bench_report
from pipeline.deploy import serving


def tiny_net():
    import keras
    image = keras.Input((16, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="encoder_conv")(image)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="encoder_dw")(x)
    x = keras.layers.Conv2D(4, 1, name="segmentation_head_logits")(x)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="segmentation_head_up1")(x)
    classes = serving.ArgmaxClasses(name="argmax")(x)  # ARG_MAX: an op XNNPACK does not take
    return keras.Model(image, {"logits": x, "classes": classes})


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """{"float32": path, "int8": path} of the tiny net."""
    import tensorflow as tf
    folder = tmp_path_factory.mktemp("tflite")
    net, signature = tiny_net(), [tf.TensorSpec([1, 16, 32, 3], tf.float32)]
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(4):
            yield [rng.uniform(0, 255, (1, 16, 32, 3)).astype(np.float32)]
    paths = {"float32": folder / "tiny_float32.tflite", "int8": folder / "tiny_int8.tflite"}
    net.export(str(paths["float32"]), format="litert", input_signature=signature, verbose=False)
    net.export(str(paths["int8"]), format="litert", input_signature=signature, verbose=False,
               optimizations=[tf.lite.Optimize.DEFAULT], representative_dataset=representative,
               target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
               inference_input_type=tf.uint8, inference_output_type=tf.uint8)
    return paths


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_cut_out_ops_compute_what_they_compute_in_the_whole_model(tiny_files, precision):
    path = tiny_files[precision]
    values = op_profile.tensor_values(path)
    model = op_profile._model_object(path)
    for index, op in enumerate(model.subgraphs[0].operators):
        content, feeds = op_profile.single_op_model(model, index)
        runner = op_profile._OpRunner(content, feeds, values, threads=1, delegate=False)
        out = runner.interpreter.get_output_details()[0]
        np.testing.assert_array_equal(runner.interpreter.get_tensor(out["index"]), values[op.outputs[0]],
                                      err_msg=f"op {index}")


def test_placement_names_xnnpack_partitions_and_builtin_ops(tiny_files):
    for path in tiny_files.values():
        inside, partitions, count = op_profile.placement(path, threads=1)
        names = op_profile._op_names(op_profile._model_object(path))
        assert count == len(names) and partitions >= 1
        on_xnnpack = {names[i] for i in inside}
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "RESIZE_BILINEAR"} <= on_xnnpack
        assert "ARG_MAX" not in on_xnnpack and "ARG_MAX" in names
        assert all(0 <= p < partitions for p in inside.values())


def test_profiles_compare_float32_and_int8_and_render(tiny_files):
    f32, i8 = (op_profile.profile(tiny_files[p], threads=1, rounds=2, calls=2) for p in ("float32", "int8"))
    for prof in (f32, i8):
        assert prof["clock"] == "thread CPU time" and prof["whole_invoke_ms"] > 0
        assert len(prof["ops_detail"]) == prof["ops"] and all(row["ms"] >= 0 for row in prof["ops_detail"])
        assert prof["sum_of_ops_ms"] == pytest.approx(sum(row["ms"] for row in prof["ops_detail"]))
    summary = op_summary.compare(f32, i8, top=3)
    by_op = {row["name"]: row for row in summary["by_op"]}
    assert by_op["CONV_2D"]["ops_float32"] == by_op["CONV_2D"]["ops_int8"] == 2
    assert by_op["ARG_MAX"]["kernels_int8"] == "builtin" and by_op["CONV_2D"]["kernels_int8"] == "XNNPACK"
    assert sum(row["int8_share"] for row in summary["by_op"]) == pytest.approx(1.0)
    parts = {row["name"] for row in summary["by_part"]}
    assert {"encoder", "heads"} <= parts, parts
    assert len(summary["top_int8_ops"]) == 3
    section = {"title": "4.", "formats": {}, "invoke_only": {}, "source": "test", "int8_speedup_vs_float32": 1.5,
               "int8_speedup_vs_float32_invoke_only": 1.4, "int8_speedup_vs_float32_invoke_one_thread": 1.3,
               "threads": 2, "int8_speedup_over_reference": 0.8,
               "reference": {"what": "MobileNetV2", "int8_speedup_vs_float32": 1.75,
                             "int8_speedup_vs_float32_one_thread": 1.7},
               "profile": {"threads": 1, "how": "test", "model": summary,
                           "reference": {k: summary[k] for k in ("float32", "int8", "int8_speedup_whole", "by_op")},
                           "kernels": {"tflite-int8": {"skipped": "no perf"}}}}
    text = "\n".join(bench_report.RENDER[bench_report.DEPLOYMENT](section))
    for fragment in ("Where the time goes", "Reference in the same rounds", "by part of the net", "ARG_MAX",
                     "most expensive ops", "skipped, no perf"):
        assert fragment in text, fragment


def test_layer_and_part_come_from_the_tensor_names():
    name = "fixed_size_inference_1/encoder_1/encoder_blocks_2_bn1_relu6_1/Relu6;fixed_size_inference_1/x"
    assert op_summary.short_layer(name) == "encoder_blocks_2_bn1_relu6"
    assert op_summary.part_of(name) == "encoder"
    assert op_summary.part_of("fixed_size_inference_1/neck_out_1/separable_conv2d/depthwise1") == "neck"
    assert op_summary.part_of("fixed_size_inference_1/depth_head_up1_1/resize/ResizeBilinear") == "heads"
    assert op_summary.part_of("fixed_size_inference_1/decode_1/TopKV2") == "decoding and io"


def test_kernel_names_say_type_operation_and_instruction_set():
    assert kernels.kind("xnn_qs8_qc8w_gemm_minmax_fp32_ukernel_7x16c8__avx512vnni_prfm") == \
        "XNNPACK int8 gemm (avx512vnni_prfm)"
    assert kernels.kind("xnn_qs8_qc8w_dwconv_minmax_fp32_ukernel_25p32c__avx512skx_mul32") == \
        "XNNPACK int8 dwconv (avx512skx_mul32)"
    assert kernels.kind("xnn_f32_dwconv_minmax_ukernel_9p16c__avx512f") == "XNNPACK float32 dwconv (avx512f)"
    assert kernels.kind("tflite::reference_ops::StridedSlice<signed char>") == "TFLite reference kernel"
    assert kernels.kind("thread_main") == "thread pool (waiting, dispatch)"
    line = "    27.54%     1294  [.] xnn_qs8_qc8w_gemm_minmax_fp32_ukernel_7x16c8__avx512vnni_prfm     -      -  "
    assert kernels.LINE.match(line).groups() == ("27.54", "1294", "xnn_qs8_qc8w_gemm_minmax_fp32_ukernel_7x16c8__"
                                                                  "avx512vnni_prfm")


def test_kernel_profile_names_xnnpack_kernels_or_says_why_not(tiny_files):
    result = kernels.profile(tiny_files["int8"], threads=1, seconds=0.3)
    if kernels.unavailable():
        assert result == {"skipped": kernels.unavailable()}
        return
    assert "skipped" not in result, result
    assert result["invokes"] > 0 and result["samples"] > 0
    assert any(row["kind"].startswith("XNNPACK int8") for row in result["by_kind"]), result["by_kind"]
    assert sum(row["share"] for row in result["by_kind"]) == pytest.approx(1.0)


def assert_full_integer(paths):
    from ai_edge_litert.interpreter import Interpreter
    int8 = Interpreter(model_path=str(paths["int8"]))
    assert int8.get_input_details()[0]["dtype"] == np.int8 and int8.get_output_details()[0]["dtype"] == np.int8
    ops = {op["op_name"] for op in int8._get_ops_details()}
    assert "DEQUANTIZE" not in ops and {"CONV_2D", "DEPTHWISE_CONV_2D"} <= ops
    assert not [t["name"] for t in int8.get_tensor_details() if np.dtype(t["dtype"]) == np.float32]
    float32 = Interpreter(model_path=str(paths["float32"]))
    assert float32.get_input_details()[0]["dtype"] == np.float32


def test_reference_export_is_full_integer(tmp_path):
    import keras
    image = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu6")(image)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    assert_full_integer(reference_net.export(tmp_path, size=32, calibration=2, model=keras.Model(image, logits)))


@pytest.mark.slow
def test_reference_net_is_a_full_integer_mobilenet_v2(tmp_path):
    paths = reference_net.export(tmp_path, size=32, alpha=0.35, calibration=2)
    assert_full_integer(paths)
    assert reference_net.build(32, 0.35).name.startswith("mobilenetv2")


def test_speed_goals_keep_the_reference_apart():
    rows = bench_report.speed_goals({"4": {"int8_speedup_vs_float32": 1.5,
                                           "reference": {"int8_speedup_vs_float32": 1.7}}})
    status = {row["target"]: (row["measured"], row["status"]) for row in rows}
    assert status["TFLite int8 speed-up over TFLite float32"] == (1.5, "missed")
    assert status["MobileNetV2 int8 speed-up over float32 (reference, invoke)"] == (1.7, "reference")
