"""Every source's built-in label tables: what each label value of a source becomes in the default
classes (data/classes.py DEFAULT). A config replaces any table with its own
(`data.sources[].label_map.<table>`, checked by pipeline/config.py) to map a source onto other classes.

A table maps a source's label value to a class name or one of two markers:
  "ignore"   segmentation: pixel not labelled. detection: an ignore region ("DontCare", crowds), kept in
             the example's "ignore_boxes" so a detection there is neither rewarded nor punished.
  "drop"     detection only: a labelled object that is not one of our targets (KITTI Misc, bicycles
             without riders, traffic signs); it becomes neither a box nor an ignore region.
A label value missing from its table stops the data build, naming the file and the value
(data/mapping.py): a gap in a mapping should never silently delete objects or pixels. So the tables
list every value a source documents, the unused ones as "ignore".

Keys: the values as the source's files hold them: type names (KITTI label_2, BDD100K categories) or
integer ids (label PNGs, Cityscapes instance classes); the synthetic source's are the default classes
(names for boxes, ids of data.schema.SEGMENTATION_CLASSES for pixels).
"""
from __future__ import annotations

from data.schema import DETECTION_CLASSES, SEGMENTATION_CLASSES

IGNORE = "ignore"
DROP = "drop"
MARKERS = {"detection": (IGNORE, DROP), "segmentation": (IGNORE,)}

# --- synthetic scenes: rendered in the default classes ---------------------------------------------
SYNTHETIC_DETECTION = {name: name for name in DETECTION_CLASSES}
SYNTHETIC_SEGMENTATION = {**dict(enumerate(SEGMENTATION_CLASSES)), 255: IGNORE}

# --- KITTI object (label_2 "type" field) -> detection class ----------------------------------------
KITTI_DETECTION = {
    "Car": "vehicle", "Van": "vehicle", "Truck": "vehicle", "Tram": "vehicle",
    "Pedestrian": "pedestrian", "Person_sitting": "pedestrian",
    "Cyclist": "cyclist",
    "Misc": "drop",          # trailers, segways, ...: labelled but not a class we detect
    "DontCare": "ignore",    # regions the annotators skipped (far or crowded objects)
}

# --- Cityscapes label ids (gtFine_labelIds) ---------------------------------------------------------
CITYSCAPES_NAMES = {
    0: "unlabeled", 1: "ego vehicle", 2: "rectification border", 3: "out of roi", 4: "static",
    5: "dynamic", 6: "ground", 7: "road", 8: "sidewalk", 9: "parking", 10: "rail track",
    11: "building", 12: "wall", 13: "fence", 14: "guard rail", 15: "bridge", 16: "tunnel",
    17: "pole", 18: "polegroup", 19: "traffic light", 20: "traffic sign", 21: "vegetation",
    22: "terrain", 23: "sky", 24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus",
    29: "caravan", 30: "trailer", 31: "train", 32: "motorcycle", 33: "bicycle",
}
CITYSCAPES_SEGMENTATION = {
    # unlabeled, ego vehicle, rectification border, out of roi, static, dynamic, ground
    0: "ignore", 1: "ignore", 2: "ignore", 3: "ignore", 4: "ignore", 5: "ignore", 6: "ignore",
    7: "road", 8: "sidewalk", 9: "ignore", 10: "ignore",   # parking, rail track: not ours
    11: "building", 12: "building", 13: "building",
    14: "ignore", 15: "ignore", 16: "ignore",   # guard rail, bridge, tunnel
    17: "pole", 18: "pole", 19: "pole", 20: "pole",
    21: "vegetation", 22: "vegetation", 23: "sky",
    24: "pedestrian", 25: "cyclist",
    26: "vehicle", 27: "vehicle", 28: "vehicle", 29: "vehicle", 30: "vehicle",
    31: "vehicle", 32: "vehicle",
    33: "cyclist",
}
# Label ids with instances (gtFine_instanceIds = id * 1000 + instance). Pixels of these ids without an
# instance number are crowds ("car group"): ignore regions for the classes we box.
CITYSCAPES_DETECTION = {
    24: "pedestrian", 25: "cyclist",
    26: "vehicle", 27: "vehicle", 28: "vehicle", 29: "vehicle", 30: "vehicle",
    31: "vehicle", 32: "vehicle",
    33: "drop",              # a bicycle's box is not a cyclist's box; its rider is boxed as cyclist
}

