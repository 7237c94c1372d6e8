"""Kernel-level profile of a .tflite with Linux perf, where the machine allows it: which machine-code
kernels invoke() spends its time in, by name.

XNNPACK names its micro-kernels after data type, operation and instruction set, e.g.
xnn_qs8_qc8w_gemm_minmax_fp32_ukernel_7x16c8__avx512vnni_prfm (int8 matrix multiply on AVX-512
VNNI dot products) or xnn_qs8_qc8w_dwconv_minmax_fp32_ukernel_25p32c__avx512skx_mul32 (int8
depthwise 5x5 on 32-bit multiplies, no VNNI), and LiteRT's wheel keeps those symbols, so the
profile says which ops use the CPU's int8 instructions and which do not. The op profile
(op_profile.py) attributes time to ops; this one proves what runs underneath.

perf samples a child process (`python -m pipeline.bench.kernels <model> <threads> <seconds> <fifos>`)
that warms the model up, then switches sampling on through perf's control fifo, so loading,
weight packing and imports are not in the profile. Without perf (or with perf_event_paranoid > 2)
the profile says why it is missing.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

FREQUENCY = 2000  # samples per second of CPU time
# perf report -q -n --sort symbol: "  27.54%  1294  [.] xnn_qs8_..." (then padding and '-' columns)
LINE = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+\[\.\]\s+(.+?)(?:\s{2,}.*)?$")


def unavailable() -> str | None:
    """Why perf cannot profile here, or None."""
    if shutil.which("perf") is None:
        return "perf is not installed"
    try:
        level = int(pathlib.Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        return None
    return f"perf_event_paranoid is {level} (> 2 forbids sampling user code)" if level > 2 else None


_TYPES = {"qs8": "int8", "qu8": "int8", "s8": "int8", "u8": "int8", "x8": "int8", "f32": "float32", "x32": "float32",
          "xx": "any type"}
_TYPE_TOKENS = {*_TYPES, "qc8w", "qc4w", "f16", "x16"}


def kind(symbol: str) -> str:
    """What a symbol is: an XNNPACK micro-kernel as '<data type> <operation> (<instruction set>)', e.g.
    'XNNPACK int8 gemm (avx512vnni_prfm)', a TFLite kernel, the thread pool, or other."""
    if symbol.startswith("xnn_") and "_ukernel" in symbol:
        tokens = symbol.split("__")[0].split("_")[1:]
        operation = next((t for t in tokens if t not in _TYPE_TOKENS), "?")
        return f"XNNPACK {_TYPES.get(tokens[0], tokens[0])} {operation} ({symbol.rsplit('__', 1)[-1]})"
    if "reference_ops" in symbol:
        return "TFLite reference kernel"
    if symbol.startswith("tflite::"):
        return "TFLite builtin kernel"
    if "pthreadpool" in symbol or "parallelize" in symbol or symbol == "thread_main":
        return "thread pool (waiting, dispatch)"
    return "other"


def profile(path: pathlib.Path, threads: int, seconds: float = 3.0, top: int = 12) -> dict:
    """Top kernels of `path` by CPU time: share, ms of CPU per invoke (all threads) and kind."""
    reason = unavailable()
    if reason:
        return {"skipped": reason}
    with tempfile.TemporaryDirectory(prefix="kernels-") as tmp:
        tmp = pathlib.Path(tmp)
        control, ack, data = tmp / "control", tmp / "ack", tmp / "perf.data"
        os.mkfifo(control)
        os.mkfifo(ack)
        command = ["perf", "record", "-q", "-e", "cpu-clock:u", "-F", str(FREQUENCY), "-D", "-1",
                   f"--control=fifo:{control},{ack}", "-o", str(data), "--", sys.executable, "-m",
                   "pipeline.bench.kernels", str(path), str(threads), str(seconds), str(control), str(ack)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120 + 10 * seconds,
                             cwd=pathlib.Path(__file__).resolve().parents[2])
        if run.returncode != 0 or not data.exists():
            return {"skipped": f"perf record failed: {(run.stderr or run.stdout).strip()[-300:]}"}
        invokes = int(run.stdout.strip().splitlines()[-1])
        report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-n", "--sort", "symbol", "-q"],
                                capture_output=True, text=True, timeout=120)
    rows = [(float(m[1]), int(m[2]), m[3]) for m in map(LINE.match, report.stdout.splitlines()) if m]
    samples = sum(count for _, count, _ in rows)
    by_kind: dict[str, float] = {}
    for _, count, symbol in rows:
        by_kind[kind(symbol)] = by_kind.get(kind(symbol), 0.0) + count
    per_invoke = lambda count: 1000.0 * count / FREQUENCY / max(invokes, 1)  # noqa: E731
    return {"file": pathlib.Path(path).name, "threads": threads, "invokes": invokes, "samples": samples,
            "cpu_ms_per_invoke": per_invoke(samples),
            "top": [{"symbol": symbol, "kind": kind(symbol), "share": count / samples, "cpu_ms": per_invoke(count)}
                    for _, count, symbol in rows[:top]],
            "by_kind": sorted(({"kind": k, "share": v / samples, "cpu_ms": per_invoke(v)} for k, v in by_kind.items()),
                              key=lambda r: -r["share"])}


def _loop(path: str, threads: int, seconds: float, control: str, ack: str) -> None:
    """The profiled child: warm up, sample only the invoke loop, print the number of invokes."""
    from pipeline.bench.op_profile import _interpreter, random_input

    interpreter = _interpreter(path, threads)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], random_input(detail))
    for _ in range(5):
        interpreter.invoke()
    with open(control, "w", encoding="ascii") as ctl, open(ack, encoding="ascii") as answer:
        ctl.write("enable\n")
        ctl.flush()
        answer.readline()
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            interpreter.invoke()
            count += 1
        ctl.write("disable\n")
        ctl.flush()
        answer.readline()
    print(count, flush=True)


if __name__ == "__main__":
    _loop(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5])
