"""A quiet console: what a stage prints is its own progress, not the libraries' start-up chatter.

Without `--verbose` the command line (pipeline/__main__.py) calls `quiet()` before TensorFlow is
imported and imports the stage under `native_stderr_silenced()`:
- TF_CPP_MIN_LOG_LEVEL=3 hides TensorFlow's C++ warnings and errors logged once it runs (the E0000
  "failed call to cuInit" of a CPU-only machine among them);
- the lines TensorFlow's shared libraries log while they load ("All log messages before
  absl::InitializeLog()", the oneDNN note, "Could not find cuda drivers") are written by absl before
  its log level is set, so no environment variable reaches them: native stderr is closed while
  TensorFlow and the stage's modules import (`import_stage`; some libraries, TFDS among them, import
  TensorFlow only when first used, so it is imported there too, or by the stage through
  `import_tensorflow`; a Python exception still reaches the user: it is raised, not logged);
- Keras' "`shuffle=True` was passed, but will be ignored" (fit is given tf.data, shuffled already)
  is filtered by its text, and TensorFlow's Python logger keeps errors only (the bench's FLOPs count
  used to print two deprecation notes from TensorFlow's own profiler, and a retracing note);
- tqdm bars (TFDS, evaluate, clip) are kept to 80 columns (TQDM_NCOLS, unless the user set it).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import warnings

COLUMNS = 80  # every progress line fits a classic terminal
SHUFFLE_WARNING = r"`shuffle=True` was passed, but will be ignored"


def quiet() -> None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("TQDM_NCOLS", str(COLUMNS))
    warnings.filterwarnings("ignore", message=SHUFFLE_WARNING)
    # TensorFlow's Python-side warnings (deprecations inside its own FLOPs profiler, tf.function
    # retracing notes) go to this logger; TensorFlow leaves a level set before it loads as it is.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True):
    """Silences native stderr (file descriptor 2: C/C++ logs such as FFmpeg's, OpenCV's or absl's) for
    a moment; Python's sys.stderr is flushed first. Use it only while no other thread prints."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_stage(module: str, verbose: bool):
    """The stage's module; without verbose, TensorFlow is imported too, with native stderr closed,
    unless the stage imports it itself (IMPORTS_TENSORFLOW_ITSELF: the data stage, whose workers start
    first)."""
    with native_stderr_silenced(not verbose):
        stage = importlib.import_module(module)
    if not verbose and not getattr(stage, "IMPORTS_TENSORFLOW_ITSELF", False):
        import_tensorflow(verbose)
    return stage


def import_tensorflow(verbose: bool) -> None:
    """For a stage that imports TensorFlow itself: with native stderr closed unless verbose (nothing
    to do when it is loaded already, as under the run stage)."""
    if "tensorflow" in sys.modules:
        return
    with native_stderr_silenced(not verbose):
        importlib.import_module("tensorflow")