# --- CamVid, SegNet's 11-class version (label PNG values) -------------------------------------------
CAMVID_NAMES = {0: "Sky", 1: "Building", 2: "Pole", 3: "Road", 4: "Pavement", 5: "Tree",
                6: "SignSymbol", 7: "Fence", 8: "Car", 9: "Pedestrian", 10: "Bicyclist", 11: "void"}
CAMVID_SEGMENTATION = {
    0: "sky", 1: "building", 2: "pole", 3: "road", 4: "sidewalk",
    5: "vegetation", 6: "pole", 7: "building", 8: "vehicle",
    9: "pedestrian", 10: "cyclist", 11: "ignore",
}

# --- BDD100K ----------------------------------------------------------------------------------------
# det_20 categories (and the names of the older bdd100k_labels_images_*.json, in case a user kept them).
BDD100K_DETECTION = {
    "car": "vehicle", "truck": "vehicle", "bus": "vehicle", "train": "vehicle",
    "motorcycle": "vehicle", "motor": "vehicle",
    "pedestrian": "pedestrian", "person": "pedestrian",
    "rider": "cyclist",
    "bicycle": "drop", "bike": "drop", "traffic light": "drop", "traffic sign": "drop",
    # Vehicles and people BDD leaves unclassified: real objects of our kinds, so neither a positive
    # nor a background sample.
    "other vehicle": "ignore", "trailer": "ignore", "other person": "ignore",
}
# sem_seg masks hold Cityscapes *train* ids.
BDD100K_SEMSEG_NAMES = {
    0: "road", 1: "sidewalk", 2: "building", 3: "wall", 4: "fence", 5: "pole", 6: "traffic light",
    7: "traffic sign", 8: "vegetation", 9: "terrain", 10: "sky", 11: "person", 12: "rider",
    13: "car", 14: "truck", 15: "bus", 16: "train", 17: "motorcycle", 18: "bicycle", 255: "unlabeled",
}
BDD100K_SEGMENTATION = {
    0: "road", 1: "sidewalk", 2: "building", 3: "building", 4: "building",
    5: "pole", 6: "pole", 7: "pole", 8: "vegetation", 9: "vegetation",
    10: "sky", 11: "pedestrian", 12: "cyclist",
    13: "vehicle", 14: "vehicle", 15: "vehicle", 16: "vehicle", 17: "vehicle",
    18: "cyclist", 255: "ignore",
}
# Drivable-area masks label only the drivable part of the road (0 direct, 1 alternative, 2 background).
# Background is not "not road" (sidewalks, but also the far side of a barrier), so it is IGNORE and
# such an example teaches road pixels only.
BDD100K_DRIVABLE_NAMES = {0: "direct", 1: "alternative", 2: "background"}
BDD100K_DRIVABLE = {0: "road", 1: "road", 2: "ignore"}


# (source, table) -> (task the table labels, built-in table, whether keys are integer label values).
# BDD100K has two segmentation tables: sem_seg masks and drivable-area masks.
TABLES = {
    "synthetic": {"detection": ("detection", SYNTHETIC_DETECTION, False),
                  "segmentation": ("segmentation", SYNTHETIC_SEGMENTATION, True)},
    "kitti": {"detection": ("detection", KITTI_DETECTION, False)},
    "cityscapes": {"segmentation": ("segmentation", CITYSCAPES_SEGMENTATION, True),
                   "detection": ("detection", CITYSCAPES_DETECTION, True)},
    "camvid": {"segmentation": ("segmentation", CAMVID_SEGMENTATION, True)},
    "bdd100k": {"detection": ("detection", BDD100K_DETECTION, False),
                "segmentation": ("segmentation", BDD100K_SEGMENTATION, True),
                "drivable": ("segmentation", BDD100K_DRIVABLE, True)},
}


def table(source: str, name: str, override: dict | None = None) -> dict:
    """A source's table `name` as used: the config's `override` (keys as its YAML gives them, integer
    ids as strings) when given, else the built-in one. Integer-keyed tables get int keys."""
    _, builtin, integer_keys = TABLES[source][name]
    if override is None:
        return dict(builtin)
    return {int(key) if integer_keys else str(key): str(value) for key, value in override.items()}
