"""The project's shared vocabulary, written once: tasks, valid config choices, the detection
stride and the stored depth encoding.

Imported by data/, models/ and pipeline/ alike, and by pipeline/config.py before TensorFlow loads,
so this module imports nothing heavy.
"""

TASKS = ("detection", "segmentation", "depth")  # also the order of outputs, losses and reports

# Valid choices of the config (pipeline/config.py checks them; models/ builds from them).
WEIGHTINGS = ("fixed", "uncertainty", "dwa", "gradnorm", "famo", "pcgrad")
SHARING_MODES = ("hard", "soft", "cross_stitch")
# How the learning rate falls from its peak to 0 after the warm-up: SGDR's half cosine, or a straight
# line (Bergsma et al. 2025, "Straight to Zero", found linear decay to zero best in LLM pre-training).
LR_DECAYS = ("cosine", "linear")
BACKBONES = ("builtin", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnetv2_b0", "efficientnet_lite0")
# Backbones whose layers are built here (models/encoder.py), level by level and named with the encoder's
# prefix: per-task copies of them can be stitched between levels or share a frozen trunk, and the
# optimizer finds their variables by name. The keras.applications ones come whole, without those seams.
LEVELLED_BACKBONES = ("builtin", "efficientnet_lite0")
REAL_SOURCES = ("kitti", "cityscapes", "camvid", "bdd100k")  # read from a folder in their public layout
SOURCES = ("synthetic",) + REAL_SOURCES
STRATEGIES = ("none", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "bfloat16", "mixed_float16", "mixed_bfloat16")
JIT_MODES = ("auto", "true", "false")
BAD_EXAMPLES = ("error", "drop")  # a malformed source file stops the build, or is dropped and listed
SCHEDULES = ("joint", "alternating")
# data.beam_runner: Apache Beam's local runners and the cluster ones (data/beam_build.py)
BEAM_RUNNERS = ("DirectRunner", "PrismRunner", "PortableRunner", "FlinkRunner", "SparkRunner", "DataflowRunner")
CLIP_RESIZE = ("stretch", "letterbox")
INT8_IO = ("uint8", "int8", "float32")

SCORE_THRESHOLD = 0.3  # default export.score_threshold: a detection "is there" at or above this score

STRIDE = 4  # detection output cell in input pixels: heat maps are 1/4 of the input size
# A heat-map target at or above this marks an object's centre cell (the focal loss's positives);
# the targets give centre cells exactly 1 and keep every other cell below it.
HEAT_CENTRE = 1.0 - 1e-3
DEPTH_SCALE = 256.0  # stored depth PNG = metres x 256 as uint16 (KITTI's encoding)
