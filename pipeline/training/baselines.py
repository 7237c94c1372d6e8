"""Baselines (the baselines stage's work): is one multi-task model better than one model per task, and
which weighting and which sharing mode win?

Trains, with the encoder, data and step budget of the configured run, once per seed of baselines.seeds:
  single-<task>          one single-task model per configured task (weighting is moot with one task: fixed)
  multi-<w>              the multi-task model under every weighting (fixed = equal weights, uncertainty, dwa,
                         gradnorm, famo, pcgrad) with the configured sharing mode
  multi-<w>-<sharing>    the configured weighting (fixed where it needs a shared layer and the mode has
                         none) under each other sharing mode (hard, soft, cross_stitch; cross_stitch only
                         with an encoder built level by level, whose levels it stitches: left_out()
                         says so otherwise)
(baselines.variants names a subset; the single-task models and the configured multi-task model are always in it)
each into runs/<experiment>/baselines/<name>/seed-<seed>/ with pipeline.training.fit.run_training. The
configured variant at the configured seed reuses the train stage's model (runs/<experiment>/train/model.keras)
when that run's config matches (a train stage under train.minutes never does: every model here trains
train.epochs, the same steps for all). A variant already trained with the same config is skipped, so an
interrupted stage resumes (a variant stopped mid-training resumes from its last epoch through
run_training's own backup).

Every model is evaluated with pipeline.evaluation.evaluate.evaluate_model on evaluate.split of the first
source, one pass per frame (evaluate.one_pass: the flip and upscale tests off, as its latency is
measured); the comparison is Delta_m over pipeline.evaluation.metrics.STANDARD_METRICS, per seed (each
seed's multi-task model against the same seed's single-task models), reported as mean and std over seeds.
Parameters, latency and FLOPs are measured once per variant, on the net its config builds (they depend
on neither the seed nor the weights). Writes
baselines/summary.json, baselines/baselines.md and baselines/delta_m.png, then rewrites the eval
report(s) so report.md carries the comparison. `quick=True` (`make baselines ARGS=--quick`): a tiny
budget and one seed into baselines-quick/, a smoke test of the whole study in minutes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil

import keras
import numpy as np
import yaml

from data.errors import UserError
from data.vocabulary import SHARING_MODES, WEIGHTINGS
from models.encoder import not_levelled
from models.multitask import as_built, build_model
from pipeline import atomic, layout, timing
from pipeline.config import Config, load_config, to_dict
from pipeline.evaluation import evaluate, plots, report
from pipeline.evaluation.metrics import (STANDARD_METRICS, delta_m, is_absent, negative_transfer, relative_differences,
                                         task_gains)
from pipeline.training.fit import run_training

# Parts of the config that change what a model learns; two runs with equal parts are the same run.
TRAINING_KEYS = ("seed", "data", "model", "train")
# Train keys that change what a run logs, not what it learns (the gradient-conflict log only reads gradients).
LOGGING_ONLY = ("conflict_every",)
# Headline metrics kept per task in the summary (the full results are in each variant's metrics.json).
KEPT = {"detection": ("mAP", "mAP50", "mAP75", "AR100"), "segmentation": ("mIoU", "pixel_accuracy"),
        "depth": ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1")}
# Weightings that measure gradients on a layer every task shares: not with soft sharing.
NEEDS_SHARED_LAYER = ("gradnorm",)
# --quick: the budget of a smoke run of the whole study.
QUICK = {"epochs": 1, "steps_per_epoch": 2, "validation_steps": 1, "max_examples": 8}


def variants(config: Config) -> dict[str, Config]:
    """name -> config of every model to compare; same budget, data and encoder throughout.

    The budget is train.epochs for every model: train.minutes (the train stage's wall-clock budget)
    is dropped, or each model would train as many steps as its own step time allows."""
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, minutes=None))
    tasks = list(config.model.tasks)
    if len(tasks) < 2:
        raise UserError(f"baselines compare a multi-task model with single-task ones, but model.tasks is "
                        f"{tasks}: use a config with two or more tasks")
    out = {}
    for task in tasks:
        out[f"single-{task}"] = dataclasses.replace(
            config, model=dataclasses.replace(config.model, tasks=[task]),
            train=dataclasses.replace(config.train, weighting="fixed", fixed_weights={task: 1.0}))
    def multi(weighting, sharing):
        train = dataclasses.replace(config.train, weighting=weighting)
        if weighting == "fixed":  # the plain baseline: equal weights, whatever the config says
            train = dataclasses.replace(train, fixed_weights={task: 1.0 for task in tasks})
        return dataclasses.replace(config, train=train, model=dataclasses.replace(config.model, sharing=sharing))

    sharing = config.model.sharing
    for weighting in WEIGHTINGS:
        if not (sharing == "soft" and weighting in NEEDS_SHARED_LAYER):
            out[f"multi-{weighting}"] = multi(weighting, sharing)
    for other in SHARING_MODES:
        if other != sharing:
            weighting = config.train.weighting
            if other == "soft" and weighting in NEEDS_SHARED_LAYER:
                weighting = "fixed"
            out[f"multi-{weighting}-{other}"] = multi(weighting, other)
    return {name: variant for name, variant in out.items() if name not in left_out(config)}


def left_out(config: Config) -> dict[str, str]:
    """Variants the study cannot build for this config -> why (variants() leaves them out)."""
    problem = not_levelled(config.model, "model.sharing=cross_stitch")
    if config.model.sharing != "cross_stitch" and problem:
        return {f"multi-{config.train.weighting}-cross_stitch": problem}
    return {}


def chosen_variants(config: Config) -> dict[str, Config]:
    """variants() cut to baselines.variants (empty: all), always with what the comparison needs: every
    single-task model and the configured multi-task model."""
    found = variants(config)
    wanted = list(config.baselines.variants)
    if not wanted:
        return found
    for name, reason in left_out(config).items():
        if name in wanted:
            raise UserError(f"baselines.variants: {name} cannot be built: {reason}")
    unknown = [name for name in wanted if name not in found]
    if unknown:
        raise UserError(f"baselines.variants: no variant {', '.join(unknown)}; this config has "
                        f"{', '.join(found)}")
    needed = {name for name in found if name.startswith("single-")} | {f"multi-{config.train.weighting}"}
    return {name: variant for name, variant in found.items() if name in needed or name in wanted}


def seeded(config: Config, seed: int) -> Config:
    return dataclasses.replace(config, seed=int(seed))


def quick_config(config: Config) -> Config:
    """The --quick study: QUICK's budget, the configured seed only."""
    train = dataclasses.replace(config.train, epochs=QUICK["epochs"], steps_per_epoch=QUICK["steps_per_epoch"],
                                validation_steps=QUICK["validation_steps"], warmup_steps=0)
    examples = min(QUICK["max_examples"], config.evaluate.max_examples or QUICK["max_examples"])
    return dataclasses.replace(config, train=train,
                               evaluate=dataclasses.replace(config.evaluate, max_examples=examples),
                               baselines=dataclasses.replace(config.baselines, seeds=[config.seed]))


def _training_part(config_dict: dict) -> dict:
    part = {key: config_dict.get(key) for key in TRAINING_KEYS}
    if isinstance(part["train"], dict):
        part["train"] = {k: v for k, v in part["train"].items() if k not in LOGGING_ONLY}
    if isinstance(part["model"], dict):
        part["model"] = as_built(part["model"])  # keys the built net ignores make no other training
    return part


def same_training(config: Config, folder: pathlib.Path) -> bool:
    """True when folder holds a finished model trained with this config's training part."""
    saved = folder / "config.yaml"
    if not (folder / layout.MODEL_FILE).is_file() or not saved.is_file():
        return False
    try:
        if not isinstance(yaml.safe_load(saved.read_text()), dict):  # empty or not a config
            return False
        # Loaded as a config, the saved run gets today's defaults for keys added since (e.g.
        # model.classes), which are the defaults that keep what that run trained.
        previous = to_dict(load_config(saved))
    except (UserError, OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return _training_part(_plain(previous)) == _training_part(_plain(to_dict(config)))


def _plain(config_dict: dict) -> dict:
    """Round-trip through YAML so tuples and lists compare equal."""
    return yaml.safe_load(yaml.safe_dump(config_dict))


def train_variant(name: str, variant: Config, config: Config, verbose: int,
                  folder: pathlib.Path | None = None) -> tuple[pathlib.Path, bool]:
    """(model path, reused the train stage's model?), training only when no matching model exists.
    folder: where the variant is trained (default baselines/<name>/seed-<seed>/)."""
    main_run = layout.train_dir(config)
    if name == f"multi-{config.train.weighting}" and same_training(variant, main_run):
        print(f"baselines: {name}: reusing the train stage's model {layout.trained_model(config)}")
        return layout.trained_model(config), True
    folder = folder or layout.baselines_dir(config) / name / f"seed-{variant.seed}"
    model_path = folder / layout.MODEL_FILE
    if same_training(variant, folder):
        print(f"baselines: {name}: already trained, skipped ({model_path})")
        return model_path, False
    if model_path.exists():  # trained with another config: stale, train again
        print(f"baselines: {name}: config changed since it was trained; training again")
        shutil.rmtree(folder)
    print(f"baselines: {name}: training ({', '.join(variant.model.tasks)}; weighting={variant.train.weighting})")
    return run_training(variant, folder, verbose=verbose), False


def headline_metrics(metrics: dict, tasks) -> dict:
    """{task: {metric: value}} of the kept metrics, or the absent record."""
    out = {}
    for task in tasks:
        result = metrics.get(task)
        if is_absent(result):
            out[task] = {"absent": True, "reason": (result or {}).get("reason", "not measured")}
        else:
            out[task] = {metric: result.get(metric) for metric in KEPT[task]}
            out[task]["examples"] = result.get("examples")
    return out


def compare(multi: dict, single: dict, lower_is_better: dict = STANDARD_METRICS) -> dict:
    """Relative differences, per-task gains, Delta_m and negative transfer of multi vs single.

    A metric is left out (and listed in "skipped") when either value is missing or the single-task value
    is 0: the relative difference is then undefined (e.g. a barely trained detector with AP 0)."""
    usable, skipped = {}, []
    for task, metrics in lower_is_better.items():
        if is_absent(multi.get(task)) or is_absent(single.get(task)):
            continue
        for metric, lower in metrics.items():
            m, s = multi[task].get(metric), single[task].get(metric)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (m, s)):
                skipped.append(f"{task} {metric} (not measured)")
            elif s == 0:
                skipped.append(f"{task} {metric} (single-task value is 0)")
            else:
                usable.setdefault(task, {})[metric] = lower
    if not usable:
        return {"relative_differences": {}, "task_gains": {}, "delta_m": None, "negative_transfer": [],
                "skipped": skipped}
    return {"relative_differences": relative_differences(multi, single, usable),
            "task_gains": task_gains(multi, single, usable),
            "delta_m": delta_m(multi, single, usable),
            "negative_transfer": negative_transfer(multi, single, usable),
            "skipped": skipped}


def _evaluate(name, path, variant, split, source, cost=True):
    """(metrics, inference cost incl. FLOPs or None when cost=False)."""
    model = evaluate.load_trained_model(path)
    evaluate.check_model(model, variant, path)
    print(f"baselines: {name}: evaluating on {source}/{split}")
    metrics = evaluate.evaluate_model(evaluate.one_pass(variant), model, split, sources=[source])
    inference = None
    if cost:
        # Of the net the variant's config builds today: cost depends on neither seed nor weights,
        # and a file trained by older code may hold an older build (soft sharing's seed 0 ran
        # three whole encoders before the copies shared the frozen trunk).
        built = build_model(variant.model, tuple(variant.data.image_size))
        inference = evaluate.measure_inference(built, variant.model.top_k)
        inference["flops"] = timing.forward_flops(built, tuple(variant.data.image_size))["flops"]
        del built
    del model
    keras.backend.clear_session()  # the next variant builds a fresh graph; free this one
    return metrics, inference


def summarise(config: Config, results: dict) -> dict:
    """summary.json's content from {variant name: {"model", "reused_main_run", "metrics", "inference"}}."""
    split = config.evaluate.split
    source = config.data.sources[0].name
    tasks = list(config.model.tasks)
    # One "single" result holding each task from its own single-task model.
    single = {task: results[f"single-{task}"]["metrics"][task] for task in tasks}
    weightings = {}  # every multi-task variant, keyed by its name without "multi-"
    for name, entry in results.items():
        if not name.startswith("multi-"):
            continue
        weightings[name[len("multi-"):]] = {
            "model": entry["model"], "reused_main_run": entry["reused_main_run"],
            "metrics": headline_metrics(entry["metrics"], tasks),
            "comparison": compare(entry["metrics"], single), "inference": entry["inference"]}
    ranked = [w for w in weightings if weightings[w]["comparison"]["delta_m"] is not None]
    configured = config.train.weighting
    single_cost = {task: results[f"single-{task}"]["inference"] for task in tasks}
    return {
        "experiment": config.experiment, "split": split, "source": source, "tasks": tasks,
        "budget": {"epochs": config.train.epochs, "steps_per_epoch": config.train.steps_per_epoch,
                   "batch_size": config.train.batch_size},
        "lower_is_better": STANDARD_METRICS,
        "single_task": {task: {"model": results[f"single-{task}"]["model"],
                               "metrics": headline_metrics(results[f"single-{task}"]["metrics"], [task])}
                        for task in tasks},
        "multi_task": {"weighting": configured, **weightings[configured]},
        "weightings": weightings,
        "best_weighting": max(ranked, key=lambda w: weightings[w]["comparison"]["delta_m"]) if ranked else None,
        "inference": {"multi_task": weightings[configured]["inference"], "single_task": single_cost,
                      "single_task_sum": {"params": sum(c["params"] for c in single_cost.values()),
                                          "ms_per_frame": sum(c["ms_per_frame"] for c in single_cost.values())}},
    }


def _mean_std(values) -> dict:
    values = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
              and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)}


