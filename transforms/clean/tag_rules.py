"""Quality tags: each rule computes one score column for a batch of texts; nothing is removed here.

The rules are those of Gopher, C4, FineWeb and ChineseWebText, adapted to Chinese (characters,
not words; Chinese punctuation; classical texts without modern punctuation habits):

| column | what it measures | origin |
|---|---|---|
| chars, han_chars | length in characters, and in Han characters | Gopher length |
| han_ratio | Han characters / visible characters | ChineseWebText |
| symbol_ratio, digit_ratio | symbols (S*), digits / visible characters | Gopher symbol ratio |
| mean_line_chars | mean characters of a non-empty line (a title line left out, as in every line rule) | Gopher / FineWeb |
| punct_line_ratio | share of lines (a title line left out) that end in punctuation, or are punctuated prose, unpunctuated classical text, a heading, a verse line, a dose line or a list of lexicon terms | C4 / FineWeb |
| dup_line_ratio | characters in repeated lines / all characters | Gopher |
| dup_ngram_ratio | characters covered by character n-grams seen twice / all characters | Gopher |
| bullet_ratio, ellipsis_ratio | lines opening with a bullet, ending with an ellipsis | Gopher |
| flagged_per_kchar | whole-word hits of the flagged list (ads, gambling, adult) per 1000 characters | C4 badwords, ChineseWebText |
| debris_ratio | OCR and conversion debris: replacement chars, lost-glyph boxes and gaps, l/O for 1/0 | ours |

Selection (transforms/select/rules.py) applies thresholds to these columns later, so changing a
threshold never recomputes them.
"""
from __future__ import annotations

import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .lexicon import list_matcher
from .textstats import DEBRIS, DIGIT, HAN, LATIN, SYMBOL, TextBatch, ratio
from .words import flagged_pattern, flagged_words, tokenizer, whole_word_hits

# Lines that end a sentence or clause, in Chinese or Western punctuation (closing quotes too).
LINE_END = "。！？；：…」』”’）)】》〕］].!?;:，,、—~～"
# Chinese prose is punctuated inside the line; a hard-wrapped or truncated classical line ends
# mid-clause; unpunctuated classical text (白文, with marks where glyphs were lost) and lists of
# names (绀珠丹 内疏黄连汤 贵金丸) are nearly all Han. None of them is web boilerplate.
CLAUSE_PUNCT = r"[，。；：、！？]"
HAN_LINE_SHARE = 0.8
# A line this short is a heading, a list item or a title, not a sentence cut off.
HEADING_CHARS = 16
# Verse: clauses of 4 to 7 Han characters separated by punctuation or spaces (汤头歌诀, 药性赋).
VERSE_LINE = r"^(?:\p{Han}{3,7}[ ，,、；;。！？]+)+\p{Han}{3,7}[。！？，；]?$"
# A dose: a number (Arabic or Chinese) followed by a unit (三钱, 10g, 半两, 一枚): a formula line.
DOSE = r"[0-9一二三四五六七八九十百半两.]+\s*(?:克|g|钱|两|分|枚|个|片|升|合|斤|铢|毫升|ml|mg|粒|条|只|匙|钱匕)"
# ○ is not among them: classical texts open paragraphs with it.
BULLETS = ["•", "●", "■", "◆", "◇", "▪", "▶", "►", "·", "-", "*", "・", "★", "☆", "➢", "✓", "√", "→"]
# What an ellipsis line ends in.
ELLIPSIS_ENDS = ("…", "...", "。。。")
# OCR slips in numbers (lOOcm, 1O mg), and glyphs lost as a blank before punctuation (主诸 ，).
# A blank between two Han characters is no evidence: formula lines list herbs that way.
OCR_SLIP = r"[0-9][lIO]|[lIO][0-9]|\bl[O0]{1,3}"
LOST_GLYPH = r"[\p{Han}，。、；：] [，。、；：）]"

TAG_COLUMNS = (
    "chars",
    "han_chars",
    "han_ratio",
    "symbol_ratio",
    "digit_ratio",
    "mean_line_chars",
    "punct_line_ratio",
    "dup_line_ratio",
    "dup_ngram_ratio",
    "bullet_ratio",
    "ellipsis_ratio",
    "flagged_per_kchar",
    "debris_ratio",
)


