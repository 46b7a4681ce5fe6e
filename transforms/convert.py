"""Conversion of documents into conversations without an LLM.

`template`: structured entries (herb monographs, terminology) become question-answer pairs, one
conversation per section, with questions written per section kind. Deterministic: the same entry
always gives the same conversations. `native`: conversations from dialogue and instruction datasets
pass through unchanged. A document no template fits stays as text (format "text" in the corpus).
"""
from __future__ import annotations

import pyarrow as pa

from schemas import CONVERSATIONS, DOCUMENTS, conform, conversation_id, dumps_meta, loads_meta, nullable_schema

TEMPLATE_VERSION = "template-1"

# Section of a monograph -> the question it answers. Sections not listed (lab assays) are skipped.
MONOGRAPH_QUESTIONS = {
    "性味与归经": "{name}的性味与归经是什么？",
    "功能与主治": "{name}有哪些功效？主治哪些病证？",
    "用法与用量": "{name}的用法与常用剂量是怎样的？",
    "注意": "使用{name}有哪些注意事项？",
    "性状": "{name}药材的性状有什么特点？",
    "贮藏": "{name}应当如何贮藏？",
    "炮制": "{name}如何炮制？",
}
# Answers longer than this are laboratory detail, not knowledge a clinician asks for.
MAX_ANSWER_CHARS = 1200


def monograph_pairs(meta: dict, text: str) -> list[tuple[str, str, str]]:
    """(section, question, answer) for each section of a monograph that a template covers."""
    name = meta.get("name") or ""
    pairs = []
    description = (meta.get("description") or "").strip()
    if name and description:
        pairs.append(("来源", f"{name}是什么药材？来源于哪种植物或动物？", description))
    for section, body in (meta.get("sections") or {}).items():
        question = MONOGRAPH_QUESTIONS.get(section)
        body = (body or "").strip()
        if question and name and body and len(body) <= MAX_ANSWER_CHARS:
            pairs.append((section, question.format(name=name), _answer(name, section, body)))
    return pairs


def _answer(name: str, section: str, body: str) -> str:
    if section == "性味与归经":
        return f"{name}{body}" if not body.startswith(name) else body
    if section == "功能与主治":
        return f"{name}的功能与主治：{body}"
    return body


def term_pairs(meta: dict, text: str) -> list[tuple[str, str, str]]:
    term = meta.get("term") or meta.get("name")
    definition = (meta.get("definition") or text or "").strip()
    if not term or not definition:
        return []
    return [("定义", f"中医所说的“{term}”是指什么？", f"{term}：{definition}")]


# meta["kind"] of a document -> the template that turns it into (section, question, answer)s.
TEMPLATES = {"monograph": monograph_pairs, "term": term_pairs}


def convert_documents(batch: pa.RecordBatch | pa.Table, params: dict) -> dict[str, pa.Table]:
    """Documents -> {"conversations": produced, "documents": left as text, "rejected": removed}.

    A document that yields conversations counts as kept (converted); one that yields none stays
    as text when `keep_text`, else is rejected with reason `not_converted`."""
    table = conform(batch, DOCUMENTS)
    system = params.get("system_prompt")
    produced, as_text, rejected_rows = [], [], []
    for row in table.to_pylist():
        meta = loads_meta(row.get("meta"))
        template = TEMPLATES.get(meta.get("kind", ""))
        pairs = template(meta, row["text"]) if template else []
        if not pairs:
            if params.get("keep_text", True):
                as_text.append(row)
            else:
                rejected_rows.append({**row, "reason": f"not_converted:backend={params.get('backend', 'template')}"})
            continue
        for section, question, answer in pairs:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            produced.append(
                {
                    "id": conversation_id(row["source"], messages),
                    "messages": messages,
                    "source": row["source"],
                    "category": row["category"],
                    "origin_id": row["id"],
                    "meta": dumps_meta(
                        {"converter": TEMPLATE_VERSION, "section": section, "title": row.get("title"), "url": row.get("url")}
                    ),
                }
            )
    out = {
        CONVERSATIONS: conform(pa.Table.from_pylist(produced, schema=nullable_schema(CONVERSATIONS)), CONVERSATIONS),
        DOCUMENTS: table.filter(pa.array([False] * table.num_rows)) if not as_text else _rows_like(table, as_text),
        "rejected": _rows_like(table, rejected_rows, reason=True),
        "converted": table.num_rows - len(as_text) - len(rejected_rows),
    }
    return out


def _rows_like(table: pa.Table, rows: list[dict], reason: bool = False) -> pa.Table:
    schema = table.schema.append(pa.field("reason", pa.string())) if reason else table.schema
    schema = pa.schema([f.with_nullable(True) for f in schema])
    return pa.Table.from_pylist(rows, schema=schema)
