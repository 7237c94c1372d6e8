"""Evaluate stage, report, plots and baselines: hand-made metric dicts for the report, then a tiny
end-to-end run (data -> train -> evaluate) on the shared session fixture."""
import argparse
import json
import math

import numpy as np
import pytest
import yaml

from data import schema
from data.errors import UserError
from models.multitask import build_model
from pipeline import layout
from pipeline.config import save_config
from pipeline.evaluation import evaluate, plots, report
from pipeline.stages import evaluate as evaluate_stage
from pipeline.training import baselines
from pipeline.training.baselines import compare, variants
from support import assert_no_partial_output, tiny

H, W = 64, 96
PNGS = ("pr_curves.png", "confusion_matrix.png", "depth_error_vs_distance.png", "depth_log_error.png",
        "training_curves.png", "frames.png")
SECTIONS = ("## Targets", "## Detection", "## Segmentation", "## Depth", "## Training", "## Frames")


# ------------------------------------------------------------------------------ hand-made inputs
def _fake_batch(rng, batch=3, has_depth=1.0):
    """A labelled batch in the evaluation batch contract and a noisy prediction of it."""
    boxes = np.zeros((batch, 4, 4), np.float32)
    classes = np.full((batch, 4), -1, np.int32)
    boxes[:, 0] = [10, 10, 40, 30]
    boxes[:, 1] = [50, 20, 70, 60]
    classes[:, :2] = [0, 1]
    segmentation = rng.integers(0, len(schema.SEGMENTATION_CLASSES), (batch, H, W)).astype(np.int32)
    segmentation[:, :4] = schema.IGNORE
    depth = rng.uniform(2, 60, (batch, H, W)).astype(np.float32)
    depth[:, ::2] = 0  # sparse, like LiDAR
    y = {"boxes": boxes, "classes": classes, "segmentation": segmentation, "depth": depth,
         "ignore_boxes": np.zeros((batch, 4, 4), np.float32),
         "key": np.array([f"frame-{i}".encode() for i in range(batch)]),
         "has_detection": np.ones(batch, np.float32), "has_segmentation": np.ones(batch, np.float32),
         "has_depth": np.full(batch, has_depth, np.float32)}
    pred_seg = np.where(rng.uniform(size=(batch, H, W)) < 0.7, segmentation % 9,
                        rng.integers(0, 9, (batch, H, W)))
    pred = {"boxes": np.concatenate([boxes[:, :2] + 1.5, np.zeros((batch, 2, 4), np.float32)], 1),
            "scores": np.tile(np.array([0.9, 0.6, 0.005, 0.0], np.float32), (batch, 1)),
            "classes": np.tile(np.array([0, 2, 0, 0], np.int32), (batch, 1)),
            "segmentation": pred_seg.astype(np.int32),
            "depth": (np.maximum(depth, 1) * rng.uniform(0.8, 1.25, depth.shape)).astype(np.float32)}
    return {"image": rng.uniform(0, 255, (batch, H, W, 3)).astype(np.float32)}, y, pred


def _hand_made(config, has_depth=1.0):
    """(metrics, frames) as the evaluate stage builds them, from the real evaluators."""
    rng = np.random.default_rng(0)
    x, y, pred = _fake_batch(rng, has_depth=has_depth)
    evaluators = evaluate.new_evaluators(config, list(schema.TASK_FLAGS))
    counts = {}
    evaluate.add_batch(evaluators, y, pred, first_id=1, counts=counts)
    source = {"examples": 3, **{task: evaluate.task_result(task, evaluators[task], counts[task], "synthetic",
                                                            "validation")
                                for task in evaluators}}
    metrics = {"model": str(layout.trained_model(config)), "split": "validation", "image_size": [H, W],
               "tasks": list(evaluators), "top_k": 20, "score_floor": evaluate.SCORE_FLOOR,
               "primary_source": "synthetic", "sources": {"synthetic": source},
               **{task: source[task] for task in evaluators},
               "inference": {"params": 1234, "ms_per_frame": 3.2, "runs": 20, "device": "CPU"}}
    return json.loads(json.dumps(metrics)), evaluate.frames_for_grid(x, y, pred, 2)


