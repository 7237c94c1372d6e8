"""Every real source's classes mapped to the project's label map: one table per source and task.

Values are indices into data.schema.DETECTION_CLASSES (detection tables) or
data.schema.SEGMENTATION_CLASSES (segmentation tables), or one of two markers:
  IGNORE (255)   segmentation: pixel not labelled. detection: an ignore region ("DontCare", crowds),
                 kept in the example's "ignore_boxes" so a detection there is neither rewarded nor
                 punished.
  DROP (-1)      detection only: a labelled object that is not one of our targets (KITTI Misc, bicycles
                 without riders, traffic signs); it becomes neither a box nor an ignore region.
A segmentation id missing from its table is IGNORE; a detection name missing from its table is an
error in the label file (a typo should not silently delete objects).

Plain dicts of ints so the README can print them; `lookup_table` turns a segmentation table into the
array the readers index with.
"""
from __future__ import annotations

import numpy as np

from data.schema import DETECTION_CLASSES, IGNORE, SEGMENTATION_CLASSES

DROP = -1

_D = {name: i for i, name in enumerate(DETECTION_CLASSES)}
_S = {name: i for i, name in enumerate(SEGMENTATION_CLASSES)}

# --- KITTI object (label_2 "type" field) -> detection class ----------------------------------------
KITTI_DETECTION = {
    "Car": _D["vehicle"], "Van": _D["vehicle"], "Truck": _D["vehicle"], "Tram": _D["vehicle"],
    "Pedestrian": _D["pedestrian"], "Person_sitting": _D["pedestrian"],
    "Cyclist": _D["cyclist"],
    "Misc": DROP,          # trailers, segways, ...: labelled but not a class we detect
    "DontCare": IGNORE,    # regions the annotators skipped (far or crowded objects)
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
    7: _S["road"], 8: _S["sidewalk"],
    11: _S["building"], 12: _S["building"], 13: _S["building"],
    17: _S["pole"], 18: _S["pole"], 19: _S["pole"], 20: _S["pole"],
    21: _S["vegetation"], 22: _S["vegetation"], 23: _S["sky"],
    24: _S["pedestrian"], 25: _S["cyclist"],
    26: _S["vehicle"], 27: _S["vehicle"], 28: _S["vehicle"], 29: _S["vehicle"], 30: _S["vehicle"],
    31: _S["vehicle"], 32: _S["vehicle"],
    33: _S["cyclist"],
}
# Label ids with instances (gtFine_instanceIds = id * 1000 + instance). Pixels of these ids without an
# instance number are crowds ("car group"): ignore regions for the classes we box.
CITYSCAPES_DETECTION = {
    24: _D["pedestrian"], 25: _D["cyclist"],
    26: _D["vehicle"], 27: _D["vehicle"], 28: _D["vehicle"], 29: _D["vehicle"], 30: _D["vehicle"],
    31: _D["vehicle"], 32: _D["vehicle"],
    33: DROP,              # a bicycle's box is not a cyclist's box; its rider is boxed as cyclist
}

# --- CamVid, SegNet's 11-class version (label PNG values) -------------------------------------------
CAMVID_NAMES = {0: "Sky", 1: "Building", 2: "Pole", 3: "Road", 4: "Pavement", 5: "Tree",
                6: "SignSymbol", 7: "Fence", 8: "Car", 9: "Pedestrian", 10: "Bicyclist", 11: "void"}
CAMVID_SEGMENTATION = {
    0: _S["sky"], 1: _S["building"], 2: _S["pole"], 3: _S["road"], 4: _S["sidewalk"],
    5: _S["vegetation"], 6: _S["pole"], 7: _S["building"], 8: _S["vehicle"],
    9: _S["pedestrian"], 10: _S["cyclist"], 11: IGNORE,
}

# --- BDD100K ----------------------------------------------------------------------------------------
# det_20 categories (and the names of the older bdd100k_labels_images_*.json, in case a user kept them).
BDD100K_DETECTION = {
    "car": _D["vehicle"], "truck": _D["vehicle"], "bus": _D["vehicle"], "train": _D["vehicle"],
    "motorcycle": _D["vehicle"], "motor": _D["vehicle"],
    "pedestrian": _D["pedestrian"], "person": _D["pedestrian"],
    "rider": _D["cyclist"],
    "bicycle": DROP, "bike": DROP, "traffic light": DROP, "traffic sign": DROP,
    # Vehicles and people BDD leaves unclassified: real objects of our kinds, so neither a positive
    # nor a background sample.
    "other vehicle": IGNORE, "trailer": IGNORE, "other person": IGNORE,
}
# sem_seg masks hold Cityscapes *train* ids.
BDD100K_SEMSEG_NAMES = {
    0: "road", 1: "sidewalk", 2: "building", 3: "wall", 4: "fence", 5: "pole", 6: "traffic light",
    7: "traffic sign", 8: "vegetation", 9: "terrain", 10: "sky", 11: "person", 12: "rider",
    13: "car", 14: "truck", 15: "bus", 16: "train", 17: "motorcycle", 18: "bicycle", 255: "unlabeled",
}
BDD100K_SEGMENTATION = {
    0: _S["road"], 1: _S["sidewalk"], 2: _S["building"], 3: _S["building"], 4: _S["building"],
    5: _S["pole"], 6: _S["pole"], 7: _S["pole"], 8: _S["vegetation"], 9: _S["vegetation"],
    10: _S["sky"], 11: _S["pedestrian"], 12: _S["cyclist"],
    13: _S["vehicle"], 14: _S["vehicle"], 15: _S["vehicle"], 16: _S["vehicle"], 17: _S["vehicle"],
    18: _S["cyclist"],
}
# Drivable-area masks label only the drivable part of the road (0 direct, 1 alternative, 2 background).
# Background is not "not road" (sidewalks, but also the far side of a barrier), so it is IGNORE and
# such an example teaches road pixels only.
BDD100K_DRIVABLE_NAMES = {0: "direct", 1: "alternative", 2: "background"}
BDD100K_DRIVABLE = {0: _S["road"], 1: _S["road"], 2: IGNORE}


def lookup_table(table: dict[int, int], size: int = 256) -> np.ndarray:
    """uint8 array: source id -> project class, IGNORE for ids the table does not list."""
    lut = np.full(size, IGNORE, np.uint8)
    for source_id, project_id in table.items():
        lut[source_id] = project_id
    return lut
