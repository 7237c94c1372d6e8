"""Per-op profile of a .tflite file on LiteRT: which ops XNNPACK runs, which fall back to TFLite's own
(builtin) kernels, and how long each op takes.

LiteRT's Python interpreter has no op profiler (the C++ benchmark_model's --enable_op_profiling is not
in the wheel), so the profile is built from what the Python API does expose:

- Placement: after allocate_tensors() the XNNPACK delegate appends one DELEGATE node per partition it
  took; walking back from a partition's outputs to its inputs finds the ops inside it. Every other
  op runs on a builtin kernel. Many partitions mean the graph goes in and out of XNNPACK.
- Time: each op is cut out into a model of its own (its tensors, its constant buffers, its other
  inputs as model inputs), fed the values it sees inside the whole model (one run with
  experimental_preserve_all_tensors) and timed alone on the same runtime, thread count and
  placement. The ops are timed in alternating rounds (shared machine) and the fixed cost of one
  invoke() (measured on an empty op) is taken off. The sum of the ops against the whole model's
  invoke() says how far isolated timing can be trusted (XNNPACK runs a partition without
  returning to the interpreter between ops; an op timed alone finds its inputs in cache).
"""
from __future__ import annotations

import copy
import pathlib
import time

import numpy as np

DELEGATE_OP = "DELEGATE"
XNNPACK, BUILTIN = "XNNPACK", "builtin"


def _interpreter(model, threads: int, delegate: bool = True, preserve: bool = False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kind = "model_path" if isinstance(model, (str, pathlib.Path)) else "model_content"
    resolver = OpResolverType.AUTO if delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(**{kind: model if kind == "model_content" else str(model)}, num_threads=threads,
                              experimental_op_resolver_type=resolver,
                              experimental_preserve_all_tensors=preserve)
    interpreter.allocate_tensors()
    return interpreter


def placement(path: pathlib.Path, threads: int) -> tuple[dict[int, int], int, int]:
    """(op index -> XNNPACK partition number, for the ops XNNPACK took; number of partitions; ops)."""
    interpreter = _interpreter(path, threads)
    ops = interpreter._get_ops_details()  # noqa: SLF001  (the only listing of a model's nodes)
    delegates = [op for op in ops if op["op_name"] == DELEGATE_OP]
    originals = [op for op in ops if op["op_name"] != DELEGATE_OP]
    producer = {int(t): op["index"] for op in originals for t in op["outputs"]}
    inside = {}
    for number, node in enumerate(delegates):
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            op = producer.get(tensor)
            if tensor in boundary or op is None or op in inside:
                continue
            inside[op] = number
            stack.extend(int(t) for t in ops[op]["inputs"] if t >= 0)
    return inside, len(delegates), len(originals)


def tensor_values(path: pathlib.Path, seed: int = 0) -> dict[int, np.ndarray]:
    """Every tensor's value in one run of the whole model on a random input (what each op sees)."""
    interpreter = _interpreter(path, 1, delegate=False, preserve=True)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], random_input(detail, seed))
    interpreter.invoke()
    values = {}
    for detail in interpreter.get_tensor_details():
        try:
            values[detail["index"]] = np.array(interpreter.get_tensor(detail["index"]))
        except ValueError:  # no data (an optional or unused tensor)
            pass
    return values


def random_input(detail: dict, seed: int = 0) -> np.ndarray:
    """A random image-like input of the detail's shape and dtype (float: 0..255, integer: full range)."""
    dtype = np.dtype(detail["dtype"])
    low, high = (0, 255) if dtype.kind == "f" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    return np.random.default_rng(seed).integers(low, high, detail["shape"], endpoint=True).astype(dtype)


def _model_object(path: pathlib.Path):
    from ai_edge_litert.tools import flatbuffer_utils
    return flatbuffer_utils.read_model(str(path))


