"""TFLite model metadata for the detector, written with the flatbuffers runtime alone.

MediaPipe's ObjectDetector task (and LiteRT's Task Library) refuse a detector without TFLite
metadata: they read the input normalisation, the box layout and the label file from it. The tools
that usually write it cannot run here: tflite-support needs protobuf < 4 (pip would take ours from 7.36 down to 3.20), mediapipe needs
opencv-contrib (we have headless OpenCV), and mediapipe 1.2.3's metadata writers do not even import
(its wheel lacks their compiled helper, mediapipe.tasks.cc). So this module writes the flatbuffer
itself, with what mediapipe's `object_detector.MetadataWriter.create_for_models_with_nms` writes.
`make check-mediapipe` reads it back with mediapipe's generated schema readers and runs MediaPipe's
ObjectDetector on it.

The format (mediapipe/tasks/metadata/metadata_schema.fbs, file identifier "M001"):
  - a ModelMetadata flatbuffer stored in one of the model's buffers, named by a model.metadata
    entry "TFLITE_METADATA";
  - associated files (the label file) appended to the .tflite as a zip archive: the flatbuffer
    ignores trailing bytes and a zip reader finds its directory at the end.

Slot numbers below are the fields' positions in the schema's tables (a union takes two slots:
its type, then its value).
"""
from __future__ import annotations

import io
import zipfile

import flatbuffers
import numpy as np

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
# The schema version whose fields we use: tensor groups came in 1.2.0. Readers compare it with their own.
MIN_PARSER_VERSION = "1.2.0"
LABELS_FILE = "labels.txt"

# Enum and union values of the schema.
COLOR_RGB = 1
BOX_BOUNDARIES, COORDINATES_RATIO = 1, 0
FILE_TENSOR_VALUE_LABELS = 3
CONTENT_FEATURE, CONTENT_IMAGE, CONTENT_BOX = 1, 2, 3
UNIT_NORMALIZATION, UNIT_SCORE_THRESHOLD = 1, 3
# The tensor names MediaPipe's ObjectDetector looks for (object_detector_graph.cc); in this order
# they are also the model's output order the standard detection signature promises.
OUTPUT_NAMES = ("location", "category", "score", "number of detections")
# ymin, xmin, ymax, xmax in the tensor -> MediaPipe's index list says where left, top, right, bottom are.
BOX_INDEX = (1, 0, 3, 2)


class _Writer:
    """Bottom-up flatbuffer building: children first, then the table that points to them."""

    def __init__(self):
        self.b = flatbuffers.Builder(1024)

    def string(self, text: str) -> int:
        return self.b.CreateString(text)

    def tables(self, offsets: list[int]) -> int:
        self.b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            self.b.PrependUOffsetTRelative(offset)
        return self.b.EndVector()

    def strings(self, texts) -> int:
        return self.tables([self.string(t) for t in texts])

    def numbers(self, kind: str, values) -> int:
        self.b.StartVector(4, len(values), 4)
        for value in reversed(list(values)):
            getattr(self.b, f"Prepend{kind}")(value)
        return self.b.EndVector()

    def table(self, fields: dict) -> int:
        """fields: slot -> (kind, value); kind "offset" for strings, vectors and tables."""
        self.b.StartObject(max(fields, default=-1) + 1)
        for slot, (kind, value) in sorted(fields.items()):
            if kind == "offset":
                self.b.PrependUOffsetTRelativeSlot(slot, value, 0)
            else:  # a value equal to the schema's default (0) is left out: readers get the default
                getattr(self.b, f"Prepend{kind}Slot")(slot, value, 0)
        return self.b.EndObject()

    def finish(self, root: int) -> bytes:
        self.b.Finish(root, file_identifier=FILE_IDENTIFIER)
        return bytes(self.b.Output())


def _tensor(w: _Writer, name: str, description: str, content: int | None = None, units=None,
            stats: int | None = None, files=None) -> int:
    name_at, description_at = w.string(name), w.string(description)
    units_at = w.tables(units) if units else None
    files_at = w.tables(files) if files else None
    fields = {0: ("offset", name_at), 1: ("offset", description_at)}
    for slot, value in ((3, content), (4, units_at), (5, stats), (6, files_at)):
        if value is not None:
            fields[slot] = ("offset", value)
    return w.table(fields)


def _content(w: _Writer, kind: int, properties: int, ranged: bool) -> int:
    range_at = w.table({0: ("Int32", 2), 1: ("Int32", 2)}) if ranged else None  # one item per axis-1 entry
    fields = {0: ("Uint8", kind), 1: ("offset", properties)}
    if range_at is not None:
        fields[2] = ("offset", range_at)
    return w.table(fields)


