"""The fit loop's progress bar, narrowed to 80 columns: the total loss and each task's loss.

Keras' own bar prints every log entry (about 18 with the uncertainty weighting: losses, log
variances, weights, and their val_ twins), a 650-character line. This one shows only `loss` and
`<task>_loss` under short names; history.csv and TensorBoard still receive every metric, because
the other callbacks get the full logs (only the bar's view is narrowed). At the end of an epoch a
second line gives the same for validation.
"""
from __future__ import annotations

import sys
import time

import keras

from pipeline.console import COLUMNS

SHORT = {"loss": "loss", "detection_loss": "det", "segmentation_loss": "seg", "depth_loss": "depth"}
BAR_WIDTH = 12


def _number(value) -> str:
    return f"{float(value):.4g}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if seconds >= 60:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds}s"


def shown(logs: dict, prefix: str = "") -> str:
    """'loss 8.049 det 5.257 seg 1.235 depth 0.8921' from the logs (val_ ones with prefix='val_')."""
    parts = [f"{short} {_number(logs[prefix + key])}" for key, short in SHORT.items() if prefix + key in logs]
    return "  ".join(parts)


def fit_line(text: str) -> str:
    return text if len(text) <= COLUMNS else text[:COLUMNS - 1] + "…"


class CompactBar:
    """What ProgbarLogger drives (update(current, values, finalize)): one line rewritten in place on a
    terminal, only the final line per epoch when the output is a file or a pipe."""

    def __init__(self, target, verbose: int = 1, stream=None):
        self.target, self.verbose = target, verbose
        self.stream = stream or sys.stdout
        self.dynamic = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.time()
        self.last_update = 0.0
        self.previous_width = 0

    def line(self, current: int, logs: dict, finalize: bool) -> str:
        elapsed = time.time() - self.start
        if self.target:
            digits = len(str(self.target))
            done = int(BAR_WIDTH * min(current, self.target) / self.target)
            head = f"{current:>{digits}}/{self.target} " + "━" * done + "─" * (BAR_WIDTH - done)
        else:
            head = f"{current} steps"
        if finalize or not self.target or current == 0:
            per_step = elapsed / max(current, 1)
            clock = f"{_duration(elapsed)} " + (f"{per_step:.1f}s/step" if per_step >= 1 else
                                                f"{1000 * per_step:.0f}ms/step")
        else:
            clock = f"ETA {_duration(elapsed / current * (self.target - current))}"
        values = shown(logs)
        return fit_line(f"{head} {clock}" + (f" - {values}" if values else ""))

    def update(self, current, values=None, finalize=None):
        if self.verbose == 0:
            return
        logs = dict(values or [])
        if finalize is None:
            finalize = self.target is not None and current >= self.target
        now = time.time()
        if not finalize and (not self.dynamic or self.verbose != 1 or now - self.last_update < 0.1):
            return
        self.last_update = now
        text = self.line(current, logs, finalize)
        if self.dynamic:
            self.stream.write("\r" + text.ljust(self.previous_width))
            self.previous_width = len(text)
        else:
            self.stream.write(text)
        if finalize:
            self.stream.write("\n")
            validation = shown(logs, "val_")
            if validation:
                self.stream.write(fit_line(f"  validation: {validation}") + "\n")
        self.stream.flush()


class CompactProgbarLogger(keras.callbacks.ProgbarLogger):
    """Keras' ProgbarLogger with CompactBar: fit() uses it instead of its own when it is in callbacks.

    The epoch count is read at each epoch from the callbacks' shared params, where a time budget
    (pipeline/training/budget.py) writes None until it has planned the epochs ("Epoch 1/?")."""

    def set_params(self, params):
        super().set_params(params)
        self.params = params  # Keras' own keeps only a copy of the count; the budget changes it later

    def on_epoch_begin(self, epoch, logs=None):
        self._reset_progbar()
        self._maybe_init_progbar()
        epochs = self.params.get("epochs")
        if self.verbose and epochs != 1:
            print(f"Epoch {epoch + 1}/{epochs or '?'}", flush=True)

    def _maybe_init_progbar(self):
        if self.progbar is None:
            self.progbar = CompactBar(self.target, self.verbose)

    def _finalize_progbar(self, logs):
        # A time budget's last epoch may stop before its steps_per_epoch: the bar ends at the steps
        # it ran (Keras' would show the target, as if the epoch had run them all).
        if self.target is not None and 0 < self.seen < self.target:
            self.progbar.update(self.seen, list((logs or {}).items()), finalize=True)
        else:
            super()._finalize_progbar(logs)
