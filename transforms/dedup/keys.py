"""What duplicate detection compares: the words of a row, its exact key, and how clean a copy is.

Texts equal after normalisation (Unicode, traditional/simplified, punctuation and spacing) share
one exact key. The dedup stage itself (exact and near-duplicate clusters) is deduplicate.py.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import CONVERSATIONS, conversation_text


def text_of(table: pa.Table, kind: str) -> list[str]:
    """The words of each row that duplicate detection compares."""
    if kind == CONVERSATIONS:
        return [conversation_text(m or []) for m in table.column("messages").to_pylist()]
    return [t or "" for t in table.column("text").to_pylist()]


def exact_key(match_form: str) -> bytes:
    """16-byte digest of a text's match form (`normalize.match_key`)."""
    return hashlib.blake2b(match_form.encode("utf-8"), digest_size=16).digest()


# The tags of clean (transforms/quality.py) that the keep rule's `quality` is computed from.
QUALITY_TAGS = ("chars", "han_chars", "han_ratio", "debris_ratio", "dup_line_ratio")


def quality_key(table: pa.Table) -> np.ndarray:
    """How clean each row's copy of a text is, from clean's tags, for the keep rule `quality`
    (higher is better), float64; NaN where a tag is missing (a user's own folder, rows not
    tagged), which ranks after every scored row.

    quality = 1 - blank_share - debris_ratio - dup_line_ratio, rounded to 0.01, where
    blank_share = 1 - visible / chars is the share of spaces and line breaks (visible characters
    = han_chars / han_ratio; 0 for a text without Han).
    Copies in one duplicate cluster say the same thing, so what tells them apart is their form:
    padding (「太阳病 , 头痛」), spaced-out or hard-wrapped lines, OCR debris and repeated lines
    lower the key; punctuation does not, so a punctuated copy is not ranked below a bare one.
    Rounded, so copies equally clean tie and the next criterion (`longest`) decides.
    """
    names = table.schema.names
    if not all(tag in names for tag in QUALITY_TAGS):
        return np.full(table.num_rows, np.nan)

    def column(name: str) -> np.ndarray:
        return pc.cast(table.column(name), pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float64)

    chars, han_ratio = column("chars"), column("han_ratio")
    with np.errstate(invalid="ignore", divide="ignore"):
        visible = np.where(han_ratio > 0, column("han_chars") / han_ratio, chars)
        blank_share = np.where(chars > 0, np.clip(1.0 - visible / chars, 0.0, 1.0), 0.0)
    return np.round(1.0 - blank_share - column("debris_ratio") - column("dup_line_ratio"), 2)
