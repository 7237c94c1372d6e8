"""Bench sections on training: the input pipeline against the train step (1), the train step's
variants (2: XLA, precision, task weighting) and its scaling with input size and batch (7).

Section 1 runs in the bench's own process (it needs the real pipeline with its filled cache);
sections 2 and 7 run in worker processes (pipeline/bench_worker.py) that the parent alternates.
"""
from __future__ import annotations

import math
import time

from pipeline.bench import timing
from pipeline.bench import worker as bench_worker
from pipeline.config import Config
from pipeline.inputs import dataset as inputs
from pipeline.training import devices, onednn


# ------------------------------------------------------------------------- 1. input pipeline
class InputBench:
    """The config's training pipeline and trainer, warmed up; `measure` alternates three runs per round:
    the pipeline alone, train steps on batches held in memory, train steps fed by the pipeline.

    The pipeline alone is read from a fresh iterator of the same dataset each round: its memory cache
    (filled by the warm-up pass) is shared, but its prefetch buffers start empty, so the timing sees
    the rate batches are made at. (The long-lived iterator fills its autotuned buffers, often dozens of
    batches, while a slow train step runs; reading those back would time nothing.) The fed steps need
    no draining: the train step is far slower than the pipeline, so tf.data makes one batch per batch
    taken whatever its buffers hold, which is exactly what training sees. Each train run starts with an
    untimed step. CPU time (all threads of the process) is counted per run kind."""

    def __init__(self, config: Config, held: int = 4, fresh_warmup: int = 4):
        self.config, self.held_count, self.fresh_warmup = config, held, fresh_warmup
        self.batch = config.train.batch_size
        self.precision = devices.resolve_precision(config.train.precision)
        self.jit = devices.resolve_jit(config.train.jit_compile)
        self.dataset = inputs.make_dataset(config, "train", training=True)
        self.pipeline = iter(self.dataset)
        frames = sum(inputs.split_size(config, source, "train") for source in config.data.sources)
        # One pass over the split fills the cache (and the shuffle buffer); later epochs look like this.
        self.warmup_batches = math.ceil(frames / self.batch) + 2
        for _ in range(self.warmup_batches):
            next(self.pipeline)
        import tensorflow as tf
        held_batches = [next(self.pipeline) for _ in range(held)]
        self.memory = bench_worker.memory_iterator(
            tf.nest.map_structure(lambda *parts: tf.stack(parts), *held_batches))
        self.trainer = bench_worker.make_trainer(config, self.jit, self.precision)
        for _ in range(2):  # trace, then one warm step, on both iterators
            bench_worker.step(self.trainer, self.memory)
            bench_worker.step(self.trainer, self.pipeline)
        self.warm_steps = 1
        self.cpu = {"pipeline": [0.0, 0], "held": [0.0, 0], "fed": [0.0, 0]}  # kind -> [cpu s, calls]

    def _timed(self, kind, fn, calls):
        start = time.process_time()
        times = timing.timed(fn, calls)
        self.cpu[kind][0] += time.process_time() - start
        self.cpu[kind][1] += calls
        return times

    def pipeline_alone(self, batches: int):
        def run():
            fresh = iter(self.dataset)
            for _ in range(self.fresh_warmup):
                next(fresh)
            times = self._timed("pipeline", lambda: next(fresh), batches)
            del fresh
            return times
        return run

    def fed(self, steps: int):
        def run():
            timing.timed(lambda: bench_worker.step(self.trainer, self.pipeline), self.warm_steps)
            return self._timed("fed", lambda: bench_worker.step(self.trainer, self.pipeline), steps)
        return run

    def held(self, steps: int):
        def run():
            timing.timed(lambda: bench_worker.step(self.trainer, self.memory), self.warm_steps)
            return self._timed("held", lambda: bench_worker.step(self.trainer, self.memory), steps)
        return run

    def measure(self, rounds: int, steps: int, batches: int) -> dict:
        samples = timing.alternate({"pipeline": self.pipeline_alone(batches), "held": self.held(steps),
                                    "fed": self.fed(steps)}, rounds)
        per_image = {k: timing.median(v) / self.batch for k, v in samples.items()}
        supply, demand = 1.0 / per_image["pipeline"], 1.0 / per_image["held"]
        fed = 1.0 / per_image["fed"]
        cpu_ms = {k: 1000.0 * cpu / max(n, 1) for k, (cpu, n) in self.cpu.items()}
        cfg = self.config
        return {
            "title": "1. Input pipeline vs train step",
            "method": (f"one process; {rounds} rounds alternating (order rotated): tf.data alone ({batches} "
                       f"batches), train steps on {self.held_count} held batches ({steps} steps), train "
                       f"steps fed by the pipeline ({steps} steps); the pipeline alone from a fresh iterator "
                       f"each round (shared, filled cache; empty prefetch buffers; {self.fresh_warmup} untimed "
                       f"batches first), each train run after 1 untimed step; medians; CPU ms = process CPU "
                       f"time (all threads) per "
                       f"batch or step; warm-up: {self.warmup_batches} batches (one pass: fills the cache) and "
                       f"2 steps per iterator (trace). Steps = trainer.train_function on a tf.data iterator, "
                       f"as fit() runs them."),
            "setting": {"image_size": list(inputs.output_size(cfg, crop=True)), "batch_size": self.batch,
                        "augmentation": cfg.data.augment.enabled, "precision": self.precision,
                        "jit_compile": self.jit, "weighting": cfg.train.weighting},
            "pipeline_images_per_s": supply, "train_consumes_images_per_s": demand,
            "supply_over_demand": supply / demand, "fed_images_per_s": fed,
            "fed_over_held": fed / demand,
            "cpu_ms": cpu_ms,
            # If the step already keeps every core busy, the pipeline's CPU time per batch comes out of it:
            "fed_over_held_if_cpu_shared": cpu_ms["held"] / (cpu_ms["held"] + cpu_ms["pipeline"]),
            "samples_ms": {k: timing.stats(v) for k, v in samples.items()},
        }


