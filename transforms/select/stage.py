"""The select stage: apply the [select] thresholds to the tags clean wrote; and its dry run."""
from __future__ import annotations

import pyarrow as pa

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import StageManifest

from transforms.clean import steps as clean
from transforms.engines import run_map_stage
from transforms.engines.local import kinds_present, read_batches

from . import rules as selection

TEXT_KINDS = (DOCUMENTS, CONVERSATIONS)


def _select_step(batch, context):
    kind, params = context
    return selection.select_batch(batch, kind, params)


def run_select(inputs, output, params, manifest, engine, progress=None) -> StageManifest:
    """Apply the [select] thresholds to the tags the clean stage wrote."""
    result = run_map_stage(_select_step, inputs, output, manifest, engine, TEXT_KINDS, lambda kind: (kind, params), progress)
    return result


def _report_step(batch, context):
    kind, clean_params, select_params = context
    if clean_params is not None:
        batch, _ = clean.STEPS[kind](batch, clean_params)
    return selection.selection_report(batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]), kind, select_params)


def selection_dry_run(inputs, select_params, engine, clean_params: dict | None = None) -> dict:
    """What selection would remove, per kind and rule, with examples; writes nothing. With
    `clean_params`, the inputs are untagged and are cleaned and tagged in memory first."""
    report = {}
    for kind in kinds_present(inputs, TEXT_KINDS):
        parts = list(engine.map(_report_step, read_batches(inputs, kind, engine.batch_rows), (kind, clean_params, select_params)))
        report[kind] = selection.merge_reports(parts)
    return report