def quality_tags(texts: list[str], params: dict | None = None, timings: dict | None = None,
                 titled: np.ndarray | None = None, batch: TextBatch | None = None) -> dict[str, np.ndarray]:
    """Every quality column for `texts`; `timings` (if given) collects CPU seconds per rule;
    `titled` (per text: its first line is its title) keeps title lines out of punct_line_ratio.
    `batch`: the `TextBatch(texts, titled)` a caller already holds, so its code points, classes
    and lines are computed once."""
    params = params or {}
    batch = batch if batch is not None else TextBatch(texts, titled)
    tags: dict[str, np.ndarray] = {}
    for name, rule in RULES:
        started = time.process_time()
        tags.update(rule(batch, params))
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.process_time() - started
    return tags


def _length(batch: TextBatch, params: dict) -> dict:
    return {"chars": batch.lengths.copy(), "han_chars": batch.count(HAN)}


def _char_shares(batch: TextBatch, params: dict) -> dict:
    return {"han_ratio": batch.share(HAN), "symbol_ratio": batch.share(SYMBOL), "digit_ratio": batch.share(DIGIT)}


def _lines(batch: TextBatch, params: dict) -> dict:
    lines = batch.lines
    lengths = batch.line_lengths
    first, last = edge_chars(lines)
    ends = np.isin(last, _LINE_END_POINTS)
    exempt = lengths <= HEADING_CHARS
    rest = ~(ends | exempt)
    if rest.any():
        # Only lines not yet accepted pay for the regexes.
        undecided = lines.filter(pa.array(rest))
        verse = pc.match_substring_regex(undecided, VERSE_LINE).to_numpy(zero_copy_only=False)
        dose = pc.match_substring_regex(undecided, DOSE).to_numpy(zero_copy_only=False)
        clauses = pc.match_substring_regex(undecided, CLAUSE_PUNCT).to_numpy(zero_copy_only=False)
        # Han characters: the line's length less its other characters, which are few (a match
        # per Han character would cost three times as much).
        han = pc.subtract(pc.utf8_length(undecided), pc.count_substring_regex(undecided, r"\P{Han}")).to_numpy(zero_copy_only=False)
        classical = han >= HAN_LINE_SHARE * lengths[rest]
        undecided_rest = ~(verse | dose | clauses | classical)
        if undecided_rest.any():
            # A list of herbs or ingredients (妊娠禁忌, a formula's composition) is content when
            # the lexicon knows its items; navigation and tag clouds are not.
            matcher = list_matcher(params.get("domain_lexicon"))
            candidates = undecided.filter(pa.array(undecided_rest)).to_pylist()
            listed = np.fromiter((matcher.recognises_list(line) for line in candidates), bool, len(candidates))
            undecided_rest[undecided_rest] = ~listed
        rest[rest] = undecided_rest
    bullet = np.isin(first, _BULLET_POINTS)
    ellipsis = np.zeros(len(lines), bool)
    for end in ELLIPSIS_ENDS:
        ellipsis |= pc.ends_with(lines, end).to_numpy(zero_copy_only=False)
    # A title line says what a text is about; the line rules judge the lines under it.
    body = ~batch.title_line
    body_lines = batch.per_text_sum(body.astype(np.float64))

    def share(mask: np.ndarray) -> np.ndarray:
        return ratio(batch.per_text_sum((mask & body).astype(np.float64)), body_lines)

    return {
        "mean_line_chars": ratio(batch.per_text_sum(np.where(body, lengths, 0).astype(np.float64)), body_lines),
        "punct_line_ratio": np.where(body_lines > 0, share(~rest), 1.0),
        "bullet_ratio": share(bullet),
        "ellipsis_ratio": share(ellipsis),
    }


_LINE_END_POINTS = np.array([ord(c) for c in LINE_END], np.uint32)
_BULLET_POINTS = np.array([ord(c) for c in BULLETS], np.uint32)


def edge_chars(lines: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) code point of each line of a string array of non-empty lines (uint32),
    decoded from the UTF-8 bytes around each line's ends: no string is sliced or copied. Raises
    ValueError for an empty line or a null."""
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    n = len(lines)
    if n == 0:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint32)
    if lines.null_count:
        raise ValueError("edge_chars: a null line")
    lines = lines.cast(pa.string()) if lines.type != pa.string() else lines
    _, offsets_buffer, data_buffer = lines.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, n + 1, lines.offset * 4).astype(np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    if (ends <= starts).any():
        raise ValueError("edge_chars: an empty line")
    data = np.frombuffer(data_buffer, np.uint8)
    return _decode_at(data, starts), _decode_at(data, _char_start_before(data, ends, starts))


def _char_start_before(data: np.ndarray, ends: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Where the UTF-8 character that ends at each of `ends` opens: back over its continuation
    bytes (10xxxxxx), at most three, never before the line's start."""
    at = ends - 1
    for _ in range(3):
        back = (at > starts) & ((data[at] & 0xC0) == 0x80)
        at = at - back
    return at


