"""What duplicate detection compares: the words of a row and its exact key.

Texts equal after normalisation (Unicode, traditional/simplified, punctuation and spacing) share
one exact key. The dedup stage itself (exact and near-duplicate clusters) is deduplicate.py.
"""
from __future__ import annotations

import hashlib

import pyarrow as pa

from schemas import CONVERSATIONS, conversation_text


def text_of(table: pa.Table, kind: str) -> list[str]:
    """The words of each row that duplicate detection compares."""
    if kind == CONVERSATIONS:
        return [conversation_text(m or []) for m in table.column("messages").to_pylist()]
    return [t or "" for t in table.column("text").to_pylist()]


def exact_key(match_form: str) -> bytes:
    """16-byte digest of a text's match form (`normalize.match_key`)."""
    return hashlib.blake2b(match_form.encode("utf-8"), digest_size=16).digest()
