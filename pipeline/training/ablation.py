"""The learning-efficiency study: which choices buy the most quality per CPU-minute?

Every variant (a list of config overrides, read from a YAML file: configs are data) trains for the
same wall-clock budget: its step time is measured first on its own input pipeline (a few steps
after the trace, as CPU time / cores, see measure_step_seconds), its step count is budget / step
time, and its learning-rate schedule (warm-up share included) is laid over exactly those steps.
The budget covers the optimisation steps; tracing and the per-epoch validation come on top. Each model is then scored on the validation
split (never the test split: this study chooses defaults). Writes, under runs/<experiment>/ablation/:
  <variant>/            the variant's train folder (model.keras, history.csv, ...)
  ablation.json         per variant: overrides, step time, steps, budget, metrics, Delta vs reference
  ablation.md           the table, best first within each group
  learning_curves.png   validation task-loss sum against training minutes, every variant
A variant already trained with the same config and budget is skipped, so an interrupted study resumes.
"""
from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil
import time

import keras
import numpy as np
import yaml

from data.errors import UserError
from models import multitask
from pipeline import layout, trained
from pipeline.timing import machine
from pipeline.config import Config, from_dict, load_config, to_dict
from pipeline.evaluation.evaluate import evaluate_model, one_pass
from pipeline.inputs import dataset as inputs
from pipeline.training import devices
from pipeline.training.fit import run_training

CURVE_POINTS = 6  # epochs per variant: the learning curve's points
PROBE_STEPS = 6  # timed steps per step-time measurement, after 2 untimed ones (trace, warm-up)
# Headline metric per task and whether higher is better.
HEADLINE = {"detection": ("mAP50", True), "segmentation": ("mIoU", True), "depth": ("abs_rel", False)}


