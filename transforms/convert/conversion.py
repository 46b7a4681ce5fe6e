"""Conversion of documents into conversations, and the ledger every backend writes through.

`template`: structured entries (herb monographs, terminology) become question-answer pairs, one
conversation per section, with questions written per section kind, read from the cleaned text
(numbers repaired or the answer rejected); the sections no template takes stay as the entry's
text row. Deterministic: the same entry always gives the same conversations. `native`: conversations from dialogue and instruction datasets
pass through, normalised (turns trimmed, an empty system turn dropped, the configured system
prompt added where none is). `openai` (transforms/convert/llm): passages become questions and answers
written by an LLM. A document no backend converts stays as text (format "text" in the corpus).
"""
from __future__ import annotations

from collections import Counter

import pyarrow as pa

from schemas import CONVERSATIONS, DOCUMENTS, conform, conversation_id, document_id, dumps_meta, loads_meta, nullable_schema

from transforms.ingest.importers.monographs import PROCESSED, entry_text, read_entry_text
from .numbers import lost_numbers, repair_digits

TEMPLATE_VERSION = "template-2"

# Section of a monograph -> the question it answers. Sections not listed (lab assays, 注) stay in
# the entry's text row, so nothing the entry says is lost.
MONOGRAPH_QUESTIONS = {
    "性味与归经": "{name}的性味与归经是什么？",
    "性味": "{name}的性味是什么？",
    "功能与主治": "{name}有哪些功效？主治哪些病证？",
    "用法与用量": "{name}的用法与常用剂量是怎样的？",
    "注意": "使用{name}有哪些注意事项？",
    "禁忌": "使用{name}有哪些禁忌？",
    "性状": "{name}药材的性状有什么特点？",
    "贮藏": "{name}应当如何贮藏？",
    "炮制": "{name}如何炮制？",
    "制法": "{name}是如何制成的？",
    "用途": "{name}有什么用途？",
}
SOURCE_SECTION = "来源"
# Answers longer than this are laboratory detail, not knowledge a clinician asks for: they stay
# in the text row.
MAX_ANSWER_CHARS = 1200
TEXT_KIND = "monograph_text"


def monograph_conversion(meta: dict, text: str) -> dict:
    """A monograph document -> {"pairs": [(section, question, answer)], "rejected": [(section,
    question, answer, reason)], "text": what stays as text or None, "to_text": [section],
    "digits_repaired": n}.

    The entry is read back from the document's text (transforms.ingest.importers.monographs.
    read_entry_text), so questions and answers are the cleaned text the clean stage wrote (its
    normalisation, OpenCC policy and PII redaction), not the sections as imported. OCR digit
    slips in answers are repaired (transforms.convert.numbers.repair_digits); an answer with a lost
    number is rejected with `lost_number:<fragment>` and its section is neither a question nor
    text. Every other section is either a question and answer or stays in the text row (with
    the name, pinyin and Latin lines), as do answers over MAX_ANSWER_CHARS, unless it lost a
    number too: then it is left out of the text, named with its reason in "text_rejected"
    ({section: "lost_number:<fragment>"}; 【检查】水分不得过% is no fact)."""
    entry = read_entry_text(text) if text else None
    if entry is None or not (entry["sections"] or entry["description"]):
        entry = _entry_from_meta(meta)  # a document whose text is not an entry's layout
    name = entry["name"] or meta.get("name") or ""
    result = {"pairs": [], "rejected": [], "text": None, "to_text": [], "text_rejected": {}, "digits_repaired": 0}
    if not name:
        return result
    candidates = []
    description = (entry.get("description") or "").strip()
    if description:
        candidates.append((SOURCE_SECTION, f"{name}是什么药材？来源于哪种植物或动物？", description))
    for section, body in entry["sections"].items():
        question = MONOGRAPH_QUESTIONS.get(section)
        body = (body or "").strip()
        if question and body and len(body) <= MAX_ANSWER_CHARS:
            candidates.append((section, question.format(name=name), _answer(name, section, body)))
    done: set[str] = set()
    for section, question, answer in candidates:
        answer, repaired = repair_digits(answer)
        result["digits_repaired"] += repaired
        lost = lost_numbers(answer)
        if lost:
            result["rejected"].append((section, question, answer, f"lost_number:{lost[0]}"))
        else:
            result["pairs"].append((section, question, answer))
        done.add(section)
    rest = [b for b in entry["blocks"] if not (b["sections"] and set(b["sections"]) <= done)]
    # A section left as text states its numbers too: one that lost a number is dropped from the
    # text as an answer would be (the whole block, so no line is read under another heading; a
    # block of the processed slices (饮片) is named 饮片:<section>).
    kept_blocks = []
    for block in rest:
        named = block["sections"] or [f"{PROCESSED}:{name}" for name in block["names"]]
        lost = lost_numbers(repair_digits("\n".join(block["lines"]))[0]) if named else []
        for section in named if lost else ():
            result["text_rejected"].setdefault(section, f"lost_number:{lost[0]}")
        if not lost:
            kept_blocks.append(block)
    while kept_blocks and kept_blocks[-1]["lines"] == [PROCESSED]:  # a 饮片 heading left with nothing under it
        kept_blocks.pop()
    rest = kept_blocks
    dropped = set(result["text_rejected"])
    result["to_text"] = sorted(set(entry["sections"]) - done - dropped)
    if SOURCE_SECTION not in done and description:
        result["to_text"].insert(0, SOURCE_SECTION)
    if any(line != PROCESSED for b in rest for line in b["lines"]) or SOURCE_SECTION not in done and description:
        remainder = entry_text(entry, rest, description=SOURCE_SECTION not in done)
        result["text"] = repair_digits(remainder)[0]
    return result


