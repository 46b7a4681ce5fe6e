"""Validation overhead of build-corpus on the shared data: the seconds the Great Expectations
suites take on each stage's output, as a share of the seconds the stage itself took.

    python benchmarks/validate_overhead.py [--shared ../shared/data] [--books N] [--workers W] [--workdir DIR]

Runs build-corpus with the configuration of benchmarks/build_stages.py (the ancient books, the
pharmacopoeia, the instruction datasets, the evaluation sets), then reads the timings from the
manifests: WORKDIR/stages/<stage>/_manifest.json for the stage, WORKDIR/quality/<stage>/ for
its validation (summary frame, suites, results JSON and Data Docs), stages/validate for the
corpus. Prefect's own overhead is in neither figure. Target: under 10% in all.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def seconds(folder: Path) -> float:
    manifest = json.loads((folder / "_manifest.json").read_text(encoding="utf-8"))
    return float(manifest.get("timings", {}).get("seconds", 0.0))


def rows(folder: Path) -> int:
    manifest = json.loads((folder / "_manifest.json").read_text(encoding="utf-8"))
    return sum(manifest.get("rows_in", {}).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--books", type=int, help="only the first N books (default: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if not args.shared.is_dir():
        sys.exit(f"shared data not found at {args.shared}")

    from build_stages import write_config

    from flows.runtime import prepare_environment

    prepare_environment()
    folder = Path(tempfile.mkdtemp(prefix="tcm-validate-bench-"))
    workdir = args.workdir or folder / "work"
    if workdir.exists():
        shutil.rmtree(workdir)
    config = write_config(args.shared, folder, args.books, args.workers)

    from flows.pipeline import build_corpus

    build_corpus(config=str(config), workdir=str(workdir))

    pairs = [(stage, workdir / "stages" / stage, workdir / "quality" / stage) for stage in ("crawl", "ingest", "clean", "dedup", "decontaminate", "convert")]
    pairs.append(("sample", workdir / "corpus", workdir / "stages" / "validate"))
    print(f"\nvalidation overhead on {args.shared} ({args.books or 'all'} books, {args.workers} worker(s))")
    print(f"{'stage':>14} {'rows':>9} {'stage s':>9} {'validate s':>11} {'share':>7}")
    total_stage = total_validation = 0.0
    for stage, output, quality in pairs:
        if not (output / "_manifest.json").is_file() or not (quality / "_manifest.json").is_file():
            continue
        stage_s, check_s = seconds(output), seconds(quality)
        total_stage += stage_s
        total_validation += check_s
        print(f"{stage:>14} {rows(quality):>9} {stage_s:>9.2f} {check_s:>11.2f} {check_s / stage_s if stage_s else 0:>7.1%}")
    print(f"{'all':>14} {'':>9} {total_stage:>9.2f} {total_validation:>11.2f} {total_validation / total_stage:>7.1%}   target < 10%")
    print(f"output: {workdir}")


if __name__ == "__main__":
    main()