def _decode_at(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The code point of the UTF-8 character opening at each of `at` (valid UTF-8)."""
    lead = data[at].astype(np.uint32)
    size = np.where(lead < 0x80, 1, np.where(lead < 0xE0, 2, np.where(lead < 0xF0, 3, 4)))
    point = np.where(size == 1, lead, np.where(size == 2, lead & 0x1F, np.where(size == 3, lead & 0x0F, lead & 0x07)))
    last = len(data) - 1
    for k in (1, 2, 3):
        more = size > k
        follow = data[np.minimum(at + k, last)].astype(np.uint32) & 0x3F
        point = np.where(more, (point << 6) | follow, point)
    return point.astype(np.uint32)


def _dup_lines(batch: TextBatch, params: dict) -> dict:
    """Characters in lines that already occurred earlier in the same text, over all characters."""
    n = len(batch.texts)
    if len(batch.lines) == 0:
        return {"dup_line_ratio": np.zeros(n)}
    line_ids = pc.dictionary_encode(batch.lines).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    keys = batch.line_owner.astype(np.int64) * (int(line_ids.max()) + 1) + line_ids
    _, first = np.unique(keys, return_index=True)
    repeated = np.ones(len(keys), bool)
    repeated[first] = False
    dup_chars = np.bincount(batch.line_owner[repeated], weights=batch.line_lengths[repeated], minlength=n)
    return {"dup_line_ratio": ratio(dup_chars, batch.lengths)}


def _dup_ngrams(batch: TextBatch, params: dict) -> dict:
    """Share of characters covered by a character n-gram that occurs more than once in its text."""
    n_gram = int(params.get("dup_ngram", 10))
    points, owner, total = batch.points, batch.owner, len(batch.points)
    n = len(batch.texts)
    if total < n_gram:
        return {"dup_ngram_ratio": np.zeros(n)}
    starts = total - n_gram + 1
    inside = owner[:starts] == owner[n_gram - 1 :]
    keys = window_hashes(points, n_gram)[inside]
    with np.errstate(over="ignore"):
        # The selection is a new array already: its int64 text numbers (never negative) read as uint64.
        text_mix = owner[:starts][inside].view(np.uint64)
        text_mix *= np.uint64(0x9E3779B97F4A7C15)
        keys ^= text_mix
    del text_mix
    found = np.flatnonzero(repeated_keys(keys))
    # Where the found keys' windows start: the k-th window inside a text starts at k plus the
    # windows before it that cross into the next text (few: n - 1 per text), counted through
    # how many inside windows precede each crossing one.
    crossing = np.flatnonzero(~inside)
    repeated = found + np.searchsorted(crossing - np.arange(len(crossing)), found, side="right")
    # The covered characters are the union of the windows [start, start + n) of the repeated
    # n-grams: each start adds up to the next start (starts ascend, and a window never leaves its
    # text, so the next text's first start is past it).
    covered = np.minimum(np.diff(repeated, append=total), n_gram)
    return {"dup_ngram_ratio": ratio(np.bincount(owner[repeated], weights=covered, minlength=n), batch.lengths)}


HASH_PRIME = 1_000_003


def window_hashes(values: np.ndarray, width: int) -> np.ndarray:
    """Polynomial hash (base HASH_PRIME, wrapping in 64 bits) of every window of `width` values
    (unsigned integers), one per start that leaves a whole window: sum of values[i + k] *
    P**(width - 1 - k), as uint64. Built by doubling (the hash of a window of a + b values is the
    hash of its first a times P**b plus the hash of its last b), so a few vector operations
    instead of one per position, over blocks of HASH_BLOCK starts: the temporaries stay small
    and in cache, instead of a batch-sized array per step."""
    count = len(values) - width + 1
    if count <= 0:
        return _doubled_hashes(np.asarray(values, np.uint64), width)
    out = np.empty(count, np.uint64)
    for start in range(0, count, HASH_BLOCK):
        stop = min(start + HASH_BLOCK, count)
        out[start:stop] = _doubled_hashes(values[start : stop + width - 1].astype(np.uint64), width)
    return out


HASH_BLOCK = 1 << 15


def _doubled_hashes(values: np.ndarray, width: int) -> np.ndarray:
    """window_hashes of uint64 `values` in one block."""
    prime = np.uint64(HASH_PRIME)
    result, covered = None, 0  # hashes of windows of `covered` values
    block, size = values, 1  # hashes of windows of `size` values (size a power of two)
    remaining = width
    with np.errstate(over="ignore"):
        while True:
            if remaining & 1:
                if result is None:
                    result, covered = block, size
                else:
                    count = min(len(result), len(block) - covered)
                    result = result[:count] * prime ** np.uint64(size) + block[covered : covered + count]
                    covered += size
            remaining >>= 1
            if not remaining:
                return result
            block = block[: len(block) - size] * prime ** np.uint64(size) + block[size:]
            size *= 2


def repeated_keys(keys: np.ndarray) -> np.ndarray:
    """Mask of the keys (uint64) that occur more than once. A sorted copy (numpy's vectorised
    sort) gives the few repeated values; two 64 KB tables of their lowest two 16-bit parts pick
    the keys that may be one of them (gathers through a view of the keys, no copy), and a hash
    table of the repeated values (pandas isin) decides those candidates alone."""
    import pandas as pd  # here: a command that never tags lines does not import pandas

    keys = np.ascontiguousarray(keys, np.uint64)
    ordered = np.sort(keys)
    equal = ordered[1:] == ordered[:-1]
    if not equal.any():
        return np.zeros(len(keys), bool)
    values = ordered[1:][equal]
    words = keys.view(np.uint16).reshape(-1, 4)
    mask = np.ones(len(keys), bool)
    for shift, column in zip((0, 16), (0, 1) if np.little_endian else (3, 2)):
        table = np.zeros(1 << 16, bool)
        table[(values >> np.uint64(shift)) & np.uint64(0xFFFF)] = True
        mask &= np.take(table, words[:, column])
    candidates = np.flatnonzero(mask)
    mask[candidates] = pd.Series(keys[candidates]).isin(values).to_numpy()
    return mask


def _flagged(batch: TextBatch, params: dict) -> dict:
    words = flagged_words(params.get("flagged_words"))
    n = len(batch.texts)
    hits = np.zeros(n)
    if not words or n == 0:
        return {"flagged_per_kchar": hits}
    pattern = flagged_pattern(words)
    # RE2 over the batch finds the few texts with a candidate; only those are segmented.
    found = pc.match_substring_regex(batch.text_array, pattern, ignore_case=True)
    candidates = np.flatnonzero(found.to_numpy(zero_copy_only=False))
    if len(candidates):
        tk = tokenizer(params.get("tcm_dict"))
        compiled = re.compile(pattern)
        for i in candidates:
            text = batch.texts[i].lower()
            hits[i] = sum(whole_word_hits(text, m.start(), m.end(), tk) for m in compiled.finditer(text))
    return {"flagged_per_kchar": ratio(hits * 1000, batch.visible)}


def _debris(batch: TextBatch, params: dict) -> dict:
    # Each pattern runs only over the texts that hold what its matches need: an OCR slip holds
    # l, I or O (Latin letters), a lost glyph's gap a space before punctuation.
    slips = _count_in(batch, np.flatnonzero(batch.class_counts[:, LATIN]), OCR_SLIP)
    points = batch.points
    spaces = np.flatnonzero(points[:-1] == 0x20)
    gapped = np.unique(batch.owner[spaces[np.isin(points[spaces + 1], _GAP_CLOSERS)]])
    gaps = _count_in(batch, gapped, LOST_GLYPH)
    return {"debris_ratio": ratio(batch.count(DEBRIS) + slips + gaps, batch.visible)}


# What follows the space of a LOST_GLYPH match.
_GAP_CLOSERS = np.array([ord(c) for c in "，。、；：）"], np.uint32)


def _count_in(batch: TextBatch, rows: np.ndarray, pattern: str) -> np.ndarray:
    """Matches of `pattern` per text, counted in `rows` only (0 elsewhere)."""
    counts = np.zeros(len(batch.texts), np.int64)
    if len(rows):
        counts[rows] = pc.count_substring_regex(batch.text_array.take(pa.array(rows)), pattern).to_numpy(zero_copy_only=False)
    return counts


RULES = (
    ("length", _length),
    ("char_shares", _char_shares),
    ("lines", _lines),
    ("dup_lines", _dup_lines),
    ("dup_ngrams", _dup_ngrams),
    ("flagged_words", _flagged),
    ("debris", _debris),
)
