"""`bench` stage: speed against the alternatives and against the machine's own limits.

    python -m pipeline bench [--quick] --config configs/<name>.yaml

Writes <run_root>/bench/bench.json and BENCH.md (pipeline/bench/run.py lists the sections).
"""
from __future__ import annotations

from pipeline import layout
from pipeline.bench import report as bench_report
from pipeline.bench import run as bench
from pipeline.config import Config


def main(config: Config, args=None) -> dict:
    quick = bool(getattr(args, "quick", False))
    out = layout.bench_dir(config)
    results = bench.run_bench(config, quick)
    bench.write_results(results, out)
    print(f"bench: wrote {out / 'BENCH.md'} and bench.json ({results['seconds']:.0f} s)")
    for t in results["targets"]:
        print(f"bench: {t['target']}: {bench_report.number(t['measured'])} (goal {t['goal']}): {t['status']}")
    failed = [k for k, s in results["sections"].items() if "error" in s]
    if failed:
        raise RuntimeError(f"bench sections {', '.join(failed)} failed; see {out / 'bench.json'}")
    return results