def _entry_from_meta(meta: dict) -> dict:
    """An entry from meta alone (a document without its text)."""
    sections = meta.get("sections") or {}
    blocks = [{"names": [n], "lines": [f"【{n}】{t}"], "sections": [n]} for n, t in sections.items()]
    return {"name": meta.get("name") or "", "pinyin": meta.get("pinyin"), "latin": meta.get("latin"),
            "description": meta.get("description"), "sections": sections, "blocks": blocks,
            "body": [line for b in blocks for line in b["lines"]]}


def monograph_pairs(meta: dict, text: str) -> list[tuple[str, str, str]]:
    """(section, question, answer) for each section of a monograph that becomes a question."""
    return monograph_conversion(meta, text)["pairs"]


def _answer(name: str, section: str, body: str) -> str:
    if section in ("性味与归经", "性味"):
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


def _term_conversion(meta: dict, text: str) -> dict:
    return {"pairs": term_pairs(meta, text), "rejected": [], "text": None, "to_text": [], "text_rejected": {}, "digits_repaired": 0}


# meta["kind"] of a document -> the template that turns it into questions and answers.
TEMPLATES = {"monograph": monograph_conversion, "term": _term_conversion}


def convert_documents(batch: pa.RecordBatch | pa.Table, params: dict) -> dict:
    """Documents -> {"conversations": produced, "documents": left as text, "rejected": removed
    documents, "converted": n, "remainders": text rows of converted entries (sections no
    template took), "rejected_conversations": candidate answers rejected (reason
    `lost_number:...`), "sections": counts per section of what became a question, text, a
    rejected answer, or text left out for a lost number ("text_rejected"; the remainder's meta
    names them in `sections_dropped` with their reasons), and OCR digit runs repaired}.

    A document that yields conversations (or rejected candidates) counts as kept (converted);
    one that yields none stays as text when `keep_text`, else is rejected with reason
    `not_converted`."""
    table = conform(batch, DOCUMENTS)
    system = params.get("system_prompt")
    produced, as_text, rejected_rows, remainders, rejected_candidates = [], [], [], [], []
    sections = {"questions": Counter(), "text": Counter(), "rejected": Counter(), "text_rejected": Counter(), "digits_repaired": 0}

    def conversation(row: dict, section: str, question: str, answer: str) -> dict:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        return {
            "id": conversation_id(row["source"], messages),
            "messages": messages,
            "source": row["source"],
            "category": row["category"],
            "origin_id": row["id"],
            "meta": dumps_meta(
                {"converter": TEMPLATE_VERSION, "section": section, "title": row.get("title"), "url": row.get("url")}
            ),
        }

    # Only the rows a template takes become Python dicts; the others leave as they came (by position).
    metas = [loads_meta(meta) for meta in (table.column("meta").to_pylist() if "meta" in table.schema.names else [None] * table.num_rows)]
    templated = [number for number, meta in enumerate(metas) if meta.get("kind", "") in TEMPLATES]
    rows = dict(zip(templated, table.take(templated).to_pylist())) if templated else {}
    for number, meta in enumerate(metas):
        template = TEMPLATES.get(meta.get("kind", ""))
        row = rows.get(number)
        result = template(meta, row["text"]) if template else None
        if not result or not (result["pairs"] or result["rejected"]):
            (as_text if params.get("keep_text", True) else rejected_rows).append(number)
            continue
        for section, question, answer in result["pairs"]:
            produced.append(conversation(row, section, question, answer))
            sections["questions"][section] += 1
        for section, question, answer, reason in result["rejected"]:
            rejected_candidates.append({**conversation(row, section, question, answer), "reason": reason})
            sections["rejected"][section] += 1
        sections["text"].update(result["to_text"])
        sections["text_rejected"].update(list(result["text_rejected"]))
        sections["digits_repaired"] += result["digits_repaired"]
        if result["text"]:
            remainders.append({
                **row,
                "id": document_id(row["source"], result["text"]),
                "text": result["text"],
                "meta": dumps_meta({**meta, "kind": TEXT_KIND, "origin_id": row["id"], "sections": None,
                                    "sections_as_text": result["to_text"],
                                    **({"sections_dropped": result["text_rejected"]} if result["text_rejected"] else {})}),
            })
    reasons = pa.array([f"not_converted:backend={params.get('backend', 'template')}"] * len(rejected_rows), pa.string())
    out = {
        CONVERSATIONS: conform(pa.Table.from_pylist(produced, schema=nullable_schema(CONVERSATIONS)), CONVERSATIONS),
        DOCUMENTS: table.filter(pa.array([False] * table.num_rows)) if not as_text else _taken_like(table, as_text),
        "rejected": _taken_like(table, rejected_rows, reasons),
        "converted": table.num_rows - len(as_text) - len(rejected_rows),
        "remainders": _rows_like(table, remainders),
        "rejected_conversations": rejected_candidates,
        "sections": sections,
    }
    return out


