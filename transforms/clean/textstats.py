"""Character and line statistics of a batch of texts, computed for the whole batch at once.

The texts are concatenated into one array of code points (numpy) and one array of lines
(pyarrow), so every count is a handful of vector operations over the batch instead of a Python
loop over characters.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Character classes.
SPACE, HAN, KANA, HANGUL, LATIN, LETTER, DIGIT, PUNCT, SYMBOL, DEBRIS, OTHER = range(11)
CLASSES = 11

HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))
KANA_RANGES = ((0x3041, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9D))
HANGUL_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))
# What a scan or a broken conversion leaves: replacement character, lost-glyph boxes, private use.
DEBRIS_POINTS = (0xFFFD, 0x25A1, 0x25A0, 0x2610, 0xFFFC)


@lru_cache(maxsize=1)
def class_table() -> np.ndarray:
    """Class of every code point of the Basic Multilingual Plane."""
    table = np.full(0x10000, OTHER, np.uint8)
    for cp in range(0x10000):
        cat = unicodedata.category(chr(cp))
        if cat[0] == "Z" or chr(cp) in "\t\n\r":
            table[cp] = SPACE
        elif cat == "Nd":
            table[cp] = DIGIT
        elif cat[0] == "P":
            table[cp] = PUNCT
        elif cat[0] == "S":
            table[cp] = SYMBOL
        elif cat[0] == "L" or cat == "Nl":
            table[cp] = LATIN if cp < 0x250 or 0x1E00 <= cp < 0x1F00 else LETTER
        elif cat in ("Co", "Cn", "Cs"):
            table[cp] = DEBRIS
    for ranges, cls in ((HAN_RANGES, HAN), (KANA_RANGES, KANA), (HANGUL_RANGES, HANGUL)):
        for lo, hi in ranges:
            if lo < 0x10000:
                table[lo : min(hi, 0xFFFF) + 1] = cls
    table[0x3007] = HAN  # 〇, the Han zero of dates and doses
    for cp in DEBRIS_POINTS:
        table[cp] = DEBRIS
    return table


def codepoints(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All texts' code points in one array, and each text's length."""
    lengths = np.fromiter((len(t) for t in texts), np.int64, len(texts))
    points = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32)
    return points, lengths


