"""Building the data set: render or read every configured source into TFDS records under the run folder
(the data stage's work), and render the labelled synthetic clip.

A source is rebuilt only when its parameters changed (recorded in `params.json` beside it). Bad
examples stop the build with a line naming the example (`data.bad_examples: error`, the default) or
are dropped, counted and listed in `dropped.json` (`data.bad_examples: drop`). With
`data.beam_runner` set, TFDS generates the records on Apache Beam (data/beam_build.py): the same
records, bad examples and messages.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
from typing import Callable

from data import builder as storage
from data import classes as class_sets
from data import parallel, readers, synthetic, synthetic_clip
from data.mapping import relabelled
from data.errors import UserError
from pipeline import atomic, classes, layout
from pipeline.config import Config, SourceConfig, save_config


def source_params(config: Config, source: SourceConfig) -> dict:
    if source.name == "synthetic":
        params = {"source": "synthetic", "seed": config.seed, **vars(config.data.synthetic)}
    else:
        params = {"source": source.name, "path": str(pathlib.Path(source.path).resolve())}
    # Other class names or tables label the frames differently: a rebuild. The default ones add
    # nothing, so data sets built before classes were configurable are not rebuilt. (Colours only draw.)
    names = classes.of_config(config)
    if source.label_map or not names.same_names(class_sets.DEFAULT):
        params["labels"] = {"detection": list(names.detection), "segmentation": list(names.segmentation),
                            "label_map": source.label_map}
    return params


def source_items(config: Config, source: SourceConfig) -> dict:
    """split -> iterable of (key, loader) for the builder."""
    labels = classes.source_labels(config, source)
    if source.name == "synthetic":
        cfg = config.data.synthetic
        # The test split is for headline numbers only: nothing (checkpoints, defaults) is chosen on it.
        counts = {"train": cfg.train_frames, "validation": cfg.validation_frames, "test": cfg.test_frames}
        counts = {split: count for split, count in counts.items() if count > 0}
        # Rendered in the default classes; other classes go through the synthetic label tables.
        def loaders(split, count):
            frames = synthetic.frame_loaders(split, count, cfg.height, cfg.width, config.seed)
            if labels.is_identity():
                return frames
            return [(key, functools.partial(relabelled, load, labels, key)) for key, load in frames]
        return {split: loaders(split, count)
                for split, count in counts.items()}
    reader = readers.get(source.name)
    root = pathlib.Path(source.path)
    if not root.exists():
        raise UserError(f"{source.name}: data folder not found: {root}")
    reader.check_layout(root)
    keys = reader.list_items(root)
    if not keys:
        raise UserError(f"{source.name}: no frames found under {root}")
    return {split: [(key, functools.partial(reader.load_item, root, key, labels)) for key in split_keys]
            for split, split_keys in storage.split_items(keys).items()}


def up_to_date(config: Config, source: SourceConfig) -> dict | None:
    """The source's report (and a line saying so) when its records are built with the config's
    parameters, else None."""
    target = storage.stored_dir(source.name, config.data_dir)
    params_file = target / "params.json"
    if params_file.exists() and json.loads(params_file.read_text()) == source_params(config, source):
        if storage.builder_for(source.name, config.data_dir).is_prepared():
            print(f"data: {source.name} already built at {target}")
            return json.loads((target / "report.json").read_text())
    return None


def new_loader(config: Config) -> parallel.Loader:
    """The data stage's worker pool: data.workers processes (0 = one per usable core)."""
    return parallel.Loader(config.data.workers or parallel.usable_cores(), classes.of_config(config))


def build_source(config: Config, source: SourceConfig) -> dict:
    """The source's report, its records built first unless they are up to date."""
    report = up_to_date(config, source)
    if report is not None:
        return report
    with new_loader(config) as loader:
        return _build(config, source, loader)


