"""The op profiles of a float32 and an int8 file side by side (bench section 4): per op type, per part of
the net, and the int8 file's most expensive ops.

Comparing the same net in both precisions says which kinds of op int8 speeds up on this CPU and
runtime and which it does not: the answer to "why is int8 only N x faster".
"""
from __future__ import annotations

import collections

# Where an op belongs, from the output tensor names the converter keeps (our layers' names, see
# models/ and pipeline/deploy/serving.py). First match wins.
PARTS = (("encoder", ("/encoder", "effnet")), ("neck", ("/neck_",)),
         ("heads", ("_head_", "/detection_", "/segmentation_", "/depth_")),
         ("decoding and io", ("/decode", "/argmax", "/log_depth_map", "/depth_map", "StatefulPartitionedCall",
                              "tfl.quantize", "serving_default")))


def part_of(name: str) -> str:
    for part, keys in PARTS:
        if any(key in name for key in keys):
            return part
    return "other"


def _kernels(rows: list[dict]) -> str:
    counts = collections.Counter(row["kernel"] for row in rows)
    return " + ".join(f"{kernel} {count}" if len(counts) > 1 else kernel for kernel, count in counts.most_common())


def _by(rows: list[dict], key) -> dict[str, list[dict]]:
    groups = collections.defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return groups


def side_by_side(float32: dict, int8: dict, key) -> list[dict]:
    """Rows grouped by key(row) in both profiles: count, kernels, ms per format, int8 speed-up and
    share of the int8 file's time; sorted by int8 ms."""
    ours = {"float32": _by(float32["ops_detail"], key), "int8": _by(int8["ops_detail"], key)}
    total = sum(row["ms"] for row in int8["ops_detail"]) or 1.0
    rows = []
    for name in set(ours["float32"]) | set(ours["int8"]):
        f32, i8 = ours["float32"].get(name, []), ours["int8"].get(name, [])
        f32_ms, i8_ms = sum(r["ms"] for r in f32), sum(r["ms"] for r in i8)
        rows.append({"name": name, "ops_float32": len(f32), "ops_int8": len(i8),
                     "kernels_float32": _kernels(f32) if f32 else "-", "kernels_int8": _kernels(i8) if i8 else "-",
                     "float32_ms": f32_ms, "int8_ms": i8_ms,
                     "int8_speedup": f32_ms / i8_ms if i8_ms > 0 else None, "int8_share": i8_ms / total})
    return sorted(rows, key=lambda r: -r["int8_ms"])


def overview(profile: dict) -> dict:
    """The profile's whole-file figures (no per-op lists)."""
    builtin = sorted({row["op"] for row in profile["ops_detail"] if row["kernel"] != "XNNPACK"})
    return {k: profile[k] for k in ("file", "threads", "clock", "ops", "ops_on_xnnpack", "xnnpack_partitions",
                                   "whole_invoke_ms", "sum_of_ops_ms", "invoke_overhead_ms")} | {
        "builtin_ops": builtin}


def compare(float32: dict, int8: dict, top: int = 8) -> dict:
    """The section-4 summary of one net's two op profiles."""
    whole = float32["whole_invoke_ms"] / int8["whole_invoke_ms"] if int8["whole_invoke_ms"] else None
    return {"float32": overview(float32), "int8": overview(int8), "int8_speedup_whole": whole,
            "by_op": side_by_side(float32, int8, lambda row: row["op"]),
            "by_part": side_by_side(float32, int8, lambda row: part_of(row["name"])),
            "top_int8_ops": [{k: row[k] for k in ("index", "op", "kernel", "output", "ms")} | {
                "part": part_of(row["name"]), "layer": short_layer(row["name"])} for row in int8["ops_detail"][:top]]}


def short_layer(name: str) -> str:
    """The Keras layer an op came from: 'fixed_size_inference_1/encoder_1/encoder_blocks_2_bn1_relu6_1/Relu6;..'
    -> 'encoder_blocks_2_bn1_relu6' (TF names a layer's scope '<layer>_1'; the last such scope is the layer)."""
    scopes = [p for p in name.split(";")[0].split("/")[1:-1] if p.endswith("_1")]
    return scopes[-1][:-2] if scopes else name.split(";")[0]
