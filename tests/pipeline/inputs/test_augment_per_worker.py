"""One Compose per worker thread (issue 15) gives the same augmentation as one Compose per example.

`per_example` below is augment() as it was before: a new Compose for every example, with the crop
window and the flip as fixed transforms in its list (and, as augment() does now, the boxes the crop
cuts below MIN_VISIBILITY relabelled as ignore regions before albumentations sees them). The reused
Compose must give the same result, array for array, for every seed: same crops, same flips, same
photometric draws, same boxes.
"""
import threading

import albumentations as A
import cv2
import numpy as np
import pytest

from pipeline.config import AugmentConfig
from pipeline.inputs import augment as augment_lib
from pipeline.inputs.augment import IGNORE_CLASS, _crop_window, _cut_to_ignore, _photometric, augment


def per_example(image, segmentation, depth, boxes, classes, seed, out_size, cfg, training, ignore_boxes=None):
    """The pre-issue-15 augment() up to albumentations' output (a Compose built for this example)."""
    height, width = image.shape[:2]
    rng = np.random.default_rng(seed)
    transforms = []
    x0, y0, x1, y1 = 0, 0, width, height
    if training and cfg.enabled:
        (x0, y0, x1, y1), zoom = _crop_window(rng, (height, width), (height, width), cfg, True)
        flip = bool(rng.random() < cfg.hflip)
        if zoom != 1.0:
            transforms.append(A.Crop(x_min=x0, y_min=y0, x_max=x1, y_max=y1))
    else:
        flip = False
    transforms.append(A.Resize(out_size[0], out_size[1], interpolation=cv2.INTER_LINEAR,
                               mask_interpolation=cv2.INTER_NEAREST))
    if flip:
        transforms.append(A.HorizontalFlip(p=1.0))
    if training and cfg.enabled:
        transforms += _photometric(cfg)
    pipeline = A.Compose(transforms, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["classes"],
                                                              clip=True),
                         seed=int(seed) % (2**32))
    ignore = np.asarray(ignore_boxes, np.float32).reshape(-1, 4)
    all_boxes, all_classes = _cut_to_ignore(
        np.concatenate([boxes, ignore]), np.concatenate([classes, np.full(len(ignore), IGNORE_CLASS, np.int32)]),
        (x0, y0, x1, y1), (height, width))
    result = pipeline(image=image, mask=segmentation, bboxes=all_boxes, classes=all_classes)
    return result["image"], result["mask"], np.asarray(result["bboxes"], np.float32).reshape(-1, 4), \
        np.asarray(result["classes"], np.int32)


def busy_frame(seed=0):
    """Texture (so blur and noise show) and boxes at the edges, where crops cut them below visibility
    (into ignore regions)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    segmentation = rng.integers(0, 9, (96, 160), dtype=np.uint8)
    depth = rng.uniform(2.0, 60.0, (96, 160)).astype(np.float32)
    boxes = np.array([[0, 0, 30, 20], [140, 70, 160, 96], [60, 30, 100, 60], [2, 80, 12, 95]], np.float32)
    classes = np.array([0, 1, 2, 0], np.int32)
    ignore = np.array([[150, 0, 160, 10]], np.float32)
    return image, segmentation, depth, boxes, classes, ignore


def albumentations_part(outputs):
    """augment()'s image, mask and the boxes and ignore regions together, sorted (they leave in two lists)."""
    image, mask, _, boxes, classes, ignore = outputs
    everything = np.concatenate([boxes, ignore])
    return image, mask, everything[np.lexsort(everything.T[::-1])]


@pytest.mark.parametrize("training", [True, False])
def test_reused_compose_gives_the_per_example_result_for_every_seed(training):
    image, seg, depth, boxes, classes, ignore = busy_frame()
    cfg = AugmentConfig(crop_probability=0.7, blur=0.5, noise=0.5)
    cropped = flipped = 0
    for seed in range(60):
        new = augment(image, seg, depth, boxes, classes, seed, (64, 128), cfg, training, ignore_boxes=ignore)
        old_image, old_mask, old_boxes, _ = per_example(image, seg, depth, boxes, classes, seed, (64, 128), cfg,
                                                        training, ignore)
        new_image, new_mask, new_boxes = albumentations_part(new)
        np.testing.assert_array_equal(new_image, old_image, err_msg=f"seed {seed}")
        np.testing.assert_array_equal(new_mask, old_mask, err_msg=f"seed {seed}")
        np.testing.assert_array_equal(new_boxes, old_boxes[np.lexsort(old_boxes.T[::-1])], err_msg=f"seed {seed}")
        rng = np.random.default_rng(seed)
        cropped += _crop_window(rng, (96, 160), (96, 160), cfg, True)[1] != 1.0
        flipped += rng.random() < cfg.hflip
    if training:  # the seeds covered every branch: crop and none, flip and none
        assert 0 < cropped < 60 and 0 < flipped < 60


def test_the_compose_is_built_once_per_thread_and_setting(monkeypatch):
    built = []
    original = augment_lib._build
    monkeypatch.setattr(augment_lib, "_build", lambda *args: built.append(args) or original(*args))
    frame = busy_frame()
    cfg = AugmentConfig(noise=0.31)  # a setting no other test used, so this thread has no Compose for it yet
    for seed in range(10):
        augment(*frame[:5], seed, (64, 128), cfg, True, ignore_boxes=frame[5])
    assert len(built) == 1
    other = threading.Thread(target=lambda: augment(*frame[:5], 0, (64, 128), cfg, True, ignore_boxes=frame[5]))
    other.start()
    other.join()
    assert len(built) == 2  # the other thread built its own


def test_tf_data_workers_build_the_compose_once_each(monkeypatch):
    """The input pipeline calls augment through tf.numpy_function on TensorFlow's own threads, where
    Python makes a new thread state for every call: a cache in a threading.local was empty each time,
    so the Compose was rebuilt for every example."""
    import tensorflow as tf

    built = []
    original = augment_lib._build
    monkeypatch.setattr(augment_lib, "_build", lambda *args: built.append(args) or original(*args))
    frame = busy_frame()
    cfg = AugmentConfig(noise=0.29)  # a setting no other test used: no thread has a Compose for it yet
    threads = set()

    def run(seed):
        threads.add(threading.get_ident())
        return augment(*frame[:5], int(seed), (64, 128), cfg, True, ignore_boxes=frame[5])[0]

    examples = 32
    ds = tf.data.Dataset.range(examples).map(lambda seed: tf.numpy_function(run, [seed], tf.uint8),
                                             num_parallel_calls=2)
    assert sum(1 for _ in ds) == examples
    assert 1 <= len(built) <= len(threads) < examples


def test_threads_running_at_once_get_the_serial_results():
    """tf.data calls augment from several threads at once: a Compose shared between them would mix
    one example's draws into another's."""
    frame = busy_frame()
    cfg = AugmentConfig(blur=0.5, noise=0.5)
    serial = {seed: augment(*frame[:5], seed, (64, 128), cfg, True, ignore_boxes=frame[5])[0] for seed in range(48)}
    parallel, errors = {}, []

    def work(seeds):
        try:
            for seed in seeds:
                parallel[seed] = augment(*frame[:5], seed, (64, 128), cfg, True, ignore_boxes=frame[5])[0]
        except Exception as err:  # noqa: BLE001  (handed to the main thread)
            errors.append(err)

    threads = [threading.Thread(target=work, args=(range(start, 48, 4),)) for start in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for seed, image in serial.items():
        np.testing.assert_array_equal(parallel[seed], image, err_msg=f"seed {seed}")
