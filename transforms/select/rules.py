"""Selection: thresholds from the `[select]` config applied to the tag columns the clean stage wrote.

A row that fails a rule is rejected with the first failing rule's column, value and threshold
(`han_ratio:0.21<0.5`); the length rules name the body kind too
(`too_short:cross_reference:body_chars=3<min_chars=20`). A threshold of None, or the rule's key in `disable`, turns it off; a NaN tag (not computed, e.g. a
domain score without a model) never fails a rule. `selection_report` counts, for every rule,
the rows it would remove alone and as the first failing rule, with examples: the dry run.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import CONVERSATIONS, conversation_text

from transforms.clean.entries import COMPLETE, KINDS


@dataclass(frozen=True)
class Rule:
    param: str  # the [select] key holding the threshold
    column: str  # the tag column it reads
    keep_at_least: bool  # True: value must be >= threshold; False: <= threshold
    # Only rows whose `body_kind` is one of these (None: every row); the reason then names the
    # kind, after `label` (too_short:cross_reference:body_chars=3<min_chars=20).
    kinds: frozenset | None = None
    label: str | None = None


# Length counts the body a reader reads (transforms/entries.py): a whole short entry (南瓜: 甘温，
# 补中益气……) meets the lower `min_entry_chars`; fragments, cross-references and untitled texts
# meet `min_chars`.
ENTRY_KINDS = frozenset(COMPLETE)
OTHER_KINDS = frozenset(KINDS) - ENTRY_KINDS


# In the order a row's reason is chosen: language first, then length, then the rest.
RULES = (
    Rule("min_lang_score", "lang_score", True),
    Rule("min_entry_chars", "body_chars", True, ENTRY_KINDS, "too_short"),
    Rule("min_chars", "body_chars", True, OTHER_KINDS, "too_short"),
    Rule("max_chars", "chars", False),
    Rule("min_han_chars", "han_chars", True),
    Rule("min_han_ratio", "han_ratio", True),
    Rule("max_symbol_ratio", "symbol_ratio", False),
    Rule("max_digit_ratio", "digit_ratio", False),
    Rule("min_mean_line_chars", "mean_line_chars", True),
    Rule("min_punct_line_ratio", "punct_line_ratio", True),
    Rule("max_dup_line_ratio", "dup_line_ratio", False),
    Rule("max_dup_ngram_ratio", "dup_ngram_ratio", False),
    Rule("max_bullet_ratio", "bullet_ratio", False),
    Rule("max_ellipsis_ratio", "ellipsis_ratio", False),
    Rule("max_flagged_per_kchar", "flagged_per_kchar", False),
    Rule("max_debris_ratio", "debris_ratio", False),
    Rule("max_lost_glyphs_per_kchar", "lost_glyphs_per_kchar", False),
    Rule("min_domain_lexicon", "domain_lexicon", True),
    Rule("min_domain_score", "domain_score", True),
)
# Rules that read a text's form; dialogue turns are short and informal, so only these apply to
# conversations (the others would judge chat by the standards of prose).
CONVERSATION_RULES = frozenset({"lang", "min_lang_score", "max_flagged_per_kchar", "max_debris_ratio", "min_domain_lexicon", "min_domain_score"})


class MissingTag(ValueError):
    """A threshold is set for a column the clean stage did not write."""


def _fmt(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def rule_failures(table: pa.Table, params: dict, kind: str) -> list[tuple[str, np.ndarray, list[str | None]]]:
    """For every active rule: (name, mask of failing rows, reason per row or None)."""
    failures = []
    n = table.num_rows
    allowed = params.get("languages")
    applies = (lambda name: name in CONVERSATION_RULES) if kind == CONVERSATIONS else (lambda name: True)
    if allowed and applies("lang"):
        if "lang" not in table.schema.names:
            raise MissingTag("select.languages needs the `lang` column: run the clean stage first")
        langs = table.column("lang").to_pylist()
        allowed_set = set(allowed)
        mask = np.array([(lang or "") not in allowed_set for lang in langs], bool)
        label = ",".join(allowed)
        failures.append(("lang", mask, [f"lang:{lang or 'none'}(allowed={label})" if bad else None for lang, bad in zip(langs, mask)]))
    disabled = set(params.get("disable") or ())
    for rule in RULES:
        threshold = params.get(rule.param)
        if threshold is None or rule.param in disabled or not applies(rule.param):
            continue
        if rule.column not in table.schema.names:
            raise MissingTag(f"select.{rule.param} needs the `{rule.column}` tag, which the clean stage did not write")
        values = table.column(rule.column).to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(invalid="ignore"):
            mask = values < threshold if rule.keep_at_least else values > threshold
        mask &= ~np.isnan(values)
        kinds = None
        if rule.kinds is not None:
            if "body_kind" not in table.schema.names:
                raise MissingTag(f"select.{rule.param} needs the `body_kind` tag, which the clean stage did not write")
            kinds = table.column("body_kind").to_pylist()
            mask &= np.array([kind in rule.kinds for kind in kinds], bool)
        op = "<" if rule.keep_at_least else ">"
        reasons = [None] * n
        for i in np.flatnonzero(mask):
            value = values[i]
            if kinds is not None:
                reasons[i] = f"{rule.label}:{kinds[i]}:{rule.column}={int(value)}{op}{rule.param}={_fmt(threshold)}"
                continue
            shown = int(value) if rule.column in ("chars", "han_chars") else float(value)
            reasons[i] = f"{rule.column}:{_fmt(shown)}{op}{_fmt(threshold)}"
        failures.append((rule.param, mask, reasons))
    return failures


CONFLICT_MODES = ("drop", "keep")


def select_batch(
    batch: pa.RecordBatch | pa.Table, kind: str, params: dict, conflicts: dict[int, int] | None = None
) -> tuple[pa.Table, pa.Table]:
    """(kept, rejected): a row fails with its first failing rule; then, with `conflicts`
    (`conflicts.AnswerIndex.conflicts()` of the rows passing the rules) and
    `conflicting_answers = "drop"`, a conversation whose prompt has several different answers is
    rejected as `conflicting_answers:<answers> unlike <id> (<source>)`, naming a row with the same
    prompt and another answer (from `conflicts.others` of a ConflictingRows, else among the rows
    of `batch` that pass the rules)."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    reasons = rule_reasons(table, kind, params)
    if conflicts and kind == CONVERSATIONS and params.get("conflicting_answers", "drop") == "drop":
        from .conflicts import ConflictingRows, conflicting_rows, table_other_rows

        if isinstance(conflicts, ConflictingRows):
            others = conflicts.others
        else:  # the conflicts of these rows: the other row is one of those passing the rules
            others = table_other_rows(table, conflicts, [r is None for r in reasons])
        row_ids = table.column("id").to_pylist() if others else []
        for i, answers in enumerate(conflicting_rows(table, conflicts)):
            if answers is not None and reasons[i] is None:
                other = others.get(row_ids[i]) if others else None
                reasons[i] = f"conflicting_answers:{answers}" + (f" unlike {other[0]} ({other[1]})" if other else "")
    rejected_mask = pa.array([r is not None for r in reasons], pa.bool_())
    kept = table.filter(pc.invert(rejected_mask))
    rejected = table.filter(rejected_mask).append_column("reason", pa.array([r for r in reasons if r is not None], pa.string()))
    return kept, rejected


