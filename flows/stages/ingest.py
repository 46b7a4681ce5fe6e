"""The ingest flow: file and dataset sources, and documents extracted from crawled pages."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import flow

from schemas.dataset import StageManifest
from transforms import stages

from ..config import load_config
from .runner import DESCRIPTIONS, _inputs, _run


@flow(name="ingest", description=DESCRIPTIONS["ingest"])
def ingest_flow(output: str, config: Optional[str] = None, inputs: Optional[list[str]] = None) -> dict:
    cfg = load_config(config)
    sources = [s for s in cfg.sources if s.kind in ("files", "dataset")]
    pages = _inputs(inputs or [])
    source_dicts = [
        {"name": s.name, "category": s.category, "path": str(s.path), "format": s.format, "encoding": s.encoding}
        for s in sources
    ]
    params = {
        "min_chars": cfg.clean.min_chars,
        "batch_rows": cfg.engine.batch_rows,
        "extract_rules": {s.name: s.extract for s in cfg.sources if s.kind == "crawl" and s.extract},
    }
    section = {"sources": source_dicts, "params": params}
    fingerprints = [Path(s["path"]) for s in source_dicts] + pages

    def work(manifest: StageManifest) -> StageManifest:
        return stages.run_ingest(source_dicts, pages, output, params, manifest)

    return _run("ingest", Path(output), section, fingerprints, work)
