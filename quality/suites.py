"""What a valid dataset of each kind looks like: one Great Expectations suite per record kind,
and the flat frame each suite reads.

A suite is built for one table (the corpus's last position depends on its row count), from the
options a build's configuration gives.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from great_expectations.expectations.row_conditions import Column  # noqa: E402

from schemas.records import (  # noqa: E402
    CATEGORIES,
    CONVERSATIONS,
    CORPUS,
    DOCUMENTS,
    FORMATS,
    PAGES,
    REQUIRED,
    SCHEMAS,
)

from .turns import empty_turns, roles_in_order  # noqa: E402

CHAT, TEXT = FORMATS
SEVERITIES = ("critical", "warning")
SUITE_KINDS = (DOCUMENTS, CONVERSATIONS, PAGES, CORPUS)

# Columns computed for the suites, not part of any record schema. The suites read these instead of
# `messages` and `text` themselves: GX fingerprints the whole frame it validates, and a column of
# nested lists makes it pickle every row, which costs more than all the checks together.
TURNS = "turns"  # turns in `messages`; null where `messages` is null
ROLES_OK = "roles_ok"
EMPTY_TURNS = "empty_turns"
TEXT_CHARS = "text_chars"  # characters of `text`; null where `text` is null
DERIVED_COLUMNS = (TURNS, ROLES_OK, EMPTY_TURNS, TEXT_CHARS)

# What each kind's frame holds: the record columns a suite reads as they are, then derived ones.
FRAME_COLUMNS = {
    DOCUMENTS: ("id", "source", "category", "lang", TEXT_CHARS),
    CONVERSATIONS: ("id", "source", "category", TURNS, ROLES_OK, EMPTY_TURNS),
    PAGES: ("url", "source", "category"),
    CORPUS: ("id", "position", "source", "category", "format", TURNS, ROLES_OK, EMPTY_TURNS, TEXT_CHARS),
}
# The derived column that stands for a record column the frame leaves out.
STANDS_FOR = {"messages": TURNS, "text": TEXT_CHARS}


def read_columns(kind: str) -> tuple[str, ...]:
    """The record columns `summary_table` reads for `kind`: its frame's record columns, the
    columns its derived ones are computed from, `format` (corpus rows say which body they carry)
    and `lang`. A dataset's other columns (tags, meta) need not be read to validate it."""
    frame = FRAME_COLUMNS[kind]
    sources = [name for name, derived in STANDS_FOR.items() if derived in frame]
    wanted = [name for name in frame if name not in DERIVED_COLUMNS] + sources + ["format", "lang"]
    return tuple(dict.fromkeys(wanted))


@dataclass(frozen=True)
class Options:
    categories: tuple[str, ...] = CATEGORIES
    languages: tuple[str, ...] | None = None  # allowed `lang` values; None leaves `lang` unchecked
    min_chars: int = 1
    max_chars: int = 200_000
    # Severity of the content rules (lengths, turn order, empty turns, language): "warning" for
    # outputs before cleaning, which is the stage that enforces them.
    content_severity: str = "critical"

    @classmethod
    def from_mapping(cls, options: Mapping | None) -> "Options":
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown validation option(s): {', '.join(unknown)}")
        if options.get("categories") is not None:
            options["categories"] = tuple(options["categories"])
        else:
            options.pop("categories", None)
        if options.get("languages") is not None:
            options["languages"] = tuple(options["languages"])
        chosen = cls(**options)
        if chosen.content_severity not in SEVERITIES:
            raise ValueError(f"content_severity must be one of {', '.join(SEVERITIES)}")
        if not 0 <= chosen.min_chars <= chosen.max_chars:
            raise ValueError(f"min_chars {chosen.min_chars} and max_chars {chosen.max_chars} give no valid length")
        return chosen


def build_suite(kind: str, options: Options, rows: int, has_lang: bool = True) -> gx.ExpectationSuite:
    """The suite for `rows` rows of `kind`, named after the kind; its checks in the order reported."""
    if kind not in SUITE_KINDS:
        raise ValueError(f"no quality suite for dataset kind {kind!r}; known: {', '.join(SUITE_KINDS)}")
    expectations: list[gxe.Expectation] = []
    if kind == CORPUS:
        expectations.append(gxe.ExpectTableRowCountToBeBetween(min_value=1, notes="A corpus with no rows trains nothing."))
    for column in REQUIRED[kind]:
        expectations.append(_not_null(column))
    if kind != PAGES:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column="id"))
    expectations.append(gxe.ExpectColumnValuesToBeInSet(column="category", value_set=list(options.categories)))

    content = {"severity": options.content_severity}
    if kind == DOCUMENTS:
        expectations.append(_text_length(options, **content))
    elif kind == CONVERSATIONS:
        expectations += _turn_checks(**content)
    elif kind == CORPUS:
        # Unique, non-null, from 0 to N-1 over N rows: the positions are exactly 0..N-1.
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column="position"))
        expectations.append(gxe.ExpectColumnMinToBeBetween(column="position", min_value=0, max_value=0))
        last = max(rows - 1, 0)
        expectations.append(gxe.ExpectColumnMaxToBeBetween(column="position", min_value=last, max_value=last))
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column="format", value_set=list(FORMATS)))
        chat = Column("format") == CHAT
        expectations.append(_not_null("messages", row_condition=chat))
        expectations += _turn_checks(**content)
        text = Column("format") == TEXT
        expectations.append(_not_null("text", row_condition=text))
        expectations.append(_text_length(options, row_condition=text, **content))
    if options.languages is not None and has_lang:
        # Only where rows carry a language (language identification adds it); null is not checked.
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column="lang", value_set=list(options.languages), **content))
    return gx.ExpectationSuite(name=kind, expectations=expectations)


