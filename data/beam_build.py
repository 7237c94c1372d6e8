"""The data stage on Apache Beam (`data.beam_runner`): TFDS's distributed generation, for data sets
larger than one machine.

With a runner set, the builder's `_generate_examples` (data/builder.py) returns `LoadExamples`, a
Beam transform instead of a Python generator, and TFDS runs every split in one Beam pipeline:

    beam.Create(entries) | beam.Map(load_entry) | Partition -> good: (key, stored example) -> TFDS's writer
                                                              -> dropped: one JSON list per split

An entry is (index, (key, loader)): the loaders are the same picklable descriptions the worker
processes get (data/parallel.py: functools.partial of module-level functions), so reading or
rendering, the schema check and the PNG encoding run in the runner's workers. TFDS encodes, shuffles
by key hash and writes the shards there too: the same examples in the same order as the process
build for the same config and seed (tests/data/test_beam.py compares them feature by feature).

Bad examples keep the data stage's rules. The stage's `on_bad` lives in the launching process, so:
- an unmapped label value (always) and, with `data.bad_examples: error`, a bad example stop the
  pipeline in the worker that meets it, with a `Stop` whose text carries the example's key and line
  between markers; `prepare` finds them in whatever error the runner raises (the same exception on
  the DirectRunner, the worker's traceback text on a cluster) and ends with that one line. With
  several bad examples, the one named is the first a worker met, not necessarily the first in order.
- with `drop`, the workers write each split's dropped examples as JSON into `report_dir` (a folder
  all workers can write: beside the records); the data stage reads them back (`Generation.dropped`,
  in item order) into its `on_bad`, which prints, counts and lists them as the process build does.
"""
from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import re
from typing import Callable, Iterator, NamedTuple

from data import parallel, schema
from data.classes import ClassSet
from data.errors import UserError


class _Without(logging.Filter):
    """Leaves out the log records whose message holds `text`."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# Importing Beam warns on the root logger that its Google Cloud clients are missing (they are not
# needed here); that line is left out of the data stage's output.
_missing_gcp = _Without("apitools not found")
logging.getLogger().addFilter(_missing_gcp)
try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
finally:
    logging.getLogger().removeFilter(_missing_gcp)

Entry = tuple[int, parallel.Item]
STOP = re.compile(r"<<data-stop>>(.*?)<</data-stop>>")


class Stop(Exception):
    """Raised in a Beam worker: [key, line, unmapped] as JSON between markers any runner's error keeps."""

    @classmethod
    def of(cls, key: str, line: str, unmapped: bool) -> "Stop":
        return cls(f"<<data-stop>>{json.dumps([key, line, unmapped])}<</data-stop>>")


def load_entry(entry: Entry, classes: ClassSet, stop_on_bad: bool) -> tuple:
    """In a worker: ("ok", key, stored example) or ("bad", index, key, line); raises Stop when the build
    must end (an unmapped label value, or a bad example with stop_on_bad)."""
    index, item = entry
    try:
        key, example = parallel.load(item, classes)
    except UserError as err:  # an unmapped label value: not the frame's fault, never dropped
        raise Stop.of(item[0], str(err), True) from None
    if not isinstance(example, schema.BadExample):
        return "ok", key, example
    if stop_on_bad:
        raise Stop.of(key, str(example), False)
    return "bad", index, key, str(example)


def _kind(result: tuple, partitions: int) -> int:
    return 0 if result[0] == "ok" else 1


def _keyed(result: tuple) -> tuple[str, dict]:
    return result[1], result[2]


def _write_dropped(bad: list, path: str) -> None:
    pathlib.Path(path).write_text(json.dumps(sorted(row[1:] for row in bad)))


class LoadExamples(beam.PTransform):
    """One split's (key, stored example) PCollection for TFDS's writer; its dropped examples go to `report`."""

    def __init__(self, entries: list[Entry], classes: ClassSet, stop_on_bad: bool, report: pathlib.Path):
        super().__init__()
        self.entries, self.classes, self.stop_on_bad, self.report = entries, classes, stop_on_bad, report

    def expand(self, pbegin):
        loaded = (pbegin
                  | "Items" >> beam.Create(self.entries)
                  | "Load" >> beam.Map(load_entry, classes=self.classes, stop_on_bad=self.stop_on_bad))
        good, bad = loaded | "OkOrBad" >> beam.Partition(_kind, 2)
        _ = (bad
             | "ListDropped" >> beam.combiners.ToList()
             | "WriteDropped" >> beam.Map(_write_dropped, path=str(self.report)))
        return good | "Keyed" >> beam.Map(_keyed)


class Generation(NamedTuple):
    """What the builder needs to hand its splits to Beam (data/builder.py, `beam=`)."""
    classes: ClassSet
    stop_on_bad: bool
    report_dir: pathlib.Path

    def report(self, split: str) -> pathlib.Path:
        return pathlib.Path(self.report_dir) / f"{split}.dropped.json"

    def examples(self, split: str, items: list[parallel.Item]) -> LoadExamples:
        return LoadExamples(list(enumerate(items)), self.classes, self.stop_on_bad, self.report(split))

    def dropped(self, splits) -> Iterator[tuple[str, schema.BadExample]]:
        """(key, BadExample) of every split, in the order of the splits and of their items."""
        for split in splits:
            for _, key, line in json.loads(self.report(split).read_text()):
                yield key, schema.BadExample(line)


@contextlib.contextmanager
def _stops_unlogged():
    """Beam logs a worker's exception with its traceback before raising it; a Stop is a user's error
    that ends as one line, so its log record is left out (other errors keep theirs)."""
    loggers = [logging.getLogger(name) for name in ("apache_beam.runners.common",
                                                    "apache_beam.runners.worker.bundle_processor")]
    hide = _Without("<<data-stop>>")
    for logger in loggers:
        logger.addFilter(hide)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hide)


def prepare(builder, runner: str, options: list[str], on_bad: Callable[[str, Exception], None]) -> None:
    """builder.download_and_prepare() on `runner` (e.g. "DirectRunner") with Beam flags `options`; a
    Stop from a worker ends as that example's line (on_bad's for a bad example). The dropped examples
    are then in generation.dropped(splits)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415
    config = tfds.download.DownloadConfig(beam_runner=runner, beam_options=PipelineOptions(list(options)))
    stop = None
    try:
        with _stops_unlogged():
            builder.download_and_prepare(download_config=config)
    except Exception as err:
        stop = STOP.search(str(err))
        if stop is None:
            raise
    if stop is not None:
        key, line, unmapped = json.loads(stop.group(1))
        if not unmapped:
            on_bad(key, schema.BadExample(line))  # the data stage's line for a bad example
        raise UserError(line)