def _build(config: Config, source: SourceConfig, loader: parallel.Loader, items: dict | None = None) -> dict:
    """Builds the source's records with the loader's workers; items: source_items() when the caller has
    them already (build_all has started the first ones)."""
    target = storage.stored_dir(source.name, config.data_dir)
    params = source_params(config, source)
    dropped = []

    def on_bad(key, err):
        if config.data.bad_examples == "error":
            raise UserError(f"bad example {err} (set data.bad_examples=drop to count and skip such examples)")
        print(f"data: dropped {key}: {err}")
        dropped.append({"key": key, "reason": str(err)})

    # Built under a staging data folder beside the source's and swapped in only when finished: a
    # failing or killed rebuild (changed parameters) leaves the last finished data set as it was.
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    atomic.recover(target)
    atomic.remove_stale(target.parent, f".{target.name}.partial-")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if config.data.beam_runner:
            builder = build_with_beam(config, source, staging, on_bad)
        else:
            builder = storage.builder_for(source.name, staging, items=items or source_items(config, source),
                                          on_bad=on_bad, loader=loader)
            builder.download_and_prepare()
        built = storage.stored_dir(source.name, staging)
        splits = {name: info.num_examples for name, info in builder.info.splits.items()}
        report = {"source": source.name, "examples": splits, "dropped": len(dropped),
                  "bytes": sum(f.stat().st_size for f in built.rglob("*") if f.is_file())}
        (built / "dropped.json").write_text(json.dumps(dropped, indent=1))
        (built / "report.json").write_text(json.dumps(report, indent=1))
        (built / "params.json").write_text(json.dumps(params, indent=1))
        atomic.replace_dir(built, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"data: {source.name}: {splits}, {len(dropped)} dropped, "
          f"{report['bytes'] / 1e6:.1f} MB at {target}")
    return report


def build_with_beam(config: Config, source: SourceConfig, staging: pathlib.Path, on_bad) -> storage.DashcamScenes:
    """The source's records generated by TFDS on Apache Beam (data/beam_build.py): the loaders run in
    the runner's workers; a bad example or unmapped label ends the build with the same line, dropped
    ones come back to on_bad."""
    from data import beam_build  # noqa: PLC0415  (Apache Beam loads only when asked for)
    generation = beam_build.Generation(classes.of_config(config), config.data.bad_examples == "error",
                                       staging / "beam-dropped")
    generation.report_dir.mkdir(parents=True)
    items = source_items(config, source)
    builder = storage.builder_for(source.name, staging, items=items, beam=generation)
    print(f"data: {source.name} on Apache Beam's {config.data.beam_runner}", flush=True)
    beam_build.prepare(builder, config.data.beam_runner, config.data.beam_options, on_bad)
    for key, err in generation.dropped(items):
        on_bad(key, err)
    return builder


def synthetic_clip_job(config: Config) -> Callable[[], pathlib.Path]:
    """Rendering the labelled synthetic clip, as a picklable call (a data worker may run it)."""
    cfg = config.data.synthetic
    source = next(s for s in config.data.sources if s.name == "synthetic")
    return functools.partial(synthetic_clip.render_clip, layout.clips_data_dir(config), layout.CLIP_NAME,
                             seed=config.seed + 1000, frames=cfg.clip_frames, height=cfg.height,
                             width=cfg.width, fps=cfg.clip_fps, mapping=classes.source_labels(config, source))


def build_all(config: Config, meanwhile: Callable[[], None] = lambda: None) -> list[dict]:
    """The data stage's work: the run's config, every source's records and the synthetic clip.
    With worker processes the clip renders beside the records, and `meanwhile` runs once the workers
    have the first frames to render (the data stage imports TensorFlow then: 3 s of one core)."""
    save_config(config, layout.config_file(config))
    reports = [up_to_date(config, source) for source in config.data.sources]
    todo = [source for source, report in zip(config.data.sources, reports) if report is None]
    with new_loader(config) as loader:
        wait_for_clip = None
        if any(source.name == "synthetic" for source in config.data.sources):
            video = layout.synthetic_clip(config)
            wait_for_clip = (lambda: video) if video.exists() else loader.in_background(synthetic_clip_job(config))
        first_items = source_items(config, todo[0]) if todo and not config.data.beam_runner else None
        if first_items:
            loader.start(next(iter(first_items.values())))  # the workers render while TensorFlow imports
        meanwhile()
        reports = [_build(config, source, loader, first_items if source is todo[0] else None)
                   if report is None else report for source, report in zip(config.data.sources, reports)]
        if wait_for_clip is not None:
            print(f"data: synthetic clip at {wait_for_clip()}")
    return reports