def _history(path):
    path.write_text("epoch,cos_detection_depth,cos_detection_segmentation,depth_loss,depth_weight,detection_loss,"
                    "detection_weight,learning_rate,loss,"
                    "segmentation_loss,segmentation_weight,val_depth_loss,val_detection_loss,"
                    "val_segmentation_loss\n"
                    "0,0.31,-0.2,1.0,1.0,5.0,1.0,0.003,7.0,2.0,1.0,0.9,4.0,1.8\n"
                    "1,0.12,-0.45,0.7,1.3,3.0,0.8,0.002,4.5,1.2,0.9,0.6,2.9,1.1\n")
    return path


@pytest.fixture
def config(tmp_path):
    return tiny(tmp_path)


# ---------------------------------------------------------------------------------- report units
def test_report_from_hand_made_metrics_has_every_section_and_plot(config, tmp_path):
    metrics, frames = _hand_made(config)
    out = tmp_path / "eval"
    out.mkdir()
    path = report.write_report(out, metrics, config, frames=frames, history_csv=_history(tmp_path / "h.csv"))
    text = path.read_text()
    for section in SECTIONS:
        assert section in text, section
    for png in PNGS:
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in text, png
    # The targets table: the measured mAP50 and its status against the 0.9 goal, on one row.
    value = metrics["detection"]["mAP50"]
    status = "met" if value >= 0.9 else f"**short by {0.9 - value:.3f}**"
    assert f"| mAP50 | >= 0.9 | {report.fmt(value)} | {status} |" in text
    assert "pedestrian" in text and "sidewalk" in text  # per-class tables
    assert "Gradient conflict" in text and "| detection / depth | 0.310 | 0.120 |" in text
    assert "| detection / segmentation | -0.200 | -0.450 |" in text  # first and last epoch cosine
    assert "Multi-task vs single-task" not in text  # no baselines summary yet


def test_detections_below_the_score_floor_are_dropped(config):
    metrics, _ = _hand_made(config)
    # 3 frames x (0.9, 0.6 kept; 0.005 and 0.0 padding dropped)
    assert metrics["detection"]["detections"] == 6
    assert metrics["detection"]["ground_truth_boxes"] == 6
    assert 0 < metrics["detection"]["mAP50"] <= 1


def test_unlabelled_task_is_absent_with_reason_not_zero(config, tmp_path):
    metrics, frames = _hand_made(config, has_depth=0.0)
    assert metrics["depth"]["absent"] and "no depth labels" in metrics["depth"]["reason"]
    assert metrics["depth"]["examples"] == 0
    out = tmp_path / "eval"
    out.mkdir()
    text = report.write_report(out, metrics, config, frames=frames).read_text()
    assert "_Absent: source 'synthetic' has no depth labels in split 'validation'._" in text
    assert "not measured" in text  # the depth targets
    assert not (out / "depth_log_error.png").exists()
    assert "No history.csv" in text


def test_output_folder_names(config, tmp_path):
    assert evaluate.output_dir(config, "validation").name == "eval"
    assert evaluate.output_dir(config, "train").name == "eval-train"
    assert evaluate.output_dir(config, "validation", tmp_path / "other.keras").name == "eval-other"
    single = config.run_dir / "baselines" / "single-depth" / "model.keras"
    assert evaluate.output_dir(config, "train", single).name == "eval-single-depth-train"
    assert evaluate.output_dir(config, "train", layout.trained_model(config)).name == "eval-train"


def test_compare_skips_undefined_metrics_and_keeps_delta_m_finite():
    single = {"detection": {"mAP50": 0.0, "mAP": 0.0}, "segmentation": {"mIoU": 0.5},
              "depth": {"abs_rel": 0.2, "rmse": 5.0}}
    multi = {"detection": {"mAP50": 0.1, "mAP": 0.02}, "segmentation": {"mIoU": 0.55},
             "depth": {"abs_rel": 0.25, "rmse": 5.0}}
    result = compare(multi, single)
    assert result["relative_differences"]["segmentation"]["mIoU"] == pytest.approx(10.0)
    assert result["relative_differences"]["depth"]["abs_rel"] == pytest.approx(-25.0)
    assert result["delta_m"] == pytest.approx((10.0 + (-25.0 + 0.0) / 2) / 2)
    assert result["negative_transfer"] == ["depth"]
    assert "detection mAP50 (single-task value is 0)" in result["skipped"]
    nothing = compare({"depth": {"absent": True, "reason": "x"}}, single)
    assert nothing["delta_m"] is None


