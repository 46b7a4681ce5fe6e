"""Per-row judgments of conversation turns, computed over whole Arrow columns at once.

Great Expectations has no expectation for nested lists, so each rule here turns a `messages`
column into one flat value per row that a suite can expect. Vectorised, because a corpus has
millions of rows and a Python loop per turn costs minutes there.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.records import ROLES

SYSTEM, USER, ASSISTANT = ROLES
_ROLE_CODES = pa.array([SYSTEM, USER, ASSISTANT])
_SYSTEM_CODE, _USER_CODE, _ASSISTANT_CODE = 0, 1, 2


def _as_array(messages: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(messages, pa.ChunkedArray):
        return messages.combine_chunks() if messages.num_chunks else pa.array([], type=messages.type)
    return messages


def _turns(messages: pa.Array) -> tuple[np.ndarray, pa.StructArray, np.ndarray]:
    """Turns per row, every turn in row order, and the row each turn belongs to."""
    lengths = pc.fill_null(pc.list_value_length(messages), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(messages)
    rows = pc.list_parent_indices(messages).to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths, flat, rows


def roles_in_order(messages: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True where a conversation reads: an optional leading system turn, then user and assistant
    turns alternating from the user, at least one of each, the assistant speaking last.

    A missing or empty conversation, an unknown or missing role, are not in order."""
    messages = _as_array(messages)
    lengths, flat, rows = _turns(messages)
    codes = pc.fill_null(pc.index_in(pc.struct_field(flat, "role"), value_set=_ROLE_CODES), -1)
    codes = codes.to_numpy(zero_copy_only=False).astype(np.int64)

    starts = np.cumsum(lengths) - lengths
    first_code = np.full(len(messages), -1, dtype=np.int64)
    spoken = lengths > 0
    first_code[spoken] = codes[starts[spoken]]
    has_system = (first_code == _SYSTEM_CODE).astype(np.int64)

    # Turn number after the system turn: -1 is the system turn, even is the user, odd the assistant.
    dialogue_turn = np.arange(len(codes), dtype=np.int64) - starts[rows] - has_system[rows]
    expected = np.where(dialogue_turn < 0, _SYSTEM_CODE, np.where(dialogue_turn % 2 == 0, _USER_CODE, _ASSISTANT_CODE))
    misplaced = np.bincount(rows, weights=(codes != expected), minlength=len(messages)) > 0

    dialogue_turns = lengths - has_system
    return ~misplaced & (dialogue_turns >= 2) & (dialogue_turns % 2 == 0)


def empty_turns(messages: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """How many turns of each conversation have no content: missing, or only whitespace."""
    messages = _as_array(messages)
    _, flat, rows = _turns(messages)
    content = pc.struct_field(flat, "content")
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(content)), 0), True)
    blank = blank.to_numpy(zero_copy_only=False)
    return np.bincount(rows, weights=blank, minlength=len(messages)).astype(np.int64)


def role_sequence(conversation: list[dict] | None) -> list[str | None]:
    """The roles of one conversation in order: what a failing row's example shows."""
    return [turn.get("role") for turn in conversation or []]
