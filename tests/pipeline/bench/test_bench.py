"""Bench stage: every section present with finite numbers (no timing assertions: the machine is shared).

The whole --quick bench takes minutes on 2 cores (each train-step variant's first step is a long Python
trace), so it is marked slow; the unmarked tests cover the pieces: alternation, statistics, FLOPs, the
worker protocol, one inference section and the report.
"""
import argparse
import json
import math
import platform
import sys

import cv2
import numpy as np
import pytest

from data.synthetic_clip import read_clip_labels
from models import multitask
from pipeline.bench import clip_inputs
from pipeline.bench import infer as bench_infer
from pipeline.bench import report as bench_report
from pipeline.bench import run as bench
from pipeline.bench import timing
from pipeline.bench import train as bench_train
from pipeline.bench import worker as bench_worker
from pipeline.config import load_config, save_config
from pipeline.stages import bench as bench_stage
from pipeline.training import devices, onednn
from pipeline.video.clip_metrics import labels_path
from support import REPO, tiny

SECTIONS = list(bench_report.SECTIONS)
# TensorFlow's Linux x86 wheels carry oneDNN kernels; elsewhere asking for them changes nothing.
ONEDNN_BUILD = sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


def numbers(value, where="results"):
    """(path, number) for every number in a JSON-like tree."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{where}[{i}]")


def assert_finite(tree):
    found = list(numbers(tree))
    assert found
    bad = [(path, v) for path, v in found if not math.isfinite(v)]
    assert not bad, bad


def test_alternate_rotates_the_order_and_keeps_every_sample():
    order = []

    def runner(name):
        return lambda: order.append(name) or [0.001, 0.002]
    samples = timing.alternate({"a": runner("a"), "b": runner("b"), "c": runner("c")}, rounds=3)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in samples.items()} == {"a": 6, "b": 6, "c": 6}
    stats = timing.stats([0.001, 0.002, 0.003])
    assert stats["median_ms"] == pytest.approx(2.0) and stats["samples"] == 3 and stats["p90_ms"] >= 2.0


def test_machine_peak_and_flops(tiny_config):
    info = timing.machine()
    assert info["cpu"] and info["cores"] >= 1 and info["tensorflow"] and info["keras"]
    run, flops = timing.matmul_runner(128, 2)
    assert len(run()) == 2 and flops == 2 * 128 ** 3
    net = multitask.build_model(tiny_config.model, tuple(tiny_config.data.image_size))
    counted = timing.forward_flops(net, tuple(tiny_config.data.image_size))
    assert counted["by_op"]["Conv2D"] > 0 and counted["by_op"]["DepthwiseConv2dNative"] > 0
    assert counted["flops"] == sum(counted["by_op"].values())


def test_quick_config_and_settings():
    default = load_config(REPO / "configs" / "default.yaml")
    quick = bench.quick_config(default)
    assert quick.tiny and quick.experiment == "default-quick"
    assert tuple(quick.data.image_size) == (64, 96) and quick.train.batch_size == 4
    assert quick.model.tasks == default.model.tasks and quick.train.weighting == default.train.weighting
    for config, is_quick in ((default, False), (quick, True)):
        settings = bench_train.scaling_settings(config, is_quick)
        assert "config" in settings and len(settings) == (4 if is_quick else 5)
        assert all(h % 32 == 0 and w % 32 == 0 for (h, w), _ in settings.values())
        specs, by_variant, by_setting = bench_train.worker_specs(config, "c.yaml", is_quick)
        assert {"reference", "xla", "mixed_bfloat16", "uncertainty", "dwa", "gradnorm"} <= set(by_variant)
        # Every worker runs the kernels the stages run, but one: the config's step on the other kernels.
        other = bench_train.other_kernels()
        assert settings[other] == settings["config"]
        assert specs[by_setting[other]]["onednn"] is not onednn.enabled()
        assert specs[by_setting[other]]["overrides"] == specs[by_setting["config"]]["overrides"]
        assert all(spec["onednn"] is onednn.enabled() for key, spec in specs.items() if key != by_setting[other])
        if not devices.has_gpu():  # the config's own setting (uncertainty, float32, XLA off) is shared
            assert by_setting["config"] == by_variant["uncertainty"]
        assert len(specs) == len(set(by_variant.values()) | set(by_setting.values()))


def test_training_measurements_follow_the_training_crop():
    """With data.train_crop, section 7 scales the crop a train step sees; its other sizes are whole
    frames of that size (a valid config); the quick bench drops the crop with the large input."""
    overrides = ["data.image_size=[192,384]", "data.train_crop=[128,256]"]
    config = load_config(REPO / "configs" / "default.yaml", overrides)
    settings = bench_train.scaling_settings(config, False)
    assert settings["config"] == ((128, 256), 16) and settings["64x128/b16"][0] == (64, 128)
    specs, _, by_setting = bench_train.worker_specs(config, "c.yaml", False)
    assert "data.train_crop=null" not in specs[by_setting["config"]]["overrides"]
    for name, key in by_setting.items():
        if settings[name][0] != (128, 256):
            assert specs[key]["overrides"][-2:] == [f"data.image_size=[{settings[name][0][0]},{settings[name][0][1]}]",
                                                    "data.train_crop=null"]
            load_config(REPO / "configs" / "default.yaml", [*overrides, *specs[key]["overrides"]])
    quick = bench.quick_config(config)
    assert quick.data.train_crop is None and tuple(quick.data.image_size) == (64, 96)


def test_worker_protocol(tiny_config, tmp_path):
    save_config(tiny_config, tmp_path / "config.yaml")
    # The kernel choice this process did not make: the worker's own environment carries it.
    spec = {"config": str(tmp_path / "config.yaml"), "overrides": ["data.cache=false", "data.shuffle_buffer=1"],
            "jit": False, "precision": "float32", "onednn": not onednn.enabled(), "batches": 2}
    worker = bench_worker.WorkerProcess("w", spec, tmp_path)
    try:
        bench_worker.start_workers([worker]).join()
        ready = worker.check()
        assert ready["first_step_s"] > 0 and ready["params"] > 0
        assert ready["onednn"] is (spec["onednn"] and ONEDNN_BUILD)
        times = worker.run(2)
        assert len(times) == 2 and all(t > 0 for t in times)
        peak = worker.close()
        assert peak["peak_rss_mb"] >= peak["rss_before_mb"] > 0 and peak["onednn"] is ready["onednn"]
    finally:
        worker.kill()


def test_one_vs_three_and_its_table(tiny_config):
    net = multitask.build_model(tiny_config.model, tuple(tiny_config.data.image_size))
    measure, forward, flops = bench_infer.one_vs_three(tiny_config, net, rounds=2, calls=2)
    section = measure()
    assert_finite(section)
    assert flops == section["flops"]["multi"] > 0
    assert section["params"]["three"] > section["params"]["multi"] > 0
    assert 0 < section["flops_ratio"] < 1 and 0 < section["params_ratio"] < 1
    forward()
    table = "\n".join(bench_report.RENDER[bench_report.ONE_VS_THREE](section))
    assert "multi / three" in table and "GFLOPs per frame" in table


class StillPredictor:
    """The runtimes' predictor interface: road everywhere, 20 m everywhere (the clip loop's timing is
    what section 6 reads, not the answers)."""

    name, input_size, tasks = "still", (64, 96), ["segmentation", "depth"]

    def predict(self, images):
        count = len(images)
        return {"segmentation": np.zeros((count, 64, 96), np.uint8),
                "depth": np.full((count, 64, 96), 20.0, np.float32)}


def test_clip_section_has_a_row_per_resolution_and_its_table(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_infer.runtimes, "load_predictor", lambda path, **options: StillPredictor())
    (tmp_path / "clip").mkdir()
    section = bench_infer.clip(tiny_config, tmp_path / "model.keras", tmp_path / "clip", frames=3, repeats=2)()
    assert list(section["resolutions"]) == ["720p", "1080p"]
    for name, row in section["resolutions"].items():
        assert row["resolution"] == {"720p": [1280, 720], "1080p": [1920, 1080]}[name]
        assert row["fps_model"] > 0 and row["fps_end_to_end"] > 0
        assert section[f"end_to_end_over_model_{name}"] == row["end_to_end_over_model"] > 0
    assert_finite(section)
    table = "\n".join(bench_report.RENDER[bench_report.CLIP](section))
    assert "| 720p (1280x720) |" in table and "| 1080p (1920x1080) |" in table and "1080p, seconds per stage" in table
    goals = {row["target"]: row for row in bench_report.speed_goals({bench_report.CLIP: section})}
    assert goals["clip stage at 1080p: end to end / model"]["measured"] == section["end_to_end_over_model_1080p"]


def test_the_1080p_clip_is_the_720p_clip_resized_with_its_labels(tmp_path):
    videos = clip_inputs.bench_clips(tmp_path, seed=4, frames=2)
    small, large = (read_clip_labels(labels_path(videos[name])) for name in ("720p", "1080p"))
    assert len(small) == len(large) == 2
    for a, b in zip(small, large):
        assert b["segmentation"].shape == b["depth"].shape == (1080, 1920)
        np.testing.assert_array_equal(b["segmentation"][::3, ::3], a["segmentation"][::2, ::2])
        np.testing.assert_allclose(b["depth"][::3, ::3], a["depth"][::2, ::2])
        np.testing.assert_allclose(b["boxes"], a["boxes"] * 1.5, atol=0.01)
        np.testing.assert_array_equal(b["classes"], a["classes"])
    capture = cv2.VideoCapture(str(videos["1080p"]))
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (1920, 1080)
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 2


def test_targets_say_met_missed_or_not_measured():
    rows = bench_report.speed_goals({"1": {"fed_over_held": 0.95}, "3": {"latency_ratio": 0.5, "params_ratio": 0.3},
                                     "4": {"skipped": "run `make export`"},
                                     "6": {"end_to_end_over_model_720p": 0.89, "end_to_end_over_model_1080p": 0.8}})
    status = {row["target"]: row["status"] for row in rows}
    assert list(status.values()) == ["met", "missed", "met", "not measured", "not measured", "missed", "met"]
    assert rows[3]["why_not_measured"] == rows[4]["why_not_measured"] == "run `make export`"


@pytest.mark.slow
def test_quick_bench_writes_every_section_with_finite_numbers(tmp_path):
    config = tiny(tmp_path)
    results = bench_stage.main(config, argparse.Namespace(quick=True))
    out = tmp_path / "bench"
    on_disk = json.loads((out / "bench.json").read_text())
    assert sorted(on_disk["sections"]) == SECTIONS
    for key, section in on_disk["sections"].items():
        assert "error" not in section and "skipped" not in section, (key, section)
    assert_finite(on_disk["sections"])
    assert all(isinstance(t["measured"], float) and math.isfinite(t["measured"]) for t in on_disk["targets"])
    assert on_disk["machine"]["cores"] >= 1 and on_disk["machine"]["tensorflow"]
    markdown = (out / "BENCH.md").read_text()
    for section in results["sections"].values():
        assert f"### {section['title']}" in markdown
    assert "### Targets" in markdown and "### Machine" in markdown and "nan" not in markdown.lower()
