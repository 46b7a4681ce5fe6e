"""Validation: the validate flow over any datasets, and `validate_stage_output`, which the build
runs on each stage's output (content rules only warn before cleaning, are critical after)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from prefect import get_run_logger

from schemas import CATEGORIES
from schemas.dataset import StageManifest

from ..plain_flow import flow
from ..config import BuildConfig, load_config
from .runner import DESCRIPTIONS, ValidationFailed, _inputs, _run  # noqa: F401 - ValidationFailed is part of this module's API




@flow(name="validate", description=DESCRIPTIONS["validate"])
def validate_flow(inputs: list[str], output: str, config: Optional[str] = None, engine: Optional[str] = None) -> dict:
    cfg = load_config(config)
    paths = _inputs(inputs)
    params = cfg.section("validate")
    return _run("validate", Path(output), params, paths, _validation_work(paths, Path(output), params))


def _validation_work(paths: list[Path], output: Path, params: dict, stage: Optional[str] = None) -> Callable:
    """Validate each input dataset into `output` (results JSON and Data Docs); a critical failure
    raises ValidationFailed once the results are saved. With `stage`, the one input is that
    stage's output and its results go straight into `output`."""
    from quality import validate_dataset
    from schemas.dataset import DatasetWriter

    options = {
        "categories": list(CATEGORIES),
        "languages": params["languages"],
        "min_chars": params["min_chars"],
        "max_chars": params["max_chars"],
        # Cleaning enforces lengths and turn order: before it, those rules only warn.
        "content_severity": "warning" if stage in ("crawl", "ingest") else "critical",
    }

    def work(manifest: StageManifest) -> StageManifest:
        with DatasetWriter(output, manifest) as writer:
            reports = []
            for number, path in enumerate(paths):
                results_dir = writer.folder if stage else writer.folder / (path.name or f"input-{number}")
                reports.extend(validate_dataset(path, options=options, results_dir=results_dir))
            for report in reports:
                manifest.rows_in[report.kind] = manifest.rows_in.get(report.kind, 0) + report.rows
                get_run_logger().info("validate%s: %s", f" {stage}" if stage else "", report.summary())
            failures = [r for r in reports if not r.success]
            manifest.stats["reports"] = [
                {"kind": r.kind, "rows": r.rows, "success": r.success, "evaluated": r.evaluated, "met": r.met,
                 "warnings": len(r.warnings), "seconds": r.seconds, "summary": r.summary()}
                for r in reports
            ]
            manifest.stats["failed"] = bool(failures)
            result = writer.commit()
        if failures and params["fail_on_error"]:
            where = f"{stage} output: " if stage else ""
            raise ValidationFailed(where + "; ".join(r.summary() for r in failures))
        return result

    return work


def validate_stage_output(stage: str, folder: Path, output: Path, cfg: BuildConfig) -> dict:
    """Run the suites on one stage's output inside build-corpus (skipped when done before)."""
    params = cfg.section("validate")
    section = {**params, "stage": stage}
    return _run("validate", output, section, [folder], _validation_work([folder], output, params, stage))