def read_variants(path: pathlib.Path) -> dict[str, list[str]]:
    """{name: [key=value, ...]} from a YAML mapping of variant name -> overrides (list or mapping)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"ablation variants file not found: {path}")
    loaded = yaml.safe_load(path.read_text()) or {}
    variants = loaded.get("variants") if isinstance(loaded, dict) else None
    if not isinstance(variants, dict) or not variants:
        raise UserError(f"{path}: needs a 'variants:' mapping of name -> overrides")
    out = {}
    for name, overrides in variants.items():
        if isinstance(overrides, dict):
            overrides = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
        if overrides is None:
            overrides = []
        if not isinstance(overrides, list) or not all(isinstance(item, str) and "=" in item for item in overrides):
            raise UserError(f"{path}: variant '{name}' must list key=value overrides")
        out[str(name)] = overrides
    return out


def measure_step_seconds(config: Config) -> tuple[float, float]:
    """(step cost in seconds, median wall seconds) of one training step of `config` (its own data,
    model and optimizer).

    The cost is the process's CPU time per step (every thread: TensorFlow's and the input
    pipeline's) divided by the core count: what the step takes on a quiet machine whose cores it
    keeps busy, and unlike wall time it does not grow when other work shares the machine, so
    variants measured at different moments get the same budget.
    """
    keras.mixed_precision.set_global_policy(devices.resolve_precision(config.train.precision))
    net = multitask.build_model(config.model, inputs.output_size(config, crop=True))
    trainer = multitask.MultiTaskTrainer(net, config.model, config.train)
    trainer.compile(optimizer=multitask.make_optimizer(config.train, 1000),
                    jit_compile=devices.resolve_jit(config.train.jit_compile))
    cpu, wall = [], []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = (time.process_time(), time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            if batch >= 2:  # the first steps trace and warm up
                cpu.append(time.process_time() - self.start[0])
                wall.append(time.perf_counter() - self.start[1])

    dataset = inputs.make_dataset(config, "train", training=True)
    trainer.fit(dataset, epochs=1, steps_per_epoch=PROBE_STEPS + 2, callbacks=[Timer()], verbose=0)
    keras.backend.clear_session()
    return float(np.median(cpu)) / (os.cpu_count() or 1), float(np.median(wall))


def budgeted(config_path, overrides: list[str], config: Config, step_seconds: float,
             budget_seconds: float) -> Config:
    """The variant's config with its step count set by the budget: CURVE_POINTS epochs, each
    validated (the learning curve's points), the warm-up's share of the schedule kept."""
    base_total = config.train.epochs * config.train.steps_per_epoch
    steps = max(CURVE_POINTS, int(budget_seconds / step_seconds))
    per_epoch = max(1, steps // CURVE_POINTS)
    warmup = int(round(config.train.warmup_steps * per_epoch * CURVE_POINTS / base_total))
    return load_config(config_path, [*overrides, f"train.epochs={CURVE_POINTS}",
                                     f"train.steps_per_epoch={per_epoch}", f"train.warmup_steps={warmup}",
                                     "train.validate_every=1", "train.minutes=null"])


def headline(metrics: dict) -> dict:
    """{task: headline value or None} of an evaluation's metrics."""
    out = {}
    for task, (metric, _) in HEADLINE.items():
        result = metrics.get(task) or {}
        out[task] = None if result.get("absent") else result.get(metric)
    return out


def relative_to(values: dict, reference: dict) -> dict:
    """Signed % change of each headline against the reference, positive = better."""
    out = {}
    for task, (_, higher) in HEADLINE.items():
        value, base = values.get(task), reference.get(task)
        if value is None or not base:
            out[task] = None
            continue
        change = (value - base) / abs(base) * 100.0
        out[task] = change if higher else -change
    return out


def _curve(history_csv: pathlib.Path, budget_minutes: float) -> tuple[list, list]:
    rows = list(csv.DictReader(history_csv.open())) if history_csv.exists() else []
    values = [float(row["val_task_loss_sum"]) for row in rows if row.get("val_task_loss_sum")]
    minutes = [budget_minutes * (i + 1) / len(values) for i in range(len(values))]
    return minutes, values


def plot_curves(results: dict, study_dir: pathlib.Path, budget_minutes: float, out_png: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for name in results:
        minutes, values = _curve(study_dir / name / "history.csv", budget_minutes)
        if values:
            ax.plot(minutes, values, marker="o", markersize=3, label=name)
    ax.set(title="validation task-loss sum (unweighted) at the same training budget",
           xlabel="training minutes", ylabel="sum of task losses", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def write_table(results: dict, reference: str, budget_minutes: float, machine: str, path: pathlib.Path) -> None:
    lines = [f"# Learning-efficiency study: {budget_minutes:g} training minutes per variant",
             "", f"Machine: {machine}. Validation split; Delta = % change against `{reference}` "
             "(positive = better; AbsRel's sign flipped).", "",
             "| variant | overrides | step s (CPU / cores) | steps | mAP50 | mIoU | AbsRel | Delta det / seg / depth | mean Delta |",
             "|---|---|---|---|---|---|---|---|---|"]

    def fmt(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    order = sorted(results, key=lambda name: -(results[name].get("mean_delta") or -1e9))
    for name in order:
        r = results[name]
        h, d = r["headline"], r["delta"]
        deltas = " / ".join("-" if d[t] is None else f"{d[t]:+.1f}" for t in HEADLINE)
        lines.append(f"| {name} | {' '.join(r['overrides']) or '(the config)'} | {r['step_seconds']:.2f} | "
                     f"{r['steps']} | {fmt(h['detection'])} | {fmt(h['segmentation'])} | {fmt(h['depth'])} | "
                     f"{deltas} | {fmt(r.get('mean_delta'), 1)} |")
    path.write_text("\n".join(lines) + "\n")


def machine_line() -> str:
    info = machine()
    return (f"{info['cpu']} ({info['cores']} cores; {' '.join(info['cpu_flags'])}; "
            f"oneDNN {'on' if info['onednn'] else 'off'}), load average at the end {info['load_average'][0]}")


def run_study(config_path, base_overrides: list[str], variants: dict[str, list[str]],
              budget_seconds: float, verbose: int = 0) -> dict:
    """Trains and scores every variant (see module doc); returns the results dict."""
    config = load_config(config_path, base_overrides)
    study_dir = layout.ablation_dir(config)
    study_dir.mkdir(parents=True, exist_ok=True)
    results_path = study_dir / "ablation.json"
    previous = json.loads(results_path.read_text())["variants"] if results_path.exists() else {}
    results = {}
    reference = next(iter(variants))
    for name, own in variants.items():
        overrides = [*base_overrides, *own]
        variant = load_config(config_path, overrides)
        key = json.loads(json.dumps({"budget_seconds": budget_seconds, "config": to_dict(variant)}))
        folder = study_dir / name
        done = previous.get(name)
        if done and _same_key(done.get("key"), key) and (folder / "model.keras").exists():
            print(f"ablate: {name}: already trained with this config and budget, skipped")
            results[name] = done
            continue
        shutil.rmtree(folder, ignore_errors=True)  # a stale or unfinished variant starts afresh
        print(f"ablate: {name}: measuring the step time ({' '.join(own) or 'the config'})", flush=True)
        step_seconds, step_wall = measure_step_seconds(variant)
        budgeted_config = budgeted(config_path, overrides, variant, step_seconds, budget_seconds)
        total = budgeted_config.train.epochs * budgeted_config.train.steps_per_epoch
        print(f"ablate: {name}: {step_seconds:.3f} s/step (CPU time / cores; wall {step_wall:.3f} s) -> "
              f"{total} steps in {budget_seconds / 60:g} min", flush=True)
        start = time.perf_counter()
        model_path = run_training(budgeted_config, folder, verbose=verbose)
        wall = time.perf_counter() - start
        metrics = evaluate_model(one_pass(budgeted_config), trained.load(model_path), "validation")
        keras.backend.clear_session()
        results[name] = {"key": key, "overrides": own, "step_seconds": step_seconds,
                         "step_wall_seconds": step_wall, "steps": total,
                         "train_wall_seconds": wall, "headline": headline(metrics)}
        _finish(results, reference)
        _write(results, reference, budget_seconds, study_dir)
        print(f"ablate: {name}: {results[name]['headline']} (trained in {wall / 60:.1f} min)", flush=True)
    _finish(results, reference)
    _write(results, reference, budget_seconds, study_dir)
    return results


def _same_key(saved, key: dict) -> bool:
    """Whether a finished variant's key is this one. Its config is read back as a config, so a key added
    to the config since it trained takes its default (the default keeps what it trained) instead of
    making the study delete and retrain every variant."""
    if not isinstance(saved, dict) or saved.get("budget_seconds") != key["budget_seconds"]:
        return False
    try:
        config = to_dict(from_dict(saved.get("config")))
    except (UserError, TypeError, AttributeError):
        return False
    return json.loads(json.dumps(config)) == key["config"]


def _finish(results: dict, reference: str) -> None:
    base = results.get(reference, {}).get("headline", {})
    for result in results.values():
        result["delta"] = relative_to(result["headline"], base)
        deltas = [v for v in result["delta"].values() if v is not None]
        result["mean_delta"] = float(np.mean(deltas)) if deltas else None


def _write(results: dict, reference: str, budget_seconds: float, study_dir: pathlib.Path) -> None:
    machine = machine_line()
    (study_dir / "ablation.json").write_text(json.dumps(
        {"reference": reference, "budget_seconds": budget_seconds, "machine": machine,
         "split": "validation", "variants": results}, indent=1))
    write_table(results, reference, budget_seconds / 60, machine, study_dir / "ablation.md")
    plot_curves(results, study_dir, budget_seconds / 60, study_dir / "learning_curves.png")