def test_baselines_variants_share_the_budget(config):
    found = variants(config)
    assert sorted(found) == ["multi-dwa", "multi-famo", "multi-fixed", "multi-gradnorm", "multi-pcgrad",
                             "multi-uncertainty", "multi-uncertainty-cross_stitch", "multi-uncertainty-soft",
                             "single-depth", "single-detection", "single-segmentation"]
    assert found["multi-uncertainty-soft"].model.sharing == "soft"
    assert {found[f"multi-{w}"].model.sharing for w in ("famo", "pcgrad", "gradnorm")} == {"hard"}
    # GradNorm needs a shared layer: with soft sharing configured it is left out, and the soft
    # sharing variant of a gradnorm config uses fixed weights.
    soft = variants(tiny(config.run_root, "model.sharing=soft"))
    assert "multi-gradnorm" not in soft and soft["multi-uncertainty-hard"].model.sharing == "hard"
    assert "multi-fixed-soft" in variants(tiny(config.run_root, "train.weighting=gradnorm"))
    assert found["single-depth"].model.tasks == ["depth"]
    assert found["multi-fixed"].train.fixed_weights == {"detection": 1.0, "segmentation": 1.0, "depth": 1.0}
    for variant in found.values():
        assert variant.train.steps_per_epoch == config.train.steps_per_epoch
        assert variant.model.widths == config.model.widths
    with pytest.raises(UserError, match="two or more tasks"):
        variants(tiny(config.run_root, "model.tasks=[depth]"))


def test_baselines_variants_option_keeps_what_the_comparison_needs(config):
    every = baselines.variants(config)
    assert baselines.chosen_variants(config) == every  # empty: all
    few = tiny(config.run_root, "baselines.variants=[multi-dwa]")
    assert sorted(baselines.chosen_variants(few)) == ["multi-dwa", f"multi-{config.train.weighting}",
                                                      "single-depth", "single-detection", "single-segmentation"]
    with pytest.raises(UserError, match="baselines.variants: no variant multi-adam; this config has single-"):
        baselines.chosen_variants(tiny(config.run_root, "baselines.variants=[multi-adam]"))


def test_baselines_leave_out_cross_stitch_with_a_keras_applications_encoder(config):
    """Its units sit between pyramid levels, which the keras.applications encoders (whole models)
    do not expose: the stage would fail hours in, when that variant's model is built."""
    whole = tiny(config.run_root, "model.backbone=mobilenet_v3_small")
    assert baselines.left_out(config) == {}
    assert baselines.left_out(tiny(config.run_root, "model.backbone=efficientnet_lite0")) == {}
    assert list(baselines.left_out(whole)) == ["multi-uncertainty-cross_stitch"]
    assert "multi-uncertainty-cross_stitch" not in baselines.variants(whole)
    assert "multi-uncertainty-soft" in baselines.variants(whole)
    with pytest.raises(UserError, match="multi-uncertainty-cross_stitch cannot be built: model.sharing="
                                        "cross_stitch needs a backbone built level by level"):
        baselines.chosen_variants(tiny(config.run_root, "model.backbone=mobilenet_v3_small",
                                       "baselines.variants=[multi-uncertainty-cross_stitch]"))


def test_baselines_summary_and_refreshed_report_from_hand_made_results(config, tmp_path):
    metrics, frames = _hand_made(config)
    better = json.loads(json.dumps(metrics))
    better["segmentation"]["mIoU"] *= 1.1
    cost = {"params": 100, "ms_per_frame": 1.0, "device": "CPU"}
    results = {name: {"model": f"{name}.keras", "reused_main_run": False, "inference": cost,
                      "metrics": better if name == "multi-dwa" else metrics}
               for name in baselines.variants(config)}
    summary = baselines.summarise(config, results)
    assert summary["multi_task"]["weighting"] == config.train.weighting
    assert summary["multi_task"]["comparison"]["delta_m"] == pytest.approx(0.0)
    assert summary["best_weighting"] == "dwa"
    assert summary["weightings"]["dwa"]["comparison"]["delta_m"] == pytest.approx(10.0 / 3)
    assert summary["inference"]["single_task_sum"] == {"params": 300, "ms_per_frame": 3.0}
    # report.md picks the comparison up once summary.json exists.
    eval_dir = config.run_dir / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    report.write_report(eval_dir, metrics, config, frames=frames)
    (config.run_dir / "baselines").mkdir()
    (config.run_dir / "baselines" / "summary.json").write_text(json.dumps(summary))
    assert report.refresh(config) == [eval_dir / "report.md"]
    text = (eval_dir / "report.md").read_text()
    for part in ("## Multi-task vs single-task", "### Inference cost", "### Task weighting strategies and sharing",
                 "Best by Delta_m: **dwa**", "](frames.png)"):
        assert part in text, part


