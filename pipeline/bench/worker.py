"""Train-step workers for the bench: one process per (precision, XLA, weighting, input size, batch) setting.

Why processes: peak memory of a setting is only measurable in a process of its own (a peak is a
high-water mark, and freed memory stays with the allocator), each variant's first step costs a long
Python trace that two processes do side by side on two cores, and the global precision policy stays
per process. The parent still alternates the timing: all workers are started and warmed up first,
then it tells one at a time to run steps (the others wait on stdin, idle), rotating the order.

Protocol (lines): the worker prints `@bench {json}` on stdout when ready (trace seconds, RSS before
the first step), answers `run N` with the N step times and `quit` with its peak memory (VmHWM).

    python -m pipeline.bench.worker '{"config": "cfg.yaml", "overrides": [...], "jit": false,
                                      "precision": "float32", "batches": 2}'
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time

from models import multitask
from pipeline.config import load_config
from pipeline.inputs import dataset as inputs
from pipeline.training import onednn

PREFIX = "@bench "
REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- worker
def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MiB. VmHWM belongs to the address space exec made,
    unlike getrusage's ru_maxrss, which Linux carries over from the parent across fork + exec."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _say(payload: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def held_batches(config, count: int):
    """`count` augmented training batches from the real pipeline, stacked (leading axis = batch index);
    the pipeline is then dropped, so its buffers are not part of the step's memory or CPU time."""
    import tensorflow as tf

    iterator = iter(inputs.make_dataset(config, "train", training=True))
    batches = [next(iterator) for _ in range(count)]
    del iterator
    return tf.nest.map_structure(lambda *parts: tf.stack(parts), *batches)


def make_trainer(config, jit: bool, precision: str):
    """The train stage's trainer (same net, weighting, optimizer) under `precision`; the global policy
    is restored to float32 afterwards, the net keeps its own."""
    import keras

    keras.mixed_precision.set_global_policy(precision)
    try:
        net = multitask.build_model(config.model, inputs.output_size(config, crop=True))  # what train steps see
        trainer = multitask.MultiTaskTrainer(net, config.model, config.train)
        total = max(2, config.train.epochs * config.train.steps_per_epoch)
        trainer.compile(optimizer=multitask.make_optimizer(config.train, total), jit_compile=jit)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    trainer.make_train_function()
    return trainer


def memory_iterator(stacked):
    """A tf.data iterator cycling through batches already in memory: the same path as fit() takes."""
    import tensorflow as tf
    return iter(tf.data.Dataset.from_tensor_slices(stacked).repeat())


def step(trainer, iterator) -> None:
    """One training step exactly as fit() runs it (trainer.train_function on a tf.data iterator)."""
    logs = trainer.train_function(iterator)
    float(logs["loss"])  # blocks until the step is done


def worker(spec: dict) -> None:
    import tensorflow as tf

    config = load_config(spec["config"], spec.get("overrides", []))
    gpu = bool(tf.config.list_physical_devices("GPU"))
    iterator = memory_iterator(held_batches(config, int(spec.get("batches", 2))))
    trainer = make_trainer(config, bool(spec["jit"]), spec["precision"])
    rss_before = _status_mb("VmRSS")
    start = time.perf_counter()
    step(trainer, iterator)  # traces (and with XLA compiles)
    first = time.perf_counter() - start
    start = time.perf_counter()
    step(trainer, iterator)
    _say({"ready": True, "first_step_s": first, "warm_step_s": time.perf_counter() - start,
          "rss_before_mb": rss_before, "onednn": onednn.enabled(),
          "params": int(trainer.net.count_params())})
    for line in sys.stdin:
        command = line.split()
        if command[:1] == ["run"]:
            times = []
            for _ in range(int(command[1])):
                begin = time.perf_counter()
                step(trainer, iterator)
                times.append(time.perf_counter() - begin)
            _say({"times": times})
        elif command[:1] == ["quit"]:
            result = {"peak_rss_mb": _status_mb("VmHWM"), "rss_before_mb": rss_before, "onednn": onednn.enabled()}
            if gpu:
                result["gpu_peak_mb"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
            _say(result)
            os._exit(0)  # the answer is out; TensorFlow's teardown would only cost seconds


# ----------------------------------------------------------------------------------------- parent
class WorkerError(RuntimeError):
    pass


class WorkerProcess:
    """One worker process; `start` blocks until it is warmed up (or failed)."""

    def __init__(self, name: str, spec: dict, log_dir: pathlib.Path):
        self.name, self.spec = name, spec
        self.log = pathlib.Path(log_dir) / f"worker-{name}.log"
        self.proc = None
        self.ready = None
        self.error = None

    def start(self) -> None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_FORCE_GPU_ALLOW_GROWTH="true",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        if "onednn" in self.spec:  # read by TensorFlow when it loads, so it is the process's to choose
            env[onednn.ENV] = "1" if self.spec["onednn"] else "0"
        try:
            with open(self.log, "w") as log:
                self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.bench.worker", json.dumps(self.spec)],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                             text=True, env=env)  # same cwd: relative run_root, paths
            self.ready = self._answer()
        except Exception as err:  # noqa: BLE001  (handed to the caller by check())
            self.error = err

    def _answer(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])
        self.proc.wait()
        tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
        raise WorkerError(f"bench worker '{self.name}' exited with code {self.proc.returncode}:\n" + "\n".join(tail))

    def check(self) -> dict:
        if self.error is not None:
            raise self.error
        return self.ready

    def run(self, steps: int) -> list[float]:
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        return self._answer()["times"]

    def close(self) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            return {}
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            result = self._answer()
        finally:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        return result

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_workers(workers: list[WorkerProcess], parallel: int = 2) -> threading.Thread:
    """Starts the workers `parallel` at a time in a background thread (join it before timing)."""
    def run():
        gate = threading.Semaphore(parallel)

        def one(w):
            with gate:
                w.start()
        threads = [threading.Thread(target=one, args=(w,), daemon=True) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    thread = threading.Thread(target=run, daemon=True, name="bench-workers")
    thread.start()
    return thread


if __name__ == "__main__":
    from pipeline.training import allocator
    allocator.keep_freed_memory()  # as `python -m pipeline` does, so the bench times what train runs
    worker(json.loads(sys.argv[1]))
