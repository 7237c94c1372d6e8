"""train.minutes: the steps planned after the first epoch (the last epoch partial), the schedule laid
over them, the plan kept for a resume, and the studies that must not follow a wall clock."""
from __future__ import annotations

import csv
import json
import types

import pytest

from data.errors import UserError
from models.optimizer import make_optimizer, schedule_of
from pipeline.config import load_config
from pipeline.training import ablation, baselines, budget
from pipeline.training import fit as train_stage
from support import REPO, tiny


def test_plan_fits_steps_validations_and_the_reserve_in_the_budget():
    # 900 s: 60 s spent through epoch 1; each further epoch 50 s (10 steps of 5 s), each further
    # validation 4 s (epochs 5, 10, 15 and the last), 25 s reserve. 16 epochs: 60 + 15*50 + 4*4 + 25 =
    # 851; a 17th of 9 steps (validated instead of the 16th): 896; of 10 steps: 901 > 900.
    assert budget.plan_steps(900, 60, 50, 4, every=5, steps_per_epoch=10, reserve_s=25) == 169
    # The validations count: at 30 s each, 16 epochs need 60 + 750 + 4*30 + 25 = 955; 15 need 875, and
    # a 16th epoch's validation (30 s) leaves no time for its steps.
    assert budget.plan_steps(900, 60, 50, 30, every=5, steps_per_epoch=10, reserve_s=25) == 150
    # Validating every epoch (10 s): 14 epochs, 60 + 13*60 + 25 = 865; a 15th: 875 + 5 s a step.
    assert budget.plan_steps(900, 60, 50, 10, every=1, steps_per_epoch=10, reserve_s=25) == 145
    # A first epoch that already used the budget is the only one.
    assert budget.plan_steps(60, 80, 50, 4, every=5, steps_per_epoch=10) == 10
    # A re-plan after 10 epochs, 500 s spent, 30 s validations: with epoch 10's validation done, 16
    # epochs (500 + 6*50 + 2*30 + 25 = 885) and 3 steps of a 17th; with it still ahead, 15 epochs
    # (500 + 5*50 + 2*30 + 25 = 835) and 7 steps of a 16th (865 + 35: its validation, not 15's, is the last).
    assert budget.plan_steps(900, 500, 50, 30, every=5, steps_per_epoch=10, reserve_s=25, done=10) == 163
    assert budget.plan_steps(900, 500, 50, 30, every=5, steps_per_epoch=10, reserve_s=25, done=10,
                             validated=9) == 157
    # Never fewer steps than those done.
    assert budget.plan_steps(900, 950, 50, 4, every=5, steps_per_epoch=10, done=10) == 100
    # Tiny steps (a GPU, a small net): 38,044 epochs of 10 ms steps and 13 ms validations fit in 875 s
    # (874.989 s), with no room for a step of another; found quickly.
    assert budget.plan_steps(900, 0, 0.01, 0.013, every=1, steps_per_epoch=10, reserve_s=25) == 380_440
    with pytest.raises(ValueError, match="epoch_s"):
        budget.plan_steps(900, 60, 0, 4, every=5, steps_per_epoch=10)


def test_planned_validation_is_the_first_epoch_then_every_nth_and_the_last():
    validation = budget.PlannedValidation(every=5)
    assert isinstance(validation, list)  # what Keras' fit() accepts as validation_freq
    assert [epoch for epoch in range(1, 20) if epoch in validation] == [1]
    validation.epochs = 12
    assert [epoch for epoch in range(1, 20) if epoch in validation] == [1, 5, 10, 12]


def budget_callback(tmp_path, budget_s=1000.0, total_steps=6):
    """A TimeBudget on a fake clock, its model only the optimizer it re-plans (10 steps an epoch)."""
    train = load_config(REPO / "configs" / "tiny.yaml").train
    optimizer = make_optimizer(train, total_steps=total_steps)
    clock = FakeClock()
    callback = budget.TimeBudget(budget_s / 60, started=0.0, steps_per_epoch=10, validate_every=5,
                                 plan_path=tmp_path / budget.PLAN_FILE, clock=clock)
    callback.set_model(types.SimpleNamespace(optimizer=optimizer, stop_training=False))
    callback.set_params({"epochs": 1_000_000})
    return callback, clock, optimizer, train.warmup_steps