def test_baselines_reuse_the_main_run_and_skip_trained_variants(config):
    main_run = config.run_dir / "train"
    save_config(config, main_run / "config.yaml")
    (main_run / "model.keras").write_bytes(b"stand-in")
    found = baselines.variants(config)
    configured = f"multi-{config.train.weighting}"
    assert baselines.train_variant(configured, found[configured], config, 0) == (main_run / "model.keras", True)
    done = layout.baselines_dir(config) / "single-depth" / f"seed-{config.seed}"
    save_config(found["single-depth"], done / "config.yaml")
    (done / "model.keras").write_bytes(b"stand-in")
    assert baselines.train_variant("single-depth", found["single-depth"], config, 0) == (done / "model.keras", False)
    assert not baselines.same_training(found["single-segmentation"], done)
    assert not baselines.same_training(tiny(config.run_root, "train.epochs=5"), main_run)
    # How often gradient conflict is logged does not change what a model learns.
    assert baselines.same_training(tiny(config.run_root, "train.conflict_every=3"), main_run)


def test_keys_the_net_ignores_do_not_make_another_training(config):
    """A branch point means nothing under hard sharing, and a single-task net is one encoder whatever
    the sharing mode (build_model): models trained without them are the same training. A branch
    point under cross-stitch sharing builds another net."""
    folder = config.run_dir / "hard"
    save_config(config, folder / "config.yaml")
    (folder / "model.keras").write_bytes(b"stand-in")
    assert baselines.same_training(tiny(config.run_root, "model.shared_through=P3"), folder)
    assert not baselines.same_training(tiny(config.run_root, "model.sharing=cross_stitch"), folder)
    single = config.run_dir / "single"
    save_config(tiny(config.run_root, "model.tasks=[depth]"), single / "config.yaml")
    (single / "model.keras").write_bytes(b"stand-in")
    assert baselines.same_training(
        tiny(config.run_root, "model.tasks=[depth]", "model.sharing=cross_stitch", "model.shared_through=P3"), single)
    stitched = config.run_dir / "stitched"
    save_config(tiny(config.run_root, "model.sharing=cross_stitch"), stitched / "config.yaml")
    (stitched / "model.keras").write_bytes(b"stand-in")
    assert not baselines.same_training(
        tiny(config.run_root, "model.sharing=cross_stitch", "model.shared_through=P3"), stitched)


def test_a_run_saved_before_a_model_key_existed_is_still_the_same_training(config):
    """A model key added after a run was saved is missing from its config.yaml (simulated by deleting
    model.soft_sharing_beta); its default keeps what the run trained, so the study must not retrain
    hours of models for it. Another value of it is another training."""
    folder = config.run_dir / "older"
    save_config(config, folder / "config.yaml")
    (folder / "model.keras").write_bytes(b"stand-in")
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    del saved["model"]["soft_sharing_beta"]
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    assert baselines.same_training(config, folder)
    assert not baselines.same_training(tiny(config.run_root, "model.soft_sharing_beta=0.5"), folder)
    for unusable in ("model: {widths: not-a-list-of-ints}\n", "", "- a list\n"):
        (folder / "config.yaml").write_text(unusable)  # not a config (an empty file is not the defaults)
        assert not baselines.same_training(config, folder), unusable
    (folder / "config.yaml").write_bytes(b"\xff\xfe\x00binary")
    assert not baselines.same_training(config, folder)


