"""Bench sections on inference: one model vs three (3), against the machine's peak (5) and the clip
stage at 720p and 1080p (6). Deployment formats (4) are pipeline/bench/deployment.py."""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from models import multitask
from pipeline.bench import clip_inputs, timing
from pipeline import trained
from pipeline.config import Config
from pipeline.deploy import runtimes
from pipeline.video import clip as clip_loop


def forward_function(model, image_size, batch: int = 1):
    """tf.function of the net's forward pass returning one scalar that depends on every output, so a
    call blocks until the whole net ran and no map is copied to the host."""
    import tensorflow as tf
    spec = tf.TensorSpec([batch, *image_size, 3], tf.float32)

    @tf.function(input_signature=[spec])
    def forward(image):
        outputs = model({"image": image}, training=False)
        return tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32)) for v in tf.nest.flatten(outputs)])

    frame = tf.random.uniform([batch, *image_size, 3], 0.0, 255.0)
    call = lambda: float(forward(frame))  # noqa: E731
    for _ in range(3):
        call()
    return call


# --------------------------------------------------------------------------- 3. one model vs three
def one_vs_three(config: Config, net, rounds: int, calls: int):
    """Prepares (nets, traced forward passes, FLOPs); returns (measure() -> section, multi forward, FLOPs)."""
    size, tasks = trained.input_size(net), trained.tasks(net)
    singles = {task: multitask.build_model(dataclasses.replace(config.model, tasks=[task]), size) for task in tasks}
    multi = forward_function(net, size)
    single_calls = [forward_function(model, size) for model in singles.values()]

    def three():
        for call in single_calls:
            call()
    flops_multi = timing.forward_flops(net, size)
    flops_single = {task: timing.forward_flops(model, size)["flops"] for task, model in singles.items()}
    params_single = {task: int(model.count_params()) for task, model in singles.items()}

    def measure() -> dict:
        samples = timing.alternate({"multi": lambda: timing.timed(multi, calls),
                                    "three": lambda: timing.timed(three, calls)}, rounds)
        lat_multi, lat_three = timing.median(samples["multi"]), timing.median(samples["three"])
        return {
            "title": "3. One multi-task model vs three single-task models",
            "method": (f"batch 1 at {size[0]}x{size[1]}, the nets' forward pass (tf.function, no decoding); "
                       f"'three' = the {len(tasks)} single-task nets of the same encoder/neck/head run one after "
                       f"another on the same frame; {rounds} rounds alternating, {calls} calls each; medians; "
                       f"warm-up 3 calls each. FLOPs: {flops_multi['method']}."),
            "tasks": list(tasks),
            "latency_ms": {"multi": timing.stats(samples["multi"]), "three": timing.stats(samples["three"])},
            "params": {"multi": int(net.count_params()), "three": sum(params_single.values()),
                       "per_single": params_single},
            "flops": {"multi": flops_multi["flops"], "three": sum(flops_single.values()), "per_single": flops_single,
                      "multi_by_op": flops_multi["by_op"]},
            "latency_ratio": lat_multi / lat_three,
            "params_ratio": net.count_params() / sum(params_single.values()),
            "flops_ratio": flops_multi["flops"] / sum(flops_single.values()),
        }
    return measure, multi, flops_multi["flops"]


