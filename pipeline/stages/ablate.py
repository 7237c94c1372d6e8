"""`ablate` stage: the learning-efficiency study (variants at one training budget, on validation).

`python -m pipeline ablate --config C [--variants configs/ablation.yaml] [--minutes 4] [key=value ...]`
writes runs/<experiment>/ablation/ (pipeline/training/ablation.py says what and how).
"""
from __future__ import annotations

from data.errors import UserError
from pipeline import layout
from pipeline.config import Config
from pipeline.training import ablation

DEFAULT_VARIANTS = "configs/ablation.yaml"
DEFAULT_MINUTES = 4.0


def main(config: Config, args=None) -> dict:
    variants = ablation.read_variants(getattr(args, "variants", None) or DEFAULT_VARIANTS)
    minutes = getattr(args, "minutes", None) or DEFAULT_MINUTES
    if not minutes > 0:
        raise UserError(f"--minutes must be > 0; Received: minutes={minutes}")
    results = ablation.run_study(args.config, list(args.overrides), variants, float(minutes) * 60.0)
    print(f"ablate: {len(results)} variant(s); table in {layout.ablation_dir(config) / 'ablation.md'}")
    return results
