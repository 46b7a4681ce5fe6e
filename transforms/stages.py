"""The stages of the build in the order data flows through them, each from the package of its
step: `run_<stage>(inputs, output, params, manifest, engine, progress=None)`.

A stage reads its input dataset folders, writes one output dataset through a DatasetWriter (a
temporary folder renamed into place), and fills the manifest's ledger: for every record kind it
reads, rows in = rows kept + rows rejected. Orchestration (skipping finished stages, logging,
retries) belongs to the caller; nothing here knows about Prefect.
"""
from __future__ import annotations

from transforms.clean.stage import run_clean
from transforms.convert.stage import run_convert
from transforms.decontaminate.stage import contamination_hits, run_decontaminate
from transforms.dedup.stage import run_dedup
from transforms.engines import run_map_stage
from transforms.export.stage import run_export
from transforms.ingest.stage import run_ingest
from transforms.sample.stage import run_sample
from transforms.select.stage import run_select, selection_dry_run

__all__ = [
    "run_ingest", "run_clean", "run_select", "selection_dry_run", "run_dedup", "run_decontaminate",
    "contamination_hits", "run_convert", "run_sample", "run_export", "run_map_stage",
]
