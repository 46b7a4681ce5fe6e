"""`build-corpus`: every stage flow in order as sub-flows, the suites on each stage's output, the
corpus report and the summary artifacts."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from .plain_flow import flow
from .config import load_config, sample_config_path
from .notify import FAILURE_HOOKS
from .stages.clean import clean_flow
from .stages.convert import convert_flow
from .stages.crawl import crawl_flow
from .stages.decontaminate import decontaminate_flow
from .stages.dedup import dedup_flow
from .stages.export import export_flow
from .stages.ingest import ingest_flow
from .stages.pack import pack_flow
from .stages.runner import DESCRIPTIONS, _holding_workdir, _subflows_share_heartbeat, _kept_nothing, _stop_if_nothing_kept
from .stages.sample import sample_flow
from .stages.select import select_flow
from .stages.validate import validate_flow, validate_stage_output
from .runtime import SUMMARY_RECORD
from .summary import as_markdown, as_text, produced

QUALITY = "quality"  # WORKDIR/quality/<stage>/: the suites' results on each stage's output
PACKED = "packed"  # WORKDIR/packed/: token sequences for GPU trainers, when [pack] tokenizer is set


STAGE_FLOWS = {
    "crawl": crawl_flow,
    "ingest": ingest_flow,
    "clean": clean_flow,
    "select": select_flow,
    "dedup": dedup_flow,
    "decontaminate": decontaminate_flow,
    "convert": convert_flow,
    "sample": sample_flow,
    "validate": validate_flow,
    "export": export_flow,
    "pack": pack_flow,
}


@flow(name="build-corpus", description=DESCRIPTIONS["build-corpus"], **FAILURE_HOOKS)
@_holding_workdir
@_subflows_share_heartbeat
def build_corpus(config: Optional[str] = None, workdir: str = "tcm-corpus-build", engine: Optional[str] = None) -> dict:
    """Every stage in order into `workdir`; without `config`, the embedded sample build."""
    logger = get_run_logger()
    config = config or sample_config_path()
    cfg = load_config(config)
    root = Path(workdir).resolve()
    staged = root / "stages"
    corpus = root / "corpus"
    started = time.perf_counter()
    results: dict[str, dict] = {}

    page_inputs: list[str] = []
    if any(s.kind == "crawl" for s in cfg.sources):
        results["crawl"] = crawl_flow(str(staged / "crawl"), config)
        page_inputs = [str(staged / "crawl")]
        if _kept_nothing(results["crawl"]):
            if not any(s.kind != "crawl" for s in cfg.sources):
                _stop_if_nothing_kept("crawl", staged / "crawl", results)
            logger.warning("crawl kept no page (reasons in %s); the build goes on with the other sources", staged / "crawl" / "rejected")
            page_inputs = []
    validation: dict[str, dict] = {}

    def check(stage: str) -> None:
        if cfg.validate_.every_stage:
            validation[stage] = validate_stage_output(stage, staged / stage, root / QUALITY / stage, cfg)

    if page_inputs:
        check("crawl")
    results["ingest"] = ingest_flow(str(staged / "ingest"), config, page_inputs)
    _stop_if_nothing_kept("ingest", staged / "ingest", results)
    check("ingest")
    previous = staged / "ingest"
    for stage in ("clean", "select", "dedup", "decontaminate", "convert"):
        results[stage] = STAGE_FLOWS[stage]([str(previous)], str(staged / stage), config, engine)
        _stop_if_nothing_kept(stage, staged / stage, results)
        check(stage)
        previous = staged / stage
    results["sample"] = sample_flow([str(previous)], str(corpus), config, engine)
    results["validate"] = validate_flow([str(corpus)], str(staged / "validate"), config, engine)
    if cfg.export.formats:
        results["export"] = export_flow([str(corpus)], str(staged / "export"), config, engine)
    if cfg.pack.tokenizer is not None:
        results["pack"] = pack_flow([str(corpus)], str(root / PACKED), config, engine)

    seconds = round(time.perf_counter() - started, 2)
    report_path = publish_build_report(root, logger)
    facts = produced(root, corpus, results, seconds)
    logger.info("%s", as_text(facts), extra={SUMMARY_RECORD: True})
    _publish_summary(as_markdown(facts) + "\n\n" + build_summary(results), "build-corpus-summary", "What the corpus build produced")
    return {"workdir": str(root), "corpus": str(corpus), "seconds": seconds, "stages": results, "produced": facts,
            "validation": validation, "report": report_path}


def _publish_summary(markdown: str, key: str, description: str) -> None:
    try:
        create_markdown_artifact(markdown, key=key, description=description)
    except Exception as exc:  # noqa: BLE001 - an artifact is a convenience, never a reason to fail a build
        get_run_logger().warning("could not publish the summary artifact: %s", exc)


def publish_build_report(root: Path, logger) -> Optional[str]:
    """Write WORKDIR/report.html and publish the same figures as Prefect artifacts."""
    from quality.report import build_figures, write_report
    from transforms.select.conflicts import corpus_conflicts

    try:
        corpus = root / "corpus"
        figures = build_figures(root, corpus_conflicts(corpus) if corpus.is_dir() else None)
        path = write_report(figures, root / "report.html")
    except Exception as exc:  # noqa: BLE001 - the report describes a finished build; it never fails one
        logger.warning("could not write the build report: %s", exc)
        return None
    try:
        publish_artifacts(figures)
    except Exception as exc:  # noqa: BLE001 - as for the summary artifact
        logger.warning("could not publish the report artifacts: %s", exc)
    return str(path)


def publish_artifacts(figures: dict) -> None:
    from quality.report import artifact_markdown, artifact_tables

    for key, (description, rows) in artifact_tables(figures).items():
        if rows:
            create_table_artifact(rows, key=key, description=description)
    create_markdown_artifact(artifact_markdown(figures), key="corpus-report", description="Corpus report: funnel, mix, sampling curve")


def build_summary(results: dict[str, dict]) -> str:
    """The funnel: rows in, made (from rows of another kind), kept, rejected and written per record
    kind at each stage."""
    lines = ["## Funnel", "", "| stage | in | made | kept | rejected | out | skipped |", "|---|---|---|---|---|---|---|"]
    for stage, summary in results.items():
        fmt = lambda counts: ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"  # noqa: E731
        lines.append(
            f"| {stage} | {fmt(summary['rows_in'])} | {fmt(summary.get('rows_made') or {})} | {fmt(summary['rows_kept'])} "
            f"| {fmt(summary['rows_rejected'])} "
            f"| {fmt(summary['rows_out'])} | {'yes' if summary.get('skipped') else 'no'} |"
        )
    return "\n".join(lines)
