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
from pipeline.inputs import records
from support import REPO, tiny


def built_files(config):
    """relative path -> bytes of every file of the built synthetic source."""
    folder = storage.stored_dir("synthetic", config.data_dir)
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_parallel_build_equals_the_serial_build_byte_for_byte(tmp_path, capsys):
    serial = tiny(tmp_path / "serial", "data.workers=1")
    pooled = tiny(tmp_path / "pooled", "data.workers=2")
    records.build_source(serial, serial.data.sources[0])
    records.build_source(pooled, pooled.data.sources[0])
    assert "data: synthetic: {'train': 16, 'validation': 8}" in capsys.readouterr().out  # the stage's line
    one, two = built_files(serial), built_files(pooled)
    assert sorted(one) == sorted(two)
    records_files = [name for name in one if ".tfrecord" in name or name.endswith(".array_record")]
    assert records_files, sorted(one)
    for name in one:  # records, dataset_info.json, features.json, params.json, report.json, dropped.json
        assert one[name] == two[name], name


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
