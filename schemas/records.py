"""The nouns of the corpus: record kinds, their Arrow schemas and stable ids."""
from __future__ import annotations

import hashlib
import json
from typing import Iterable, Mapping, Sequence

import pyarrow as pa

SCHEMA_VERSION = "1.0"

# Source classes of HuatuoGPT-II's priority sampling, most general first.
CATEGORIES = ("web", "literature", "encyclopedia", "books", "sft")
ROLES = ("system", "user", "assistant")
FORMATS = ("chat", "text")

# Dataset kinds: each is a sub-folder of a dataset directory.
DOCUMENTS = "documents"
CONVERSATIONS = "conversations"
PAGES = "pages"
CORPUS = "corpus"
KINDS = (DOCUMENTS, CONVERSATIONS, PAGES)
# Audit kinds written beside the records by the dedup stage; no stage reads them as input.
CLUSTERS = "clusters"
REPEATED_PARAGRAPHS = "repeated_paragraphs"

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("title", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("meta", pa.string()),
    ]
)

CONVERSATION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("messages", MESSAGES_TYPE, nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        # Provenance: the document or dataset record this conversation came from.
        pa.field("origin_id", pa.string()),
        pa.field("meta", pa.string()),
    ]
)

# A fetched web page before extraction.
PAGE_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("final_url", pa.string()),
        pa.field("status", pa.int32()),
        pa.field("fetched_at", pa.string()),
        pa.field("content_type", pa.string()),
        pa.field("charset", pa.string()),
        pa.field("body", pa.string()),
        pa.field("content_hash", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
    ]
)

CORPUS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        pa.field("messages", MESSAGES_TYPE),
        pa.field("text", pa.string()),
        pa.field("meta", pa.string()),
    ]
)

# Packed token sequences for GPU trainers (the pack stage): one row per training sequence.
SEQUENCES = "sequences"
SEQUENCE_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        # -100 on system and user tokens and on padding: only answers, their EOS and texts train.
        pa.field("labels", pa.list_(pa.int32()), nullable=False),
        # Restart at 0 in each packed item (and in the padding after the last one).
        pa.field("position_ids", pa.list_(pa.int32()), nullable=False),
        # Token lengths of the items in the row, in order; cu_seqlens = [0, *cumsum(seq_lens)].
        pa.field("seq_lens", pa.list_(pa.int32()), nullable=False),
        # The corpus id of each item; a split text repeats its id, item_offsets telling the pieces apart.
        pa.field("item_ids", pa.list_(pa.string()), nullable=False),
        # Where each item starts inside its corpus row's tokens (0 unless the row was split).
        pa.field("item_offsets", pa.list_(pa.int32()), nullable=False),
        # Corpus position (training order) of the row's first item.
        pa.field("first_position", pa.int64(), nullable=False),
    ]
)

# One row per member of a duplicate cluster: which row was kept and how alike each member is.
CLUSTER_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # documents or conversations
        pa.field("id", pa.string(), nullable=False),
        pa.field("cluster", pa.string(), nullable=False),  # id of the kept row
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("similarity", pa.float64(), nullable=False),  # estimated Jaccard to the kept row
        pa.field("match", pa.string(), nullable=False),  # kept | exact | near
        pa.field("source", pa.string()),
        pa.field("prior", pa.bool_()),  # the row is in the corpus built before (the index)
    ]
)

# A line recurring across many documents of a source, removed from their text.
REPEATED_PARAGRAPH_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("paragraph", pa.string(), nullable=False),
        pa.field("documents", pa.int64(), nullable=False),  # documents of the source holding it
        pa.field("share", pa.float64(), nullable=False),  # of the source's documents
        pa.field("removed", pa.int64(), nullable=False),  # occurrences removed
    ]
)

SCHEMAS = {
    DOCUMENTS: DOCUMENT_SCHEMA,
    CONVERSATIONS: CONVERSATION_SCHEMA,
    PAGES: PAGE_SCHEMA,
    CORPUS: CORPUS_SCHEMA,
    CLUSTERS: CLUSTER_SCHEMA,
    REPEATED_PARAGRAPHS: REPEATED_PARAGRAPH_SCHEMA,
    SEQUENCES: SEQUENCE_SCHEMA,
}

