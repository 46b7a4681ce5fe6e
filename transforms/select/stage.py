"""The select stage: apply the [select] thresholds to the tags clean wrote; and its dry run."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import DatasetError, StageManifest

from transforms.clean import steps as clean
from transforms.engines import run_map_stage
from transforms.engines.local import kinds_present, read_batches

from . import rules as selection

TEXT_KINDS = (DOCUMENTS, CONVERSATIONS)


def _select_step(batch, context):
    kind, params, conflicts = context
    return selection.select_batch(batch, kind, params, conflicts)


def _answers_step(batch, params) -> tuple[np.ndarray, list]:
    """(passing, keys) of a batch of conversations: whether each row passes the rules, and the
    prompt and answer digests of every row (`conflicts.conversation_keys`)."""
    from .conflicts import conversation_keys

    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    passing = np.array([r is None for r in selection.rule_reasons(table, CONVERSATIONS, params)], bool)
    return passing, conversation_keys(table.column("messages").to_pylist())


def answer_conflicts(inputs, params, engine) -> tuple[dict[int, int], int, list[dict]]:
    """Prompts given several different answers by the conversations that pass the [select]
    rules, the rows holding them, and examples; one pass over the conversations (digests only,
    in this process)."""
    conflicts, rows, examples, _ = _answer_conflicts(inputs, params, engine)
    return conflicts, rows, examples


def _answer_conflicts(inputs, params, engine):
    """answer_conflicts, and the select step's ConflictingRows. Every row's digests are kept
    (17 bytes a row, in read order): the second pass, only when there are conflicts, reads the
    rows in conflict for the examples and the ids of those passing the rules."""
    from .conflicts import AnswerIndex, ConflictingRows, keyed_conflict_examples, other_rows

    if CONVERSATIONS not in kinds_present(inputs, TEXT_KINDS):
        return {}, 0, [], {}
    index = AnswerIndex()
    parts = []
    for batch in read_batches(inputs, CONVERSATIONS, engine.batch_rows):
        passing, keys = _answers_step(batch, params)
        index.add_keys(key for key, passes in zip(keys, passing) if passes)
        parts.append((
            passing,
            np.fromiter((key is not None for key in keys), bool, len(keys)),
            np.fromiter((key[0] if key is not None else 0 for key in keys), np.uint64, len(keys)),
            np.fromiter((key[1] if key is not None else 0 for key in keys), np.uint64, len(keys)),
        ))
    conflicts = index.conflicts()
    rows = sum(index.rows[p] for p in conflicts)
    if not conflicts:
        return conflicts, rows, [], conflicts
    passing, has_key, prompts, answers = (np.concatenate([part[i] for part in parts]) for i in range(4))
    in_conflict = has_key & np.isin(prompts, np.fromiter(conflicts, np.uint64, len(conflicts)))
    ids: set[str] = set()
    # Per prompt in conflict, its passing rows in read order: (answer digest, id, source).
    holders: dict[int, list[tuple[int, str, str]]] = {}
    keyed = []  # the rows in conflict, passing or not, with their digests
    offset = 0
    for batch in read_batches(inputs, CONVERSATIONS, engine.batch_rows):
        span = slice(offset, offset + batch.num_rows)
        offset += batch.num_rows
        hits = np.flatnonzero(in_conflict[span])
        if not len(hits):
            continue
        table = pa.Table.from_batches([batch]).take(hits)
        row_ids = table.column("id").to_pylist()
        sources = table.column("source").to_pylist()
        digests = [(int(p), int(a)) for p, a in zip(prompts[span][hits].tolist(), answers[span][hits].tolist())]
        for i in np.flatnonzero(passing[span][hits]).tolist():
            ids.add(row_ids[i])
            holders.setdefault(digests[i][0], []).append((digests[i][1], row_ids[i], sources[i]))
        keyed.append((table, digests))
    if offset != len(passing):
        raise DatasetError(f"conversations changed while selecting: {offset} rows read, {len(passing)} before")
    return conflicts, rows, keyed_conflict_examples(keyed, conflicts), ConflictingRows(conflicts, ids, other_rows(holders))


def run_select(inputs, output, params, manifest, engine, progress=None) -> StageManifest:
    """Apply the [select] thresholds to the tags the clean stage wrote; then drop (or keep, by
    `conflicting_answers`) the conversations whose prompt has several different answers."""
    mode = params.get("conflicting_answers", "drop")
    if mode not in selection.CONFLICT_MODES:
        raise ValueError(f"select.conflicting_answers must be one of {', '.join(selection.CONFLICT_MODES)}, got {mode!r}")
    conflicts, rows, examples, conflicting = _answer_conflicts(inputs, params, engine)
    # rows: conversations holding a prompt in conflict (rejected when the mode is drop)
    manifest.stats["conflicting_answers"] = {
        "mode": mode, "prompts": len(conflicts), "answers": sum(conflicts.values()), "rows": rows, "examples": examples,
    }
    return run_map_stage(
        _select_step, inputs, output, manifest, engine, TEXT_KINDS,
        lambda kind: (kind, params, conflicting if kind == CONVERSATIONS else None), progress,
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
