"""A wall-clock budget for the train stage (train.minutes): the steps are planned after the first epoch.

How many steps fit in 15 minutes depends on the CPU: the default's 1,050 steps took 11.7 minutes on
an AVX-512 EPYC and 14.5-17.9 minutes on an AVX2 one. A fixed epoch count leaves the fast machine's
minutes unused and overruns on the slow one. With a budget, the first epoch measures what an epoch
costs (its steps after the first two, which trace, and its validation) and the plan is the most
steps whose epochs, validations and RESERVE_SECONDS (saving the model) fit in what is left. The plan
is in steps, not whole epochs: its last epoch stops after the steps that fit (Keras validates it and
ends the run), since whole epochs left up to an epoch and a half of the budget unused (1.6 of the 15
minutes in one `make run`, where growing the plan also waited for half an epoch to spare). The
learning-rate schedule is then laid over exactly the planned steps: decided at the end of the first
epoch, while the default's warm-up (100 steps, 70 per epoch) is still running, so the first plan
moves no learning rate. Validation keeps its rule (the first epoch, every train.validate_every-th,
the last).

The first epoch's steps are a rough guide: on the AVX-512 EPYC they promised 42-44 s an epoch in
three runs whose later epochs took 40-59 s (each also writes its backup between epochs). So after
every later epoch's last step the plan is made again from the mean time from one epoch's last step
to the next so far (validations left out, the checkpoint and backup written between epochs
counted, and spread over the epoch's steps: a short last epoch is counted a little cheap, which the
reserve covers), and when the steps that fit change, the rest of the decay is laid over the new
count from the current step on (models/optimizer.py, WarmupDecay.relay): past the warm-up the
learning rate goes on from where it is and decays faster or slower, never jumps. (Re-laying the
whole cosine instead lifted the rate from 0.9 % to 3.2 % of its peak when one run's plan grew 18 ->
19 epochs at epoch 17.) Re-planning before the epoch's validation is decided means an epoch that becomes the
last is validated, as the last epoch always is.

The plan and its schedule are saved with the run (budget.json): a run resumed from a backup (Keras restored epoch
k > 0) continues it instead of planning again, since its clock restarted (one killed between a
re-plan and that epoch's backup re-runs the epoch on the new plan's line, without a jump); a run that starts at
epoch 0 plans afresh, whatever file is there. Under tf.distribute every worker plans from the mean
of all workers' measurements, so all of them stop at the same step with one schedule.
"""
from __future__ import annotations

import json
import math
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from models.optimizer import relay_schedule, schedule_of
from pipeline import atomic

# What the stage does outside the epochs: the interpreter's start before the clock starts and, after
# the last epoch, loading the best weights, rebuilding the net at the frame size, saving model.keras
# and plotting the curves. Measured on the default (2-core AVX-512 EPYC, `python -m pipeline train`):
# 8 s before, 3 s after.
RESERVE_SECONDS = 25.0
TRACED_STEPS = 2  # the first steps of a run trace the train function: left out of the step time
PLAN_FILE = "budget.json"


def validation_epochs(epochs: int, every: int) -> list[int]:
    """The 1-based epochs fit validates on: every `every`-th, the first and the last.

    The first validation sets history.csv's columns (and shows early whether the model generalises);
    the last is where the decayed learning rate usually leaves the best weights. A validation of the
    default (200 frames) took 3.4-8.2 s on the 2-core machine (the first traces the test step), 69 s
    over 15 epochs, plus 0.6 s for each checkpoint it improved."""
    return sorted({1, epochs} | set(range(every, epochs + 1, every)))


def epochs_of(steps: int, steps_per_epoch: int) -> int:
    """The epochs `steps` steps take: the last one partial when they are not a whole number."""
    return math.ceil(steps / steps_per_epoch)


