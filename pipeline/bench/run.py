"""The benchmark (the bench stage's work): speed against the alternatives and the machine's own limits.

The bench stage (`python -m pipeline bench [--quick] --config configs/<name>.yaml`) writes <run_root>/bench/bench.json (every figure with its samples and how it was measured) and
<run_root>/bench/BENCH.md (tables, pasteable into docs/performance.md). Sections:
  1 input pipeline vs train step       (bench/train.py InputBench, in this process)
  2 train step: XLA, precision, task weighting   (bench/worker.py processes, alternated)
  3 one multi-task model vs three single-task models          (bench/infer.py)
  4 deployment formats (Keras, SavedModel, TFLite float32/float16/int8; a MobileNetV2 int8 reference;
    op and kernel profiles of the TFLite files)                (bench/deployment.py)
  5 fraction of the machine's measured matmul peak
  6 clip stage at 720p and 1080p: end to end vs model alone
  7 scaling with input size and batch: step time and peak memory (worker processes)

Full mode uses the config as given and the run's trained model if present (else an untrained net of
the same architecture: timing does not depend on weights) and the run's export (else it exports its
model itself into a temporary folder with pipeline.deploy.export's functions, and says so). --quick shrinks
everything to the tiny config's sizes. A run without its data set built gets a small synthetic one in a
temporary folder, so the bench runs on a fresh clone.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import tempfile
import time
import traceback

from data import builder as storage
from models import multitask
from pipeline import layout, trained
from pipeline.bench import deployment, infer, timing
from pipeline.bench import report as bench_report
from pipeline.bench import train
from pipeline.bench import worker as workers_lib
from pipeline.bench.report import (CLIP, DEPLOYMENT, INPUT_VS_STEP, LIMIT, ONE_VS_THREE, SCALING, SECTIONS,
                                   TRAIN_STEP)
from pipeline.config import Config, SourceConfig, load_config, save_config
from pipeline.inputs import records

REPO = pathlib.Path(__file__).resolve().parents[2]

# Rounds (alternations) and calls per round for each section.
PLANS = {
    True: dict(s1=dict(rounds=3, steps=3, batches=6), held=2, s2=dict(rounds=3, steps=2),
               s7=dict(rounds=3, steps=2), s3=dict(rounds=3, calls=5), s4=dict(rounds=3, calls=5),
               s5=dict(rounds=3, calls=8, size=1024), clip_frames=6, clip_repeats=1, calibration=8,
               small_data=(16, 8)),
    False: dict(s1=dict(rounds=3, steps=3, batches=8), held=4, s2=dict(rounds=5, steps=1),
                s7=dict(rounds=3, steps=1), s3=dict(rounds=5, calls=10), s4=dict(rounds=5, calls=10),
                s5=dict(rounds=3, calls=8, size=2048), clip_frames=24, clip_repeats=2, calibration=32,
                small_data=(256, 32)),
}


def quick_config(config: Config) -> Config:
    """The config at the tiny config's sizes (a tiny config stays as it is)."""
    if config.tiny:
        return config
    tiny = load_config(REPO / "configs" / "tiny.yaml")
    pick = lambda obj, src, *names: dataclasses.replace(obj, **{n: getattr(src, n) for n in names})  # noqa: E731
    return dataclasses.replace(
        config, tiny=True, experiment=f"{config.experiment}-quick",
        data=pick(config.data, tiny.data, "image_size", "train_crop", "synthetic", "shuffle_buffer",
                  "max_boxes"),
        model=pick(config.model, tiny.model, "widths", "neck_width", "head_width", "top_k"),
        train=pick(config.train, tiny.train, "batch_size", "epochs", "steps_per_epoch", "warmup_steps"),
        export=pick(config.export, tiny.export, "representative_frames", "latency_runs", "parity_examples"))


def ensure_data(config: Config, tmp: pathlib.Path, frames: tuple[int, int]) -> tuple[Config, str]:
    """(config whose data_dir holds a built data set, what it is)."""
    try:
        ready = all(storage.builder_for(s.name, config.data_dir).is_prepared() for s in config.data.sources)
    except Exception:  # noqa: BLE001  (an unreadable or missing data set is simply not ready)
        ready = False
    if ready:
        return config, f"the run's data set at {config.data_dir}"
    syn = config.data.synthetic
    synthetic = dataclasses.replace(syn, train_frames=min(syn.train_frames, frames[0]),
                                    validation_frames=min(syn.validation_frames, frames[1]))
    small = dataclasses.replace(config, run_root=str(tmp / "runs"),
                                data=dataclasses.replace(config.data, sources=[SourceConfig()], synthetic=synthetic))
    records.build_source(small, small.data.sources[0])
    return small, (f"no data set at {config.data_dir}: a synthetic one of {synthetic.train_frames} training frames "
                   f"({synthetic.height}x{synthetic.width}) built for the bench in a temporary folder")


