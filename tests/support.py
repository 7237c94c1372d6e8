"""Helpers the tests share: the repository's paths, the tiny config, running the command line, the
two promises every stage makes (a user's mistake is one line and exit 2; a failed run leaves no
partial output), and one object's detection targets."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np

from pipeline.config import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def tiny(root: pathlib.Path, *overrides: str):
    """configs/tiny.yaml with its run folder under root."""
    return load_config(REPO / "configs" / "tiny.yaml", [f"run_root={root}", *overrides])


def run_cli(*args, timeout: float = 300, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m pipeline ...` from the repository root, as a user runs it."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_user_error_exit(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The command ended with exit code 2 and exactly one `error:` line (no traceback) holding every
    fragment, and that line is the last thing it wrote to stderr; returns the line."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert result.stderr.rstrip().splitlines()[-1] == lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_no_partial_output(folder: pathlib.Path) -> None:
    """Nothing under folder is a staging leftover (hidden .partial / .old files or folders)."""
    folder = pathlib.Path(folder)
    if not folder.exists():
        return
    leftovers = [p for p in folder.rglob("*") if ".partial" in p.name or p.name.endswith(".old")]
    assert not leftovers, leftovers


def top_level_atoms(path) -> list[str]:
    """The MP4's top-level box types in file order (ftyp, moov, mdat, ...)."""
    data, atoms, offset = pathlib.Path(path).read_bytes(), [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        atoms.append(data[offset + 4:offset + 8].decode("latin-1"))
        if size == 1:  # 64-bit size follows the type
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        if size < 8:
            break
        offset += size
    return atoms


def assert_browser_mp4(path, frames: int) -> None:
    """H.264 (read back with PyAV), the index (moov) before the media (mdat): faststart, and `frames`
    frames that decode."""
    import av  # noqa: PLC0415
    atoms = top_level_atoms(path)
    assert "moov" in atoms and "mdat" in atoms and atoms.index("moov") < atoms.index("mdat"), atoms
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in container.decode(video=0)) == frames


def evaluated_with(tiny_trained, out_root: pathlib.Path, override, folder: str):
    """Evaluates the tiny model on validation with evaluate.* option(s) (one override or a list) into
    out_root/folder (not the shared tiny run's folder), after checking the stage names that folder
    for them; returns (its metrics.json, the plain evaluation's metrics, its report.md text)."""
    import json

    from pipeline import trained
    from pipeline.evaluation import evaluate

    config, model_path = tiny_trained
    optioned = tiny(config.run_root, *([override] if isinstance(override, str) else override))
    assert evaluate.output_dir(optioned, "validation").name == folder
    out = out_root / folder
    evaluate.evaluate_into(optioned, model_path, "validation", out)
    plain = evaluate.evaluate_model(config, trained.load(model_path), "validation")
    return json.loads((out / "metrics.json").read_text()), plain, (out / "report.md").read_text()


def one_object_targets(grid=(6, 8), classes=3):
    """Detection targets for one object of class 1 centred in cell (2, 3): a 2x5-cell box, offset
    (0.5, 0.5), a Gaussian's shoulders of 0.5 around its centre."""
    heat = np.zeros((1, *grid, classes), np.float32)
    heat[0, 1:4, 2:5, 1] = 0.5
    heat[0, 2, 3, 1] = 1.0
    size = np.zeros((1, *grid, 2), np.float32)
    size[0, 2, 3] = [2.0, 5.0]
    offset = np.zeros((1, *grid, 2), np.float32)
    offset[0, 2, 3] = [0.5, 0.5]
    mask = np.zeros((1, *grid), np.float32)
    mask[0, 2, 3] = 1.0
    return {"det_heatmap": heat, "det_size": size, "det_size_weight": mask, "det_offset": offset,
            "det_mask": mask}