def _cost(steps: int, elapsed_s: float, step_s: float, validation_s: float, every: int, reserve_s: float,
          steps_per_epoch: int, done: int, validated: int) -> float:
    """Seconds the stage takes for `steps` steps: the time elapsed (the steps of `done` epochs and
    the validations through epoch `validated`), the steps after those epochs, the validations after
    `validated` (the last epoch, partial or not, is validated), and the reserve."""
    ahead = sum(1 for epoch in validation_epochs(epochs_of(steps, steps_per_epoch), every) if epoch > validated)
    return elapsed_s + (steps - done * steps_per_epoch) * step_s + ahead * validation_s + reserve_s


def plan_steps(budget_s: float, elapsed_s: float, epoch_s: float, validation_s: float, every: int,
               steps_per_epoch: int, reserve_s: float = RESERVE_SECONDS, done: int = 1,
               validated: int | None = None) -> int:
    """The most steps (at least those of the `done` epochs already trained) whose cost (_cost, at
    epoch_s / steps_per_epoch a step) fits the budget. `validated` (default `done`): the last epoch
    whose validation is in elapsed_s."""
    if epoch_s <= 0:
        raise ValueError(f"epoch_s must be > 0; Received: epoch_s={epoch_s}")
    validated = done if validated is None else validated
    step_s = epoch_s / steps_per_epoch

    def fits(steps):
        return _cost(steps, elapsed_s, step_s, validation_s, every, reserve_s, steps_per_epoch, done,
                     validated) <= budget_s

    # The cost grows with every step (its time; a validation moves to a new last epoch or is added),
    # so a binary search between the steps done and a count whose steps alone overrun.
    low = done * steps_per_epoch
    high = low + max(1, int((budget_s - elapsed_s) / step_s) + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


class PlannedValidation(list):
    """fit()'s validation_freq (Keras tests `epoch in validation_freq` on a list): the first epoch this
    fit() runs before the plan (epoch 1, or the one after a resumed backup: its time is the plan's
    validation time), validation_epochs(planned, every) after it."""

    def __init__(self, every: int):
        super().__init__()
        self.every = every
        self.epochs = None
        self.first = 1

    def __contains__(self, epoch) -> bool:
        if self.epochs is None:
            return epoch == self.first
        return epoch in validation_epochs(self.epochs, self.every)


class TimeBudget(keras.callbacks.Callback):
    """Plans the steps at the end of the first epoch, lays the learning-rate schedule over them, plans
    again at every later epoch's last step, and stops fit() after the last step (see the module
    docstring). Pass `validation` to fit() as its validation_freq and a large `epochs`: this callback
    ends the run. Place it before the checkpoint and backup callbacks, so a backup always has its plan."""

    def __init__(self, minutes: float, started: float, steps_per_epoch: int, validate_every: int,
                 plan_path: pathlib.Path, strategy: tf.distribute.Strategy | None = None, clock=time.perf_counter):
        super().__init__()
        self.budget_s = 60.0 * minutes
        self.started = started  # clock() when the stage began
        self.steps_per_epoch = steps_per_epoch
        self.plan_path = pathlib.Path(plan_path)
        self.strategy = strategy
        self.clock = clock
        self.validation = PlannedValidation(validate_every)
        self.plan = None
        self.resumed = False
        self._saved = None  # the plan file found at the start, used if Keras resumes from a backup
        self._begun = False  # whether this fit() has begun its first epoch
        self._step_times, self._cycles = [], []  # the first (or a retraced) epoch's steps; last-step-to-last-step times
        self._retraced = False  # whether the epoch running traces the train step again (restart_timing)
        self._last_mark = None
        self._validation_s = self._validation_since_mark = 0.0
        self._message = None
        self._mean = None

    @property
    def epochs(self) -> int | None:
        return self.plan["epochs"] if self.plan else None

    @property
    def steps(self) -> int | None:
        return self.plan["steps"] if self.plan else None

    def on_train_begin(self, logs=None):
        self._saved = json.loads(self.plan_path.read_text()) if self.plan_path.exists() else None
        if self.strategy is not None and self.strategy.num_replicas_in_sync > 1:
            strategy = self.strategy

            def replica_fn(values):
                # The identity puts the values on the replica's device: the collective needs one.
                return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN,
                                                                       tf.identity(values))

            # Built once: a new tf.function per call would retrace at every epoch.
            self._mean = tf.function(lambda values: strategy.run(replica_fn, args=(values,)),
                                     input_signature=[tf.TensorSpec([None], tf.float64)])

    def on_epoch_begin(self, epoch, logs=None):
        self._show_message()
        self._epoch = epoch
        if not self._begun:  # Keras has restored any backup by now: epoch says where it starts
            self._begun = True
            if epoch > 0 and self._saved:
                self.resumed = True
                self._apply(self._saved)
                print(f"train: continuing the plan of {self.epochs} epochs for the "
                      f"{self._saved['minutes']:g}-minute budget ({self.plan_path})")
            else:  # a fresh run, or a resumed one without a plan: plan at the end of this epoch
                self.validation.first = epoch + 1
                self.params["epochs"] = None  # the bar shows "Epoch k/?" until the plan
        if self.epochs is not None and epoch >= self.epochs:
            # A run killed after its last epoch's backup: Keras still runs one step (at learning rate
            # 0, past the cosine's end) before it looks at stop_training.
            self.model.stop_training = True

    def on_train_batch_begin(self, batch, logs=None):
        if self.plan is None or self._retraced:
            self._batch_start = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        if self.plan is None or self._retraced:
            self._step_times.append(now - self._batch_start)
        if self.plan is not None and self._epoch * self.steps_per_epoch + batch + 1 >= self.steps:
            self.model.stop_training = True  # the plan's last step, in a partial last epoch or not
        if batch != self.steps_per_epoch - 1:
            return
        if self.plan is not None and not self.resumed and self._last_mark is not None:
            cycle = now - self._last_mark - self._validation_since_mark
            if self._retraced:  # the new trace happens once: the epochs ahead will not pay it
                cycle -= self._trace_excess()
            self._cycles.append(cycle)
            self._replan(done=self._epoch + 1)
        if self.plan is not None:  # a retraced epoch is over (the first epoch's plan ends its own)
            self._retraced, self._step_times = False, []
        self._last_mark, self._validation_since_mark = now, 0.0

    def on_test_begin(self, logs=None):
        self._test_start = self.clock()

    def on_test_end(self, logs=None):
        self._validation_s = self.clock() - self._test_start
        self._validation_since_mark += self._validation_s

    def on_epoch_end(self, epoch, logs=None):
        if self.plan is None:
            self._plan_first(done=epoch + 1)
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self._show_message()  # a plan of one epoch

    def restart_timing(self) -> None:
        """The epochs from here on cost differently (train.thaw_through trains more of the encoder):
        later plans go by their times alone, and the epoch beginning, whose first steps trace the train
        step again (about 12 s on the default), is counted as if they had not (with no more than
        TRACED_STEPS steps an epoch there is nothing to compare them with: counted whole)."""
        self._cycles, self._step_times, self._retraced = [], [], True

    def _trace_excess(self) -> float:
        """Seconds the retraced epoch's first TRACED_STEPS steps took beyond as many of its other steps."""
        traced, rest = self._step_times[:TRACED_STEPS], self._step_times[TRACED_STEPS:]
        return max(0.0, sum(traced) - len(traced) * float(np.mean(rest))) if rest else 0.0

    def _plan_first(self, done: int) -> None:
        self._retraced = False  # a thaw in the first epoch: its traced steps are left out below anyway
        steps = self._step_times[TRACED_STEPS:] or self._step_times  # a 1-2 step epoch: the traced ones too
        epoch_s, validation_s, elapsed_s = self._agree(
            [float(np.mean(steps)) * self.steps_per_epoch, self._validation_s, self.clock() - self.started])
        steps = plan_steps(self.budget_s, elapsed_s, epoch_s, validation_s, self.validation.every,
                           self.steps_per_epoch, done=done)
        self._save(steps, epoch_s, validation_s, elapsed_s, done=done, validated=done)
        self._message = (f"train: the first epoch took {elapsed_s:.0f} s with start-up "
                         f"({epoch_s / self.steps_per_epoch:.2f} s per step, validation {validation_s:.1f} s): "
                         f"{self.describe()} fit the {self.budget_s / 60:g}-minute budget, ending at about "
                         f"{self.plan['planned_seconds'] / 60:.1f} min")

    def _replan(self, done: int) -> None:
        """At epoch `done`'s last step (its validation still ahead): the steps that fit at the mean
        epoch so far, when they differ from the plan's. Said when the epochs they take change."""
        if done >= self.epochs:
            return
        epoch_s, elapsed_s = self._agree([float(np.mean(self._cycles)), self.clock() - self.started])
        validation_s = self.plan["validation_seconds"]
        fits = plan_steps(self.budget_s, elapsed_s, epoch_s, validation_s, self.validation.every,
                          self.steps_per_epoch, done=done, validated=done - 1)
        if fits != self.steps:
            planned = self.epochs
            self._save(fits, epoch_s, validation_s, elapsed_s, done=done, validated=done - 1)
            if self.epochs != planned:
                self._message = (f"train: epochs take {epoch_s:.3g} s on average, the first epoch's steps "
                                 f"promised {self.plan['first_epoch_seconds']:.3g} s: {self.describe()} "
                                 f"instead of {planned} epochs fit the {self.budget_s / 60:g}-minute budget")

    def describe(self) -> str:
        """The plan in words: "11 epochs (742 steps, the last epoch 42 of them)"."""
        last = self.steps - (self.epochs - 1) * self.steps_per_epoch
        partial = f", the last epoch {last} of them" if last < self.steps_per_epoch else ""
        return f"{self.epochs} epoch{'s' if self.epochs != 1 else ''} ({self.steps:,} steps{partial})"

    def _save(self, steps: int, epoch_s: float, validation_s: float, elapsed_s: float, done: int,
              validated: int) -> None:
        planned_s = _cost(steps, elapsed_s, epoch_s / self.steps_per_epoch, validation_s, self.validation.every,
                          RESERVE_SECONDS, self.steps_per_epoch, done, validated)
        plan = {"minutes": self.budget_s / 60, "epochs": epochs_of(steps, self.steps_per_epoch), "steps": steps,
                "first_epoch_seconds": (self.plan or {}).get("first_epoch_seconds", round(epoch_s, 2)),
                "epoch_seconds": round(epoch_s, 2), "validation_seconds": round(validation_s, 2),
                "planned_after_epoch": done, "seconds_at_plan": round(elapsed_s, 2),
                "reserve_seconds": RESERVE_SECONDS, "planned_seconds": round(planned_s, 1),
                # The learning-rate schedule laid over the plan from this step on; a resumed run sets it back.
                "schedule": relay_schedule(self.model.optimizer, steps)}
        atomic.write_text(self.plan_path, json.dumps(plan, indent=1))
        self._apply(plan)

    def _show_message(self) -> None:
        # Shown when the next epoch begins: the progress bar finishes an epoch's line after on_epoch_end.
        if self._message:
            print(self._message, flush=True)
            self._message = None

    def _apply(self, plan: dict) -> None:
        self.plan = plan
        self.validation.epochs = plan["epochs"]
        self.params["epochs"] = plan["epochs"]
        if "schedule" in plan:
            schedule_of(self.model.optimizer).restore(plan["schedule"])
        else:  # a plan written before plans kept their schedule: its whole cosine over the plan's steps
            schedule_of(self.model.optimizer).lay(self.steps)

    def _agree(self, values: list[float]) -> list[float]:
        """The mean of every replica's values: under tf.distribute each worker measures its own times,
        and all must plan the same epochs and schedule."""
        if self._mean is None:
            return values
        result = self._mean(tf.constant(values, tf.float64))
        return [float(v) for v in self.strategy.experimental_local_results(result)[0].numpy()]