def _not_null(column: str, **condition) -> gxe.Expectation:
    if column in STANDS_FOR:
        derived = STANDS_FOR[column]
        return gxe.ExpectColumnValuesToNotBeNull(
            column=derived, notes=f"{derived} is null exactly where {column} is null.", **condition
        )
    return gxe.ExpectColumnValuesToNotBeNull(column=column, **condition)


def _text_length(options: Options, **condition) -> gxe.Expectation:
    return gxe.ExpectColumnValuesToBeBetween(
        column=TEXT_CHARS,
        min_value=options.min_chars,
        max_value=options.max_chars,
        notes="text_chars: characters of text.",
        **condition,
    )


def _turn_checks(**severity) -> list[gxe.Expectation]:
    return [
        gxe.ExpectColumnValuesToBeInSet(
            column=ROLES_OK,
            value_set=[True],
            notes="roles_ok: an optional system turn, then user and assistant alternating from the user, "
            "at least one of each, the assistant last.",
            **severity,
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=EMPTY_TURNS,
            min_value=0,
            max_value=0,
            notes="empty_turns: turns whose content is missing or only whitespace.",
            **severity,
        ),
    ]


def conform_for_validation(table: pa.Table, kind: str) -> pa.Table:
    """The table with its kind's columns in their schema types; a missing column becomes nulls, so
    that its absence is reported by the suite rather than raised."""
    schema = SCHEMAS[kind]
    columns = {}
    for schema_field in schema:
        if schema_field.name in table.schema.names:
            column = table.column(schema_field.name)
            columns[schema_field.name] = column.cast(schema_field.type) if column.type != schema_field.type else column
        else:
            columns[schema_field.name] = pa.nulls(table.num_rows, schema_field.type)
    return pa.table(columns)


def summary_table(table: pa.Table | pa.RecordBatch, kind: str) -> pa.Table:
    """The flat columns a kind's suite reads, one row per record: computed batch by batch, so a
    dataset is validated without holding its text (about 60 bytes a row, most of it the id)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    lang = table.column("lang") if "lang" in table.schema.names else None
    table = conform_for_validation(table, kind)
    columns = {}
    for name in FRAME_COLUMNS[kind]:
        if name in table.schema.names:
            columns[name] = table.column(name)
    if TEXT_CHARS in FRAME_COLUMNS[kind]:
        columns[TEXT_CHARS] = pc.utf8_length(table.column("text"))
    if TURNS in FRAME_COLUMNS[kind]:
        messages = table.column("messages")
        turns = pc.list_value_length(messages)
        roles_ok = pa.array(roles_in_order(messages))
        blank = pa.array(empty_turns(messages))
        if kind == CORPUS:
            # Only chat rows speak in turns; text rows leave these null and the suite skips them.
            is_chat = pc.fill_null(pc.equal(table.column("format"), CHAT), False)
            roles_ok = pc.if_else(is_chat, roles_ok, pa.scalar(None, pa.bool_()))
            blank = pc.if_else(is_chat, blank, pa.scalar(None, pa.int64()))
        columns.update({TURNS: turns, ROLES_OK: roles_ok, EMPTY_TURNS: blank})
    if lang is not None:
        columns["lang"] = lang.cast(pa.string())
    return pa.table({name: columns[name] for name in (*FRAME_COLUMNS[kind], "lang") if name in columns})


def validation_frame(table: pa.Table, kind: str) -> pd.DataFrame:
    """The flat columns a kind's suite reads, as a pandas frame (see `summary_frame`)."""
    return summary_frame(summary_table(table, kind))


def summary_frame(summary: pa.Table) -> pd.DataFrame:
    """A summary table as the pandas frame GX validates: columns backed by Arrow buffers, but an
    integer column without nulls as numpy int64. GX compares a numpy number column with its
    bounds in one vector operation and an Arrow-backed one value by value in Python (a second a
    million rows); the values, the nulls and GX's fingerprint of the frame are the same."""
    frame = summary.to_pandas(types_mapper=pd.ArrowDtype)
    for name, column in zip(summary.column_names, summary.columns):
        if pa.types.is_integer(column.type) and column.null_count == 0:
            frame[name] = column.to_numpy().astype("int64", copy=False)
    return frame


__all__ = [
    "DERIVED_COLUMNS",
    "EMPTY_TURNS",
    "Options",
    "ROLES_OK",
    "TEXT_CHARS",
    "TURNS",
    "SUITE_KINDS",
    "build_suite",
    "conform_for_validation",
    "read_columns",
    "summary_frame",
    "summary_table",
    "validation_frame",
]
