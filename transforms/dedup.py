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
QUALITY_TAGS = ("chars", "han_chars", "debris_ratio", "dup_line_ratio")


def quality_key(table: pa.Table) -> np.ndarray:
    """How clean each row's copy of a text is, from clean's tags, for the keep rule `quality`
    (higher is better), float64; NaN where a tag is missing (a user's own folder, rows not
    tagged), which ranks after every scored row.

    quality = han_chars / chars - debris_ratio - dup_line_ratio, rounded to 0.01.
    Copies in one duplicate cluster say the same thing, so what tells them apart is their form:
    padding, spaced ASCII punctuation (「太阳病 , 头痛」), markup and blank lines add characters
    that are not Han (a lower first term); OCR debris and repeated lines are subtracted. Rounded,
    so copies equally clean tie and the next criterion (`longest`) decides between them.
    """
    names = table.schema.names
    if not all(tag in names for tag in QUALITY_TAGS):
        return np.full(table.num_rows, np.nan)

    def column(name: str) -> np.ndarray:
        return pc.cast(table.column(name), pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float64)

    chars = column("chars")
    with np.errstate(invalid="ignore", divide="ignore"):
        han_share = np.where(chars > 0, column("han_chars") / chars, 0.0)
    return np.round(han_share - column("debris_ratio") - column("dup_line_ratio"), 2)