def test_baselines_over_seeds_give_mean_and_std_of_delta_m_and_cost_ratios(config, tmp_path):
    """Two seeds; the multi-task fixed model's mIoU is 10 % and 20 % above the single-task one's, the
    other metrics equal, so Delta_m (mean over 3 tasks) is 10/3 and 20/3 %: mean 5, std (ddof 1) 2.357."""
    metrics, _ = _hand_made(config)
    cost = {"params": 100, "ms_per_frame": 1.0, "flops": 1000, "device": "CPU"}
    # The soft-sharing model (three encoders) costs what the three single-task models do.
    soft = {"params": 300, "ms_per_frame": 3.0, "flops": 3000, "device": "CPU"}
    per_seed = {}
    for seed, gain in ((0, 1.1), (1, 1.2)):
        better = json.loads(json.dumps(metrics))
        better["segmentation"]["mIoU"] *= gain
        per_seed[seed] = {name: {"model": f"{name}.keras", "reused_main_run": False,
                                 "inference": soft if name.endswith("-soft") else
                                 {**cost, "params": 150} if name.startswith("multi-") else cost,
                                 "metrics": better if name == "multi-fixed" else metrics}
                          for name in baselines.variants(config)}
    summary = baselines.summarise_seeds(config, per_seed)
    assert summary["seeds"] == [0, 1]
    delta = summary["models"]["fixed"]["delta_m"]
    expected = np.array([10.0, 20.0]) / 3
    assert delta["mean"] == pytest.approx(expected.mean()) and delta["std"] == pytest.approx(expected.std(ddof=1))
    assert summary["models"]["dwa"]["delta_m"]["mean"] == pytest.approx(0.0)
    miou = summary["models"]["fixed"]["metrics"]["segmentation"]["mIoU"]
    base = metrics["segmentation"]["mIoU"]
    assert miou["mean"] == pytest.approx(base * 1.15)
    assert miou["std"] == pytest.approx(np.std([base * 1.1, base * 1.2], ddof=1))
    assert summary["models"]["single_task"]["depth"]["metrics"]["depth"]["abs_rel"]["std"] == 0.0
    assert summary["cost"]["params_ratio"] == pytest.approx(0.5)
    assert summary["cost"]["flops_ratio"] == pytest.approx(1 / 3)
    assert summary["cost"]["latency_ratio"] == pytest.approx(1 / 3)
    assert summary["models"]["fixed"]["cost"]["params_ratio"] == pytest.approx(0.5)
    assert summary["models"]["uncertainty-soft"]["cost"] == {"latency_ratio": pytest.approx(1.0),
                                                             "params_ratio": pytest.approx(1.0),
                                                             "flops_ratio": pytest.approx(1.0)}
    assert summary["best_weighting"] == "fixed"  # ranked on the seed means
    plot = plots.baselines_delta_m(summary, tmp_path / "delta_m.png")
    assert plot.stat().st_size > 1000
    text = report.seeds_markdown(summary, plot.name)
    assert "| fixed (fixed, hard) |" in text
    assert "| uncertainty-soft (uncertainty, soft) |" in text and " | 1.00 | 1.00 |" in text
    assert " | 0.33 | 0.50 |" in text  # each hard-shared model: latency x1/3, parameters x1/2
    assert f"{report.signed(expected.mean())} ± {report.fmt(expected.std(ddof=1), 2)}" in text
    assert "](delta_m.png)" in text and "FLOPs x0.33" in text
    assert "Not in this study" not in text
    summary["left_out"] = {"multi-uncertainty-cross_stitch": "needs a backbone built level by level"}
    assert ("Not in this study: multi-uncertainty-cross_stitch (needs a backbone built level by level)."
            in report.seeds_markdown(summary, plot.name))


# -------------------------------------------------------------------------------- stage errors
def _args(**kwargs):
    return argparse.Namespace(model=kwargs.get("model"), split=kwargs.get("split"))


def test_missing_model_names_the_train_command(config):
    with pytest.raises(UserError, match=r"no trained model at .*model\.keras: run `make train`"):
        evaluate_stage.main(config, _args())


def test_model_with_other_tasks_is_refused(config, tmp_path):
    other = tiny(tmp_path, "model.tasks=[segmentation]")
    path = tmp_path / "seg_only.keras"
    build_model(other.model, tuple(other.data.image_size)).save(str(path))
    with pytest.raises(UserError, match=r"predicts tasks \['segmentation'\].*model\.tasks is "
                                        r"\['depth', 'detection', 'segmentation'\]"):
        evaluate_stage.main(config, _args(model=str(path)))


