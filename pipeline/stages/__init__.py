"""One thin module per stage: read the config, call the library, print. Stages never import each other;
the command line (pipeline/__main__.py) and the run stage find them in this table.
"""

# stage name -> (module, help). Modules are imported only when their stage runs (TensorFlow is slow
# to import, and `--help` should not need it).
STAGES = {
    "data": ("pipeline.stages.data", "render / read the sources into TFDS records under the run folder"),
    "preview": ("pipeline.stages.preview", "PNG grid of augmented training examples with their labels"),
    "bench-input": ("pipeline.stages.bench_input", "examples per second the input pipeline delivers"),
    "train": ("pipeline.stages.train", "train the multi-task model"),
    "evaluate": ("pipeline.stages.evaluate", "metrics.json, report.md and plots on the validation split"),
    "baselines": ("pipeline.stages.baselines", "single-task baselines and weighting strategies, same budget"),
    "ablate": ("pipeline.stages.ablate", "learning-efficiency study: variants at the same training budget"),
    "export": ("pipeline.stages.export", "SavedModel + TFLite float32/float16/int8 with parity checks"),
    "predict": ("pipeline.stages.predict", "annotate images with any exported model"),
    "clip": ("pipeline.stages.clip", "annotated video, per-frame results and stability on dashcam clips"),
    "report": ("pipeline.stages.report", "report.html: one self-contained page of the run (training, evaluation, clips, export)"),
    "bench": ("pipeline.stages.bench", "measure speed against alternatives and the machine's limits"),
    "run": ("pipeline.stages.run", "every stage in order on one config"),
}

# What `make run` / the run stage does, in order: (stage, the options its parser would have set).
RUN_ORDER = (
    ("data", {}),
    ("preview", {}),
    ("train", {"out": None}),
    ("evaluate", {"model": None, "split": None}),
    ("export", {}),
    ("clip", {"model": None, "input": None, "out": None}),
    ("report", {}),
)
