"""Prefect flows: one flow per stage, runnable alone (flows/stages/<stage>.py), `build-corpus`
(flows/build.py), which runs them in order, and the nightly `refresh` (flows/refresh.py). The
command line, the server and the tests take the flows from here.

A stage whose output manifest matches its inputs, config section and code version is skipped,
so re-running a build after a crash redoes only the stages that had not finished.
"""
from __future__ import annotations

from .build import PACKED, QUALITY, STAGE_FLOWS, build_corpus, build_summary, publish_artifacts, publish_build_report
from .domain import train_domain_classifier_flow
from .refresh import REFRESH_DESCRIPTION, refresh
from .stages.clean import clean_flow
from .stages.convert import convert_flow
from .stages.crawl import crawl_flow, site_dir_origin
from .stages.decontaminate import decontaminate_flow
from .stages.dedup import dedup_flow
from .stages.export import export_flow
from .stages.ingest import ingest_flow
from .stages.pack import pack_flow
from .stages.runner import DESCRIPTIONS, LOCAL_ONLY_STAGES, NothingKept, code_version, make_engine, retry_unless_final
from .stages.sample import sample_flow
from .stages.select import select_flow, selection_dry_run_flow
from .stages.validate import ValidationFailed, validate_flow, validate_stage_output

__all__ = [
    "PACKED", "QUALITY", "STAGE_FLOWS", "pack_flow", "build_corpus", "build_summary", "publish_artifacts", "publish_build_report",
    "train_domain_classifier_flow", "REFRESH_DESCRIPTION", "refresh", "clean_flow", "convert_flow", "crawl_flow",
    "decontaminate_flow", "dedup_flow", "export_flow", "ingest_flow", "DESCRIPTIONS", "LOCAL_ONLY_STAGES",
    "code_version", "make_engine", "NothingKept", "retry_unless_final", "site_dir_origin", "sample_flow", "select_flow", "selection_dry_run_flow", "ValidationFailed",
    "validate_flow", "validate_stage_output",
]