def single_op_model(model, op_index: int) -> tuple[bytes, list[int]]:
    """(a .tflite holding only op `op_index` of subgraph 0, the original indices of its inputs).

    Constant inputs keep their buffers; the other inputs become the model's inputs, in order."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    graph = model.subgraphs[0]
    op = copy.copy(graph.operators[op_index])
    used = [t for t in list(op.inputs) + list(op.outputs) if t >= 0]
    used = list(dict.fromkeys(used))
    remap = {old: new for new, old in enumerate(used)}
    buffers, tensors, feeds = [schema.BufferT()], [], []
    for old in used:
        tensor = copy.copy(graph.tensors[old])
        data = model.buffers[tensor.buffer].data if tensor.buffer else None
        if data is not None and len(data):
            buffers.append(model.buffers[tensor.buffer])
            tensor.buffer = len(buffers) - 1
        else:
            tensor.buffer = 0
            if old in op.inputs:
                feeds.append(old)
        tensors.append(tensor)
    op.inputs = [remap[t] if t >= 0 else -1 for t in op.inputs]
    op.outputs = [remap[t] for t in op.outputs]
    op.intermediates = None
    sub = schema.SubGraphT()
    sub.tensors, sub.operators = tensors, [op]
    sub.inputs, sub.outputs = [remap[t] for t in feeds], list(op.outputs)
    one = schema.ModelT()
    one.version, one.operatorCodes, one.subgraphs, one.buffers = model.version, model.operatorCodes, [sub], buffers
    one.description = f"op {op_index} cut out for timing"
    return bytes(flatbuffer_utils.convert_object_to_bytearray(one)), feeds


class _OpRunner:
    """One cut-out op in its own interpreter, inputs set once; call() times `calls` invokes."""

    def __init__(self, content: bytes, feeds: list[int], values: dict, threads: int, delegate: bool):
        self.interpreter, self.threads = _interpreter(content, threads, delegate=delegate), threads
        for detail, original in zip(self.interpreter.get_input_details(), feeds):
            self.interpreter.set_tensor(detail["index"], values[original].astype(detail["dtype"]).reshape(
                detail["shape"]))
        for _ in range(2):
            self.interpreter.invoke()

    def __call__(self, calls: int) -> list[float]:
        return _timed(self.interpreter.invoke, calls, self.threads)


def _empty_op_runner(threads: int) -> _OpRunner:
    """An op that does no work (RESHAPE of one int32): the fixed cost of one invoke() from Python."""
    import tensorflow as tf
    from ai_edge_litert.tools import flatbuffer_utils

    function = tf.function(lambda x: tf.reshape(x, [1, 1]), input_signature=[tf.TensorSpec([1], tf.int32)])
    content = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function).convert()
    single, feeds = single_op_model(flatbuffer_utils.read_model_from_bytearray(bytearray(content)), 0)
    return _OpRunner(single, feeds, {feeds[0]: np.zeros([1], np.int32)}, threads, delegate=False)


def _shape(value) -> str:
    return "x".join(str(int(v)) for v in value) if len(value) else "scalar"


def profile(path: pathlib.Path, threads: int, rounds: int = 3, calls: int = 5) -> dict:
    """The op profile of one .tflite: every op with its placement (XNNPACK or builtin) and time, most
    expensive first, and the whole file's invoke() for comparison."""
    from pipeline.bench import timing

    path = pathlib.Path(path)
    inside, partitions, count = placement(path, threads)
    model, values = _model_object(path), tensor_values(path)
    graph, names = model.subgraphs[0], _op_names(model)
    runners, rows = {}, []
    for index, op in enumerate(graph.operators):
        content, feeds = single_op_model(model, index)
        kernel = XNNPACK if index in inside else BUILTIN
        runners[str(index)] = _OpRunner(content, feeds, values, threads, delegate=kernel == XNNPACK)
        output = graph.tensors[op.outputs[0]]
        rows.append({"index": index, "op": names[index], "kernel": kernel, "partition": inside.get(index),
                     "output": f"{_shape(output.shape)} {_type_name(output.type)}", "name": _text(output.name),
                     "inputs": [_shape(graph.tensors[t].shape) for t in op.inputs if t >= 0]})
    whole, empty = _whole_model_runner(path, threads), _empty_op_runner(threads)
    samples = timing.alternate({"whole": lambda: whole(calls), "empty": lambda: empty(calls * 4),
                                **{key: (lambda r=r: r(calls)) for key, r in runners.items()}}, rounds)
    overhead = timing.median(samples["empty"])
    for row in rows:
        row["ms"] = max(0.0, timing.median(samples[str(row["index"])]) - overhead) * 1000.0
    return {"file": path.name, "threads": threads, "clock": _CLOCKS[threads == 1], "ops": count,
            "xnnpack_partitions": partitions, "ops_on_xnnpack": len(inside),
            "whole_invoke_ms": timing.median(samples["whole"]) * 1000.0,
            "sum_of_ops_ms": sum(row["ms"] for row in rows), "invoke_overhead_ms": overhead * 1000.0,
            "ops_detail": sorted(rows, key=lambda r: -r["ms"])}


def _whole_model_runner(path: pathlib.Path, threads: int):
    interpreter = _interpreter(path, threads)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], random_input(detail))
    for _ in range(3):
        interpreter.invoke()
    return lambda calls: _timed(interpreter.invoke, calls, threads)


_CLOCKS = {True: "thread CPU time", False: "wall-clock time"}


def _timed(invoke, calls: int, threads: int) -> list[float]:
    """Seconds per invoke(). With one thread the op runs in this thread, so its CPU time is
    measured (time.thread_time): what other processes on a shared machine do then costs nothing.
    With more threads the pool's workers are elsewhere: wall-clock time."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    times = []
    for _ in range(calls):
        start = clock()
        invoke()
        times.append(clock() - start)
    return times


def _text(name) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "")


def _op_names(model) -> list[str]:
    from ai_edge_litert.tools import flatbuffer_utils
    return [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in model.subgraphs[0].operators]


def _type_name(tensor_type: int) -> str:
    from ai_edge_litert.tools import flatbuffer_utils
    return flatbuffer_utils.type_to_name(tensor_type).lower()