# ------------------------------------------------------------------------------ 5. against the limit
def limit(flops_per_frame: int, forward_b1, forward_batch, batch: int, train_step, train_batch: int,
          size: int, rounds: int, calls: int, train_flops_per_image: int | None = None):
    """Prepares the matmul; returns measure() -> section. train_flops_per_image: the forward FLOPs of
    one training input (a crop with data.train_crop), default flops_per_frame."""
    train_flops = train_flops_per_image or flops_per_frame
    matmul, matmul_flops = timing.matmul_runner(size, 3)

    def measure() -> dict:
        samples = timing.alternate({
            "matmul": matmul,
            "forward_b1": lambda: timing.timed(forward_b1, calls),
            "forward_batch": lambda: timing.timed(forward_batch, max(1, calls // 4)),
            "train_step": lambda: timing.timed(train_step, 1),
        }, rounds)
        peak = matmul_flops / timing.median(samples["matmul"])
        achieved = {
            "inference_batch1": flops_per_frame / timing.median(samples["forward_b1"]),
            f"inference_batch{batch}": flops_per_frame * batch / timing.median(samples["forward_batch"]),
            f"training_batch{train_batch}": 3 * train_flops * train_batch / timing.median(samples["train_step"]),
        }
        return {"title": "5. Against the machine's limit",
                "method": (f"peak = float32 {size}x{size} @ {size}x{size} matmul through TF (2n^3 FLOPs, 3 calls "
                           f"per round); model FLOPs per frame from section 3 (forward), training = 3 x forward "
                           f"per training input (the crop with data.train_crop); {rounds} rounds alternating "
                           f"matmul, forward at batch 1 ({calls} calls), "
                           f"forward at batch {batch} ({max(1, calls // 4)} calls), one train step (section 1's "
                           f"trainer, held batches); medians."),
                "peak_gflops": peak / 1e9, "forward_gflops_per_frame": flops_per_frame / 1e9,
                "achieved_gflops": {k: v / 1e9 for k, v in achieved.items()},
                "fraction_of_peak": {k: v / peak for k, v in achieved.items()},
                "samples_ms": {k: timing.stats(v) for k, v in samples.items()}}
    return measure


# ------------------------------------------------------------------------------------ 6. clip stage
def clip(config: Config, keras_path: pathlib.Path, folder: pathlib.Path, frames: int, repeats: int):
    """Renders the labelled synthetic clip at 720p and makes its 1080p copy (bench/clip_inputs.py),
    loads the Keras predictor; returns measure() -> section."""
    videos = clip_inputs.bench_clips(folder, config.seed + 2000, frames)
    predictor = runtimes.load_predictor(keras_path, top_k=config.model.top_k)

    def measure() -> dict:
        runs = {name: [] for name in videos}

        def runner(name):
            def run():
                out = folder / f"out-{name}-{len(runs[name])}"
                runs[name].append(clip_loop.process_clip(predictor, videos[name], out, config, progress=False))
                return []
            return run
        timing.alternate({name: runner(name) for name in videos}, repeats)
        rows = {name: _clip_row(results, clip_inputs.SIZES[name]) for name, results in runs.items()}
        return {"title": "6. Clip stage at 720p and 1080p",
                "method": (f"process_clip with the Keras predictor on a labelled synthetic {frames}-frame clip "
                           f"rendered at 1280x720 (data.synthetic_clip.render_clip) and on the same clip "
                           f"resized to 1920x1080 with its labels (bench/clip_inputs.py), clip.batch_size="
                           f"{config.clip.batch_size}, {repeats} run(s) each, resolutions alternating; fps_model "
                           f"(inference alone) and fps_end_to_end (the whole threaded loop: decode, fit, infer, "
                           f"analyse, score against the labels, draw, encode) come from the same run; medians "
                           f"over runs; the first batch is warm-up (outside the timing)."),
                "frames": frames, "resolutions": rows,
                **{f"end_to_end_over_model_{name}": row["end_to_end_over_model"] for name, row in rows.items()}}
    return measure


def _clip_row(runs: list[dict], size_hw: tuple[int, int]) -> dict:
    last = runs[-1]
    return {"resolution": [size_hw[1], size_hw[0]],
            "fps_model": float(np.median([r["fps_model"] for r in runs])),
            "fps_end_to_end": float(np.median([r["fps_end_to_end"] for r in runs])),
            "end_to_end_over_model": float(np.median([r["fps_end_to_end"] / r["fps_model"] for r in runs])),
            "seconds_last_run": last["seconds"], "latency_ms_last_run": last["latency_ms"]}