def test_a_resumed_run_continues_its_saved_plan_and_a_fresh_one_plans_anew(tmp_path, capsys):
    plan_path = tmp_path / budget.PLAN_FILE
    plan_path.write_text(json.dumps({"minutes": 2.0, "epochs": 7, "steps": 70}))
    callback, _, optimizer, warmup = budget_callback(tmp_path)
    callback.on_train_begin()
    optimizer.iterations.assign(50)  # past the warm-up and the provisional schedule's 6 steps
    callback.on_epoch_begin(5)  # Keras restored the backup after epoch 5
    assert callback.resumed and callback.epochs == 7 and callback.params["epochs"] == 7
    assert "continuing the plan of 7 epochs for the 2-minute budget" in capsys.readouterr().out
    assert 7 in callback.validation and 5 in callback.validation and 6 not in callback.validation
    # A plan from before plans kept their schedule: its whole cosine over the plan's 70 steps, as then.
    assert schedule_of(optimizer).state() == {"warmup_steps": warmup, "anchor_step": warmup, "anchor_phase": 0.0,
                                              "end_step": 70}
    assert float(schedule_of(optimizer)(50)) > 0.0
    callback.on_epoch_end(5)
    assert not callback.model.stop_training
    callback.on_epoch_begin(6)
    callback.on_epoch_end(6)  # the 7th epoch
    assert callback.model.stop_training

    # A plan with its schedule (re-laid at step 40 a third of the way down) sets it back as it was.
    kept = {"warmup_steps": 2.0, "anchor_step": 40.0, "anchor_phase": 0.3, "end_step": 70.0}
    plan_path.write_text(json.dumps({"minutes": 2.0, "epochs": 7, "steps": 70, "schedule": kept}))
    again, _, optimizer, _ = budget_callback(tmp_path)
    again.on_train_begin()
    again.on_epoch_begin(5)
    assert schedule_of(optimizer).state() == pytest.approx(kept)

    # Keras starts at epoch 0 (no backup, or one set aside): the file is stale, a new plan comes.
    fresh, _, _, _ = budget_callback(tmp_path)
    fresh.on_train_begin()
    fresh.on_epoch_begin(0)
    assert not fresh.resumed and fresh.epochs is None and fresh.params["epochs"] is None
    # A backup without a plan (trained before train.minutes was set): the first epoch this run trains
    # is timed, validated (its validation time goes into the plan) and planned from.
    (tmp_path / budget.PLAN_FILE).rename(tmp_path / "kept.json")
    unplanned, _, _, _ = budget_callback(tmp_path)
    unplanned.on_train_begin()
    unplanned.on_epoch_begin(5)
    assert not unplanned.resumed and unplanned.epochs is None
    assert 6 in unplanned.validation and 1 not in unplanned.validation
    (tmp_path / "kept.json").rename(tmp_path / budget.PLAN_FILE)
    # A run killed after its last epoch's backup resumes past the plan: it stops at once.
    finished, _, _, _ = budget_callback(tmp_path)
    finished.on_train_begin()
    finished.on_epoch_begin(7)
    assert finished.model.stop_training


def end_step(optimizer):
    return schedule_of(optimizer).state()["end_step"]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_epoch(callback, clock, epoch, step_s, steps=10, validation_s=5.0, traced_s=None):
    """Drives the callback's hooks through one epoch as fit() does (validating when the epoch is in
    the validation list after its last step, or the step that stopped training); the clock advances by
    each step's and validation's seconds. Returns whether the epoch validated."""
    callback.on_epoch_begin(epoch)
    for step in range(steps):
        callback.on_train_batch_begin(step)
        clock.now += traced_s if traced_s is not None and step < budget.TRACED_STEPS else step_s
        callback.on_train_batch_end(step)
        if callback.model.stop_training:
            break
    validated = epoch + 1 in callback.validation
    if validated:
        callback.on_test_begin()
        clock.now += validation_s
        callback.on_test_end()
    callback.on_epoch_end(epoch)
    return validated