def detector_metadata(*, name: str, description: str, version: str, input_size: tuple[int, int],
                      mean: list[float], std: list[float], score_threshold: float) -> bytes:
    """The ModelMetadata flatbuffer of a 4-output detector (location, category, score, number).

    input_size (H, W); mean/std: the input normalisation (x - mean) / std the model expects of
    0..255 RGB; score_threshold: the default a reader applies when its user sets none.
    """
    w = _Writer()
    height, width = input_size
    # input: an RGB image, normalised, with the value range that normalisation gives
    image_size = w.table({0: ("Uint32", int(width)), 1: ("Uint32", int(height))})
    image = w.table({0: ("Int8", COLOR_RGB), 1: ("offset", image_size)})
    image_content = _content(w, CONTENT_IMAGE, image, ranged=False)
    mean_at, std_at = w.numbers("Float32", mean), w.numbers("Float32", std)
    normalization = w.table({0: ("offset", mean_at), 1: ("offset", std_at)})
    norm_unit = w.table({0: ("Uint8", UNIT_NORMALIZATION), 1: ("offset", normalization)})
    low = [(0.0 - m) / s for m, s in zip(mean, std)]
    high = [(255.0 - m) / s for m, s in zip(mean, std)]
    stats = w.table({0: ("offset", w.numbers("Float32", high)), 1: ("offset", w.numbers("Float32", low))})
    inputs = [_tensor(w, "image", "RGB frame, normalised as (pixel - mean) / std", image_content,
                      [norm_unit], stats)]

    # outputs, in the model's output order
    box = w.table({0: ("offset", w.numbers("Uint32", BOX_INDEX)), 1: ("Int8", BOX_BOUNDARIES),
                   2: ("Int8", COORDINATES_RATIO)})
    location = _tensor(w, OUTPUT_NAMES[0], "Boxes ymin, xmin, ymax, xmax as fractions of the image.",
                       _content(w, CONTENT_BOX, box, ranged=True))
    labels = w.table({0: ("offset", w.string(LABELS_FILE)), 1: ("offset", w.string("Class names.")),
                      2: ("Int8", FILE_TENSOR_VALUE_LABELS)})
    category = _tensor(w, OUTPUT_NAMES[1], "Class index of each box (a line of labels.txt).",
                       _content(w, CONTENT_FEATURE, w.table({}), ranged=True), files=[labels])
    threshold = w.table({0: ("Float32", float(score_threshold))})
    threshold_unit = w.table({0: ("Uint8", UNIT_SCORE_THRESHOLD), 1: ("offset", threshold)})
    score = _tensor(w, OUTPUT_NAMES[2], "Score of each box, 0..1, best first.",
                    _content(w, CONTENT_FEATURE, w.table({}), ranged=True), [threshold_unit])
    number = _tensor(w, OUTPUT_NAMES[3], "Number of valid boxes (local peaks); apply a score threshold.",
                     _content(w, CONTENT_FEATURE, w.table({}), ranged=False))
    group = w.table({0: ("offset", w.string("detection_result")),
                     1: ("offset", w.strings(OUTPUT_NAMES[:3]))})

    subgraph = w.table({0: ("offset", w.string(name)), 1: ("offset", w.string(description)),
                        2: ("offset", w.tables(inputs)),
                        3: ("offset", w.tables([location, category, score, number])),
                        8: ("offset", w.tables([group]))})
    root = w.table({0: ("offset", w.string(name)), 1: ("offset", w.string(description)),
                    2: ("offset", w.string(version)), 3: ("offset", w.tables([subgraph])),
                    7: ("offset", w.string(MIN_PARSER_VERSION))})
    return w.finish(root)


def populate(model: bytes, metadata: bytes, files: dict[str, bytes]) -> bytes:
    """The .tflite `model` with `metadata` in a buffer named TFLITE_METADATA and `files` zipped on."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
    tree.metadata = [m for m in (tree.metadata or []) if _name(m) != METADATA_NAME] + [entry]
    packed = io.BytesIO(flatbuffer_utils.convert_object_to_bytearray(tree))
    packed.seek(0, io.SEEK_END)
    with zipfile.ZipFile(packed, "a") as archive:  # appended after the flatbuffer (see above)
        for name, data in files.items():
            archive.writestr(name, data)
    return packed.getvalue()


def _name(entry) -> str:
    name = entry.name
    return name.decode() if isinstance(name, bytes) else str(name)


def read(path) -> tuple[bytes | None, dict[str, bytes]]:
    """(the TFLITE_METADATA buffer or None, the associated files) of a .tflite file."""
    from tensorflow.lite.tools import flatbuffer_utils

    data = open(path, "rb").read()
    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    metadata = None
    for entry in tree.metadata or []:
        if _name(entry) == METADATA_NAME:
            metadata = bytes(np.asarray(tree.buffers[entry.buffer].data, np.uint8))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        files = {}
    return metadata, files
