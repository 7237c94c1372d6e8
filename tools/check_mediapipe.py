"""Loads an exported model_detection.tflite with MediaPipe's ObjectDetector task and runs it on a frame.

    make check-mediapipe                      # builds .venv-mediapipe, then runs this script
    .venv-mediapipe/bin/python tools/check_mediapipe.py --model M --image I [--labels KITTI.txt]

Runs in a virtual environment of its own (.venv-mediapipe, tools/requirements-mediapipe.txt): mediapipe
needs opencv-contrib-python, which clashes with the project's opencv-python-headless. So this file
imports nothing from the project and nothing the project's venv needs (no TensorFlow).

It prints the file's metadata as MediaPipe reads it (input normalisation, output tensors, labels), then
the detections, and exits 1 unless it found a vehicle: with `--labels` (the frame's KITTI label_2 file)
at least one labelled vehicle must be matched by a vehicle detection with IoU >= 0.5 (each labelled
vehicle's best match is listed); without, any `--expect` detection (default: vehicle) will do.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import zipfile

# KITTI's label_2 classes that the project maps to "vehicle" (data/label_maps.py).
KITTI_VEHICLES = ("Car", "Van", "Truck", "Tram")
MATCH_IOU = 0.5  # a labelled vehicle counts as found by a vehicle detection overlapping it this much


def kitti_vehicles(path: pathlib.Path) -> list[list[float]]:
    """x1, y1, x2, y2 pixel boxes of the vehicles in a KITTI label_2 file."""
    boxes = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in KITTI_VEHICLES:
            boxes.append([float(v) for v in fields[4:8]])
    return boxes


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _plain(value):
    """A flatbuffers object-API value as JSON-able Python (tables as dicts, unset fields left out)."""
    if hasattr(value, "__dict__"):
        return {key: _plain(v) for key, v in vars(value).items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    return value.tolist() if hasattr(value, "tolist") else value


def metadata_summary(model: pathlib.Path) -> dict:
    """The file's TFLite metadata as MediaPipe's own generated schema readers parse it.

    (mediapipe's MetadataDisplayer would do this, but the 1.x wheels lack its compiled helper,
    mediapipe.tasks.cc; the generated readers are the same schema.)"""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as meta_fb
    from mediapipe.tasks.metadata import schema_py_generated as tflite_fb

    data = model.read_bytes()
    tflite = tflite_fb.Model.GetRootAs(data, 0)
    entries = [tflite.Metadata(i) for i in range(tflite.MetadataLength())]
    (entry,) = [e for e in entries if e.Name() == b"TFLITE_METADATA"] or [None]
    if entry is None:
        raise SystemExit(f"error: {model} has no TFLITE_METADATA: MediaPipe's ObjectDetector needs it")
    buffer = tflite.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    assert meta_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0), "not a metadata flatbuffer (M001)"
    meta = meta_fb.ModelMetadataT.InitFromObj(meta_fb.ModelMetadata.GetRootAs(buffer, 0))
    graph = meta.subgraphMetadata[0]
    outputs = tflite.Subgraphs(0).OutputsLength()
    assert len(graph.outputTensorMetadata) == outputs == 4, (len(graph.outputTensorMetadata), outputs)
    with zipfile.ZipFile(model) as archive:
        files = {name: archive.read(name).decode().split() for name in archive.namelist()}
    return {"metadata": _plain(meta), "associated_files": files}


def metadata_facts(summary: dict) -> list[str]:
    """The metadata fields MediaPipe's ObjectDetector uses, one line each (--show-metadata: all of it)."""
    meta = summary["metadata"]
    graph = meta["subgraphMetadata"][0]
    (image,) = graph["inputTensorMetadata"]
    norm = image["processUnits"][0]["options"]
    size = image["content"]["contentProperties"].get("defaultSize", {})
    box = graph["outputTensorMetadata"][0]["content"]["contentProperties"]
    return [f"model {meta.get('name')!r}, min parser version {meta.get('minParserVersion')}",
            f"input {image['name']!r}: {size.get('width')}x{size.get('height')} RGB, normalised (x - {norm['mean']}) "
            f"/ {norm['std']}",
            f"outputs in order: {[t['name'] for t in graph['outputTensorMetadata']]}",
            f"box index {box.get('index')} (xmin, ymin, xmax, ymax positions), type {box.get('type')} "
            f"(1 = BOUNDARIES), coordinates {box.get('coordinateType', 0)} (0 = RATIO)",
            f"default score threshold {default_threshold(meta):.3g}",
            f"associated files {summary['associated_files']}"]