# ------------------------------------------------------------------------------------ end to end
def test_evaluate_end_to_end_writes_metrics_and_report(tiny_trained):
    config, model_path = tiny_trained
    out = evaluate_stage.main(config, _args())
    assert out == config.run_dir / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    for task in ("detection", "segmentation", "depth"):
        assert task in metrics and task in metrics["sources"]["synthetic"]
    assert metrics["segmentation"]["pixels"] > 0 and metrics["depth"]["pixels"] > 0
    assert metrics["sources"]["synthetic"]["examples"] == config.data.synthetic.validation_frames
    assert metrics["inference"]["params"] > 0 and metrics["inference"]["ms_per_frame"] > 0
    assert metrics["model"] == str(model_path) and metrics["image_size"] == [H, W]
    text = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in text, section
    page = (config.run_dir / "report.html").read_text()  # the run's page, written by the stage too
    assert "<h2>Evaluation: <code>eval/</code></h2>" in page and 'src="data:image/png;base64,' in page
    for png in ("confusion_matrix.png", "depth_error_vs_distance.png", "depth_log_error.png",
                "training_curves.png", "frames.png"):
        assert (out / png).exists(), png
    # The synthetic validation frames carry boxes, so detection is measured and has its PR curves.
    assert not metrics["detection"].get("absent") and metrics["detection"]["ground_truth_boxes"] > 0
    assert (out / "pr_curves.png").exists()
    assert not list(config.run_dir.glob(".eval*"))  # no temporary folder left behind
    assert_no_partial_output(config.run_dir)


def test_evaluate_honours_max_examples_and_split(tiny_trained):
    config, _ = tiny_trained
    limited = tiny(config.run_root, "evaluate.max_examples=3")
    out = evaluate_stage.main(limited, _args(split="train"))
    assert out.name == "eval-train"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "train" and metrics["sources"]["synthetic"]["examples"] == 3
    with pytest.raises(UserError, match="no split 'test'"):
        evaluate_stage.main(config, _args(split="test"))


def test_baselines_cost_is_of_the_net_the_config_builds(tiny_trained):
    """Not of the file: a model trained by older code may be built differently (soft sharing's seed
    0 ran three whole encoders before the copies shared the frozen trunk). Here the file's heads are
    16 wide and the config's 24."""
    import keras

    config, model_path = tiny_trained
    wider = tiny(config.run_root, "model.head_width=24", "evaluate.max_examples=2")
    _, inference = baselines._evaluate("multi-fixed", model_path, wider, "validation", "synthetic")
    assert inference["params"] == build_model(wider.model, tuple(wider.data.image_size)).count_params()
    assert inference["params"] != keras.saving.load_model(model_path).count_params()


@pytest.mark.slow
def test_baselines_quick_writes_summary_with_finite_delta_m(tiny_trained):
    config, _ = tiny_trained
    report_md = evaluate_stage.main(config, _args()) / "report.md"  # the run's eval report
    summary = baselines.run_baselines(config, verbose=0, quick=True)
    out = config.run_dir / "baselines-quick"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["quick"] and saved["seeds"] == [config.seed] and saved["budget"]["steps_per_epoch"] == 2
    assert set(saved["models"]) == {"single_task", "fixed", "uncertainty", "dwa", "gradnorm", "famo", "pcgrad",
                                    "uncertainty-soft", "uncertainty-cross_stitch"}
    assert math.isfinite(saved["models"]["pcgrad"]["delta_m"]["mean"])
    assert saved["models"]["famo"]["delta_m"]["std"] == 0.0  # one seed
    assert all(math.isfinite(saved["cost"][key]) and saved["cost"][key] > 0
               for key in ("latency_ratio", "params_ratio", "flops_ratio"))
    assert (out / "baselines.md").exists() and (out / "delta_m.png").exists()
    assert summary["best_weighting"] in saved["weightings"]
    assert "Multi-task vs single-task" not in report_md.read_text()  # a smoke run leaves report.md alone
    # Run again: every variant is reused, nothing is trained (re-evaluation may differ in the last bit).
    folder = out / "multi-fixed" / f"seed-{config.seed}"
    trained_at = (folder / "model.keras").stat().st_mtime
    again = baselines.run_baselines(config, verbose=0, quick=True)
    assert (folder / "model.keras").stat().st_mtime == trained_at
    assert again["models"]["fixed"]["delta_m"]["mean"] == pytest.approx(saved["models"]["fixed"]["delta_m"]["mean"])


def test_baselines_stage_takes_quick():
    from pipeline.__main__ import build_parser
    assert build_parser().parse_args(["baselines", "--quick"]).quick
    assert not build_parser().parse_args(["baselines"]).quick