def model_for(config: Config, tmp: pathlib.Path):
    """(net, .keras path, what it is): the run's trained model, else an untrained net saved to tmp."""
    model_path = layout.trained_model(config)
    if model_path.is_file():
        return trained.load(model_path), model_path, f"the run's trained model {model_path}"
    net = multitask.build_model(config.model, tuple(config.data.image_size))
    path = tmp / layout.MODEL_FILE
    net.save(str(path))
    return net, path, "an untrained net of the config's architecture (no trained model at " \
                      f"{model_path}; timing does not depend on the weights)"


def run(config: Config, quick: bool, plan: dict, tmp: pathlib.Path) -> dict:
    """Order: wave 1 of train-step workers starts while section 1 warms up; sections 1 and 2 are timed;
    wave 2 (section 7's other settings) starts while sections 3-6 prepare (traces, FLOPs, export, clip);
    then section 7 and sections 3-6 are timed. Nothing is timed while a worker is still starting."""
    results = {"quick": quick, "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": timing.machine(), "config": config.experiment,
               "image_size": list(config.data.image_size), "batch_size": config.train.batch_size}
    sections = results["sections"] = {}
    timeline = results["timeline_s"] = {}
    began = time.perf_counter()

    def mark(step):  # when each step began (seconds from the start), and a progress line
        timeline[step] = round(time.perf_counter() - began, 1)
        print(f"bench: [{timeline[step]:6.1f} s] {step}", flush=True)

    data_config, results["data"] = ensure_data(config, tmp, plan["small_data"])
    mark(f"data: {results['data']}")
    save_config(data_config, tmp / "config.yaml")
    specs, by_variant, by_setting = train.worker_specs(data_config, str(tmp / "config.yaml"), quick)
    pool = {key: workers_lib.WorkerProcess(key, spec, tmp) for key, spec in specs.items()}
    wave1 = train.start_order(specs, by_variant.values())
    wave2 = train.start_order(specs, set(by_setting.values()) - set(wave1))
    peaks, measures = {}, {}
    try:
        mark(f"starting {len(wave1)} train-step workers (two at a time) while section 1 warms up")
        starter = workers_lib.start_workers([pool[k] for k in wave1])
        net, keras_path, results["model"] = model_for(config, tmp)
        inputs = _section(sections, INPUT_VS_STEP, lambda: train.InputBench(data_config, plan["held"]))
        starter.join()
        ok = _section(sections, TRAIN_STEP, lambda: _ready(pool, wave1))
        mark("1. input pipeline vs train step")
        if inputs is not None:
            _section(sections, INPUT_VS_STEP, lambda: inputs.measure(**plan["s1"]))
        if ok:
            mark("2. train step variants")
            s2 = train.alternate_workers(pool, by_variant, **plan["s2"])
            peaks.update({k: pool[k].close() for k in wave1 if k not in by_setting.values()})
            mark(f"starting {len(wave2)} more workers while sections 3-6 prepare")
            starter = workers_lib.start_workers([pool[k] for k in wave2])
        measures = _prepare(sections, config, data_config, net, keras_path, inputs, quick, plan, tmp)
        if ok:
            starter.join()
            if _section(sections, SCALING, lambda: _ready(pool, wave2)):
                mark("7. scaling")
                s7 = train.alternate_workers(pool, by_setting, **plan["s7"])
                peaks.update({k: pool[k].close() for k in pool if k not in peaks})
                _section(sections, SCALING, lambda: train.scaling_section(data_config, by_setting, quick, s7, peaks,
                                                                      plan["s7"]))
            peaks.update({k: pool[k].close() for k in pool if k not in peaks})
            _section(sections, TRAIN_STEP, lambda: train.step_section(data_config, pool, by_variant, s2, peaks,
                                                               plan["s2"]))
    finally:
        for worker in pool.values():
            worker.kill()
    for key in (ONE_VS_THREE, LIMIT, DEPLOYMENT, CLIP):
        if key in measures:
            mark(sections_title(key))
            _section(sections, key, measures[key])
    mark("done")
    for key in SECTIONS:
        sections.setdefault(key, {"title": f"{key}.", "method": "-", "error": "not run (an earlier step failed)"})
    return results


