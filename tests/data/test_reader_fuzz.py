"""Fuzzing the real-data readers: every file of the KITTI, CamVid and Cityscapes fixtures, emptied,
truncated, bit-flipped or replaced by garbage, must end as a BadExample (one line naming the file:
the builder stops on it or drops and lists it, data.bad_examples) or a UserError, never another
exception. A damaged file that still decodes to a valid example is fine too."""
from __future__ import annotations

import random
import shutil

import pytest

from data import readers
from data.errors import UserError
from data.schema import BadExample
from support import FIXTURES

SOURCES = ("kitti", "camvid", "cityscapes")
DAMAGES = ("empty", "truncated", "bit_flip", "garbage", "head_cut")
SEEDS = 4  # bit flips and cut points drawn per file and damage


def damage(data: bytes, how: str, rng: random.Random) -> bytes:
    if how == "empty":
        return b""
    if how == "truncated":
        return data[: rng.randrange(0, max(1, len(data)))]
    if how == "head_cut":
        return data[rng.randrange(1, max(2, len(data))):]
    if how == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 512)))
    flipped = bytearray(data)
    for _ in range(rng.randrange(1, 16)):
        if flipped:
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    return bytes(flipped)


def cases():
    for source in SOURCES:
        for path in sorted(p for p in (FIXTURES / source).rglob("*") if p.is_file()):
            for how in DAMAGES:
                for seed in range(1 if how == "empty" else SEEDS):
                    yield source, path.relative_to(FIXTURES / source), how, seed


CASES = list(cases())


def test_there_are_at_least_150_reader_cases():
    assert len(CASES) >= 150, len(CASES)


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("source, relative, how, seed", CASES,
                         ids=[f"{s}-{r.name}-{h}-{n}" for s, r, h, n in CASES])
def test_damaged_file_is_a_one_line_bad_example_never_a_traceback(copies, source, relative, how, seed):
    root = copies / f"{source}-{'-'.join(relative.parts)}-{how}-{seed}"
    shutil.copytree(FIXTURES / source, root)
    target = root / relative
    target.write_bytes(damage(target.read_bytes(), how, random.Random(f"{relative}-{how}-{seed}")))
    reader = readers.get(source)
    try:
        reader.check_layout(root)
        keys = reader.list_items(root)
    except UserError as err:
        assert "\n" not in str(err)
        return
    for key in keys:
        try:
            reader.load_item(root, key)
        except (BadExample, UserError) as err:
            assert "\n" not in str(err).strip(), str(err)
            assert str(err).strip(), "the message names the problem"
    shutil.rmtree(root)
