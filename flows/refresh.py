"""The nightly refresh: new material crawled, ingested, cleaned and deduplicated against the
existing build's deduplicated rows."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from prefect import get_run_logger

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import read_manifest

from .plain_flow import flow
from .build import _publish_summary, build_summary
from .config import load_config, sample_config_path
from .notify import FAILURE_HOOKS
from .stages.clean import clean_flow
from .stages.crawl import crawl_flow
from .stages.dedup import dedup_flow
from .stages.ingest import ingest_flow
from .stages.runner import _holding_workdir, _subflows_share_heartbeat
from .stages.select import select_flow


REFRESH_DESCRIPTION = "crawl, ingest, clean and dedup new material against the existing build's deduplicated rows"


@flow(name="refresh", description=REFRESH_DESCRIPTION, **FAILURE_HOOKS)
@_holding_workdir
@_subflows_share_heartbeat
def refresh(config: Optional[str] = None, workdir: str = "tcm-corpus-build", engine: Optional[str] = None, label: Optional[str] = None) -> dict:
    """Fetch and import the sources again into `WORKDIR/refresh/<label>/` (label: today's UTC
    date), clean and select them (the build's own rules: a fragment or a cross-reference is no
    new row), and dedup them after the existing `WORKDIR/stages/dedup` rows, so new rows that
    repeat the corpus are rejected as duplicates and only new material is added.
    Without `config`, the embedded sample build."""
    config = config or sample_config_path()
    cfg = load_config(config)
    root = Path(workdir).resolve()
    label = label or time.strftime("%Y%m%d", time.gmtime())
    target = root / "refresh" / label
    started = time.perf_counter()
    results: dict[str, dict] = {}

    page_inputs: list[str] = []
    if any(s.kind == "crawl" for s in cfg.sources):
        results["crawl"] = crawl_flow(str(target / "crawl"), config, recrawl=True)
        page_inputs = [str(target / "crawl")]
    results["ingest"] = ingest_flow(str(target / "ingest"), config, page_inputs)
    results["clean"] = clean_flow([str(target / "ingest")], str(target / "clean"), config, engine)
    results["select"] = select_flow([str(target / "clean")], str(target / "select"), config, engine)
    existing = root / "stages" / "dedup"
    earlier = [str(existing)] if read_manifest(existing) else []
    if not earlier:
        get_run_logger().info("refresh: no finished build in %s; dedup runs on the new rows alone", root)
    results["dedup"] = dedup_flow([*earlier, str(target / "select")], str(target / "dedup"), config, engine)

    # Text rows only: the dedup output also holds its audit kinds (clusters, repeated paragraphs).
    def text_rows(rows_out: dict) -> int:
        return sum(n for kind, n in rows_out.items() if kind in (DOCUMENTS, CONVERSATIONS))

    existing_rows = text_rows(read_manifest(existing).rows_out) if earlier else 0
    dedup_out = text_rows(results["dedup"]["rows_out"])
    seconds = round(time.perf_counter() - started, 2)
    text = (
        f"refresh finished in {seconds} s: {dedup_out - existing_rows:,} new rows after dedup against "
        f"{existing_rows:,} existing rows; {target / 'dedup'} holds both"
    )
    get_run_logger().info("%s", text)
    _publish_summary(f"# Refresh {label}\n\n{text}.\n\n" + build_summary(results), "refresh-summary", "What the refresh added")
    return {"workdir": str(root), "output": str(target / "dedup"), "new_rows": dedup_out - existing_rows, "seconds": seconds, "stages": results}
