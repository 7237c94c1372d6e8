"""runs/<experiment>/report.html: one self-contained page per run, rebuilt from whatever the run
folder holds (the evaluate stage writes it, and `python -m pipeline report` rebuilds it).

Sections, each present only when its files are: training (curves and final losses from
train/history.csv), every eval*/ folder's report.md (its tables and plots; its own training section is
left out, the page has one), overlay frames of each clip under clips/, and the export's parity and
sizes from export/parity.json. Images are inlined as base64 data URIs and the style is in the page:
it opens from a mail attachment or an artefact store with no file beside it and no network.
"""
from __future__ import annotations

import base64
import html
import json
import pathlib
import re
import tempfile
import time

import cv2
import markdown
import numpy as np

from data.errors import UserError
from pipeline import atomic, layout
from pipeline.config import Config
from pipeline.evaluation import plots, report

OVERLAY_FRAMES = 3  # frames shown per clip, spread over its length
OVERLAY_WIDTH = 480  # px: frames wider than this are scaled down (the page stays light)
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #ccc; } h2 { border-bottom: 1px solid #ddd; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; } img { max-width: 100%; margin: 0.4em 0; } code { background: #f4f4f4; }
.frames img { margin-right: 0.5em; }
"""


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def inline_images(markdown_text: str, folder: pathlib.Path) -> str:
    """![alt](name.png) of files in folder become data URIs; a link to a missing file is dropped."""
    def replace(match):
        alt, name = match.groups()
        if name.startswith("data:"):
            return match.group(0)
        path = folder / name
        if not path.is_file():
            return ""
        mime = "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"
        return f"![{alt}]({data_uri(path.read_bytes(), mime)})"
    return IMAGE.sub(replace, markdown_text)


def demote(markdown_text: str, levels: int = 1) -> str:
    """Headings one level down (an eval report's '#' title becomes a section of this page)."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", markdown_text, flags=re.M)


def without_section(markdown_text: str, title: str) -> str:
    parts = re.split(r"(?m)^(?=## )", markdown_text)
    return "".join(part for part in parts if not part.startswith(f"## {title}"))


# ------------------------------------------------------------------------------------------ sections
def training_markdown(config: Config) -> str:
    history = layout.train_dir(config) / "history.csv"
    if not history.is_file():
        return ""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        plots.training_curves(history, scratch / "training_curves.png")
        return inline_images(report.training_section(scratch, history), scratch)


def eval_markdown(config: Config) -> list[str]:
    parts = []
    for folder in sorted(config.run_dir.glob("eval*")):
        text_file = folder / "report.md"
        if not (folder.is_dir() and text_file.is_file()):
            continue
        text = demote(without_section(text_file.read_text(), "Training"))
        text = re.sub(r"(?m)^## .*$", f"## Evaluation: `{folder.name}/`", text, count=1)
        parts.append(inline_images(text, folder))
    return parts


def overlay_frames(video: pathlib.Path, count: int = OVERLAY_FRAMES) -> list[bytes]:
    """JPEGs of `count` frames spread over the video (decoded in order: no seeking, any codec)."""
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        return []
    picks = sorted(set(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)))
    jpegs = []
    for index in picks:
        frame = frames[index]
        if frame.shape[1] > OVERLAY_WIDTH:
            scale = OVERLAY_WIDTH / frame.shape[1]
            frame = cv2.resize(frame, (OVERLAY_WIDTH, round(frame.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            jpegs.append(encoded.tobytes())
    return jpegs


def clips_markdown(config: Config) -> str:
    folders = sorted(p for p in layout.clips_dir(config).glob("*/") if (p / "summary.json").is_file()) \
        if layout.clips_dir(config).is_dir() else []
    if not folders:
        return ""
    parts = ["## Clips"]
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        size = summary.get("overlay_resolution") or {}
        parts.append(f"### {folder.name}\n\n{summary.get('frames_read', '?')} frames "
                     f"{size.get('width', '?')}x{size.get('height', '?')}, model {summary.get('model_format', '?')}: "
                     f"{report.fmt(summary.get('fps_model'), 1)} fps model, "
                     f"{report.fmt(summary.get('fps_end_to_end'), 1)} fps end to end; codec "
                     f"{summary.get('codec', '?')}; {report.fmt(summary.get('detections_per_frame'), 2)} "
                     f"detections per frame.")
        video = folder / "overlay.mp4"
        frames = overlay_frames(video) if video.is_file() else []
        if frames:
            images = " ".join(f"![overlay frame]({data_uri(jpeg, 'image/jpeg')})" for jpeg in frames)
            parts.append(f'<div class="frames" markdown="1">\n\n{images}\n\n</div>')
    return "\n\n".join(parts)


def export_markdown(config: Config) -> str:
    parity_file = layout.export_dir(config) / "parity.json"
    if not parity_file.is_file():
        return ""
    parity = json.loads(parity_file.read_text())
    formats = parity.get("formats") or {}
    names = sorted({m for result in formats.values() for m in (result.get("metrics") or {})})
    rows = []
    for name, result in formats.items():
        latency = result.get("latency") or {}
        metrics = result.get("metrics") or {}
        rows.append([name, f"`{result.get('file', '')}`", report.fmt((result.get("size_bytes") or 0) / 1024, 1),
                     report.fmt(latency.get("median_ms"), 2), report.fmt(latency.get("p90_ms"), 2),
                     *[report.fmt(metrics.get(m)) for m in names], result.get("verdict", "?")])
    header = ["format", "file", "size KB", "ms p50", "ms p90", *[report.LABELS.get(m, m) for m in names], "verdict"]
    verdict = "every format within tolerance" if parity.get("passed") else "**a format drifted beyond tolerance**"
    return (f"## Export\n\nParity against the Keras model on {parity.get('examples', '?')} "
            f"{parity.get('split', '')} frames ({verdict}); latency: batch 1, "
            f"{parity.get('num_threads', '?')} threads.\n\n" + report.table(header, rows))


# ---------------------------------------------------------------------------------------------- page
def render(config: Config) -> str:
    """The page's HTML from what the run folder holds."""
    sections = [training_markdown(config), *eval_markdown(config), clips_markdown(config), export_markdown(config)]
    sections = [s for s in sections if s]
    if not sections:
        sections = ["_Nothing to report yet: run the train and evaluate stages first._"]
    title = f"Run report — {config.experiment}"
    intro = (f"# {title}\n\nRun folder `{config.run_dir}`, written {time.strftime('%Y-%m-%d %H:%M')} from the "
             f"files it holds (`python -m pipeline report --config ...` rebuilds this page).")
    body = markdown.markdown("\n\n".join([intro, *sections]), extensions=["tables", "md_in_html"])
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write(config: Config) -> pathlib.Path:
    if not config.run_dir.is_dir():
        raise UserError(f"no run folder {config.run_dir}: run the data, train and evaluate stages first")
    path = layout.report_html(config)
    atomic.write_text(path, render(config))
    return path
