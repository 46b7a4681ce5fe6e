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
from functools import lru_cache


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
def _nfkc_changes() -> re.Pattern:
    """Runs of characters that NFKC changes, the protected punctuation excepted. Folding only
    these (then NFC over the whole text) equals NFKC with the policy, at a fraction of the cost
    of normalising every character of a text that is almost all Han."""
    points = [cp for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF]
    points += [cp for lo, hi in _ASTRAL_COMPAT for cp in range(lo, hi + 1)]
    changed = [cp for cp in points if unicodedata.normalize("NFKC", chr(cp)) != chr(cp) and chr(cp) not in _CJK_PUNCT]
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
    return _ASCII_AFTER_HAN.sub(lambda m: m.group(1).translate(_TO_FULL), text)


def tidy_whitespace(text: str) -> str:
    """Runs of spaces become one, lines lose their edge spaces, at most one blank line in a row."""
    text = _LINE_EDGES.sub("\n", _SPACES.sub(" ", text))
    return _BLANK_LINES.sub("\n\n", text).strip(" \n")


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
    """The form two texts are compared in: NFKC, simplified, without punctuation or spacing."""
    # The house NFKC (full-width punctuation kept) is twice as fast, and what it keeps is
    # punctuation, which is removed below: the key is the one full NFKC would give.
    text = nfkc(_INVISIBLE.sub("", text))
    text = _converter("t2s").convert(text)
    return _NOT_WORD.sub("", text).lower()
