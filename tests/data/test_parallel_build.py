"""The data stage across processes (issue 15): a parallel build is the serial build, byte for byte."""
import functools
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from data import builder as storage
from data import parallel, schema, synthetic
from pipeline import layout
from pipeline.inputs import records
from support import REPO, tiny


def built_files(config):
    """relative path -> bytes of every file of the built synthetic source."""
    folder = storage.stored_dir("synthetic", config.data_dir)
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def clip_files(config):
    """relative path -> bytes of the synthetic clip and its labels."""
    folder = layout.clips_data_dir(config)
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_parallel_build_equals_the_serial_build_byte_for_byte(tmp_path, capsys):
    """The whole data stage's work: with workers, the first frames are handed out before the records'
    writing starts and the clip renders in a worker; the files are the serial build's."""
    serial = tiny(tmp_path / "serial", "data.workers=1")
    pooled = tiny(tmp_path / "pooled", "data.workers=2")
    records.build_all(serial)
    records.build_all(pooled)
    assert "data: synthetic: {'train': 16, 'validation': 8}" in capsys.readouterr().out  # the stage's line
    one, two = built_files(serial), built_files(pooled)
    assert sorted(one) == sorted(two)
    records_files = [name for name in one if ".tfrecord" in name or name.endswith(".array_record")]
    assert records_files, sorted(one)
    for name in one:  # records, dataset_info.json, features.json, params.json, report.json, dropped.json
        assert one[name] == two[name], name
    clip_one, clip_two = clip_files(serial), clip_files(pooled)
    assert "synthetic_clip.mp4" in clip_one and sorted(clip_one) == sorted(clip_two)
    for name in clip_one:  # the mp4, labels.jsonl and the label PNGs
        assert clip_one[name] == clip_two[name], name


def marked(marker: pathlib.Path, load):
    """A loader that leaves a file behind when it runs (in whichever process); a second run fails."""
    marker.open("x").close()
    return load()


def test_started_items_load_before_anyone_asks_and_continue_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "AHEAD", 2)  # a head start of 2 chunks, then loaded() goes on
    frames = synthetic.frame_loaders("train", 5 * parallel.CHUNK, 32, 48, seed=2)
    items = [(key, functools.partial(marked, tmp_path / key, load)) for key, load in frames]
    head = [key for key, _ in items[:2 * parallel.CHUNK]]
    with parallel.Loader(2) as loader:
        loader.start(items)
        deadline = time.monotonic() + 60
        while len(list(tmp_path.iterdir())) < len(head) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # time enough to load more, had more been handed out
        assert sorted(path.name for path in tmp_path.iterdir()) == head
        pooled = list(loader.loaded(items))  # each loader runs once: marked() fails on a second run
    assert [key for key, _ in pooled] == [key for key, _ in items]
    assert len(list(tmp_path.iterdir())) == len(items)
    for (_, a), (_, b) in zip(pooled, parallel.Loader(1).loaded(frames)):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_started_list_that_is_never_loaded_is_an_error():
    """start() and loaded() hand over by the list object: a copy would render everything twice."""
    items = synthetic.frame_loaders("train", 2, 32, 48, seed=2)
    with pytest.raises(RuntimeError, match="never loaded"):
        with parallel.Loader(2) as loader:
            loader.start(items)
            list(loader.loaded(list(items)))


def test_work_in_the_background_runs_in_a_worker():
    with parallel.Loader(2) as loader:
        pid = loader.in_background(os.getpid)
        assert pid() in loader._pool._processes and pid() != os.getpid()
    assert parallel.Loader(1).in_background(os.getpid)() == os.getpid()  # no pool: here, when asked


def test_loader_hands_back_in_order_from_other_processes():
    items = synthetic.frame_loaders("validation", 13, 32, 48, seed=5)
    broken = schema.placeholder(32, 48)
    broken["depth"][3, 3] = np.nan
    items.insert(3, ("bad-one", functools.partial(dict, broken)))  # picklable, unlike a lambda
    with parallel.Loader(2) as loader:
        pooled = list(loader.loaded(items))
        assert loader._pool._processes  # worker processes ran them (a serial fallback would start none)
    serial = list(parallel.Loader(1).loaded(items))
    assert [key for key, _ in pooled] == [key for key, _ in items]
    assert isinstance(pooled[3][1], schema.BadExample) and "bad-one" in str(pooled[3][1])
    for (_, a), (_, b) in zip(pooled, serial):
        if isinstance(a, dict):
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_an_unexpected_error_in_a_worker_reaches_the_build():
    items = [("fine", functools.partial(synthetic.render_frame, 0, 32, 48)),
             ("broken", functools.partial(synthetic.render_frame, 0, 8, 8))]  # too small: ValueError
    with parallel.Loader(2) as loader, pytest.raises(ValueError, match="16x16"):
        list(loader.loaded(items))


KEEP_A_POOL = """
import time
from data import parallel, synthetic
if __name__ == "__main__":
    with parallel.Loader(2) as loader:
        list(loader.loaded(synthetic.frame_loaders("train", 12, 32, 48, 0)))
        print(" ".join(str(pid) for pid in loader._pool._processes), flush=True)
        time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_build_is_killed():
    """A SIGKILLed data stage (out of memory, a user's kill -9) must not leave workers waiting forever."""
    build = subprocess.Popen([sys.executable, "-c", KEEP_A_POOL], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        workers = [int(pid) for pid in build.stdout.readline().split()]
        assert workers and all(alive(pid) for pid in workers)
    finally:
        build.kill()
        build.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)
