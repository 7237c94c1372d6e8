"""One albumentations Compose per input-pipeline worker thread, reused for every example.

Building a Compose validates every transform's arguments and costs about a quarter of augmenting a
frame (bench section 1, issue 15), so augment.py builds one per thread and setting instead of one
per example. Per thread because tf.data runs `tf.numpy_function` on several threads at once and a
Compose keeps per-call state (its generators, the last parameters), so threads must not share one.

The per-example choices that used to change the list of transforms now come with each call's data,
and the transforms they switch are built once:
  crop_window  (x0, y0, x1, y1) or None: ExampleCrop crops to that window; None skips it
  flip         bool: ExampleFlip mirrors; False skips it
A skipped transform returns the data unchanged, exactly as if it were not in the list, and
albumentations' box clipping still runs after the crop as before (the visibility rule runs before
it: augment._cut_to_ignore).
The random draws stay per example: `Compose.set_random_seed(seed)` gives every transform the same
generators that `Compose(..., seed=seed)` gave it, so the augmentation is the same, draw for draw.
"""
from __future__ import annotations

import threading
from typing import Callable, Hashable

import albumentations as A

# Keyed by thread id, not a threading.local: tf.data runs `tf.numpy_function` on TensorFlow's own
# (non-Python) threads, and Python gives such a thread a fresh thread state for each call and drops
# it afterwards, taking a threading.local's data with it. A threading.local rebuilt the Compose for
# every example; the thread ids of TensorFlow's pool stay. A dict's get and set are atomic under the
# GIL, and each thread only ever touches its own entries.
_composes: dict[tuple[int, Hashable], A.Compose] = {}


class _Switched:
    """Mixin: the transform runs only when the call's data sets `switch` (else the data passes as is)."""

    switch = ""

    def __call__(self, *args, force_apply: bool = False, **data):
        if not data.get(self.switch):
            return data
        return super().__call__(*args, force_apply=force_apply, **data)


class ExampleCrop(_Switched, A.Crop):
    """A.Crop to the window in the call's `crop_window` (drawn per example by augment.py)."""

    switch = "crop_window"

    def get_params_dependent_on_data(self, params, data):
        x0, y0, x1, y1 = (int(v) for v in data["crop_window"])
        return {"crop_coords": (x0, y0, x1, y1), "pad_params": None}


class ExampleFlip(_Switched, A.HorizontalFlip):
    """A.HorizontalFlip when the call's `flip` is true (drawn per example by augment.py)."""

    switch = "flip"


def compose(key: Hashable, build: Callable[[], A.Compose]) -> A.Compose:
    """This thread's Compose for `key`, built by `build()` the first time the thread asks."""
    slot = (threading.get_ident(), key)
    found = _composes.get(slot)
    if found is None:
        found = _composes[slot] = build()
    return found
