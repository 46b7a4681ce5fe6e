"""Decoding text files of unknown encoding: a BOM, else UTF-8, GB18030 or Big5, line by line
when a file mixes UTF-8 with a legacy encoding.

A byte-order mark decides first: UTF-8, UTF-16 LE/BE, UTF-32 LE/BE or GB18030 (the mark itself
is not text). Without one, UTF-8 is tried strictly, since a GB18030 or Big5 file almost never
decodes as valid UTF-8. Otherwise UTF-8, GB18030 and Big5 are each tried on the opening of the
file and the most plausible wins: fewest invalid bytes plus characters that real Chinese text
rarely holds. Big5 text decodes as GB18030 without a single error (every Big5 byte pair is a valid
GBK pair), so counting errors alone would never pick Big5; the rare-character count is what tells
them apart. Where even the best of the three reads poorly (more than `UNSURE` of its non-ASCII
characters invalid or rare) and the file is not tiny, charset-normalizer is asked, and its guess
wins when it names an encoding outside the Chinese family (a Latin, Japanese or Korean file).

A file whose lines are partly valid UTF-8 (with non-ASCII text) and partly not was concatenated
from files of two encodings: each line is decoded on its own, UTF-8 where it is valid, else with
the legacy encoding detected from the other lines (`Decoded.encoding` is then "utf-8+gb18030").

Invalid bytes are replaced, not fatal: each run of them becomes one U+FFFD and every replaced byte
is counted, so a corrupt file imports and says how corrupt it is.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# UTF-8 stays a candidate after failing strictly: a UTF-8 file with one corrupt byte is still UTF-8.
CANDIDATES = ("utf-8", "gb18030", "big5")
AUTO = (None, "", "auto")
SAMPLE_BYTES = 16 * 1024
REPLACEMENT = "\ufffd"
# Share of the non-ASCII characters read that are invalid or rare above which our own guess asks
# charset-normalizer too.
UNSURE = 0.05
# Below this, any detector guesses (a few GBK bytes read as well as Korean); ours stays.
MIN_DETECTOR_BYTES = 200
CHINESE_FAMILY = frozenset(codecs.lookup(name).name for name in ("utf-8", "gb2312", "gbk", "gb18030", "big5", "big5hkscs", "cp950", "hz"))
# Longest marks first: the UTF-32 LE mark starts with the UTF-16 LE one.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
    (b"\x84\x31\x95\x33", "gb18030"),
)

# surrogateescape turns each undecodable byte into one lone surrogate: exact byte counts, no
# process-wide error handler to register.
_ESCAPED = re.compile("[\udc80-\udcff]+")


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str  # codec name, "utf-8+<legacy>" for a file decoded line by line
    replaced_bytes: int  # invalid bytes, each run of them now one U+FFFD in `text`
    detector: str = "given"  # how the encoding was chosen: given, bom, utf-8, ours, charset-normalizer, per-line


def decode_bytes(data: bytes, encoding: str | None = None) -> Decoded:
    """Decode `data`, detecting the encoding unless one is given ("auto" detects too).
    An unknown encoding name raises LookupError."""
    if encoding not in AUTO:
        return _decode(data, encoding, "given")
    for mark, name in BOMS:
        if data.startswith(mark):
            return _decode(data[len(mark):], name, "bom")
    try:
        return Decoded(data.decode("utf-8"), "utf-8", 0, "utf-8")
    except UnicodeDecodeError:
        pass
    mixed = _decode_mixed(data)
    if mixed is not None:
        return mixed
    encoding, detector = detect_legacy(data)
    return _decode(data, encoding, detector)


def _decode(data: bytes, encoding: str, detector: str) -> Decoded:
    try:
        # Most files decode cleanly: then no escape can be in the text, and it need not be searched.
        return Decoded(data.decode(encoding), codecs.lookup(encoding).name, 0, detector)
    except UnicodeDecodeError:
        pass
    text = data.decode(encoding, errors="surrogateescape")
    replaced = 0
    if _ESCAPED.search(text):
        replaced = sum(len(run) for run in _ESCAPED.findall(text))
        text = _ESCAPED.sub(REPLACEMENT, text)
    return Decoded(text, codecs.lookup(encoding).name, replaced, detector)


def _decode_mixed(data: bytes) -> Decoded | None:
    """Line by line, when some lines read better as UTF-8 than in the file's legacy encoding:
    a UTF-8 line with non-ASCII text beside lines that are not UTF-8 at all. A legacy line that
    happens to be valid UTF-8 (short GBK lines often are: `<目录>` is `<Ŀ¼>`) reads worse as
    UTF-8, so it stays legacy."""
    line_ends = _line_ends(data)
    utf8 = _utf8_lines(data, line_ends)
    if not utf8:
        return None
    # Where the UTF-8 lines start and end, as Python ints (only theirs: a legacy file has few).
    at = np.fromiter(utf8, np.int64, len(utf8))
    starts = dict(zip(utf8, np.where(at > 0, line_ends[at - 1], 0).tolist()))
    ends = dict(zip(utf8, line_ends[at].tolist()))
    # The legacy lines, as the runs of the file between the UTF-8 lines.
    runs, last = [], 0
    for i in utf8:
        runs.append(data[last : starts[i]])
        last = ends[i]
    runs.append(data[last:])
    legacy, _ = detect_legacy(b"".join(runs), candidates=CANDIDATES[1:])

    def reads_better(line: bytes, text: str) -> bool:
        decoded = _decode(line, legacy, "per-line")
        return rare_characters(text) < rare_characters(decoded.text) + decoded.replaced_bytes

    # Only the UTF-8 lines can make the file mixed: the file is decoded line by line only then.
    # Their rare characters are counted all at once, both ways (one line at a time if a line
    # cannot be decoded, so that the error is the one reading each line in turn would meet).
    try:
        decoded = [_decode(data[starts[i] : ends[i]], legacy, "per-line") for i in utf8]
    except (UnicodeError, LookupError):
        decoded = None
    if decoded is not None:
        replaced = np.fromiter((d.replaced_bytes for d in decoded), np.int64, len(decoded))
        mixed = bool(np.any(_rare_per_text(list(utf8.values())) < _rare_per_text([d.text for d in decoded]) + replaced))
    else:
        mixed = any(reads_better(data[starts[i] : ends[i]], text) for i, text in utf8.items())
    if not mixed:
        return None
    lines = data.splitlines(keepends=True)
    parts, replaced = [], 0
    for i, line in enumerate(lines):
        text = utf8.get(i)
        if text is not None and reads_better(line, text):
            parts.append(text)
        else:
            decoded = _decode(line, legacy, "per-line")
            parts.append(decoded.text)
            replaced += decoded.replaced_bytes
    return Decoded("".join(parts), f"utf-8+{codecs.lookup(legacy).name}", replaced, "per-line")


def _line_ends(data: bytes) -> np.ndarray:
    """Where each line of `data` ends, its line break included (int64, one per line): the lines
    of data.splitlines(keepends=True), found from the bytes at once (\n, \r\n or a lone \r)."""
    if not data:
        return np.zeros(0, np.int64)
    raw = np.frombuffer(data, np.uint8)
    breaks = raw == 0x0A
    lone_cr = raw == 0x0D
    lone_cr[:-1] &= ~breaks[1:]
    ends = np.flatnonzero(breaks | lone_cr) + 1
    if not len(ends) or ends[-1] != len(data):
        ends = np.append(ends, len(data))
    return ends.astype(np.int64, copy=False)


def _utf8_lines(data: bytes, ends: np.ndarray) -> dict[int, str]:
    """{index: text} of the lines of `data` (`ends`: where each line ends, see _line_ends) that
    are valid UTF-8 with non-ASCII characters, in order. Byte rules over the whole file first mark
    the lines that cannot be UTF-8 (a continuation byte after an ASCII one, a lead byte not
    followed by a continuation, a byte UTF-8 never uses), which is nearly every line of a
    legacy file; only the other non-ASCII lines are decoded."""
    if not len(ends):
        return {}
    raw = np.frombuffer(data, np.uint8)
    ends = np.asarray(ends, np.int64)
    starts = np.empty(len(ends), np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1]
    wide = raw >= 0x80
    continuation = wide & (raw < 0xC0)
    lead = (raw >= 0xC2) & (raw < 0xF5)
    broken = (raw == 0xC0) | (raw == 0xC1) | (raw >= 0xF5)
    broken[1:] |= continuation[1:] & ~wide[:-1]
    broken[:1] |= continuation[:1]
    broken[:-1] |= lead[:-1] & ~continuation[1:]
    broken[-1:] |= lead[-1:]
    candidates = np.logical_or.reduceat(wide, starts) & ~np.logical_or.reduceat(broken, starts)
    lines = np.flatnonzero(candidates)
    found = {i: _strict_utf8(data[start:end]) for i, start, end in zip(lines.tolist(), starts[lines].tolist(), ends[lines].tolist())}
    return {i: text for i, text in found.items() if text is not None}


def _strict_utf8(line: bytes) -> str | None:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if text.isascii() else text


def read_text(path: Path, encoding: str | None = None) -> Decoded:
    from .compression import read_bytes

    return decode_bytes(read_bytes(path), encoding)


def detect_legacy(data: bytes, candidates: tuple[str, ...] = CANDIDATES) -> tuple[str, str]:
    """The most plausible encoding for bytes that are not strictly UTF-8, and who chose it
    ("ours", or "charset-normalizer" where our best guess reads poorly and its guess reads better)."""
    sample = data[:SAMPLE_BYTES]
    scores = {encoding: _score(sample, encoding) for encoding in candidates if encoding != "utf-8"}
    if "utf-8" in candidates:
        # Bytes that are not UTF-8 read slowly as UTF-8 (an escape each): read so only when the
        # least its score can be does not already lose to another candidate's.
        rivals = min(scores.values(), default=None)
        scores["utf-8"] = _score(sample, "utf-8") if rivals is None or _least_utf8_score(sample) <= rivals else float("inf")
    best = min(candidates, key=lambda e: (scores[e], candidates.index(e)))
    if len(sample) >= MIN_DETECTOR_BYTES and _unsure(sample, best):
        import charset_normalizer

        guess = charset_normalizer.from_bytes(sample).best()
        try:
            name = codecs.lookup(guess.encoding).name if guess is not None else None
        except LookupError:
            name = None
        # Within the Chinese family our rare-character count tells GB from Big5 better; outside
        # it (Latin, Japanese, Korean...) the detector's own measure of mess decides.
        if name and name not in CHINESE_FAMILY:
            return name, "charset-normalizer"
    return best, "ours"


def _least_utf8_score(sample: bytes) -> float:
    """A lower bound of _score(sample, "utf-8"): bytes no reading as UTF-8 decodes (C0, C1, F5-FF,
    and a continuation byte with no lead byte before it: at the start or after an ASCII byte)
    are each an escape, counted twice, over at most one character per byte."""
    raw = np.frombuffer(sample, np.uint8)
    if not len(raw):
        return 0.0
    continuation = (raw >= 0x80) & (raw < 0xC0)
    invalid = int(np.count_nonzero((raw == 0xC0) | (raw == 0xC1) | (raw >= 0xF5)))
    invalid += int(continuation[0]) + int(np.count_nonzero(continuation[1:] & (raw[:-1] < 0x80)))
    return 2 * invalid / len(raw)


def _unsure(sample: bytes, encoding: str) -> bool:
    """More than UNSURE of the non-ASCII characters read are invalid or rare."""
    _, escaped, points = _reading(sample, encoding)
    wide = escaped + int(np.count_nonzero(points >= 0x80))
    return (escaped + escaped + _rare_count(points)) > UNSURE * max(wide, 1)


def _score(sample: bytes, encoding: str) -> float:
    """Invalid bytes plus rare characters per decoded character (lower reads better)."""
    length, escaped, points = _reading(sample, encoding)
    return (escaped + escaped + _rare_count(points)) / max(length, 1)


# The same opening is judged twice when a file is checked for mixed lines first, and its best
# reading once more for how sure it is.
@lru_cache(maxsize=16)
def _reading(sample: bytes, encoding: str) -> tuple[int, int, np.ndarray]:
    """(characters decoded, invalid bytes, code points of the rest) of `sample` read in
    `encoding`, each invalid byte one character (surrogateescape); as _split_escapes of that text.
    An incremental decoder leaves a character cut at the sample's end undecoded, not invalid."""
    text = codecs.getincrementaldecoder(encoding)(errors="surrogateescape").decode(sample, final=False)
    if encoding not in CANDIDATES:
        return (len(text), *_split_escapes(text))
    try:
        return len(text), 0, np.frombuffer(text.encode("utf-32-le"), np.uint32)
    except UnicodeEncodeError:
        pass
    # No candidate decodes bytes to a lone surrogate, so each in `text` is an escape, and the
    # rest is what the same decoder keeps when it drops the invalid bytes instead (the same
    # bytes are invalid whatever is done with them): no search through a text of escapes.
    rest = codecs.getincrementaldecoder(encoding)(errors="ignore").decode(sample, final=False)
    return len(text), len(text) - len(rest), np.frombuffer(rest.encode("utf-32-le"), np.uint32)


