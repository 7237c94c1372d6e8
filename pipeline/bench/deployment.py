"""Bench section 4, deployment formats: every format's predict() and the TFLite files' bare invoke(),
against a MobileNetV2 reference timed in the same rounds, with the op and kernel profiles that say
where the int8 file's time goes.

What section 4 holds, all from one run:
- predict() of Keras, SavedModel and the TFLite files, and invoke() of the TFLite files, alternated;
- the reference (reference_net.py) as float32 and int8 invoke() in the same alternation, so the
  int8/float32 ratio is read against what this runtime reaches on a standard int8 net;
- invoke() ratios at one thread as well (the thread count the issue asks about);
- op profiles (op_profile.py) of our two files and the reference's, side by side (op_summary.py);
- kernel profiles (kernels.py, Linux perf) of our two files, where perf is allowed.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from pipeline.bench import kernels, op_profile, op_summary, reference_net, timing
from pipeline.config import Config
from pipeline import classes
from pipeline.deploy import export, onnx_export, parity, runtimes

# Section-4 settings per mode: the reference's size, the op profile's rounds/calls, perf seconds.
SETTINGS = {True: dict(reference_size=96, reference_alpha=0.35, profile_rounds=2, profile_calls=2, perf_seconds=1.0),
            False: dict(reference_size=224, reference_alpha=1.0, profile_rounds=3, profile_calls=5, perf_seconds=3.0)}
PROFILE_THREADS = 1  # one thread: the op profile uses thread CPU time, which a shared machine leaves alone
PROFILE_HOW = ("op profile (pipeline/bench/op_profile.py): placement from the XNNPACK delegate's partitions; "
               "each op cut out of the file into a model of its own, fed the values it sees in the whole model "
               "and timed alone (1 thread, thread CPU time, rounds alternating all ops, the cost of an empty "
               "invoke() taken off); kernel profile (pipeline/bench/kernels.py): Linux perf sampling invoke() "
               "in a loop, symbols of LiteRT's library, CPU time of all threads per invoke")


def export_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    return {fmt: folder / name for fmt, name in export.FILES.items()}


def temp_export(config: Config, data_config: Config, net, folder: pathlib.Path, frames: int) -> dict:
    """SavedModel, the three TFLite files and the ONNX file of `net` into `folder`, with the export
    stage's own functions; returns the paths written (no detector: it times the same net)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = export_files(folder)
    export.write_saved_model(net, paths["saved_model"], config.model.top_k, config.export.score_threshold,
                             classes.of_config(config))
    small = dataclasses.replace(data_config, export=dataclasses.replace(data_config.export,
                                                                        representative_frames=frames))
    calibration = export.representative_frames(small)
    for kind in export.TFLITE_FORMATS:
        export.convert_tflite(net, paths[kind], kind, small, calibration)
    onnx_export.write_onnx(net, paths["onnx"], config.model.top_k)
    return {fmt: path for fmt, path in paths.items() if path.exists()}


def reference(folder: pathlib.Path, quick: bool) -> dict:
    """The reference's two files, written into folder: {"float32": path, "int8": path, "what": text}."""
    settings = SETTINGS[quick]
    size, alpha = settings["reference_size"], settings["reference_alpha"]
    return {**reference_net.export(folder, size, alpha), "what": reference_net.describe(size, alpha)}