def rule_reasons(table: pa.Table, kind: str, params: dict) -> list[str | None]:
    """Per row, the reason of its first failing threshold rule, or None."""
    reasons: list[str | None] = [None] * table.num_rows
    for _, mask, failing in rule_failures(table, params, kind):
        for i in np.flatnonzero(mask):
            if reasons[i] is None:
                reasons[i] = failing[i]
    return reasons


def selection_report(table: pa.Table, kind: str, params: dict, examples: int = 3, example_chars: int = 80) -> dict:
    """What each rule would remove: alone, as the first failing rule, and a few examples."""
    failures = rule_failures(table, params, kind)
    first_taken = np.zeros(table.num_rows, bool)
    rules = {}
    texts = None
    for name, mask, reasons in failures:
        first = mask & ~first_taken
        first_taken |= mask
        if texts is None:
            texts = _texts(table, kind)
        failing = np.flatnonzero(mask)
        # The length rules name a body kind in their reasons: count them, and show each kind.
        kinds = [reasons[int(i)].split(":")[1] if reasons[int(i)].startswith("too_short:") else None for i in failing]
        chosen = failing[:examples]
        if any(kinds):
            firsts = {}
            for i, body_kind in zip(failing, kinds):
                firsts.setdefault(body_kind, []).append(i)
            chosen = [i for group in firsts.values() for i in group[:examples]]
        rules[name] = {
            "would_remove": int(mask.sum()),
            "first_reason_for": int(first.sum()),
            "by_kind": dict(Counter(k for k in kinds if k)),
            "examples": [
                {"id": table.column("id")[int(i)].as_py(), "reason": reasons[int(i)], "text": texts[int(i)][:example_chars]}
                for i in chosen
            ],
        }
    return {"rows": table.num_rows, "would_remove": int(first_taken.sum()), "rules": rules}


def merge_reports(reports: list[dict]) -> dict:
    """One report from the reports of several batches (examples: the first ones found)."""
    merged: dict = {"rows": 0, "would_remove": 0, "rules": {}}
    for report in reports:
        merged["rows"] += report["rows"]
        merged["would_remove"] += report["would_remove"]
        for name, rule in report["rules"].items():
            into = merged["rules"].setdefault(name, {"would_remove": 0, "first_reason_for": 0, "by_kind": {}, "examples": []})
            into["would_remove"] += rule["would_remove"]
            into["first_reason_for"] += rule["first_reason_for"]
            for kind, count in rule.get("by_kind", {}).items():
                into["by_kind"][kind] = into["by_kind"].get(kind, 0) + count
            into["examples"] = _first_examples(into["examples"] + rule["examples"])
    return merged


def _first_examples(examples: list[dict], per_group: int = 3) -> list[dict]:
    """The first examples of each group: of each body kind for the length rules, else of the rule."""
    seen: Counter = Counter()
    kept = []
    for example in examples:
        reason = example["reason"] or ""
        group = reason.split(":")[1] if reason.startswith("too_short:") else ""
        if seen[group] < per_group:
            seen[group] += 1
            kept.append(example)
    return kept


def _texts(table: pa.Table, kind: str) -> list[str]:
    if kind == CONVERSATIONS:
        return [conversation_text(m or []) for m in table.column("messages").to_pylist()]
    return [t or "" for t in table.column("text").to_pylist()]


def describe_report(report: dict) -> str:
    """The dry-run report as text: per kind, per rule, rows it would remove, with examples."""
    lines = []
    for kind, part in report.items():
        lines.append(f"{kind}: {part['rows']} rows, {part['would_remove']} would be removed")
        for name, rule in part["rules"].items():
            lines.append(f"  {name:<24} would remove {rule['would_remove']:>7} (first reason for {rule['first_reason_for']})")
            if rule.get("by_kind"):
                kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(rule["by_kind"].items(), key=lambda kv: -kv[1]))
                lines.append(f"      by body kind: {kinds}")
            for example in rule["examples"]:
                text = example["text"].replace("\n", " ")
                lines.append(f"      {example['reason']}  {example['id']}  {text}")
    return "\n".join(lines) if lines else "no rows"
