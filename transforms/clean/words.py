"""Words for Chinese text: jieba with a TCM user dictionary, and the flagged-word list.

jieba splits TCM terms it does not know (益卫/固表, 气血/两/虚证); the user dictionary shipped in
transforms/resources (herbs, formulas, syndromes, methods, acupoints) keeps them whole, and a
user may add their own file. jieba writes a cache of its dictionary: it goes to a folder we can
write (TCM_CORPUS_CACHE, else ~/.cache/tcm-corpus, else the temporary folder).
"""
from __future__ import annotations

import os
import re
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path

RESOURCES = "transforms.resources"
TCM_DICT = "tcm_user_dict.txt"
FLAGGED_WORDS = "flagged_words.txt"


def _resource_lines(name: str) -> list[str]:
    text = (resources.files(RESOURCES) / name).read_text(encoding="utf-8")
    return _content_lines(text)


def _content_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def cache_dir() -> Path:
    for candidate in (os.environ.get("TCM_CORPUS_CACHE"), Path.home() / ".cache" / "tcm-corpus", Path(tempfile.gettempdir()) / "tcm-corpus"):
        if not candidate:
            continue
        path = Path(candidate) / "jieba"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise OSError("no writable folder for jieba's cache; set TCM_CORPUS_CACHE")


def dictionary_words(extra: str | None = None) -> list[tuple[str, int | None]]:
    """(word, frequency) of the shipped TCM dictionary and of an optional user file (same format)."""
    lines = _resource_lines(TCM_DICT)
    if extra:
        lines += _content_lines(Path(extra).read_text(encoding="utf-8"))
    words = []
    for line in lines:
        parts = line.split()
        words.append((parts[0], int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None))
    return words


@lru_cache(maxsize=4)
def tokenizer(extra_dict: str | None = None):
    """A jieba tokenizer of its own (not jieba's module-level one) with the TCM words added."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    tk = jieba.Tokenizer()
    tk.tmp_dir = str(cache_dir())
    tk.initialize()
    for word, freq in dictionary_words(extra_dict):
        tk.add_word(word, freq)
    return tk


def flagged_words(path: str | None = None) -> dict[str, str]:
    """word -> category (ads, gambling, adult), from the shipped list or the user's file."""
    lines = _content_lines(Path(path).read_text(encoding="utf-8")) if path else _resource_lines(FLAGGED_WORDS)
    words = {}
    for line in lines:
        category, _, word = line.partition("\t")
        if not word:
            raise ValueError(f"flagged words: {line!r} is not `category<TAB>word`")
        words[word.strip().lower()] = category.strip()
    return words


def flagged_pattern(words: dict[str, str]) -> str:
    # Longest first, so 成人视频 wins over a shorter overlapping entry.
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def whole_word_hits(text: str, start: int, end: int, tk, margin: int = 8) -> bool:
    """Whether text[start:end] is a sequence of whole jieba tokens in its neighbourhood."""
    lo = max(0, start - margin)
    window = text[lo : end + margin]
    bounds = {0, len(window)}
    for _, s, e in tk.tokenize(window):
        bounds.add(s)
        bounds.add(e)
    return (start - lo) in bounds and (end - lo) in bounds
