"""Text normalisation for Chinese: Unicode clean-up, traditional to simplified, whitespace.

Unicode policy (NFKC with Chinese punctuation kept):
- control characters (but newline) and zero-width characters are removed; tabs become spaces;
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

# Full-width punctuation that plain NFKC would turn into ASCII.
_CJK_PUNCT = "，：；！？（）［］｛｝｜～＂＇"
_PROTECT = {ord(c): 0xF0000 + i for i, c in enumerate(_CJK_PUNCT)}
_RESTORE = {v: k for k, v in _PROTECT.items()}

_INVISIBLE = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u00ad\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\ufeff]")
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_HAN_CHAR = re.compile(f"[{_HAN}]")
_ASCII_AFTER_HAN = re.compile(f"(?<=[{_HAN}])([,:;!?()])")
_TO_FULL = str.maketrans({",": "，", ":": "：", ";": "；", "!": "！", "?": "？", "(": "（", ")": "）"})
_SPACES = re.compile(r"[ \t\u3000\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# What the duplicate and contamination keys ignore: punctuation, symbols and spacing.
_NOT_WORD = re.compile(r"[\W_]+")


@lru_cache(maxsize=4)
def _converter(config: str):
    import opencc

    return opencc.OpenCC(config)


def unicode_clean(text: str, form: str = "NFKC") -> str:
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if form == "NFKC":
        text = unicodedata.normalize("NFKC", text.translate(_PROTECT)).translate(_RESTORE)
    elif form == "NFC":
        text = unicodedata.normalize("NFC", text)
    return _ASCII_AFTER_HAN.sub(lambda m: m.group(1).translate(_TO_FULL), text)


def tidy_whitespace(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def to_simplified(text: str, config: str | None = "t2s") -> tuple[str, int]:
    """The text in simplified characters, and how many characters changed."""
    if not config:
        return text, 0
    converted = _converter(config).convert(text)
    if converted == text:
        return text, 0
    if len(converted) == len(text):
        return converted, sum(a != b for a, b in zip(text, converted))
    return converted, abs(len(converted) - len(text)) or 1


def normalize_text(text: str, opencc: str | None = "t2s", unicode_form: str = "NFKC") -> tuple[str, int]:
    """Clean text for training; returns it with the count of characters changed by OpenCC."""
    text = tidy_whitespace(unicode_clean(text, unicode_form))
    return to_simplified(text, opencc)


def han_count(text: str) -> int:
    return len(_HAN_CHAR.findall(text))


def match_key(text: str) -> str:
    """The form two texts are compared in: NFKC, simplified, without punctuation or spacing."""
    text = unicodedata.normalize("NFKC", _INVISIBLE.sub("", text))
    text = _converter("t2s").convert(text)
    return _NOT_WORD.sub("", text).lower()