def _rows_like(table: pa.Table, rows: list[dict], reason: bool = False) -> pa.Table:
    schema = table.schema.append(pa.field("reason", pa.string())) if reason else table.schema
    schema = pa.schema([f.with_nullable(True) for f in schema])
    return pa.Table.from_pylist(rows, schema=schema)


def _taken_like(table: pa.Table, numbers: list[int], reasons: pa.Array | None = None) -> pa.Table:
    """The rows of `table` at `numbers` as `_rows_like` makes them (every field nullable), with
    a `reason` column when `reasons` is given: taken, not rebuilt from Python dicts."""
    taken = table.take(pa.array(numbers, pa.int64()))
    if reasons is not None:
        taken = taken.append_column(pa.field("reason", pa.string()), reasons)
    return taken.cast(pa.schema([f.with_nullable(True) for f in taken.schema]))


NATIVE_VERSION = "native-1"


def normalize_native(batch: pa.RecordBatch | pa.Table, params: dict) -> pa.Table:
    """Dataset conversations as the corpus holds them: turns trimmed, an empty system turn
    dropped, the configured system prompt added where a conversation has none. A conversation
    whose messages change gets the id of its new content, with its old id kept as origin."""
    table = conform(batch, CONVERSATIONS)
    system = params.get("system_prompt")
    rows = table.to_pylist()
    changed = False
    for row in rows:
        messages = [{"role": m["role"], "content": (m["content"] or "").strip()} for m in row["messages"]]
        if messages and messages[0]["role"] == "system" and not messages[0]["content"]:
            messages = messages[1:]
        if system and not (messages and messages[0]["role"] == "system"):
            messages = [{"role": "system", "content": system}] + messages
        if messages != row["messages"]:
            changed = True
            row["origin_id"] = row.get("origin_id") or row["id"]
            row["id"] = conversation_id(row["source"], messages)
            row["messages"] = messages
    if not changed:
        return table
    return conform(pa.Table.from_pylist(rows, schema=table.schema), CONVERSATIONS)


def document_kind(meta: dict, url: str | None = None) -> str:
    """What a document is, for choosing its backend: meta["kind"] from the importer, else a
    chapter of a book, a web page, or plain text."""
    if meta.get("kind"):
        return str(meta["kind"])
    if "chapter" in meta or "book" in meta:
        return "chapter"
    return "page" if url else "text"


