"""Decoding text files of unknown encoding: UTF-8, GB18030 or Big5.

UTF-8 is tried strictly first, since a GB18030 or Big5 file almost never decodes as valid UTF-8.
Otherwise UTF-8, GB18030 and Big5 are each tried on the opening of the file and the most
plausible wins: fewest invalid bytes plus characters that real Chinese text rarely holds. Big5 text
decodes as GB18030 without a single error (every Big5 byte pair is a valid GBK pair), so counting
errors alone would never pick Big5; the rare-character count is what tells them apart.

Invalid bytes are replaced, not fatal: each run of them becomes one U+FFFD and every replaced byte
is counted, so a corrupt file imports and says how corrupt it is.
"""
from __future__ import annotations

import codecs
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# UTF-8 stays a candidate after failing strictly: a UTF-8 file with one corrupt byte is still UTF-8.
CANDIDATES = ("utf-8", "gb18030", "big5")
AUTO = (None, "", "auto")
SAMPLE_BYTES = 16 * 1024
REPLACEMENT = "\ufffd"

# surrogateescape turns each undecodable byte into one lone surrogate: exact byte counts, no
# process-wide error handler to register.
_ESCAPED = re.compile("[\udc80-\udcff]+")


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str
    replaced_bytes: int


def decode_bytes(data: bytes, encoding: str | None = None) -> Decoded:
    """Decode `data`, detecting the encoding unless one is given ("auto" detects too)."""
    if encoding in AUTO:
        if data.startswith(codecs.BOM_UTF8):
            data, encoding = data[len(codecs.BOM_UTF8):], "utf-8"
        else:
            try:
                return Decoded(data.decode("utf-8"), "utf-8", 0)
            except UnicodeDecodeError:
                encoding = detect_legacy(data)
    text = data.decode(encoding, errors="surrogateescape")
    replaced = 0
    if _ESCAPED.search(text):
        replaced = sum(len(run) for run in _ESCAPED.findall(text))
        text = _ESCAPED.sub(REPLACEMENT, text)
    return Decoded(text, codecs.lookup(encoding).name, replaced)


def read_text(path: Path, encoding: str | None = None) -> Decoded:
    return decode_bytes(Path(path).read_bytes(), encoding)


def detect_legacy(data: bytes) -> str:
    """The most plausible encoding for bytes that are not strictly UTF-8."""
    sample = data[:SAMPLE_BYTES]
    scores = {}
    for encoding in CANDIDATES:
        # An incremental decoder leaves a character cut at the sample's end undecoded, not invalid.
        text = codecs.getincrementaldecoder(encoding)(errors="surrogateescape").decode(sample, final=False)
        invalid = sum(len(run) for run in _ESCAPED.findall(text))
        scores[encoding] = (invalid + rare_characters(text)) / max(len(text), 1)
    return min(CANDIDATES, key=lambda e: (scores[e], CANDIDATES.index(e)))


def rare_characters(text: str) -> int:
    """Characters that ordinary Chinese text seldom holds: symbols, kana, Greek and Cyrillic,
    private-use code points, and Han characters outside both GB2312 and Big5's common level."""
    return sum(count for char, count in Counter(text).items() if not _is_common(char))


@lru_cache(maxsize=1 << 16)
def _is_common(char: str) -> bool:
    code = ord(char)
    if code < 0x80 or char.isspace():
        return True
    if 0x3000 <= code <= 0x303F or 0xFF00 <= code <= 0xFFEF or 0x2010 <= code <= 0x206F:
        return True  # CJK and full-width punctuation
    if not 0x4E00 <= code <= 0x9FFF:
        return False
    try:
        char.encode("gb2312")
        return True
    except UnicodeEncodeError:
        pass
    try:
        return 0xA440 <= int.from_bytes(char.encode("big5"), "big") <= 0xC67E  # Big5 level 1
    except UnicodeEncodeError:
        return False