def test_the_plan_and_the_schedule_follow_the_mean_epoch_after_every_epoch(tmp_path, capsys):
    callback, clock, optimizer, warmup = budget_callback(tmp_path)
    callback.on_train_begin()
    # Epoch 1: two 20 s steps that trace (left out), eight of 4 s (40 s an epoch), validation 5 s, at
    # 77 s: 22 epochs end at 77 + 21*40 + 5*5 + 25 = 967 s, and 8 steps of a 23rd at 999 s.
    assert run_epoch(callback, clock, 0, step_s=4.0, traced_s=20.0)
    assert (callback.steps, callback.epochs, callback.params["epochs"]) == (228, 23, 23)
    saved = json.loads((tmp_path / budget.PLAN_FILE).read_text())
    assert saved["planned_seconds"] == 999.0 and saved["epoch_seconds"] == 40 and saved["steps"] == 228
    assert end_step(optimizer) == 228
    callback.on_epoch_begin(1)
    assert "23 epochs (228 steps, the last epoch 8 of them) fit the 16.6667-minute budget" in capsys.readouterr().out
    # Epoch 2 takes 30 s (107 s spent, epoch 1's validation left out): 29 epochs end at
    # 107 + 27*30 + 6*5 + 25 = 972 s, 9 steps of a 30th at 999 s.
    run_epoch(callback, clock, 1, step_s=3.0)
    assert (callback.steps, callback.epochs, callback.params["epochs"]) == (299, 30, 30)
    assert end_step(optimizer) == 299
    # Epoch 3 takes 60 s: mean 45 s over epochs 2-3, 167 s spent; validations left on 5, 10, 15 and
    # 20: 20 epochs end at 167 + 17*45 + 4*5 + 25 = 977 s; a 21st adds its validation to the 20th's
    # (5 s), so 4 steps of it end at 999 s.
    run_epoch(callback, clock, 2, step_s=6.0)
    assert (callback.steps, callback.epochs, callback.validation.epochs) == (204, 21, 21)
    assert end_step(optimizer) == 204
    saved = json.loads((tmp_path / budget.PLAN_FILE).read_text())
    assert saved["epochs"] == 21 and saved["planned_after_epoch"] == 3 and saved["first_epoch_seconds"] == 40
    callback.on_epoch_begin(3)
    assert "21 epochs (204 steps, the last epoch 4 of them) instead of 30 epochs" in capsys.readouterr().out
    # Time between epochs (the checkpoint, the backup) counts: 10 s after epoch 3, 45 s of steps,
    # 222 s spent. Cycles 30, 60, 55: mean 48.33 s; 19 epochs end at 222 + 15*48.33 + 4*5 + 25 =
    # 992 s, one step of a 20th at 996.8 s.
    clock.now += 10.0
    run_epoch(callback, clock, 3, step_s=4.5)
    saved = json.loads((tmp_path / budget.PLAN_FILE).read_text())
    assert saved["steps"] == 191 and saved["epoch_seconds"] == pytest.approx(48.33, abs=0.01)
    assert run_epoch(callback, clock, 4, step_s=4.5)  # epoch 5 validates (every 5th)
    assert callback.epochs == 20 and not callback.model.stop_training
    # Epoch 6 crawls (70 s steps): the budget is spent, it becomes the last and is validated as such.
    assert run_epoch(callback, clock, 5, step_s=70.0)
    assert (callback.steps, callback.epochs) == (60, 6) and callback.model.stop_training


def test_a_partial_last_epoch_stops_after_its_planned_steps(tmp_path):
    callback, clock, optimizer, _ = budget_callback(tmp_path)
    callback.on_train_begin()
    run_epoch(callback, clock, 0, step_s=4.0, traced_s=20.0)  # 228 steps: 23 epochs, the last 8 steps
    for epoch in range(1, 22):
        run_epoch(callback, clock, epoch, step_s=4.0)  # 40 s each, as planned: the plan stays
        assert callback.steps == 228 and not callback.model.stop_training
    steps = []
    callback.on_epoch_begin(22)
    for step in range(10):
        callback.on_train_batch_begin(step)
        clock.now += 4.0
        callback.on_train_batch_end(step)
        steps.append(step)
        if callback.model.stop_training:  # fit() leaves the epoch here, validates it, and ends
            break
    assert steps == list(range(8)) and 23 in callback.validation
    # With its validation (5 s) the steps and validations end where the plan said: 999 s less the reserve.
    assert clock.now + 5.0 == pytest.approx(999.0 - budget.RESERVE_SECONDS)


def test_a_replan_at_a_validation_epoch_counts_that_epochs_validation(tmp_path):
    callback, clock, _, _ = budget_callback(tmp_path)
    callback.on_train_begin()
    for epoch, step_s in enumerate([4.0, 3.0, 6.0]):  # as above: 204 steps planned after epoch 3
        run_epoch(callback, clock, epoch, step_s=step_s, traced_s=20.0 if epoch == 0 else None)
    clock.now += 10.0
    run_epoch(callback, clock, 3, step_s=4.5)  # 191 planned
    # Epoch 5's last step, its validation still ahead: 284 s spent, mean 51.75 s. 17 epochs end at
    # 284 + 12*51.75 + 4*5 + 25 = 950 s, and 9 steps of an 18th at 996.6 s; with epoch 5's validation
    # taken as done, 10 steps (18 whole epochs) would fit.
    run_epoch(callback, clock, 4, step_s=6.2)
    assert (callback.steps, callback.epochs) == (179, 18)


