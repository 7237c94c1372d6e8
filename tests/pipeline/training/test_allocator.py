"""The malloc settings are accepted by glibc and keep freed buffers for the next step (no new page faults)."""
import pathlib
import subprocess
import sys

import pytest

from pipeline.training import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")

# 20 times, as a training step does with its activations: malloc 8 buffers of 8 MiB, touch every page,
# free them all. Prints the minor page faults this took.
CHURN = """
import ctypes, ctypes.util, resource, sys
sys.path.insert(0, {root!r})
if {tuned}:
    from pipeline.training import allocator
    assert allocator.keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 8 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    buffers = [libc.malloc(size) for _ in range(8)]
    for buffer in buffers:
        ctypes.memset(buffer, 1, size)
    for buffer in buffers:
        libc.free(buffer)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(tuned: bool) -> int:
    root = str(pathlib.Path(allocator.__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", CHURN.format(root=root, tuned=tuned)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1])


def test_glibc_accepts_every_setting():
    assert allocator.keep_freed_memory() is True


def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    pages = 8 * (8 << 20) // 4096  # one round's
    default, tuned = page_faults(False), page_faults(True)
    # By default glibc hands the freed 64 MiB at the top of its heap back to the kernel (its trim
    # threshold follows the buffer size: 16 MiB here), so every round faults its pages in again; the
    # settings keep the memory after the first round. (Relative: with transparent huge pages always
    # on, both counts shrink by the huge page's size.)
    assert default > 5 * tuned
    assert tuned < 2 * pages