def mean_metrics(per_seed: list[dict], tasks) -> dict:
    """One metrics dict whose kept and Delta_m metrics are the means over seeds (a task absent in
    any seed is absent)."""
    out = {}
    for task in tasks:
        results = [metrics.get(task) for metrics in per_seed]
        absent = [r for r in results if is_absent(r)]
        if absent:
            out[task] = absent[0] or {"absent": True, "reason": "not measured"}
            continue
        names = set(KEPT[task]) | set(STANDARD_METRICS.get(task, {}))
        out[task] = {name: _mean_std([r.get(name) for r in results])["mean"] for name in names}
        out[task]["examples"] = results[0].get("examples")
    return out


def spread(per_seed: list[dict], tasks) -> dict:
    """{task: {metric: {"mean", "std", "n"}}} over seeds, or the absent record."""
    out = {}
    for task in tasks:
        results = [metrics.get(task) for metrics in per_seed]
        if any(is_absent(r) for r in results):
            out[task] = {"absent": True, "reason": next((r or {}).get("reason", "not measured")
                                                        for r in results if is_absent(r))}
        else:
            out[task] = {name: _mean_std([r.get(name) for r in results]) for name in KEPT[task]}
    return out


def summarise_seeds(config: Config, per_seed: dict) -> dict:
    """summary.json: {seed: {variant name: result}} -> the single-run summary of the seed means
    (summarise) plus "seeds", "models" (mean/std per metric and of the per-seed Delta_m) and "cost"."""
    seeds = list(per_seed)
    tasks = list(config.model.tasks)
    names = list(per_seed[seeds[0]])
    first = per_seed[seeds[0]]
    averaged = {name: {**first[name], "metrics": mean_metrics([per_seed[s][name]["metrics"] for s in seeds], tasks)}
                for name in names}
    summary = summarise(config, averaged)
    models = {"single_task": {task: {"metrics": spread([per_seed[s][f"single-{task}"]["metrics"] for s in seeds],
                                                       [task])} for task in tasks}}
    single_costs = [first[f"single-{task}"]["inference"] for task in tasks]
    for name in names:
        if not name.startswith("multi-"):
            continue
        singles = {s: {task: per_seed[s][f"single-{task}"]["metrics"][task] for task in tasks} for s in seeds}
        per_seed_delta = [compare(per_seed[s][name]["metrics"], singles[s])["delta_m"] for s in seeds]
        variant = variants(config)[name]
        models[name[len("multi-"):]] = {
            "weighting": variant.train.weighting, "sharing": variant.model.sharing,
            "metrics": spread([per_seed[s][name]["metrics"] for s in seeds], tasks),
            "delta_m": {**_mean_std(per_seed_delta), "per_seed": per_seed_delta},
            "cost": cost_ratios(first[name]["inference"], single_costs)}
    summary["seeds"] = seeds
    summary["models"] = models
    summary["cost"] = {
        "multi_task": config.train.weighting,
        **cost_ratios(first[f"multi-{config.train.weighting}"]["inference"], single_costs),
        "measures": "multi-task model / sum of the single-task models: batch-1 latency (median), "
                    "parameters, forward FLOPs (pipeline.timing.forward_flops)"}
    return summary


