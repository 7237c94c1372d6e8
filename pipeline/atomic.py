"""Writing outputs so that a crash never leaves a half-written file or folder that a later stage trusts.

Every output is written under a hidden partial name beside its final place and renamed into place
only when complete; a finished output is never destroyed by a later failing run. Staging folders
carry their writer's process id (`.export.partial-<pid>`): one whose process is dead (SIGKILL leaves
them) is removed by the next run that stages beside it.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile

from data.errors import UserError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(parent: pathlib.Path, prefix: str) -> list[pathlib.Path]:
    """Removes the entries of `parent` named `<prefix><pid>[-...]` whose process is no longer alive
    (staging leftovers of killed runs); returns them."""
    removed = []
    try:
        entries = list(parent.iterdir()) if parent.is_dir() else []
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def recover(final: pathlib.Path) -> None:
    """A run killed inside replace_dir, between its two renames, left the finished folder only under
    its `.old` name: put it back before anything else touches it."""
    old = final.with_name(f".{final.name}.old")
    if old.is_dir() and not final.exists():
        os.replace(old, final)


def replace_dir(finished: pathlib.Path, final: pathlib.Path) -> None:
    """Swaps a finished folder in; the old one is removed only after the new one is in place."""
    recover(final)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(finished, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(final: pathlib.Path, what: str):
    """A hidden folder beside `final` to write into; it replaces `final` only when the block ends
    without an exception, and is removed otherwise. `what` names the output in the error a user sees
    when its parent folder cannot be written."""
    staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
    recover(final)
    remove_stale(final.parent, f".{final.name}.partial-")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    except OSError as err:
        raise UserError(f"cannot write {what} to {final.parent}: {err.strerror or err}") from None
    try:
        yield staging
        replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_outputs(out_dir: pathlib.Path, names: tuple[str, ...]):
    """A hidden folder inside out_dir to write into; the entries `names` (in that order) replace
    out_dir's only on success, and a failure removes it (and the folders it had to create). For an
    output folder that may hold other things (a user's --out)."""
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(out_dir, ".partial-")
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".partial-{os.getpid()}-", dir=out_dir))
    except OSError as err:
        raise UserError(f"cannot write to the output folder {out_dir}: {err.strerror or err}") from None
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first; stops at the first one that holds something else
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    for name in names:
        source, target = staging / name, out_dir / name
        if target.is_dir():
            shutil.rmtree(target)  # e.g. stale maps of an earlier clip run with clip.full_maps
        if source.exists():
            os.replace(source, target)
    shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def partial_file(path: pathlib.Path):
    """Yields a hidden path beside `path` with the same suffix (writers that pick the format from it,
    like Keras' .keras, still work) that is renamed to `path` when the block succeeds."""
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()


def write_text(path: pathlib.Path, text: str) -> None:
    """`path.write_text(text)`, all or nothing."""
    with partial_file(path) as partial:
        partial.write_text(text)