# ----------------------------------------------------------------------- 2 and 7. train step
def variants(config: Config) -> dict[str, dict]:
    """name -> worker settings for section 2. The reference is fixed weights, float32, XLA off and
    TensorFlow's oneDNN kernels as the stages run them (pipeline/training/onednn.py)."""
    reference = {"weighting": "fixed", "jit": False, "precision": "float32", "onednn": onednn.enabled()}
    out = {"reference": reference,
           "xla": {**reference, "jit": True},
           "mixed_bfloat16": {**reference, "precision": "mixed_bfloat16"}}
    if devices.has_gpu():
        out["mixed_float16"] = {**reference, "precision": "mixed_float16"}
    for weighting in ("uncertainty", "dwa", "gradnorm"):
        out[weighting] = {**reference, "weighting": weighting}
    return out


def other_kernels() -> str:
    """Section 7's setting that runs the config's step on the kernels the stages do not choose
    (pipeline/training/onednn.py): what that choice is worth on this machine. It is timed in the
    second wave of workers, which holds fewer of them at once than section 2's."""
    return f"config, oneDNN {'off' if onednn.enabled() else 'on'}"


def scaling_settings(config: Config, quick: bool) -> dict[str, tuple[tuple[int, int], int]]:
    """name -> (training input size, batch) for section 7: the config's, the config's on the other
    kernels (other_kernels()), then other sizes and batches. The size is what a train step sees:
    data.train_crop when set, else data.image_size."""
    (height, width), batch = inputs.output_size(config, crop=True), config.train.batch_size

    def size(scale):
        return (max(32, round(height * scale / 32) * 32), max(32, round(width * scale / 32) * 32))
    settings = {"config": ((height, width), batch), other_kernels(): ((height, width), batch)}
    sizes = [size(2.0)] if quick else [size(0.5), size(1.5)]
    batches = [batch * 2]
    for hw in sizes:
        settings[f"{hw[0]}x{hw[1]}/b{batch}"] = (hw, batch)
    for b in batches:
        settings[f"{height}x{width}/b{b}"] = ((height, width), b)
    return settings


def worker_specs(config: Config, config_yaml: str, quick: bool) -> tuple[dict, dict, dict]:
    """(specs by worker key, section-2 variant -> key, section-7 setting -> key). Equal specs share one
    worker (the config's own setting is usually one of section 2's variants)."""
    common = ["data.cache=false", "data.shuffle_buffer=1"]  # the worker's held batches only
    specs, by_variant, by_setting = {}, {}, {}

    def add(overrides, jit, precision, dnn):
        spec = {"config": config_yaml, "overrides": common + overrides, "jit": jit, "precision": precision,
                "onednn": dnn, "batches": 2}
        key = json_key(spec)
        specs.setdefault(key, spec)
        return key

    for name, v in variants(config).items():
        by_variant[name] = add([f"train.weighting={v['weighting']}"], v["jit"], v["precision"], v["onednn"])
    jit = devices.resolve_jit(config.train.jit_compile)
    precision = devices.resolve_precision(config.train.precision)
    for name, ((h, w), batch) in scaling_settings(config, quick).items():
        overrides = [f"train.weighting={config.train.weighting}"]
        if (h, w) != inputs.output_size(config, crop=True):  # whole frames of that size: the same step
            overrides += [f"data.image_size=[{h},{w}]", "data.train_crop=null"]
        if batch != config.train.batch_size:
            overrides.append(f"train.batch_size={batch}")
        by_setting[name] = add(overrides, jit, precision, onednn.enabled() != (name == other_kernels()))
    return specs, by_variant, by_setting


