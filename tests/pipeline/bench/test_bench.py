"""Bench stage: every section present with finite numbers (no timing assertions: the machine is shared).

The whole --quick bench takes minutes on 2 cores (each train-step variant's first step is a long Python
trace), so it is marked slow; the unmarked tests cover the pieces: alternation, statistics, FLOPs, the
worker protocol, one inference section and the report.
"""
import argparse
import json
import math

import pytest

from models import multitask
from pipeline.bench import infer as bench_infer
from pipeline.bench import report as bench_report
from pipeline.bench import run as bench
from pipeline.bench import timing
from pipeline.bench import train as bench_train
from pipeline.bench import worker as bench_worker
from pipeline.config import load_config, save_config
from pipeline.stages import bench as bench_stage
from pipeline.training import devices
from support import REPO, tiny

SECTIONS = list(bench_report.SECTIONS)


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
        assert "config" in settings and len(settings) == (3 if is_quick else 4)
        assert all(h % 32 == 0 and w % 32 == 0 for (h, w), _ in settings.values())
        specs, by_variant, by_setting = bench_train.worker_specs(config, "c.yaml", is_quick)
        assert {"reference", "xla", "mixed_bfloat16", "uncertainty", "dwa", "gradnorm"} <= set(by_variant)
        if not devices.has_gpu():  # the config's own setting (uncertainty, float32, XLA off) is shared
            assert by_setting["config"] == by_variant["uncertainty"]
        assert len(specs) == len(set(by_variant.values()) | set(by_setting.values()))


def test_worker_protocol(tiny_config, tmp_path):
    save_config(tiny_config, tmp_path / "config.yaml")
    spec = {"config": str(tmp_path / "config.yaml"), "overrides": ["data.cache=false", "data.shuffle_buffer=1"],
            "jit": False, "precision": "float32", "batches": 2}
    worker = bench_worker.WorkerProcess("w", spec, tmp_path)
    try:
        bench_worker.start_workers([worker]).join()
        ready = worker.check()
        assert ready["first_step_s"] > 0 and ready["params"] > 0
        times = worker.run(2)
        assert len(times) == 2 and all(t > 0 for t in times)
        peak = worker.close()
        assert peak["peak_rss_mb"] >= peak["rss_before_mb"] > 0
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


def test_targets_say_met_missed_or_not_measured():
    rows = bench_report.speed_goals({"1": {"fed_over_held": 0.95}, "3": {"latency_ratio": 0.5, "params_ratio": 0.3},
                                 "4": {"skipped": "run `make export`"}})
    status = {row["target"]: row["status"] for row in rows}
    assert list(status.values()) == ["met", "missed", "met", "not measured", "not measured"]
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
