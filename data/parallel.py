"""Loading examples in worker processes, handed back in their order: the data stage across cores.

Rendering a synthetic frame (or decoding a real one) and PNG-encoding it (data/stored.py) is NumPy
and OpenCV work on one Python thread, so one process keeps one core busy. With `workers` > 1 the
builder's generator (data/builder.py) gets its examples from a pool: the workers load, validate and
encode the next examples while the main process serialises and writes the ones before (TFDS).
Results come back in the order of the items, and every frame is rendered from its own seed
(data/synthetic.py: SeedSequence of seed, split, index), so the records are the same bytes
whatever the number of workers.

Workers are spawned, not forked: the parent runs TensorFlow's thread pools, and a forked child of a
multi-threaded process can deadlock on a lock one of those threads held. A spawned worker imports
only what the loaders need (NumPy, OpenCV, data/), not TensorFlow. Loaders must therefore be
picklable: module-level functions or functools.partial of them (data/synthetic.py's and the
readers' are), and a script that builds a data set with workers > 1 needs the usual
`if __name__ == "__main__":` guard (`python -m pipeline` has it). At most 2 x workers chunks are in
flight and at most AHEAD chunks held, so memory stays bounded on any split size (AHEAD is sized for
the synthetic frames; real frames of a few MB of PNGs each hold proportionally more). `start()` hands
out up to AHEAD chunks at once, so the workers render while the parent does its own start-up (the
data stage imports TensorFlow, 3 s here), and `in_background()` runs other work, such as the
synthetic clip, beside the records.

For data sets beyond one machine, `data.beam_runner` has TFDS run the same builder on Apache Beam
(data/beam_build.py): `beam.Create(items) | beam.Map(...)` with this module's `load` in the runner's
workers, the same records.
"""
from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from data import schema
from data.classes import DEFAULT, ClassSet
from data.errors import UserError
from data.stored import stored

Item = tuple[str, Callable[[], dict]]
T = TypeVar("T")
CHUNK = 4  # examples per task: amortises the hand-over between processes (a frame is ~0.5 MB)
# Chunks start() hands out at once: 256 examples, about what two workers render here in the 3 s the
# data stage takes to import TensorFlow; ~30 MB of synthetic examples at their ~115 kB on disk.
AHEAD = 64


def usable_cores() -> int:
    """The cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load(item: Item, classes: ClassSet = DEFAULT) -> tuple[str, dict | schema.BadExample]:
    """(key, the example in its stored form: data/stored.py) or (key, the BadExample it raised);
    other errors propagate, an unmapped label value (a UserError) too: it is not the frame's fault."""
    key, loader = item
    try:
        raw = loader()
        example = schema.validate(raw, key, len(classes.detection), len(classes.segmentation))
    except schema.BadExample as err:
        if isinstance(err, UserError):
            raise
        return key, err
    # validate() keeps only the schema's keys; ignore regions are optional extra labels.
    example["ignore_boxes"] = raw.get("ignore_boxes", np.zeros((0, 4), np.float32))
    return key, stored(example, key)


def _load_chunk(chunk: list[Item], classes: ClassSet) -> list:
    return [load(item, classes) for item in chunk]


def _exit_with(parent: int) -> None:
    """Runs first in each worker: a worker whose parent was killed (SIGKILL, out of memory) would
    otherwise wait for work forever; it checks once a second and exits. Ctrl-C reaches the whole
    process group: the parent alone handles it (cancels the work, shuts the pool down), so the workers
    ignore it rather than each printing a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class Loader:
    """`loaded(items)` yields load(item) for each item, in order; in `workers` processes when > 1.
    Use as a context manager: the pool lives from __enter__ to __exit__, across all splits."""

    def __init__(self, workers: int = 1, classes: ClassSet = DEFAULT):
        self.workers = max(1, int(workers))
        self.classes = classes
        self._pool = None
        self._started = {}  # id(items) -> (items, pending futures, the items not yet handed out)

    def __enter__(self) -> "Loader":
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_exit_with, initargs=(os.getpid(),))
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        never_loaded, self._started = self._started, {}
        if never_loaded and exc_type is None:  # a caller that passed on a copy of the list it started
            raise RuntimeError(f"{len(never_loaded)} started list(s) of items were never loaded: start() "
                               f"and loaded() must get the same list object")

    def start(self, items: list[Item]) -> None:
        """Hands the workers the first AHEAD chunks of `items` now, so they load while this process does
        something else; `loaded(items)` with the same list continues from them. Without a pool, nothing."""
        if self._pool is None or id(items) in self._started:
            return
        iterator = iter(items)
        pending = collections.deque()
        while len(pending) < AHEAD and (chunk := list(itertools.islice(iterator, CHUNK))):
            pending.append(self._pool.submit(_load_chunk, chunk, self.classes))
        self._started[id(items)] = (items, pending, iterator)  # the list is kept: its id stays unique

    def in_background(self, work: Callable[[], T]) -> Callable[[], T]:
        """Starts work() in a worker (a picklable call, as loaders are) and returns a call that waits for
        its value; without a pool that call runs work() itself, then."""
        if self._pool is None:
            return work
        return self._pool.submit(work).result

    def loaded(self, items: Iterable[Item]) -> Iterator[tuple[str, dict | schema.BadExample]]:
        if self._pool is None:
            yield from (load(item, self.classes) for item in items)
            return
        _, pending, iterator = self._started.pop(id(items), (None, collections.deque(), iter(items)))
        try:
            while chunk := list(itertools.islice(iterator, CHUNK)):
                pending.append(self._pool.submit(_load_chunk, chunk, self.classes))
                unfinished = sum(not future.done() for future in pending)
                # Hand out more while fewer than 2 per worker wait and memory allows (after start(),
                # the finished head start is written out while the workers go on).
                if unfinished >= 2 * self.workers or len(pending) >= AHEAD:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:  # a consumer that stops early (an error while writing) leaves no work queued
            for future in pending:
                future.cancel()
