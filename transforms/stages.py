"""The stages of the build in the order data flows through them, each from the package of its
step: `run_<stage>(inputs, output, params, manifest, engine, progress=None)`.

A stage reads its input dataset folders, writes one output dataset through a DatasetWriter (a
temporary folder renamed into place), and fills the manifest's ledger: for every record kind it
reads, rows in = rows kept + rows rejected. Orchestration (skipping finished stages, logging,
retries) belongs to the caller; nothing here knows about Prefect.

Each name is imported from its step's package when first asked for (`stages.run_clean`), so a
command that runs one stage does not import the libraries of the others.
"""
from __future__ import annotations

import importlib

# name -> the module that defines it, in data-path order
HOMES = {
    "run_ingest": "transforms.ingest.stage",
    "run_clean": "transforms.clean.stage",
    "run_select": "transforms.select.stage",
    "selection_dry_run": "transforms.select.stage",
    "run_dedup": "transforms.dedup.stage",
    "run_decontaminate": "transforms.decontaminate.stage",
    "contamination_hits": "transforms.decontaminate.stage",
    "run_convert": "transforms.convert.stage",
    "run_sample": "transforms.sample.stage",
    "run_export": "transforms.export.stage",
    "run_map_stage": "transforms.engines",
}

__all__ = list(HOMES)


def __getattr__(name: str):
    home = HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *HOMES})
