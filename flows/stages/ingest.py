"""The ingest flow: file and dataset sources, and documents extracted from crawled pages."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import get_run_logger

from schemas.dataset import StageManifest
from transforms import stages

from ..plain_flow import flow
from ..config import load_config
from .runner import DESCRIPTIONS, _inputs, _run


@flow(name="ingest", description=DESCRIPTIONS["ingest"])
def ingest_flow(output: str, config: Optional[str] = None, inputs: Optional[list[str]] = None) -> dict:
    cfg = load_config(config)
    sources = [s for s in cfg.sources if s.kind in ("files", "dataset")]
    pages = _inputs(inputs or [])
    source_dicts = [
        {"name": s.name, "category": s.category, "path": str(s.path), "format": s.format, "encoding": s.encoding,
         "fields": s.fields, "allow_all_rejected": s.allow_all_rejected}
        for s in sources
    ]
    params = {
        "min_chars": cfg.select.min_chars or 0,
        "batch_rows": cfg.engine.batch_rows,
        "extract_rules": {s.name: s.extract for s in cfg.sources if s.kind == "crawl" and s.extract},
    }
    section = {"sources": source_dicts, "params": params}
    fingerprints = [Path(s["path"]) for s in source_dicts] + pages

    def work(manifest: StageManifest) -> StageManifest:
        return stages.run_ingest(source_dicts, pages, output, params, manifest)

    summary = _run("ingest", Path(output), section, fingerprints, work)
    logger = get_run_logger()
    for entry in summary["stats"].get("skipped_files", []):
        logger.warning("ingest: source %s: skipped %s (%s)", entry["source"], entry["path"], entry["reason"])
    from transforms.ingest.stage import sources_all_rejected

    rejected_sources = sources_all_rejected(summary["stats"])
    if rejected_sources:
        from transforms.ingest.importers import SourceRejected

        # The dataset is written (its rejected/ says why); the command still fails, in one line.
        raise SourceRejected("; ".join(rejected_sources))
    return summary
