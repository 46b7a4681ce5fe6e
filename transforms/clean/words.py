"""Words for Chinese text: jieba with a TCM user dictionary, and the flagged-word list.

jieba splits TCM terms it does not know (益卫/固表, 气血/两/虚证); the user dictionary shipped in
transforms/resources (herbs, formulas, syndromes, methods, acupoints) keeps them whole, and a
user may add their own file. jieba writes a cache of its dictionary, and the tokenizer here its
prefix dictionary in buckets read as needed: they go to a folder we can write (TCM_CORPUS_CACHE,
else ~/.cache/tcm-corpus, else the temporary folder).
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
    """A jieba tokenizer of its own (not jieba's module-level one) with the TCM words added.

    Its prefix dictionary (jieba's and the TCM words, about 600,000 entries) is read a bucket at
    a time, as the texts segmented need it: the few texts a process segments (the flagged-word
    candidates) need a few dozen small buckets, not the 0.7 CPU-s of loading jieba's whole
    cache. The buckets are written once per dictionary state (`_frequency_buckets`)."""
    import jieba

    words = dictionary_words(extra_dict)
    folder = _frequency_buckets(words)
    tk = jieba.Tokenizer()
    tk.tmp_dir = str(cache_dir())
    tk.FREQ = _BucketedFrequencies(folder)
    tk.total = int((folder / "total").read_text())
    tk.initialized = True
    return tk


_BUCKETS = 256


def _full_tokenizer(words: list[tuple[str, int | None]]):
    """jieba's tokenizer with its whole dictionary loaded and the words added."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    tk = jieba.Tokenizer()
    tk.tmp_dir = str(cache_dir())
    tk.initialize()
    for word, freq in words:
        tk.add_word(word, freq)
    return tk


def _frequency_buckets(words: list[tuple[str, int | None]]) -> Path:
    """The folder holding the prefix dictionary of `_full_tokenizer(words)` split by the first
    character of each entry (`bucket-N`, marshal) and its total, named by what decides them:
    jieba's version and dictionary file, and the words added. Written once, beside and renamed."""
    import hashlib
    import marshal

    import jieba

    dictionary = Path(jieba.__file__).parent / jieba.DEFAULT_DICT_NAME
    stat = dictionary.stat()
    key = repr((jieba.__version__, str(dictionary), stat.st_size, stat.st_mtime_ns, _BUCKETS, words))
    folder = cache_dir() / f"frequencies-{hashlib.blake2b(key.encode(), digest_size=10).hexdigest()}"
    if (folder / "total").is_file():
        return folder
    tk = _full_tokenizer(words)
    buckets: list[dict] = [{} for _ in range(_BUCKETS)]
    for entry, frequency in tk.FREQ.items():
        buckets[ord(entry[0]) % _BUCKETS][entry] = frequency
    partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    for number, bucket in enumerate(buckets):
        (partial / f"bucket-{number}").write_bytes(marshal.dumps(bucket))
    (partial / "total").write_text(str(tk.total))  # last: a folder with a total is complete
    try:
        partial.replace(folder)
    except OSError:  # another process wrote it first
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return folder


class _BucketedFrequencies(dict):
    """jieba's prefix dictionary (entry -> frequency, 0 for a prefix), each bucket of entries
    read from `folder` the first time an entry of it is asked for. jieba reads the dictionary
    only by `in`, `[]` and `get`, with non-empty strings."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder
        self.loaded: set[int] = set()

    def _load(self, entry) -> None:
        if isinstance(entry, str) and entry:
            number = ord(entry[0]) % _BUCKETS
            if number not in self.loaded:
                import marshal

                self.loaded.add(number)
                for key, value in marshal.loads((self.folder / f"bucket-{number}").read_bytes()).items():
                    dict.setdefault(self, key, value)

    def __contains__(self, entry) -> bool:
        self._load(entry)
        return dict.__contains__(self, entry)

    def __getitem__(self, entry):
        self._load(entry)
        return dict.__getitem__(self, entry)

    def get(self, entry, default=None):
        self._load(entry)
        return dict.get(self, entry, default)


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