class ConversionSink:
    """Where every backend's output goes: conversations (each id written once), documents kept
    as text, and rejected rows with reasons; it keeps the stage's ledger.

    Ledger: documents in = kept (converted, or left as text) + rejected (`not_converted`, only
    without `keep_text`); a converted entry's remainder (sections no template took) is written
    as one more text row, counted in `remainder_text_rows`. Conversations in = native conversations
    (the rows that came in); conversations made = every conversation the stage produced from
    documents, before checks; in + made = kept + rejected, where rejected = LLM candidates that
    failed a check or a request, and repeats of a conversation already written."""

    def __init__(self, writer, flush_rows: int = 1024):
        self.writer = writer
        self.flush_rows = flush_rows
        self.ids: set[str] = set()
        self.counts: Counter = Counter()
        # Template sections per section name: became a question, stayed as text, answer rejected,
        # left out of the text for a lost number.
        self.sections: dict[str, Counter] = {"questions": Counter(), "text": Counter(), "rejected": Counter(), "text_rejected": Counter()}
        self._text_schema = nullable_schema(DOCUMENTS)
        self._buffers: dict[str, list[dict]] = {"conversations": [], "text": [], "rejected_documents": [], "rejected_conversations": []}

    def produced(self, rows: list[dict]) -> None:
        """Conversations made by a backend (not yet counted)."""
        self.counts["conversations_made"] += len(rows)
        for row in rows:
            if row["id"] in self.ids:
                # Two entries can yield the same question and answer (an entry printed twice).
                self._buffers["rejected_conversations"].append({**row, "reason": f"repeated_conversation:{row['id']}"})
            else:
                self.ids.add(row["id"])
                self._buffers["conversations"].append(row)
        self._maybe_flush()

    def native(self, table: pa.Table) -> None:
        self.counts["conversations_in"] += table.num_rows
        self.counts["conversations_native"] += table.num_rows
        self.writer.write(CONVERSATIONS, table)

    def text(self, rows: list[dict], schema: pa.Schema | None = None) -> None:
        """Documents (or passages of them) kept as plain text; `schema`: the input's columns."""
        if schema is not None:
            self._text_schema = pa.schema([f.with_nullable(True) for f in schema])
        self._buffers["text"].extend(rows)
        self._maybe_flush()

    def template_result(self, result: dict) -> None:
        """The output of `convert_documents` for one batch."""
        self.counts["documents_in"] += result["converted"] + result[DOCUMENTS].num_rows + result["rejected"].num_rows
        self.counts["documents_converted"] += result["converted"]
        self.counts["conversations_from_templates"] += result[CONVERSATIONS].num_rows
        self.counts["documents_left_as_text"] += result[DOCUMENTS].num_rows
        self.produced(result[CONVERSATIONS].to_pylist())
        self.writer.write(DOCUMENTS, result[DOCUMENTS])
        self.writer.reject(DOCUMENTS, result["rejected"])
        remainders = result.get("remainders")
        if remainders is not None and remainders.num_rows:
            self.counts["remainder_text_rows"] += remainders.num_rows
            self.writer.write(DOCUMENTS, remainders)
        self.reject_conversations(result.get("rejected_conversations") or [])
        sections = result.get("sections") or {}
        for what in self.sections:
            self.sections[what].update(sections.get(what, {}))
        self.counts["template_digits_repaired"] += sections.get("digits_repaired", 0)

    def reject_documents(self, rows: list[dict]) -> None:
        self._buffers["rejected_documents"].extend(rows)
        self._maybe_flush()

    def reject_conversations(self, rows: list[dict]) -> None:
        """Conversations a backend made but that failed a check (each with a `reason`)."""
        self.counts["conversations_made"] += len(rows)
        self._buffers["rejected_conversations"].extend(rows)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if sum(len(b) for b in self._buffers.values()) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        b = self._buffers
        if b["conversations"]:
            self.writer.write(CONVERSATIONS, pa.Table.from_pylist(b["conversations"], schema=nullable_schema(CONVERSATIONS)))
        if b["text"]:
            self.writer.write(DOCUMENTS, pa.Table.from_pylist(b["text"], schema=self._text_schema))
        if b["rejected_documents"]:
            self.writer.reject(DOCUMENTS, pa.Table.from_pylist(b["rejected_documents"], schema=self._text_schema.append(pa.field("reason", pa.string()))))
        if b["rejected_conversations"]:
            self.writer.reject(CONVERSATIONS, pa.Table.from_pylist(b["rejected_conversations"], schema=_with_reason(CONVERSATIONS)))
        for rows in b.values():
            rows.clear()

    def close(self, manifest) -> None:
        """Flush and fill the manifest's counts of what came in and what was made."""
        self.flush()
        if self.counts["documents_in"]:
            manifest.rows_in[DOCUMENTS] = self.counts["documents_in"]
        if self.counts["conversations_in"]:
            manifest.rows_in[CONVERSATIONS] = self.counts["conversations_in"]
        if self.counts["conversations_made"]:
            manifest.rows_made[CONVERSATIONS] = self.counts["conversations_made"]


def _with_reason(kind: str) -> pa.Schema:
    return nullable_schema(kind).append(pa.field("reason", pa.string()))