def cost_ratios(inference: dict, singles: list[dict]) -> dict:
    """A model's batch-1 latency, parameters and FLOPs / those of the single-task models together
    (measured at the first seed: they do not depend on it)."""
    return {"latency_ratio": inference["ms_per_frame"] / max(sum(c["ms_per_frame"] for c in singles), 1e-9),
            "params_ratio": inference["params"] / max(sum(c["params"] for c in singles), 1),
            "flops_ratio": inference["flops"] / max(sum(c["flops"] for c in singles), 1)}


def run_baselines(config: Config, verbose: int = 1, quick: bool = False) -> dict:
    """Trains and evaluates every variant at every seed; writes summary.json, baselines.md, delta_m.png."""
    if quick:
        config = quick_config(config)
    out = layout.baselines_dir(config, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    split = config.evaluate.split
    source = config.data.sources[0].name
    seeds = list(dict.fromkeys(int(seed) for seed in config.baselines.seeds))
    if not seeds:
        raise UserError("baselines.seeds is empty: give at least one seed, e.g. baselines.seeds=[0]")
    todo = chosen_variants(config)
    for name, reason in left_out(config).items():
        print(f"baselines: left out {name}: {reason}")
    per_seed = {}
    total, index = len(todo) * len(seeds), 0
    for seed in seeds:
        per_seed[seed] = {}
        for name, variant in todo.items():
            index += 1
            variant = seeded(variant, seed)
            print(f"baselines: [{index}/{total}] {name} seed {seed}")
            folder = out / name / f"seed-{seed}"
            path, reused = train_variant(name, variant, config, verbose, folder=folder)
            metrics, inference = _evaluate(name, path, variant, split, source, cost=seed == seeds[0])
            per_seed[seed][name] = {"model": str(path), "reused_main_run": reused, "metrics": metrics,
                                    "inference": inference}
            if not reused:
                atomic.write_text(path.parent / "metrics.json", json.dumps(metrics, indent=1))

    summary = summarise_seeds(config, per_seed)
    summary["quick"] = quick
    summary["left_out"] = left_out(config)
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=1))
    plot = plots.baselines_delta_m(summary, out / "delta_m.png")
    atomic.write_text(out / "baselines.md", f"# Baselines — {config.experiment}{' (quick)' if quick else ''}\n\n"
                      + report.seeds_markdown(summary, plot.name if plot else None) + "\n\n"
                      + report.baselines_markdown(summary) + "\n")
    comparison = summary["multi_task"]["comparison"]
    print(f"baselines: multi-task ({summary['multi_task']['weighting']}) "
          f"Delta_m = {report.signed(comparison['delta_m'])} % (mean of {len(seeds)} seed(s)), "
          f"negative transfer: {', '.join(comparison['negative_transfer']) or 'none'}; "
          f"best variant: {summary['best_weighting']}")
    if not quick:  # a smoke run does not replace the study in report.md
        for path in report.refresh(config):
            print(f"baselines: updated {path}")
    print(f"baselines: wrote {out / 'summary.json'} and {out / 'baselines.md'}")
    return summary