def start_order(specs: dict, keys) -> list[str]:
    """Most expensive first (XLA compiles, emulated bfloat16, larger inputs), so that starting two at a
    time does not end on a long one alone."""
    def cost(key):
        spec = specs[key]
        size = [o for o in spec["overrides"] if o.startswith(("data.image_size", "train.batch_size"))]
        return (spec["jit"], spec["precision"] != "float32", "train.weighting=gradnorm" in spec["overrides"],
                len(size), sorted(size))
    return sorted(set(keys), key=cost, reverse=True)


def json_key(spec: dict) -> str:
    import hashlib
    import json
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


CHEAP_STEP_S = 2.0  # workers whose warm step is quicker run twice the steps per round (more samples)


def alternate_workers(workers: dict, keys: dict[str, str], rounds: int, steps: int) -> dict[str, list[float]]:
    """name -> step times, the workers alternated; names that share a worker share its samples."""
    def count(key):
        return steps * (2 if workers[key].ready["warm_step_s"] < CHEAP_STEP_S else 1)
    distinct = {key: (lambda key=key: workers[key].run(count(key))) for key in keys.values()}
    samples = timing.alternate(distinct, rounds)
    return {name: samples[key] for name, key in keys.items()}


def step_section(config: Config, workers: dict, by_variant: dict, samples: dict, peaks: dict, plan: dict) -> dict:
    batch = config.train.batch_size
    reference = timing.median(samples["reference"])
    rows = {}
    for name, times in samples.items():
        key = by_variant[name]
        rows[name] = {**variants(config)[name], "onednn": workers[key].ready["onednn"],  # what ran
                      "step_ms": timing.stats(times),
                      "images_per_s": batch / timing.median(times),
                      "step_time_vs_reference": timing.median(times) / reference,
                      "first_step_s": workers[key].ready["first_step_s"],
                      "peak_rss_mb": peaks.get(key, {}).get("peak_rss_mb")}
    return {"title": "2. Training step variants",
            "method": (f"one worker process per variant, each warmed up (trace + 1 step) before any timing; "
                       f"{plan['rounds']} rounds alternating the workers (order rotated), {plan['steps']} step(s) "
                       f"each "
                       f"({2 * plan['steps']} for workers whose step is under {CHEAP_STEP_S:g} s), on 2 "
                       f"augmented batches "
                       f"held in memory (tf.data iterator, as fit() runs); medians. Reference: fixed weights, "
                       f"float32, XLA off, TensorFlow's CPU kernels as the stages choose them (section 7 times "
                       f"the other ones); the other rows change one thing."),
            "setting": {"image_size": list(inputs.output_size(config, crop=True)), "batch_size": batch},
            "variants": rows}


def scaling_section(config: Config, by_setting: dict, quick: bool, samples: dict, peaks: dict, plan: dict) -> dict:
    settings = scaling_settings(config, quick)
    base = timing.median(samples["config"])
    rows = {}
    for name, times in samples.items():
        (h, w), batch = settings[name]
        peak = peaks[by_setting[name]]
        rows[name] = {"image_size": [h, w], "batch_size": batch, "onednn": peak["onednn"],
                      "step_ms": timing.stats(times),
                      "images_per_s": batch / timing.median(times),
                      "step_time_vs_config": timing.median(times) / base,
                      "peak_rss_mb": peak["peak_rss_mb"], "rss_before_first_step_mb": peak["rss_before_mb"],
                      "training_rss_mb": peak["peak_rss_mb"] - peak["rss_before_mb"]}
        if "gpu_peak_mb" in peak:
            rows[name]["gpu_peak_mb"] = peak["gpu_peak_mb"]
    gpu = "GPU: tf.config.experimental.get_memory_info peak; also " if devices.has_gpu() else ""
    return {"title": "7. Scaling with input size and batch",
            "method": (f"one worker process per setting (the config's weighting, precision and XLA choice; "
                       f"'{other_kernels()}': TensorFlow's other CPU kernels, pipeline/training/onednn.py), each "
                       f"warmed up first; {plan['rounds']} rounds alternating, {plan['steps']} step(s) each "
                       f"({2 * plan['steps']} under {CHEAP_STEP_S:g} s a step); "
                       f"medians. Memory: {gpu}each worker's peak RSS (VmHWM from /proc/self/status when it "
                       f"ends; the process runs nothing else) and that minus its RSS just before the first train step "
                       f"(= trace, optimizer state, activations)."),
            "settings": rows}