def _ready(pool: dict, keys) -> bool:
    for key in keys:
        pool[key].check()  # raises the worker's failure (with the end of its log)
    return True


def sections_title(key: str) -> str:
    return {ONE_VS_THREE: "3. one model vs three", DEPLOYMENT: "4. deployment", LIMIT: "5. against the limit",
            CLIP: "6. clip stage at 720p and 1080p"}[key]


def _prepare(sections, config, data_config, net, keras_path, inputs, quick, plan, tmp) -> dict:
    """Untimed preparation of sections 3-6; section key -> measure()."""
    measures = {}
    prepared = _section(sections, ONE_VS_THREE, lambda: infer.one_vs_three(config, net, **plan["s3"]))
    if prepared is not None:
        measures[ONE_VS_THREE], multi, flops = prepared
        if inputs is not None:
            limit = _section(sections, LIMIT, lambda: _limit(net, inputs, multi, flops, plan["s5"]))
            if limit is not None:
                measures[LIMIT] = limit
    formats = _section(sections, DEPLOYMENT, lambda: _deployment(config, data_config, net, keras_path, quick,
                                                          tmp, plan))
    if callable(formats):
        measures[DEPLOYMENT] = formats
    clip = _section(sections, CLIP, lambda: infer.clip(config, keras_path, tmp / "clip", plan["clip_frames"],
                                                      plan["clip_repeats"]))
    if clip is not None:
        measures[CLIP] = clip
    return measures


def _section(sections: dict, key: str, build):
    """Runs one step of a section; a dict result is the section, anything else is handed back. A failure
    is recorded in the section (main raises at the end, after writing everything else)."""
    try:
        value = build()
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        sections[key] = {"title": f"{key}.", "method": "-", "error": f"{type(err).__name__}: {err}"}
        return None
    if isinstance(value, dict):
        sections[key] = value
    return value


def _limit(net, inputs, multi, flops: int, plan: dict):
    batch = inputs.batch
    forward_batch = infer.forward_function(net, trained.input_size(net), batch)
    train_step = lambda: workers_lib.step(inputs.trainer, inputs.memory)  # noqa: E731
    # A train step sees data.train_crop when set: its FLOPs are counted on the trainer's own net
    # (the same as the whole-frame net's without a crop, so not traced twice then).
    train_size = trained.input_size(inputs.trainer.net)
    train_flops = (flops if train_size == trained.input_size(net)
                   else timing.forward_flops(inputs.trainer.net, train_size)["flops"])
    return infer.limit(flops, multi, forward_batch, batch, train_step, batch, plan["size"], plan["rounds"],
                       plan["calls"], train_flops_per_image=train_flops)


def _deployment(config, data_config, net, keras_path, quick, tmp, plan):
    """measure() for the run's export; without one, for the bench's own export of its model into a
    temporary folder (done while the section-7 workers start, so it costs little wall time). The
    MobileNetV2 reference is converted here too."""
    ref = deployment.reference(tmp / "reference", quick)
    folder = layout.export_dir(config)
    paths = deployment.export_files(folder)
    if all(p.exists() for p in paths.values()) and layout.trained_model(config).is_file():
        return deployment.deployment(config, layout.trained_model(config), paths, f"the run's export at {folder}",
                                     ref=ref, quick=quick, **plan["s4"])
    paths = deployment.temp_export(config, data_config, net, tmp / "export", plan["calibration"])
    return deployment.deployment(config, keras_path, paths,
                                 f"no export at {folder} (`make export` writes the run's own): the bench exported "
                                 f"{'the tiny net' if quick else 'its model'} itself into a temporary folder with "
                                 f"pipeline.export (int8 calibrated on {plan['calibration']} frames)",
                                 ref=ref, quick=quick, **plan["s4"])


def _finite(value):
    """JSON cannot hold NaN/inf; turn them into strings so a reader sees them (the test checks none are)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_results(results: dict, out: pathlib.Path) -> None:
    """bench.json (every figure with its samples) and BENCH.md into out."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(_finite(results), indent=1))
    (out / "BENCH.md").write_text(bench_report.markdown(results))


def run_bench(config: Config, quick: bool) -> dict:
    """The whole benchmark in a temporary folder; the results dict (sections, speed goals, timing)."""
    config = quick_config(config) if quick else config
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        results = run(config, quick, PLANS[quick], pathlib.Path(tmp))
    results["seconds"] = time.perf_counter() - start
    results["load_average_end"] = list(os.getloadavg())
    results["targets"] = bench_report.speed_goals(results["sections"])
    return results