def test_a_plan_follows_the_mean_by_steps_and_says_so_when_its_epochs_change(tmp_path, capsys):
    callback, clock, _, _ = budget_callback(tmp_path)
    callback.on_train_begin()
    run_epoch(callback, clock, 0, step_s=4.0, traced_s=20.0)  # 228 steps, 23 epochs, as above
    capsys.readouterr()
    # Epoch 2 takes 39.5 s (116.5 s spent): 231 steps end at 116.5 + 211*3.95 + 5*5 + 25 = 999.95 s,
    # a 24th epoch of one step.
    run_epoch(callback, clock, 1, step_s=3.95)
    callback.on_epoch_begin(2)
    assert callback.steps == 231
    assert "24 epochs (231 steps, the last epoch 1 of them) instead of 23 epochs" in capsys.readouterr().out
    # Epoch 3 takes 40.5 s (mean 40 s, 157 s spent): 22 epochs end at 157 + 19*40 + 5*5 + 25 = 967 s,
    # 8 steps of a 23rd at 999 s.
    run_epoch(callback, clock, 2, step_s=4.05)
    callback.on_epoch_begin(3)
    assert callback.steps == 228 and "23 epochs (228 steps" in capsys.readouterr().out
    # Epoch 4 takes 39 s (mean 39.67 s, 196 s spent): two more steps, 23 whole epochs, are planned
    # (196 + 190*3.967 + 5*5 + 25 = 999.7 s) without a word.
    run_epoch(callback, clock, 3, step_s=3.9)
    callback.on_epoch_begin(4)
    assert callback.steps == 230 and callback.epochs == 23 and capsys.readouterr().out == ""
    assert json.loads((tmp_path / budget.PLAN_FILE).read_text())["planned_after_epoch"] == 4


def test_a_late_growth_goes_on_from_the_learning_rate_it_has(tmp_path):
    callback, clock, optimizer, _ = budget_callback(tmp_path)
    callback.on_train_begin()
    run_epoch(callback, clock, 0, step_s=4.0, traced_s=20.0)  # 22 epochs planned, as above
    # At 300 s with 10 s epochs, after epoch 18 of 22, dozens more fit: the plan grows, and the
    # rate at step 180 stays what it was (re-laying the whole cosine over the new count would lift it).
    schedule = schedule_of(optimizer)
    optimizer.iterations.assign(180)
    before = float(schedule(180))
    callback._cycles, clock.now = [10.0] * 17, 300.0
    callback._replan(done=18)
    assert callback.epochs > 23 and end_step(optimizer) == callback.steps
    assert float(schedule(180)) == pytest.approx(before, rel=1e-5) and 0 < before < schedule.peak
    saved = json.loads((tmp_path / budget.PLAN_FILE).read_text())
    assert saved["schedule"] == schedule.state() and saved["schedule"]["anchor_step"] == 180


def test_after_a_thaw_the_plan_goes_by_the_thawed_epochs_without_their_one_new_trace(tmp_path):
    callback, clock, _, _ = budget_callback(tmp_path)
    callback.on_train_begin()
    run_epoch(callback, clock, 0, step_s=4.0, traced_s=20.0)  # 228 steps planned, as above
    run_epoch(callback, clock, 1, step_s=4.0)  # 40 s: 228 still fit
    assert callback.steps == 228
    # The thaw: epochs of 60 s from here on, the first of them tracing again (two 20 s steps): 205 s
    # spent at its last step. Counted as 60 s, not the 88 s it took, and without the 40 s epochs
    # before the thaw, 15 epochs end at 205 + 12*60 + 3*5 + 25 = 965 s (validations on 5, 10, 15),
    # and 5 steps of a 16th at 1000 s. At 88 s, 11 epochs and 5 steps would.
    callback.restart_timing()
    run_epoch(callback, clock, 2, step_s=6.0, traced_s=20.0)
    assert callback._cycles == [pytest.approx(60.0)] and callback.steps == 155
    # Only that epoch is corrected: the next one's slow first steps count in full.
    run_epoch(callback, clock, 3, step_s=6.0, traced_s=20.0)
    assert callback._cycles == [pytest.approx(60.0), pytest.approx(88.0)]


def test_a_thaw_in_the_first_epoch_leaves_the_later_epochs_uncorrected(tmp_path):
    callback, clock, _, _ = budget_callback(tmp_path)
    callback.on_train_begin()
    callback.restart_timing()  # a thaw before any step: the first epoch's plan leaves its traces out anyway
    run_epoch(callback, clock, 0, step_s=4.0, traced_s=20.0)
    assert callback.steps == 228
    run_epoch(callback, clock, 1, step_s=4.0, traced_s=20.0)  # slow first steps, not a trace: counted
    assert callback._cycles == [pytest.approx(72.0)]