def rare_characters(text: str) -> int:
    """Characters that ordinary Chinese text seldom holds: symbols, kana, Greek and Cyrillic,
    private-use code points, and Han characters outside both GB2312 and Big5's common level."""
    escaped, points = _split_escapes(text)
    return escaped + _rare_count(points)


def _rare_per_text(texts: list[str]) -> np.ndarray:
    """rare_characters of each text, at once. An escape is a code point the common table holds
    as rare, so each counts once, as there."""
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    counts = np.zeros(len(texts), np.int64)
    filled = np.flatnonzero(lengths)
    if len(filled):
        points = np.frombuffer("".join(texts).encode("utf-32-le", errors="surrogatepass"), np.uint32)
        common = _common_table()
        rare = ~common.take(points, mode="clip")
        counts[filled] = np.add.reduceat(rare, (np.cumsum(lengths) - lengths)[filled], dtype=np.int64)
    return counts


def _split_escapes(text: str) -> tuple[int, np.ndarray]:
    """(bytes surrogateescape escaped: U+DC80..U+DCFF, one per byte; the code points of the
    rest). An escape is an invalid byte, and a rare character too (a lone surrogate)."""
    try:
        return 0, np.frombuffer(text.encode("utf-32-le"), np.uint32)
    except UnicodeEncodeError:  # lone surrogates
        rest = _ESCAPED.sub("", text)
    # surrogatepass: any other lone surrogate is a code point like any other (and rare).
    return len(text) - len(rest), np.frombuffer(rest.encode("utf-32-le", errors="surrogatepass"), np.uint32)


