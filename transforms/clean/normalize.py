"""Text normalisation for Chinese: Unicode clean-up, traditional to simplified (only what was
traditional: transforms/clean/simplify.py), whitespace.

Unicode policy (NFKC with Chinese punctuation kept):
- control characters (but newline and tab), zero-width characters, direction marks, variation
  selectors and the BOM are removed; CR, CRLF, U+2028 and U+2029 become newlines;
- tabs, the ideographic space and no-break spaces become one space; lines are stripped and more
  than one blank line between paragraphs becomes one;
- NFKC folds full-width Latin letters and digits (ＡＢ１２ -> AB12), compatibility ideographs
  and Kangxi radicals to their unified forms, and the ideographic space to a plain space;
- full-width Chinese punctuation (，：；！？（）) is NOT folded to ASCII, as plain NFKC would do,
  so that it stays consistent with 。、「」, which NFKC leaves alone;
- ASCII , : ; ! ? ( ) written right after a Han character become their full-width forms.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache, partial

import numpy as np

from .textstats import lookup


# Full-width punctuation that plain NFKC would turn into ASCII (and the Chinese ellipsis …,
# which it would turn into three dots).
_CJK_PUNCT = "，：；！？（）［］｛｝｜～＂＇…"
# Planes outside the BMP that hold compatibility characters (math letters, enclosed
# alphanumerics, CJK compatibility ideographs supplement).
_ASTRAL_COMPAT = ((0x1D400, 0x1D7FF), (0x1F100, 0x1F2FF), (0x2F800, 0x2FA1F))

# C0/C1 controls but tab and newlines, soft hyphen, zero-width and direction marks, invisible
# operators, Mongolian vowel separator, variation selectors, BOM, interlinear annotation marks.
# (U+2028/U+2029 are line and paragraph breaks: they become newlines, not nothing.)
_INVISIBLE = re.compile(
    "[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u00ad\u034f\u061c\u180e\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\ufe00-\ufe0f\ufeff\ufff9-\ufffb]"
)
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_HAN_CHAR = re.compile(f"[{_HAN}]")
_ASCII_AFTER_HAN = re.compile(f"(?<=[{_HAN}])([,:;!?()])")
_TO_FULL = str.maketrans({",": "，", ":": "：", ";": "；", "!": "！", "?": "？", "(": "（", ")": "）"})
_SPACES = re.compile(r"[ \t\u3000\u00a0\u2000-\u200a\u202f\u205f]+")
_LINE_EDGES = re.compile(r" *\n *")
_BLANK_LINES = re.compile(r"\n{3,}")
# What the duplicate and contamination keys ignore: punctuation, symbols and spacing.
_NOT_WORD = re.compile(r"[\W_]+")


@lru_cache(maxsize=1)
def _nfkc_changed_points() -> tuple[int, ...]:
    """Code points that NFKC changes, the protected punctuation excepted (ascending)."""
    points = [cp for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF]
    points += [cp for lo, hi in _ASTRAL_COMPAT for cp in range(lo, hi + 1)]
    return tuple(cp for cp in points if unicodedata.normalize("NFKC", chr(cp)) != chr(cp) and chr(cp) not in _CJK_PUNCT)


@lru_cache(maxsize=1)
def _nfkc_changes() -> re.Pattern:
    """Runs of characters that NFKC changes, the protected punctuation excepted. Folding only
    these (then NFC over the whole text) equals NFKC with the policy, at a fraction of the cost
    of normalising every character of a text that is almost all Han."""
    changed = list(_nfkc_changed_points())
    ranges, start, prev = [], changed[0], changed[0]
    for cp in changed[1:] + [-1]:
        if cp != prev + 1:
            ranges.append(re.escape(chr(start)) if start == prev else f"{re.escape(chr(start))}-{re.escape(chr(prev))}")
            start = cp
        prev = cp
    return re.compile(f"[{''.join(ranges)}]+")


def _fold(match: re.Match) -> str:
    return unicodedata.normalize("NFKC", match.group())


def nfkc(text: str) -> str:
    """NFKC, except that full-width Chinese punctuation and … stay as they are."""
    return unicodedata.normalize("NFC", _nfkc_changes().sub(_fold, text))


@lru_cache(maxsize=4)
def _converter(config: str):
    import opencc

    return opencc.OpenCC(config)


def unicode_clean(text: str, form: str = "NFKC") -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n\n")
    text = _INVISIBLE.sub("", text)
    if form == "NFKC":
        text = nfkc(text)
    elif form == "NFC":
        text = unicodedata.normalize("NFC", text)
    return _ASCII_AFTER_HAN.sub(_full_width, text)


def tidy_whitespace(text: str) -> str:
    """Runs of spaces become one, lines lose their edge spaces, at most one blank line in a row."""
    text = _LINE_EDGES.sub("\n", _SPACES.sub(" ", text))
    return _BLANK_LINES.sub("\n\n", text).strip(" \n")


# Bits of _char_flags: which steps of the policy a character calls for (and, on request, whether
# it is traditional evidence: transforms.clean.simplify).
_F_INVISIBLE, _F_NFKC, _F_ASCII_PUNCT, _F_SPACE, _F_LINE_BREAK, _F_TRADITIONAL = 1, 2, 4, 8, 16, 32
_LINE_BREAKS = "\r\u2028\u2029"


@lru_cache(maxsize=2)
def _char_flags(evidence: bool = False) -> np.ndarray:
    """Per code point (all planes), the steps it calls for: invisible removal, the NFKC fold,
    full-width punctuation after Han, space folding, line breaks made newlines; with `evidence`,
    also whether it is a traditional evidence character (`simplify.may_be_traditional`). A text
    none of whose characters calls for a step is left as it is by that step's pattern, which is
    then not run."""
    if evidence:
        from .simplify import _traditional_table as traditional_table

        return _char_flags(False) | (traditional_table().astype(np.uint8) * np.uint8(_F_TRADITIONAL))
    flags = np.zeros(0x110000, np.uint8)
    # One search over all of the BMP's characters: each pattern is one character class.
    plane = "".join(map(chr, range(0x10000)))
    flags[[m.start() for m in _INVISIBLE.finditer(plane)]] |= _F_INVISIBLE
    flags[list(_nfkc_changed_points())] |= _F_NFKC
    flags[[ord(c) for c in ",:;!?()"]] |= _F_ASCII_PUNCT
    # A plain space calls for folding only in a run of two: the text tells (`"  " in text`).
    flags[[cp for m in _SPACES.finditer(plane) for cp in range(m.start(), m.end()) if cp != 0x20]] |= _F_SPACE
    flags[[ord(c) for c in _LINE_BREAKS]] |= _F_LINE_BREAK
    return flags


def _texts_flagged(texts: list[str], evidence: bool = False) -> np.ndarray | None:
    """Per text, the OR of its characters' _char_flags; None when a text holds a lone
    surrogate (no code points to look up: the per-text path takes the batch)."""
    try:
        points, _, ends = _code_points(texts)
    except UnicodeEncodeError:
        return None
    per_char = lookup(_char_flags(evidence), points)
    hits = np.flatnonzero(per_char)
    out = np.zeros(len(texts), np.uint8)
    np.bitwise_or.at(out, np.searchsorted(ends, hits, side="right"), per_char[hits])
    return out


def normalize_batch(texts: list[str], form: str = "NFKC") -> list[str]:
    """`tidy_whitespace(unicode_clean(text, form))` of each text, for a batch at once: identical
    results, a fraction of the cost. Which characters each text holds is looked up for the whole
    batch (code points against one table), and each pattern runs only over the texts that hold
    a character it can change."""
    return normalize_batch_with_evidence(texts, form, evidence=False)[0]


def normalize_batch_with_evidence(texts: list[str], form: str = "NFKC", evidence: bool = True) -> tuple[list[str], np.ndarray | None]:
    """`normalize_batch`, and (with `evidence`) per normalised text whether it holds a
    traditional evidence character (`simplify.may_be_traditional` of the result), read from the
    same look-up of the batch's code points: the later steps change only spaces, line breaks
    and ASCII punctuation, none of them evidence, and a text the fold or NFC changed is looked
    up again. None without `evidence`."""
    flags = _texts_flagged(texts, evidence)
    if flags is None:
        texts = [_line_breaks(text) for text in texts]
        texts = [tidy_whitespace(unicode_clean(text, form)) for text in texts]
        return texts, _may_be_traditional(texts) if evidence else None
    texts = list(texts)
    for i in np.flatnonzero(flags & _F_LINE_BREAK).tolist():
        texts[i] = _line_breaks(texts[i])
    for i in np.flatnonzero(flags & _F_INVISIBLE).tolist():
        texts[i] = _INVISIBLE.sub("", texts[i])
    if form == "NFKC":
        changes = _nfkc_changes()
        for i in np.flatnonzero(flags & _F_NFKC).tolist():
            texts[i] = changes.sub(_fold, texts[i])
    if form in ("NFKC", "NFC"):
        before = texts
        texts = [unicodedata.normalize("NFC", text) for text in texts]
        # NFC and the fold make new characters: the texts they (or invisible removal) changed
        # are looked up again as they are now.
        changed = [i for i, (old, new) in enumerate(zip(before, texts)) if new is not old or flags[i] & (_F_INVISIBLE | _F_NFKC)]
        if changed:
            again = _texts_flagged([texts[i] for i in changed], evidence)
            if again is None:
                texts = [tidy_whitespace(_ASCII_AFTER_HAN.sub(_full_width, text)) for text in texts]
                return texts, _may_be_traditional(texts) if evidence else None
            flags[changed] = again
    for i in np.flatnonzero(flags & _F_ASCII_PUNCT).tolist():
        texts[i] = _ASCII_AFTER_HAN.sub(_full_width, texts[i])
    other_space = (flags & _F_SPACE).astype(bool).tolist()
    texts = [_tidy(text, other) for text, other in zip(texts, other_space)]
    return texts, (flags & _F_TRADITIONAL).astype(bool) if evidence else None


def _line_breaks(text: str) -> str:
    """CR, CRLF, U+2028 and U+2029 as newlines (unicode_clean's first step)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n\n")


def _may_be_traditional(texts: list[str]) -> np.ndarray:
    from .simplify import may_be_traditional

    return may_be_traditional(texts)


def _full_width(match: re.Match) -> str:
    return match.group(1).translate(_TO_FULL)


def _tidy(text: str, other_space: bool) -> str:
    """tidy_whitespace, told whether the text holds a character _SPACES matches other than
    the plain space."""
    if other_space or "  " in text:
        text = _SPACES.sub(" ", text)
    if " \n" in text or "\n " in text:
        text = _LINE_EDGES.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip(" \n")


def to_simplified(text: str, config: str | None = "auto", phrase_files: tuple[str, ...] = ()) -> tuple[str, int]:
    """The text with what was written in traditional characters simplified (transforms.clean.simplify:
    detection per text and line, OpenCC with the protected phrases), and how many characters
    changed. `config`: "auto", "t2s", "tw2s", "hk2s" or None (off)."""
    from .simplify import to_simplified as simplify

    result = simplify(text, config, phrase_files)
    return result.text, result.changed


def normalize_text(text: str, opencc: str | None = "auto", unicode_form: str = "NFKC") -> tuple[str, int]:
    """Clean text for training; returns it with the count of characters changed by OpenCC."""
    text = tidy_whitespace(unicode_clean(text, unicode_form))
    return to_simplified(text, opencc)


def han_count(text: str) -> int:
    return len(_HAN_CHAR.findall(text))


def match_key(text: str) -> str:
    """The form two texts are compared in: NFKC, simplified, without punctuation or spacing. A
    lone surrogate (no character, so no word) is dropped like punctuation: the key is the one of
    the text with it replaced by U+FFFD, as ingest writes such text."""
    # The house NFKC (full-width punctuation kept) is twice as fast, and what it keeps is
    # punctuation, which is removed below: the key is the one full NFKC would give.
    text = nfkc(_INVISIBLE.sub("", text))
    try:
        text = _converter("t2s").convert(text)
    except UnicodeEncodeError:  # OpenCC takes UTF-8, which cannot hold a lone surrogate
        text = _converter("t2s").convert(_LONE_SURROGATE.sub("", text))
    return _NOT_WORD.sub("", text).lower()


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


# A separator no match form can hold: match_keys joins a batch with it for one OpenCC call
# (control characters are removed before OpenCC, and no OpenCC phrase spans one).
_BATCH_SEPARATOR = "\x01"


@lru_cache(maxsize=1)
def _key_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per code point of the Basic Multilingual Plane, what match_key's character-local steps
    make of it: (fold, simple_fold, word, simple_word).

    - fold: the code point after invisible removal and the house NFKC (0 where removed);
      simple_fold: False where the result depends on the neighbours (a combining mark, a
      character a composition can absorb, a fold into several characters), so a text holding
      one takes match_key itself;
    - word: kept in the key (alphanumeric, as the regex's \\w less "_"), lower-cased in `fold`'s
      place; simple_word: False where lower-casing is not one character to one (İ, and Σ,
      whose lower case depends on the next character)."""
    size = 0x10000
    fold = np.arange(size, dtype=np.uint32)
    simple_fold = np.ones(size, bool)
    word = np.zeros(size, bool)
    lower = np.arange(size, dtype=np.uint32)
    simple_word = np.ones(size, bool)
    # Every code point as one string, surrogates standing in as spaces, read a block at a time.
    every = np.arange(0x110000, dtype=np.uint32)
    every[0xD800:0xE000] = 0x20
    every = every.tobytes().decode("utf-32-le")
    block = 256
    # Characters a canonical composition can absorb into the character before them: the second
    # of a two-part canonical decomposition. A character with a canonical decomposition is not
    # in NFD, so a block in NFD holds none.
    seconds = set()
    for lo in range(0, 0x110000, block):
        if unicodedata.is_normalized("NFD", every[lo : lo + block]):
            continue
        for char in every[lo : lo + block]:
            parts = unicodedata.decomposition(char).split()
            if len(parts) == 2 and not parts[0].startswith("<"):
                seconds.add(int(parts[1], 16))
    seconds.update(range(0x1100, 0x1200))  # Hangul jamo compose algorithmically
    seconds.update(range(0x3130, 0x3190))
    # A block of letters and digits that NFKC and lower case leave as they are, none of them
    # invisible or a second, keeps the defaults (itself, simple, a word character): most of the BMP.
    nfkc_of = partial(unicodedata.normalize, "NFKC")
    others = []
    for lo in range(0, size, block):
        text = every[lo : lo + block]
        if (text.isalnum() and text.lower() == text and not _INVISIBLE.search(text) and seconds.isdisjoint(range(lo, lo + block))
                and unicodedata.is_normalized("NFKC", text) and list(map(nfkc_of, text)) == list(text)
                and not any(map(unicodedata.combining, text))):
            word[lo : lo + block] = True
        else:
            others.extend(range(lo, lo + block))
    for cp in others:
        if 0xD800 <= cp <= 0xDFFF:
            simple_fold[cp] = simple_word[cp] = False
            continue
        char = chr(cp)
        if _INVISIBLE.match(char):
            fold[cp] = 0
        else:
            folded = char if char in _CJK_PUNCT else unicodedata.normalize("NFKC", char)
            if (len(folded) != 1 or cp in seconds or ord(folded) in seconds or unicodedata.combining(char)
                    or unicodedata.combining(folded)):
                simple_fold[cp] = False
            else:
                fold[cp] = ord(folded)
        if char.isalnum():
            lowered = char.lower()
            if len(lowered) != 1 or char == "\u03a3":
                simple_word[cp] = False
            else:
                word[cp] = True
                lower[cp] = ord(lowered)
    return fold, simple_fold, np.where(word, lower, 0).astype(np.uint32), simple_word


def _any_per_text(flags: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per text (`ends`: where each ends in the batch's code points), whether any flag is set."""
    out = np.zeros(len(ends), bool)
    out[np.searchsorted(ends, np.flatnonzero(flags), side="right")] = True
    return out


def _dictionary_files(node) -> list[str]:
    """The ocd2 files an OpenCC configuration (parsed JSON) names, wherever they sit in it."""
    if isinstance(node, dict):
        if node.get("type") == "ocd2" and "file" in node:
            return [node["file"]]
        return [f for value in node.values() for f in _dictionary_files(value)]
    if isinstance(node, list):
        return [f for value in node for f in _dictionary_files(value)]
    return []


@lru_cache(maxsize=4)
def _changing_table(config: str) -> np.ndarray | None:
    """Per code point (all planes), whether OpenCC's `config` can change a text holding it; None
    where the dictionaries cannot be read (then every text is converted).

    Read from the configuration's own dictionaries (`_opencc_tables`): for each entry whose
    (first) value differs from its key, the key's characters where the two differ (every
    character of the key where the lengths differ). A text holding none of them matches only
    entries that map to themselves, so OpenCC returns it as it is."""
    tables = _opencc_tables(config)
    return None if tables is None else tables[0]


@lru_cache(maxsize=4)
def _opencc_tables(config: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(changing, keyed) per code point (all planes), read from the dictionaries of OpenCC's
    `config` (dumped to text by OpenCC's `opencc_dict`): `changing` as `_changing_table` says;
    `keyed`, whether any entry's key holds the character. None where the dictionaries cannot be
    read or change nothing."""
    import json
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    import opencc

    clib = Path(opencc.__file__).parent / "clib"
    share, tool = clib / "share" / "opencc", clib / "bin" / "opencc_dict"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(clib / "lib64"), str(clib / "lib"), env.get("LD_LIBRARY_PATH")]))
    table = np.zeros(0x110000, bool)
    keyed = np.zeros(0x110000, bool)
    try:
        files = _dictionary_files(json.loads((share / f"{config}.json").read_text(encoding="utf-8")))
        with tempfile.TemporaryDirectory() as folder:
            for name in files:
                dumped = Path(folder) / f"{name}.txt"
                subprocess.run([str(tool), "-i", str(share / name), "-o", str(dumped), "-f", "ocd2", "-t", "text"],
                               check=True, capture_output=True, env=env, timeout=60)
                for line in dumped.read_text(encoding="utf-8").splitlines():
                    key, _, values = line.partition("\t")
                    keyed[[ord(c) for c in key]] = True
                    value = values.split(" ")[0]
                    if value == key:
                        continue
                    if len(value) != len(key):
                        table[[ord(c) for c in key]] = True
                    else:
                        table[[ord(a) for a, b in zip(key, value) if a != b]] = True
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    if not files or not table.any():
        return None
    return table, keyed


def _code_points(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code points of all texts, where each text starts and where it ends in them)."""
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    ends = np.cumsum(lengths)
    return np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32), ends - lengths, ends


# Bits of the packed look-up tables (_packed_tables) above a code point's 21.
_VALUE = np.uint32(0x1FFFFF)
_SLOW = np.uint32(1 << 21)  # the text takes the per-text path
_CHANGING = np.uint32(1 << 22)  # OpenCC's dictionaries can change the (folded) character


@lru_cache(maxsize=1)
def _packed_tables() -> tuple[np.ndarray, np.ndarray, bool]:
    """_key_tables packed for one look-up per step over every plane (uint32 per code point):
    (first, second, whether the changing bit is known).

    - first: fold's value, _SLOW where simple_fold is False or outside the BMP, _CHANGING where
      OpenCC t2s can change the folded character (`_changing_table`);
    - second: word's value, _SLOW where simple_word is False or outside the BMP.
    Outside the BMP the values are those of U+FFFF, as the per-text path decides those texts."""
    fold, simple_fold, word, simple_word = _key_tables()
    first = np.full(0x110000, fold[0xFFFF], np.uint32)
    first[:0x10000] = fold
    first[np.flatnonzero(~simple_fold)] |= _SLOW
    first[0x10000:] |= _SLOW
    changing = _changing_table("t2s")
    if changing is not None:
        first[changing[first & _VALUE]] |= _CHANGING
    second = np.full(0x110000, word[0xFFFF], np.uint32)
    second[:0x10000] = word
    second[np.flatnonzero(~simple_word)] |= _SLOW
    second[0x10000:] |= _SLOW
    return first, second, changing is not None


def _dropped_zeros(values: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the nonzero `values`, where each span ending at `ends` ends in them)."""
    kept = values != 0
    dropped = np.flatnonzero(~kept)
    if not len(dropped):
        return values, ends
    # Each end moves back by the values dropped before it.
    return values[kept], ends - np.searchsorted(dropped, ends)


def _texts(values: np.ndarray, ends: np.ndarray) -> list[str]:
    """The texts the code points `values` make, cut at `ends`."""
    joined = values.tobytes().decode("utf-32-le")
    bounds = [0] + ends.tolist()
    return [joined[a:b] for a, b in zip(bounds, bounds[1:])]


def _spliced(values: np.ndarray, ends: np.ndarray, which: list[int], new: np.ndarray, new_starts: list[int], new_ends: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(code points, ends) of the texts `values` cut at `ends`, with text number which[j]
    (ascending) replaced by new[new_starts[j]:new_ends[j]]."""
    starts = np.concatenate([[0], ends[:-1]])
    pieces, previous = [], 0
    for a, b, c, d in zip(starts[which].tolist(), ends[which].tolist(), new_starts, new_ends):
        pieces.append(values[previous:a])
        pieces.append(new[c:d])
        previous = b
    pieces.append(values[previous:])
    lengths = np.diff(ends, prepend=0)
    lengths[which] = np.subtract(new_ends, new_starts)
    return np.concatenate(pieces), np.cumsum(lengths)


def _converted(values: np.ndarray, ends: np.ndarray, changeable: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(code points, ends) of the texts (`values` cut at `ends`) after OpenCC t2s; the texts not
    `changeable` stay as they are. None where OpenCC's output does not split back as it went in.

    OpenCC runs over the runs of characters that its dictionaries' keys hold (`_opencc_tables`)
    and that hold a character it can change, in one call: no dictionary entry matches across a
    character no key holds, so each run converts as it does inside its text, and a run without a
    changing character converts to itself. A fraction of a text is such runs. Where a run's
    length changes, or the tables are unknown, the changeable texts are converted whole."""
    if not len(changeable):
        return values, ends
    tables = _opencc_tables("t2s")
    if tables is not None:
        converted = _converted_runs(values, ends, *tables)
        if converted is not None:
            return converted
    return _converted_texts(values, ends, changeable)


def _converted_runs(values: np.ndarray, ends: np.ndarray, changing: np.ndarray, keyed: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`_converted` by runs (see there); None where a run's length changes."""
    hot = np.flatnonzero(lookup(changing, values))
    if not len(hot):
        return values, ends
    held = lookup(keyed, values)
    edges = np.empty(len(values) + 1, bool)  # where a run of held or of other characters starts
    edges[0] = edges[-1] = True
    np.not_equal(held[1:], held[:-1], out=edges[1:-1])
    edges[ends[:-1]] = True  # a text's first character starts a run
    bounds = np.flatnonzero(edges)
    after = np.searchsorted(bounds, hot, side="right")
    starts, first = np.unique(bounds[after - 1], return_index=True)
    lengths = bounds[after][first] - starts
    offsets = np.cumsum(lengths)
    picked = np.repeat(starts - (offsets - lengths), lengths) + np.arange(int(offsets[-1]))
    joined = np.insert(values[picked], offsets[:-1], np.uint32(ord(_BATCH_SEPARATOR)))
    out = _converter("t2s").convert(joined.tobytes().decode("utf-32-le"))
    new = np.frombuffer(out.encode("utf-32-le"), np.uint32)
    separators = joined == ord(_BATCH_SEPARATOR)
    if len(new) != len(joined) or not np.array_equal(new == ord(_BATCH_SEPARATOR), separators):
        return None
    values = values.copy()
    values[picked] = new[~separators]
    return values, ends


def _converted_texts(values: np.ndarray, ends: np.ndarray, changeable: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`_converted` by whole texts: OpenCC over the `changeable` texts in one call, joined by
    _BATCH_SEPARATOR. None where its output does not split back into as many texts."""
    starts = np.concatenate([[0], ends[:-1]])
    joined = values.tobytes().decode("utf-32-le")
    spans = zip(starts[changeable].tolist(), ends[changeable].tolist())
    out = _converter("t2s").convert(_BATCH_SEPARATOR.join([joined[a:b] for a, b in spans]))
    new = np.frombuffer(out.encode("utf-32-le"), np.uint32)
    separators = np.flatnonzero(new == ord(_BATCH_SEPARATOR))
    if len(separators) != len(changeable) - 1:
        return None
    new_starts = [0] + (separators + 1).tolist()
    new_ends = separators.tolist() + [len(new)]
    return _spliced(values, ends, changeable.tolist(), new, new_starts, new_ends)


def match_keys(texts: list[str]) -> list[str]:
    """match_key of each text, for a batch at once: identical results, a fraction of the cost.
    The character-local steps (invisible removal, NFKC, punctuation and spacing dropped, lower
    case) are table look-ups over the batch's code points; OpenCC runs once over the batch's
    texts that it can change. A text holding a character whose result depends on its neighbours
    (a combining mark, İ, Σ, a character outside the BMP) takes match_key itself."""
    return _texts(*match_key_points(texts))


def match_key_points(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The match_keys of `texts` as code points: (the keys' code points one after another,
    uint32; where each key ends in them, int64, one per text)."""
    if not texts:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    try:
        return _match_key_points(texts)
    except UnicodeEncodeError:  # a lone surrogate: the per-text path drops it
        return _code_points([match_key(text) for text in texts])[::2]


def _match_key_points(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    first, second, known = _packed_tables()
    points, _, ends = _code_points(texts)
    looked = lookup(first, points)
    slow = _any_per_text(looked & _SLOW, ends)
    # OpenCC runs only over the texts holding a character its dictionaries can change.
    changeable = np.flatnonzero(_any_per_text(looked & _CHANGING, ends)) if known else np.arange(len(texts))
    folded, ends = _dropped_zeros(looked & _VALUE, ends)
    del looked
    converted = _converted(folded, ends, changeable)
    if converted is None:  # never expected; the per-text path is always right
        return _code_points([match_key(text) for text in texts])[::2]
    points, ends = converted
    looked = lookup(second, points)
    slow_word = _any_per_text(looked & _SLOW, ends)
    slow_word &= ~slow
    fixed = {i: match_key(texts[i]) for i in np.flatnonzero(slow).tolist()}
    if slow_word.any():
        lines = _texts(points, ends)
        fixed.update((i, _NOT_WORD.sub("", lines[i]).lower()) for i in np.flatnonzero(slow_word).tolist())
    kept, ends = _dropped_zeros(looked & _VALUE, ends)
    if fixed:
        which = sorted(fixed)
        new, new_starts, new_ends = _code_points([fixed[i] for i in which])
        kept, ends = _spliced(kept, ends, which, new, new_starts.tolist(), new_ends.tolist())
    return kept, ends