def invoker(path: pathlib.Path, threads: int):
    """The bare interpreter's invoke() on a fixed random input: the format's own speed, without the
    predictor's (de)quantisation, resizing and output handling."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], op_profile.random_input(detail))
    for _ in range(3):
        interpreter.invoke()
    return interpreter.invoke


def deployment(config: Config, keras_path: pathlib.Path, paths: dict, source: str, rounds: int, calls: int,
               ref: dict, quick: bool):
    """Loads and warms every format's predictor and the invokers; returns measure() -> section."""
    threads = os.cpu_count() or 1
    paths = {"keras": keras_path, **paths}
    own_threads = lambda fmt: fmt.startswith("tflite") or fmt == "onnx"  # noqa: E731  (runtimes sized by us)
    predictors = {fmt: runtimes.load_predictor(paths[fmt], num_threads=threads if own_threads(fmt) else None,
                                               top_k=config.model.top_k) for fmt in runtimes.FORMATS if fmt in paths}
    size = tuple(predictors["keras"].input_size)
    frame = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    for predictor in predictors.values():
        for _ in range(parity.WARMUP_RUNS):
            predictor.predict(frame)
    files = {**{fmt: paths[fmt] for fmt in export.TFLITE_FORMATS},
             **{f"{reference_net.NAME}-{p}": ref[p] for p in ("float32", "int8")}}
    counts = sorted({threads, 1})
    invokes = {(name, n): invoker(path, n) for name, path in files.items() for n in counts}
    runners = {fmt: (lambda p=p: timing.timed(lambda: p.predict(frame), calls)) for fmt, p in predictors.items()}
    runners.update({f"{name} invoke {n}": (lambda f=f: timing.timed(f, calls)) for (name, n), f in invokes.items()})

    def measure() -> dict:
        samples = timing.alternate(runners, rounds)
        invoke = {key: samples.pop(f"{key[0]} invoke {key[1]}") for key in invokes}
        f32, keras_s = timing.median(samples["tflite-float32"]), timing.median(samples["keras"])
        rows = {fmt: {**timing.stats(times), "size_kb": parity.size_bytes(paths[fmt]) / 1024.0,
                      "speedup_vs_keras": keras_s / timing.median(times),
                      "speedup_vs_tflite_float32": f32 / timing.median(times),
                      "threads": threads if own_threads(fmt) else "TF default"}
                for fmt, times in samples.items()}
        ratio = lambda f32_name, int8_name, n: (timing.median(invoke[(f32_name, n)])  # noqa: E731
                                                / timing.median(invoke[(int8_name, n)]))
        ref_f32, ref_int8 = f"{reference_net.NAME}-float32", f"{reference_net.NAME}-int8"
        ours = ratio("tflite-float32", "tflite-int8", threads)
        theirs = ratio(ref_f32, ref_int8, threads)
        section = {
            "title": "4. Deployment formats",
            "method": (f"runtimes.load_predictor(...).predict() of one uint8 frame at the model size "
                       f"({size[0]}x{size[1]}; decoding and (de)quantisation included, no resize), and for "
                       f"the TFLite files (and the reference) the bare LiteRT interpreter's invoke() at {threads} "
                       f"and 1 thread(s); {rounds} rounds alternating all of them, {calls} calls each; median "
                       f"and p90; warm-up {parity.WARMUP_RUNS} calls each (invoke: 3); TFLite with XNNPACK, "
                       f"LiteRT's default delegate. Reference: {ref['what']}."),
            "source": source, "formats": rows, "threads": threads,
            "int8_speedup_vs_float32": f32 / timing.median(samples["tflite-int8"]),
            "invoke_only": {f"{name}, {n} thread{'s' if n > 1 else ''}": {
                **timing.stats(times), "threads": n,
                "speedup_vs_float32": (timing.median(invoke[(name.rsplit("-", 1)[0] + "-float32", n)])
                                       / timing.median(times))}
                for (name, n), times in invoke.items()},
            "int8_speedup_vs_float32_invoke_only": ours,
            "int8_speedup_vs_float32_invoke_one_thread": ratio("tflite-float32", "tflite-int8", 1),
            "reference": {"what": ref["what"], "int8_speedup_vs_float32": theirs,
                          "int8_speedup_vs_float32_one_thread": ratio(ref_f32, ref_int8, 1)},
            "int8_speedup_over_reference": ours / theirs}
        section["profile"] = profiles(paths, ref, quick)
        return section
    return measure


def profiles(paths: dict, ref: dict, quick: bool) -> dict:
    """Op profiles (ours and the reference's, float32 vs int8) and perf kernel profiles (ours)."""
    settings = SETTINGS[quick]
    run = lambda path: op_profile.profile(path, PROFILE_THREADS, settings["profile_rounds"],  # noqa: E731
                                          settings["profile_calls"])
    ours = op_summary.compare(run(paths["tflite-float32"]), run(paths["tflite-int8"]))
    theirs = op_summary.compare(run(ref["float32"]), run(ref["int8"]))
    threads = os.cpu_count() or 1
    return {"threads": PROFILE_THREADS, "how": PROFILE_HOW,
            "model": ours, "reference": {k: theirs[k] for k in ("float32", "int8", "int8_speedup_whole", "by_op")},
            "kernels": {fmt: kernels.profile(paths[fmt], threads, settings["perf_seconds"])
                        for fmt in ("tflite-float32", "tflite-int8")}}