def _rare_count(points: np.ndarray) -> int:
    common = _common_table()
    return int(len(points) - np.count_nonzero(common.take(points, mode="clip")))  # beyond the table: its last entry


@lru_cache(maxsize=1)
def _common_table() -> np.ndarray:
    """_is_common of every code point of the Basic Multilingual Plane, and one False entry that
    stands for every code point beyond it (none of which is common). Built from the two code
    tables rather than by asking each code point: the Han characters GB2312 encodes are those
    its codes decode to, and those Big5 encodes in its level 1 are among those its level-1 codes
    decode to."""
    table = np.zeros(0x10001, bool)
    table[:0x80] = True
    table[[cp for cp in range(0x80, 0x10000) if chr(cp).isspace()]] = True
    table[0x3000:0x3040] = table[0xFF00:0xFFF0] = table[0x2010:0x2070] = True  # CJK and full-width punctuation
    han = set()
    for code in range(0xA1A1, 0xF7FF):
        han.update(_decoded_pair(code, "gb2312"))
    for code in range(0xA440, 0xC67F):
        han.update(char for char in _decoded_pair(code, "big5") if 0xA440 <= int.from_bytes(char.encode("big5"), "big") <= 0xC67E)
    table[[ord(char) for char in han if 0x4E00 <= ord(char) <= 0x9FFF]] = True
    return table


def _decoded_pair(code: int, encoding: str) -> str:
    """The character a two-byte code decodes to in `encoding`, or nothing."""
    try:
        return code.to_bytes(2, "big").decode(encoding)
    except UnicodeDecodeError:
        return ""


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
