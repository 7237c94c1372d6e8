"""report.html: one self-contained page of a run, from hand-made run folders (fast) and rendered in
headless Chromium (slow, when installed)."""
from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from data.errors import UserError
from data.video_writer import H264Writer
from pipeline import layout
from pipeline.evaluation import plots, run_report
from pipeline.stages import report as report_stage
from support import tiny

HISTORY = ("epoch,depth_loss,depth_weight,detection_loss,detection_weight,learning_rate,loss,segmentation_loss,"
           "segmentation_weight,val_depth_loss,val_detection_loss,val_loss,val_segmentation_loss,val_task_loss_sum\n"
           "0,1.0,1.0,5.0,1.0,0.003,7.0,2.0,1.0,0.9,4.0,-0.5,1.8,6.7\n"
           "1,0.7,1.3,3.0,0.8,0.002,-1.5,1.2,0.9,0.6,2.9,-2.0,1.1,4.6\n")


def _png(path: pathlib.Path) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def make_run(root: pathlib.Path, clip=True, export=True):
    """A run folder as the stages leave it: history, an eval report with a plot, a clip, parity.json."""
    config = tiny(root)
    train = layout.train_dir(config)
    train.mkdir(parents=True)
    (train / "history.csv").write_text(HISTORY)
    evaluation = config.run_dir / "eval"
    evaluation.mkdir()
    _png(evaluation / "pr_curves.png")
    (evaluation / "report.md").write_text(
        "# Evaluation report — tiny\n\n- split: `validation`\n\n## Detection\n\n| mAP50 | mAP |\n|---|---|\n"
        "| 0.812 | 0.456 |\n\n![precision-recall curves](pr_curves.png) ![gone](missing.png)\n\n"
        "## Training\n\nthe eval folder's own training section\n")
    (evaluation / "metrics.json").write_text("{}")
    if clip:
        folder = layout.clips_dir(config) / "drive"
        folder.mkdir(parents=True)
        writer = H264Writer(folder / "overlay.mp4", 96, 64, 5)
        for i in range(5):
            writer.write(np.full((64, 96, 3), 40 * i, np.uint8))
        writer.release()
        (folder / "summary.json").write_text(json.dumps({
            "frames_read": 5, "overlay_resolution": {"width": 96, "height": 64}, "model_format": "keras",
            "fps_model": 150.0, "fps_end_to_end": 90.0, "codec": "h264", "detections_per_frame": 1.5}))
    if export:
        layout.export_dir(config).mkdir()
        formats = {name: {"file": file, "size_bytes": size, "metrics": {"mAP50": 0.8, "mIoU": 0.7},
                          "latency": {"median_ms": ms, "p90_ms": ms * 1.2}, "verdict": verdict}
                   for name, file, size, ms, verdict in (("keras", "model.keras", 554343, 6.1, "reference"),
                                                         ("tflite-int8", "model_int8.tflite", 144000, 1.3, "pass"))}
        (layout.export_dir(config) / "parity.json").write_text(json.dumps(
            {"examples": 8, "split": "validation", "num_threads": 2, "formats": formats, "passed": True}))
    return config


def test_report_page_is_self_contained_with_every_section(tmp_path):
    config = make_run(tmp_path)
    path = report_stage.main(config)
    assert path == config.run_dir / "report.html"
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    # training curves, the eval plot (the missing one dropped), three overlay frames
    assert len(sources) == 5 and all(s.startswith("data:image/") for s in sources), [s[:30] for s in sources]
    assert sum(s.startswith("data:image/jpeg") for s in sources) == 3
    assert "://" not in page and "<link" not in page and "<script" not in page  # nothing fetched
    assert page.count("<h2>Training</h2>") == 1 and "the eval folder's own training section" not in page
    assert "<h2>Evaluation: <code>eval/</code></h2>" in page and "<td>0.812</td>" in page
    assert "<h2>Clips</h2>" in page and "codec h264" in page
    assert "<h2>Export</h2>" in page and "model_int8.tflite" in page and "<td>140.6</td>" in page
    assert "every format within tolerance" in page


def test_report_shows_only_what_the_run_holds(tmp_path):
    config = make_run(tmp_path, clip=False, export=False)
    page = run_report.write(config).read_text()
    assert "<h2>Clips</h2>" not in page and "<h2>Export</h2>" not in page and "<h2>Training</h2>" in page
    empty = tiny(tmp_path / "other")
    empty.run_dir.mkdir(parents=True)
    assert "Nothing to report yet" in run_report.write(empty).read_text()
    with pytest.raises(UserError, match="no run folder"):
        run_report.write(tiny(tmp_path / "none"))


def test_training_curves_keep_the_weighted_total_off_the_log_panel(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    history = tmp_path / "history.csv"
    history.write_text(HISTORY)
    plots.training_curves(history, tmp_path / "curves.png")
    unweighted, weighted = figures[0].axes[:2]
    assert unweighted.get_title() == "task losses (unweighted)" and unweighted.get_yscale() == "log"
    labels = [line.get_label() for line in unweighted.get_lines()]
    assert not any(label in ("train", "val") for label in labels)  # no weighted total here
    assert all(np.nanmin(line.get_ydata()) > 0 for line in unweighted.get_lines())
    assert weighted.get_yscale() == "linear" and "weighted" in weighted.get_title()
    totals = [line.get_ydata() for line in weighted.get_lines() if line.get_label() in ("train", "val")]
    assert len(totals) == 2 and min(np.min(t) for t in totals) < 0  # the negative total is drawn


def test_training_curves_join_the_validated_epochs(tmp_path, monkeypatch):
    """With train.validate_every > 1 the val cells of other epochs are empty: the val lines join the
    validated epochs (NaN gaps would leave isolated points that a dashed line does not draw)."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    rows = HISTORY.splitlines()
    unvalidated = "2,0.5,1.4,2.5,0.8,0.001,-2.0,1.0,0.9,,,NA,,"  # NA: what Keras' CSVLogger writes
    third = "3,0.4,1.5,2.0,0.8,0.0,-2.5,0.9,0.9,0.5,2.5,-2.6,1.0,4.0"
    history = tmp_path / "history.csv"
    history.write_text("\n".join(rows + [unvalidated, third]) + "\n")
    plots.training_curves(history, tmp_path / "curves.png")
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines()}
    assert list(lines["depth val"].get_xdata()) == [1, 2, 4] and list(lines["depth val"].get_ydata()) == [0.9, 0.6, 0.5]
    assert list(lines["depth train"].get_xdata()) == [1, 2, 3, 4]
    assert list(figures[0].axes[1].get_lines()[1].get_ydata()) == [-0.5, -2.0, -2.6]  # val_loss


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_report_renders_in_headless_chromium(tmp_path):
    config = make_run(tmp_path)
    page = run_report.write(config)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1100,1600", f"--screenshot={shot}", page.resolve().as_uri()],
                   capture_output=True, timeout=120, check=False)
    import cv2  # noqa: PLC0415
    image = cv2.imread(str(shot))
    assert image is not None, "no screenshot"
    assert image.std() > 10  # text, tables and plots: not a blank page
    assert (image < 128).mean() > 0.005  # some dark pixels (text, lines, frames)
