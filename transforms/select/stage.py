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
    kind, params, conflicts = context
    return selection.select_batch(batch, kind, params, conflicts)


def _answers_step(batch, params):
    """The prompt and answer digests of the conversations of a batch that pass the rules."""
    from .conflicts import AnswerIndex

    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    passing = pa.array([r is None for r in selection.rule_reasons(table, CONVERSATIONS, params)], pa.bool_())
    index = AnswerIndex()
    index.add(table.filter(passing))
    return index


def answer_conflicts(inputs, params, engine) -> tuple[dict[int, int], int, list[dict]]:
    """Prompts given several different answers by the conversations that pass the [select]
    rules, the rows holding them, and examples; one pass over the conversations (digests only,
    in this process)."""
    from .conflicts import AnswerIndex, conflict_examples

    if CONVERSATIONS not in kinds_present(inputs, TEXT_KINDS):
        return {}, 0, []
    index = AnswerIndex()
    for batch in read_batches(inputs, CONVERSATIONS, engine.batch_rows):
        index.merge(_answers_step(batch, params))
    conflicts = index.conflicts()
    tables = (pa.Table.from_batches([b]) for b in read_batches(inputs, CONVERSATIONS, engine.batch_rows)) if conflicts else ()
    return conflicts, sum(index.rows[p] for p in conflicts), conflict_examples(tables, conflicts)


def run_select(inputs, output, params, manifest, engine, progress=None) -> StageManifest:
    """Apply the [select] thresholds to the tags the clean stage wrote; then drop (or keep, by
    `conflicting_answers`) the conversations whose prompt has several different answers."""
    mode = params.get("conflicting_answers", "drop")
    if mode not in selection.CONFLICT_MODES:
        raise ValueError(f"select.conflicting_answers must be one of {', '.join(selection.CONFLICT_MODES)}, got {mode!r}")
    conflicts, rows, examples = answer_conflicts(inputs, params, engine)
    # rows: conversations holding a prompt in conflict (rejected when the mode is drop)
    manifest.stats["conflicting_answers"] = {
        "mode": mode, "prompts": len(conflicts), "answers": sum(conflicts.values()), "rows": rows, "examples": examples,
    }
    return run_map_stage(
        _select_step, inputs, output, manifest, engine, TEXT_KINDS,
        lambda kind: (kind, params, conflicts if kind == CONVERSATIONS else None), progress,
    )


def _report_step(batch, context):
    kind, clean_params, select_params = context
    if clean_params is not None:
        batch, _ = clean.STEPS[kind](batch, clean_params)
    return selection.selection_report(batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]), kind, select_params)


def selection_dry_run(inputs, select_params, engine, clean_params: dict | None = None) -> dict:
    """What selection would remove, per kind and rule, with examples; writes nothing. With
    `clean_params`, the inputs are untagged and are cleaned and tagged in memory first.

    Conversations that pass every rule but give a prompt a different answer than another row
    are counted under `conflicting_answers` when `[select] conflicting_answers = "drop"` (on
    tagged inputs: the conflicts need the rules' verdicts first), as the select stage drops them."""
    report = {}
    for kind in kinds_present(inputs, TEXT_KINDS):
        parts = list(engine.map(_report_step, read_batches(inputs, kind, engine.batch_rows), (kind, clean_params, select_params)))
        report[kind] = selection.merge_reports(parts)
    if CONVERSATIONS in report and clean_params is None and select_params.get("conflicting_answers", "drop") == "drop":
        conflicts, rows, examples = answer_conflicts(inputs, select_params, engine)
        if rows:
            part = report[CONVERSATIONS]
            part["would_remove"] += rows
            part["rules"]["conflicting_answers"] = {
                "would_remove": rows, "first_reason_for": rows, "by_kind": {},
                "examples": [{"reason": f"conflicting_answers:{len(e['answers'])}", "id": a["id"], "text": f"{e['prompt']} -> {a['answer']}"}
                             for e in examples[:3] for a in e["answers"][:2]],
            }
    return report