def lookup(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """table[indices] for a 1-D numeric `table` and 1-D unsigned or signed integer `indices`
    (code points, uint32), read-only. Arrow's take reads the indices as they are; numpy first
    copies them to intp (8 bytes per index), which costs it three times as much over a batch's
    code points. A bool table is looked up as bytes. Raises IndexError out of bounds."""
    if table.dtype == np.bool_:
        return lookup(table.view(np.uint8), indices).view(np.bool_)
    indices = np.ascontiguousarray(indices)
    if not len(indices):
        return table[:0].copy()
    try:
        found = pc.take(pa.array(table), pa.array(indices))
    except pa.ArrowIndexError as error:
        raise IndexError(str(error)) from None
    return found.to_numpy()


def classify(points: np.ndarray) -> np.ndarray:
    """Class of each code point (uint8)."""
    if not len(points) or int(points.max()) <= 0xFFFF:
        return lookup(class_table(), points)
    classes = class_table()[np.minimum(points, 0xFFFF)]
    astral = points > 0xFFFF
    if astral.any():
        high = points[astral]
        cls = np.full(high.shape, OTHER, np.uint8)
        cls[(high >= 0x20000) & (high <= 0x3134F)] = HAN
        cls[high >= 0xF0000] = DEBRIS  # supplementary private use planes
        cls[(high >= 0x1F000) & (high < 0x1FB00)] = SYMBOL  # emoji and pictographs
        classes[astral] = cls
    return classes


@dataclass
class TextBatch:
    """Statistics of a list of texts; every property is one value per text."""

    texts: list[str]
    # Per text, whether its first line is its title (a heading, not content); None: no titles.
    titled: np.ndarray | None = None
    # The texts as an Arrow string array, when the caller has them so (a table's column): not
    # encoded again.
    array: pa.Array | pa.ChunkedArray | None = None

    @cached_property
    def text_array(self) -> pa.Array:
        """The texts as one Arrow string array."""
        if self.array is None:
            return pa.array(self.texts, pa.string())
        array = self.array.combine_chunks() if isinstance(self.array, pa.ChunkedArray) else self.array
        return array.cast(pa.string()) if array.type != pa.string() else array

    @cached_property
    def _points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        points, lengths = codepoints(self.texts)
        owner = np.repeat(np.arange(len(self.texts)), lengths)
        return points, lengths, owner

    @property
    def points(self) -> np.ndarray:
        return self._points[0]

    @property
    def lengths(self) -> np.ndarray:
        return self._points[1]

    @property
    def owner(self) -> np.ndarray:
        """Index of the text each code point belongs to."""
        return self._points[2]

    @cached_property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64) if len(self.texts) else np.zeros(0, np.int64)

    @cached_property
    def class_counts(self) -> np.ndarray:
        """(texts, classes) counts of characters per class."""
        n = len(self.texts)
        if n == 0:
            return np.zeros((0, CLASSES), np.int64)
        # Most characters are Han: the others are counted where they stand, and Han is the rest.
        classes = classify(self.points)
        other = np.flatnonzero(classes != HAN)
        keys = self.owner[other] * CLASSES
        keys += classes[other]
        counts = np.bincount(keys, minlength=n * CLASSES).reshape(n, CLASSES)
        counts[:, HAN] = self.lengths - counts.sum(axis=1)
        return counts

    def count(self, *classes: int) -> np.ndarray:
        return self.class_counts[:, list(classes)].sum(axis=1)

    @cached_property
    def visible(self) -> np.ndarray:
        """Characters that are not spacing."""
        return self.lengths - self.class_counts[:, SPACE]

    def share(self, *classes: int) -> np.ndarray:
        return ratio(self.count(*classes), self.visible)

    # -- lines -----------------------------------------------------------------------------

    @cached_property
    def _lines(self) -> tuple[pa.Array, np.ndarray]:
        """Non-empty lines of all texts (flattened) and the text each belongs to."""
        split = pc.split_pattern(self.text_array, "\n")
        counts = pc.list_value_length(split).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(split)
        owner = np.repeat(np.arange(len(self.texts)), counts)
        nonempty = pc.greater(pc.utf8_length(flat), 0)
        return flat.filter(nonempty), owner[nonempty.to_numpy(zero_copy_only=False)]

    @property
    def lines(self) -> pa.Array:
        return self._lines[0]

    @property
    def line_owner(self) -> np.ndarray:
        return self._lines[1]

    @cached_property
    def title_line(self) -> np.ndarray:
        """Per line: whether it is the title line that opens a titled text."""
        owner = self.line_owner
        if self.titled is None or len(owner) == 0:
            return np.zeros(len(owner), bool)
        first = np.ones(len(owner), bool)
        first[1:] = owner[1:] != owner[:-1]
        return first & np.asarray(self.titled, bool)[owner]

    @cached_property
    def line_lengths(self) -> np.ndarray:
        return pc.utf8_length(self.lines).to_numpy(zero_copy_only=False).astype(np.int64)

    @cached_property
    def line_counts(self) -> np.ndarray:
        return np.bincount(self.line_owner, minlength=len(self.texts))

    def per_text_sum(self, line_values: np.ndarray) -> np.ndarray:
        """Sum a per-line value for each text."""
        return np.bincount(self.line_owner, weights=line_values, minlength=len(self.texts))

    def line_share(self, line_mask) -> np.ndarray:
        """Share of each text's non-empty lines for which `line_mask` holds."""
        mask = np.asarray(line_mask.to_numpy(zero_copy_only=False) if isinstance(line_mask, (pa.Array, pa.ChunkedArray)) else line_mask, bool)
        return ratio(self.per_text_sum(mask.astype(np.float64)), self.line_counts)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out
