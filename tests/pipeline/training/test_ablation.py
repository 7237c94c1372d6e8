"""The learning-efficiency study (`make ablate`): variants as data, one wall-clock budget each."""
import json

import pytest

from data.errors import UserError
from pipeline.config import load_config, to_dict
from pipeline.training import ablation
from support import REPO, tiny


def test_variants_file_lists_overrides_and_bad_files_are_one_line_errors(tmp_path):
    variants = ablation.read_variants(REPO / "configs" / "ablation.yaml")
    assert next(iter(variants)) == "reference" and variants["reference"] == []
    assert all("=" in item for overrides in variants.values() for item in overrides)
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: {a: [not-an-override]}")
    with pytest.raises(UserError, match="variant 'a'"):
        ablation.read_variants(bad)
    with pytest.raises(UserError, match="not found"):
        ablation.read_variants(tmp_path / "missing.yaml")


def test_budget_sets_the_steps_and_keeps_the_warmup_share(tmp_path):
    config = tiny(tmp_path, "train.epochs=10", "train.steps_per_epoch=100", "train.warmup_steps=100")
    overrides = [f"run_root={tmp_path}", "train.epochs=10", "train.steps_per_epoch=100", "train.warmup_steps=100",
                 "train.validate_every=5"]
    budgeted = ablation.budgeted(REPO / "configs" / "tiny.yaml", overrides, config, step_seconds=0.5,
                                 budget_seconds=300.0)
    steps = budgeted.train.epochs * budgeted.train.steps_per_epoch
    assert budgeted.train.epochs == ablation.CURVE_POINTS and 594 <= steps <= 600
    assert budgeted.train.warmup_steps == pytest.approx(steps * 100 / 1000, abs=1)
    assert budgeted.train.validate_every == 1, "every epoch is a point of the learning curve"


def test_deltas_are_signed_so_positive_is_better():
    reference = {"detection": 0.5, "segmentation": 0.6, "depth": 0.10}
    better = {"detection": 0.55, "segmentation": 0.6, "depth": 0.08}
    delta = ablation.relative_to(better, reference)
    assert delta["detection"] == pytest.approx(10.0) and delta["segmentation"] == 0.0
    assert delta["depth"] == pytest.approx(20.0)  # lower AbsRel is better
    assert ablation.relative_to({"detection": 0.3}, {"detection": 0.0})["detection"] is None


def test_table_and_json_from_hand_made_results(tmp_path):
    results = {name: {"overrides": overrides, "step_seconds": 0.4, "steps": 600, "headline": headline}
               for name, overrides, headline in [
                   ("reference", [], {"detection": 0.5, "segmentation": 0.6, "depth": 0.1}),
                   ("wider", ["model.head_width=96"], {"detection": 0.6, "segmentation": 0.6, "depth": 0.1})]}
    ablation._finish(results, "reference")
    ablation.write_table(results, "reference", 4.0, "test CPU", tmp_path / "ablation.md")
    table = (tmp_path / "ablation.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| wider") or line.startswith("| reference")]
    assert rows[0].startswith("| wider") and "+20.0 / +0.0 / -0.0" in rows[0] and "model.head_width=96" in rows[0]
    assert results["wider"]["mean_delta"] == pytest.approx(20.0 / 3)
    json.dumps(results)  # JSON-ready


def test_ablate_end_to_end_on_the_tiny_config(tiny_config, tmp_path):
    variants = tmp_path / "variants.yaml"
    variants.write_text("variants: {reference: []}")
    study_args = (REPO / "configs" / "tiny.yaml", [f"run_root={tiny_config.run_root}"],
                  ablation.read_variants(variants))
    results = ablation.run_study(*study_args, budget_seconds=2.0)
    result = results["reference"]
    assert result["steps"] >= ablation.CURVE_POINTS and result["step_seconds"] > 0
    assert result["headline"]["segmentation"] is not None and result["delta"]["segmentation"] == 0.0
    study = tiny_config.run_dir / "ablation"
    assert (study / "reference" / "model.keras").is_file()
    assert (study / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| reference |" in (study / "ablation.md").read_text()
    again = ablation.run_study(*study_args, budget_seconds=2.0)  # same config and budget: skipped
    assert again["reference"]["train_wall_seconds"] == result["train_wall_seconds"]
    # A config key added since a variant trained (simulated by deleting one from its saved key) takes
    # its default, which keeps what it trained: the variant is not deleted and retrained.
    saved = json.loads((study / "ablation.json").read_text())
    del saved["variants"]["reference"]["key"]["config"]["model"]["shared_through"]
    (study / "ablation.json").write_text(json.dumps(saved))
    after_new_key = ablation.run_study(*study_args, budget_seconds=2.0)
    assert after_new_key["reference"]["train_wall_seconds"] == result["train_wall_seconds"]
    key = {"budget_seconds": 2.0, "config": json.loads(json.dumps(to_dict(load_config(*study_args[:2]))))}
    assert ablation._same_key(saved["variants"]["reference"]["key"], key)
    assert not ablation._same_key({**key, "budget_seconds": 3.0}, key)
    other = json.loads(json.dumps(key))
    other["config"]["train"]["learning_rate"] *= 2
    assert not ablation._same_key(other, key) and not ablation._same_key({"config": "not a config"}, key)