def test_training_under_a_budget_follows_the_plan_made_after_the_first_epoch(tiny_config, tmp_path, monkeypatch,
                                                                            capsys):
    seen = {}

    def plan(budget_s, elapsed_s, epoch_s, validation_s, every, steps_per_epoch, reserve_s=budget.RESERVE_SECONDS,
             done=1, validated=None):
        if done == 1:  # the plan: 11 steps; at epoch 2's last step the re-plan cuts it to 8
            seen.update(budget_s=budget_s, elapsed_s=elapsed_s, epoch_s=epoch_s, validation_s=validation_s,
                        every=every, steps_per_epoch=steps_per_epoch)
        return 8 if done == 2 else 11

    monkeypatch.setattr(budget, "plan_steps", plan)
    # train.epochs=2 only sizes the schedule until the plan: 6 steps (3 an epoch), so without re-laying
    # it over the plan's 11 the learning rate would be 0 from step 6 on; the cut to 8 steps at step 6
    # ends the schedule there, 2 steps into the third epoch.
    config = tiny(tiny_config.run_root, "train.minutes=1.5", "train.epochs=2", "train.validate_every=5")
    out = tmp_path / "train"
    train_stage.run_training(config, out=out, verbose=1)

    assert seen["budget_s"] == 90 and seen["every"] == 5 and seen["steps_per_epoch"] == 3
    assert seen["epoch_s"] > 0 and seen["validation_s"] > 0 and seen["elapsed_s"] >= seen["validation_s"]
    with open(out / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    # The third epoch stopped after 2 of its 3 steps, at the schedule's end, and was validated as the last.
    assert [int(row["step"]) for row in rows] == [3, 6, 8]
    assert [int(row["epoch"]) for row in rows if row["val_task_loss_sum"]] == [0, 2]
    rates = [float(row["learning_rate"]) for row in rows]
    assert rates[1] > 1e-4 and rates[2] == pytest.approx(0.0, abs=1e-7)
    plan_saved = json.loads((out / budget.PLAN_FILE).read_text())
    assert plan_saved["epochs"] == 3 and plan_saved["steps"] == 8 and plan_saved["minutes"] == 1.5
    assert plan_saved["schedule"]["end_step"] == 8 and plan_saved["schedule"]["anchor_step"] == 6
    speed = json.loads((out / "speed.json").read_text())
    assert (speed["epochs"], speed["steps"]) == (3, 8) and len(speed["per_epoch"]) == 3
    printed = capsys.readouterr().out
    assert "Epoch 1/?" in printed and "Epoch 2/4" in printed and "Epoch 3/3\n2/3 " in printed  # the bar: 2 steps
    assert "4 epochs (11 steps, the last epoch 2 of them) fit the 1.5-minute budget" in printed
    assert "3 epochs (8 steps, the last epoch 2 of them) instead of 4 epochs" in printed
    assert "train: 3 epochs (8 steps, the last epoch 2 of them) in" in printed


def test_a_budget_spent_by_the_first_epoch_ends_the_run_after_it(tiny_config, tmp_path, capsys):
    # No stub: the real plan. 0.01 minutes (0.6 s) is gone before the first epoch ends (it traces).
    config = tiny(tiny_config.run_root, "train.minutes=0.01", "train.epochs=2")
    out = tmp_path / "train"
    train_stage.run_training(config, out=out, verbose=0)
    with open(out / "history.csv", newline="") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [0]
    assert json.loads((out / budget.PLAN_FILE).read_text())["epochs"] == 1
    assert (out / "model.keras").is_file()
    assert "1 epoch (3 steps) fit the 0.01-minute budget" in capsys.readouterr().out


def test_the_studies_train_a_fixed_epoch_count_whatever_the_budget(tiny_config):
    config = tiny(tiny_config.run_root, "train.minutes=15")
    assert config.train.minutes == 15
    assert all(variant.train.minutes is None for variant in baselines.variants(config).values())
    budgeted = ablation.budgeted(REPO / "configs" / "tiny.yaml", ["train.minutes=15"], config,
                                 step_seconds=0.5, budget_seconds=30)
    assert budgeted.train.minutes is None


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_budget_must_be_positive(value):
    with pytest.raises(UserError, match="train.minutes must be > 0"):
        load_config(REPO / "configs" / "tiny.yaml", [f"train.minutes={value}"])