def default_threshold(metadata: dict) -> float:
    """The score tensor's ScoreThresholdingOptions (the export's score_threshold)."""
    (score,) = [t for t in metadata["subgraphMetadata"][0]["outputTensorMetadata"] if t["name"] == "score"]
    return float(score["processUnits"][0]["options"]["globalScoreThreshold"])


def detect(model: pathlib.Path, image: pathlib.Path, score_threshold: float, max_results: int):
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ObjectDetectorOptions(base_options=BaseOptions(model_asset_path=str(model)),
                                           running_mode=vision.RunningMode.IMAGE, max_results=max_results,
                                           score_threshold=score_threshold)
    with vision.ObjectDetector.create_from_options(options) as detector:
        frame = mp.Image.create_from_file(str(image))
        detector.detect(frame)  # warm-up: the first call also builds the graph
        start = time.perf_counter()
        result = detector.detect(frame)
        milliseconds = (time.perf_counter() - start) * 1000.0
    found = []
    for detection in result.detections:
        box = detection.bounding_box
        best = max(detection.categories, key=lambda c: c.score)
        found.append({"class": best.category_name, "score": round(float(best.score), 3),
                      "box": [box.origin_x, box.origin_y, box.origin_x + box.width, box.origin_y + box.height]})
    return found, (frame.width, frame.height), milliseconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=pathlib.Path)
    parser.add_argument("--image", required=True, type=pathlib.Path)
    parser.add_argument("--labels", type=pathlib.Path, help="KITTI label_2 file of the image (optional)")
    parser.add_argument("--expect", default="vehicle", help="class that must be found (default: vehicle)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="default: the threshold in the file's metadata (the export's score_threshold)")
    parser.add_argument("--max-results", type=int, default=-1)
    parser.add_argument("--show-metadata", action="store_true", help="print all of the metadata as JSON")
    args = parser.parse_args(argv)
    for path in (args.model, args.image, args.labels):
        if path is not None and not path.is_file():
            print(f"error: not found: {path}" + ("; run `make export` first" if path == args.model else ""),
                  file=sys.stderr)
            return 2

    import mediapipe as mp

    print(f"mediapipe {mp.__version__}: {args.model}")
    summary = metadata_summary(args.model)
    print("metadata (read with mediapipe's generated schema readers):")
    for line in (json.dumps(summary, indent=1).splitlines() if args.show_metadata else metadata_facts(summary)):
        print("  " + line)
    threshold = args.score_threshold
    if threshold is None:  # mediapipe 1.x passes its own default (0.0) unless told: use the file's
        threshold = default_threshold(summary["metadata"])
    print(f"score threshold {threshold:.3g}")
    found, (width, height), milliseconds = detect(args.model, args.image, threshold, args.max_results)
    print(f"ObjectDetector on {args.image} ({width}x{height}): {len(found)} detection(s) in {milliseconds:.1f} ms")
    for item in found:
        print(f"  {item['class']:<11} {item['score']:.3f}  box x1,y1,x2,y2 = {item['box']}")
    if args.labels:  # the frame's own labels: a vehicle must be found where one is (IoU >= MATCH_IOU)
        if not kitti_vehicles(args.labels):
            print(f"error: {args.labels} lists no vehicle: pick a frame with one", file=sys.stderr)
            return 2
        matched = 0
        for truth in kitti_vehicles(args.labels):
            scores = [(iou(truth, d["box"]), d) for d in found if d["class"] == "vehicle"]
            best = max(scores, key=lambda s: s[0], default=(0.0, None))
            text = (f"IoU {best[0]:.2f} with the {best[1]['score']:.3f} detection" if best[0] > 0
                    else "no vehicle detection overlaps it")
            print(f"  labelled vehicle {[round(v) for v in truth]}: {text}")
            matched += best[0] >= MATCH_IOU
        if not matched:
            print(f"FAIL: no labelled vehicle found (IoU >= {MATCH_IOU})", file=sys.stderr)
            return 1
        print(f"OK: MediaPipe's ObjectDetector loaded the file and found {matched} of the labelled vehicles")
        return 0
    if not any(d["class"] == args.expect for d in found):
        print(f"FAIL: no '{args.expect}' detection", file=sys.stderr)
        return 1
    print(f"OK: MediaPipe's ObjectDetector loaded the file and found {sum(d['class'] == args.expect for d in found)} "
          f"'{args.expect}' detection(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
