"""Writing outputs so that a crash never leaves a half-written folder that a later stage trusts."""
from __future__ import annotations

import os
import pathlib
import shutil


def replace_dir(finished: pathlib.Path, final: pathlib.Path) -> None:
    """Swaps a finished folder in; the old one is removed only after the new one is in place."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(finished, final)
    shutil.rmtree(old, ignore_errors=True)