REQUIRED = {
    DOCUMENTS: ("id", "text", "source", "category"),
    CONVERSATIONS: ("id", "messages", "source", "category"),
    PAGES: ("url", "source", "category"),
    CORPUS: ("id", "position", "source", "category", "format"),
    CLUSTERS: ("kind", "id", "cluster", "kept", "similarity", "match"),
    REPEATED_PARAGRAPHS: ("source", "paragraph", "documents", "share", "removed"),
    SEQUENCES: tuple(SEQUENCE_SCHEMA.names),
}

REASON_FIELD = pa.field("reason", pa.string(), nullable=False)


def nullable_schema(kind: str) -> pa.Schema:
    """A kind's schema with every field nullable: for building tables before `conform` checks them."""
    return pa.schema([f.with_nullable(True) for f in SCHEMAS[kind]])


def rejected_schema(kind: str) -> pa.Schema:
    """A rejected row keeps every column of its kind, plus why it was removed."""
    return SCHEMAS[kind].append(REASON_FIELD)


def content_id(*parts: str) -> str:
    """A stable id derived from content: the same parts always give the same id."""
    digest = hashlib.blake2b(digest_size=10)
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def document_id(source: str, text: str) -> str:
    return content_id("doc", source, text)


def conversation_id(source: str, messages: Sequence[Mapping[str, str]]) -> str:
    return content_id("conv", source, *(f"{m['role']}:{m['content']}" for m in messages))


# json.dumps(meta, ensure_ascii=False), without building an encoder per call.
_META_ENCODER = json.JSONEncoder(ensure_ascii=False)
try:
    from json.encoder import c_make_encoder as _c_make_encoder
except ImportError:  # a Python without the json accelerator
    _c_make_encoder = None


def dumps_meta(meta: Mapping | None) -> str | None:
    """The JSON of a record's meta (json.dumps(meta, ensure_ascii=False)); None for an empty one."""
    if not meta:
        return None
    if _c_make_encoder is None or not isinstance(meta, dict):
        return _META_ENCODER.encode(meta)
    # What JSONEncoder.encode runs for a dict, less its per-call set-up (a fresh circular-reference
    # table each call, as there).
    return "".join(_c_make_encoder(
        {}, _META_ENCODER.default, json.encoder.encode_basestring, None, ": ", ", ", False, False, True
    )(meta, 0))


_SCAN_JSON = json.JSONDecoder().scan_once


def loads_meta(meta: str | None) -> dict:
    """The meta a record's JSON holds (json.loads); {} for none."""
    if not meta:
        return {}
    if meta[0] == "{" and meta[-1] == "}":
        # json.loads less its whitespace handling, which an object from end to end has no use for.
        try:
            value, end = _SCAN_JSON(meta, 0)
        except (StopIteration, ValueError):
            value, end = None, -1
        if end == len(meta):
            return value
    return json.loads(meta)


def conversation_text(messages: Iterable[Mapping[str, str]]) -> str:
    """All the words of a conversation, one turn a line: what dedup and decontamination read."""
    return "\n".join(m["content"] for m in messages)


def kind_of(schema: pa.Schema) -> str | None:
    """Which record kind a table's columns make it, or None."""
    names = set(schema.names)
    for kind in (CORPUS, CONVERSATIONS, DOCUMENTS, PAGES):
        if set(REQUIRED[kind]) <= names:
            return kind
    return None


def conform(table: pa.Table | pa.RecordBatch, kind: str, extra: bool = True) -> pa.Table:
    """Cast a table to a kind's schema: missing optional columns are added as nulls, stage-added
    columns are kept after them (when `extra`), a missing required column is an error."""
    schema = SCHEMAS[kind]
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    missing = [name for name in REQUIRED[kind] if name not in table.schema.names]
    if missing:
        raise ValueError(f"{kind} rows need column(s) {', '.join(missing)}")
    columns, fields = [], []
    for field in schema:
        if field.name in table.schema.names:
            column = table.column(field.name)
            if column.type != field.type:
                column = column.cast(field.type)
        else:
            column = pa.nulls(table.num_rows, field.type)
        columns.append(column)
        fields.append(field.with_nullable(True) if field.name not in REQUIRED[kind] else field)
    if extra:
        for field in table.schema:
            if field.name not in schema.names:
                columns.append(table.column(field.name))
                fields.append(field)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))
