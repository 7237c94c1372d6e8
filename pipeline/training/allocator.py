"""glibc malloc settings for the pipeline's processes (every stage calls them first; they are here
because training steps are what they are for): keep freed memory for the next step.

TensorFlow's CPU allocator takes every activation and gradient buffer of a step from malloc, and
so does NumPy for every augmented frame. By default glibc serves a buffer over its mmap threshold
(128 KiB, rising with what is freed up to 32 MiB) with a fresh mmap and gives free memory at the
top of a heap back to the kernel, so each step faults its buffers in again: a default training on
the 2-core AMD EPYC took 67 million minor page faults and 222 s of system time. A fixed 32 MiB mmap
threshold, a high trim threshold and a large top pad keep most of that memory in the process.
Buffers over 64 MiB (the widest early activations of a 192x256 batch of 16) are still mmapped
when a TensorFlow pool thread asks: a per-thread arena's heap holds at most 64 MiB. Short default
trainings alternated on one machine: half the page faults, a third less system time, 4 % more
images/s (docs/performance.md, "Memory allocator").
"""
from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # the ceiling of glibc's own dynamic threshold, now fixed
TRIM_THRESHOLD = 1 << 30   # give memory back only when 1 GiB is free at the top of the main heap
# Also what a thread arena keeps when it trims a free 64 MiB sub-heap (glibc's heap_trim keeps
# top_pad), so TensorFlow's pool threads keep their heaps mapped; the default is 128 KiB.
TOP_PAD = 64 << 20


def keep_freed_memory() -> bool:
    """Applies the settings above; False where the C library has no mallopt (not glibc: nothing
    changed) or glibc refused a value (mallopt returns 0)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # Any setting switches glibc's dynamic thresholds off, so the mmap threshold goes first: were it
    # refused, the others would freeze the 128 KiB default, which is worse than leaving it alone.
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_TOP_PAD, TOP_PAD))
