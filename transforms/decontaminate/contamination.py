"""Decontamination: find evaluation items (exam questions, cases) inside training rows.

An item is its question, options and answer. It is found in a row when at least `min_overlap` of
its character n-grams occur in the row, both compared in match form (simplified, without
punctuation or spacing), either for the question alone (a page that copied the stem) or for the
whole item (a page that copied stem, options and answer). The share is of the item's own n-grams,
so one shared phrase does not flag a row.

Two ways a naive index flags clean text, and what is done about them:
- Exam items quote the classics (“本太阳病，医反下之……”); a commentary quoting the same clause
  would match every n-gram of the quotation. N-grams lying wholly inside quotation marks or
  book-title marks are not the item's own and are not counted, unless nothing else is left.
- Exam stems also cite clauses without quotation marks (风湿，身体疼烦，不能自转侧……方用), and a
  short stem (与舌没有直接联系的脏是) is a phrase any textbook may hold. So an item is matched
  whole, stem with options (with or without their letters, as pages print them either way) and
  answer, at `min_overlap`; its stem alone, when at least n characters long, only at the stricter
  `question_overlap` (a page restating the stem verbatim covers all of it; a classic holding
  the clause a stem paraphrases covers part). An item shorter than n even whole is not indexed
  (counted as too short in the report).
A stem that is one whole classical sentence, unquoted, still flags the books holding it.

The books an item quotes are not the item, but a row that holds the quoted clause *and* the
right option beside it teaches the item's answer all the same (“本太阳病，医反下之，因尔腹满时痛者”
… 属太阴也). So each item also has its cited words: the n-grams of its quoted spans (when a quoted
span is at least n characters), else of its whole stem. A row holding `cite_overlap` of them and
the right option's text (at least two characters in match form) within `answer_window`
characters of one of them cites the item with its answer. Such a row is the canon (伤寒论,
金匮要略 and their commentaries), so it is never removed for that: it is reported beside the items
found and flagged in the `contamination` column (`cites_answer:<benchmark>:<item>`), which a user
filters on. Rows holding the item itself follow `action` (remove, or flag in the same column).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.dedup.keys import text_of
from transforms.clean.normalize import match_key, match_key_points, match_keys

# The items' texts are keyed several times each while the index is built (stem, pieces, forms).
_item_key = lru_cache(maxsize=1 << 16)(match_key)

# Spans an exam item quotes from elsewhere: quotations and book titles.
_QUOTED = re.compile(r"“[^”]*”|「[^」]*」|『[^』]*』|‘[^’]*’|\"[^\"]*\"|《[^》]*》")
_OPTION_LABEL = re.compile(r"^\s*[A-Ha-h][.．、:：)）]\s*", re.MULTILINE)
# N-grams are found by a 64-bit polynomial hash of their code points, screened by a table of
# 2^FILTER_BITS flags and confirmed by comparing the text: a collision costs a comparison, never a result.
_HASH_BASE = np.uint64(1_000_003)
_MIX = np.uint64(0x9E3779B97F4A7C15)
FILTER_BITS = 24
# Characters of the sample the screen hashes (at most; the n-gram length when shorter).
_SAMPLE_CHARS = 8


def quoted_pieces(text: str) -> list[tuple[str, bool]]:
    """The text cut at its quoted spans: (piece, whether it is a quotation or a book title), in
    order; each piece is keyed on its own."""
    pieces, last = [], 0
    for span in _QUOTED.finditer(text):
        pieces += [(text[last : span.start()], False), (span.group(), True)]
        last = span.end()
    pieces.append((text[last:], False))
    return pieces


def keyed_with_quotes(text: str) -> tuple[str, list[bool]]:
    """The match form of a text, and for each of its characters whether it was quoted."""
    parts, quoted = [], []
    for piece, inside in quoted_pieces(text):
        key = _item_key(piece)
        parts.append(key)
        quoted.extend([inside] * len(key))
    return "".join(parts), quoted


def own_grams(text: str, n: int) -> set[str]:
    """The n-grams of a text's match form that are not wholly inside a quotation; all of them
    when every one is quoted."""
    key, quoted = keyed_with_quotes(text)
    starts = range(len(key) - n + 1)
    grams = {key[i : i + n] for i in starts}
    if not any(quoted):
        return grams
    inside = list(accumulate(quoted, initial=0))  # quoted characters before each position
    own = {key[i : i + n] for i in starts if inside[i + n] - inside[i] < n}
    return own or grams


def window_hashes(points: np.ndarray, n: int) -> np.ndarray:
    """The 64-bit polynomial hash (wrapping) of every run of `n` code points of `points`:
    sum(points[i + j] * B^(n-1-j)), built by doubling (hash of a+b code points = hash of a * B^b
    + hash of the b after them), so a 13-gram costs five passes instead of twelve."""
    count = len(points) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    with np.errstate(over="ignore"):
        span, power = points.astype(np.uint64), 1  # hashes of runs of `power` code points
        total, width = None, 0  # hashes of runs of `width` code points, from the low bits of n up
        while True:
            if n & power:
                if total is None:
                    total = span.copy()
                else:
                    total = total[: len(span) - width] * (_HASH_BASE ** np.uint64(power)) + span[width:]
                width += power
            if power * 2 > n:
                break
            span = span[:-power] * (_HASH_BASE ** np.uint64(power)) + span[power:]
            power *= 2
    return total[:count]


def _horner(columns) -> np.ndarray:
    """The polynomial hash (`window_hashes`) of rows given as their code point columns in order."""
    total = None
    with np.errstate(over="ignore"):
        for column in columns:
            column = column.astype(np.uint64)
            total = column if total is None else total * _HASH_BASE + column
    return total


def _bucket(hashes: np.ndarray) -> np.ndarray:
    """The screen bucket of each hash: the top FILTER_BITS bits of hash x _MIX."""
    with np.errstate(over="ignore"):
        return (hashes * _MIX) >> np.uint64(64 - FILTER_BITS)


@dataclass
class IndexedItem:
    benchmark: str
    item: str
    # (n-gram numbers, sorted; share needed) of each way the item may be printed; found when one is covered
    forms: tuple[tuple[np.ndarray, float], ...]
    # the numbers of the n-grams of the clause the item cites, and the right option's text in match form
    cited: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    answer_key: str = ""


def item_texts(item: dict, n: int, min_overlap: float, question_overlap: float, key=_item_key) -> list[tuple[str, float]]:
    """The texts an item is matched on, with the share of its own n-grams each needs: whole
    with option letters, whole without them (and without a one-character answer), and the
    question alone when it is at least n characters in match form (`key`: the match form)."""
    question = str(item.get("question") or "")
    options = str(item.get("options") or "")
    answer = str(item.get("answer") or "")
    bare_options = _OPTION_LABEL.sub("", options)
    bare_answer = answer if len(key(answer)) > 1 else ""
    texts = [(f"{question}\n{options}\n{answer}", min_overlap), (f"{question}\n{bare_options}\n{bare_answer}", min_overlap)]
    if len(key(question)) >= n:
        texts.append((question, question_overlap if options.strip() else min_overlap))
    return texts


def item_forms(item: dict, n: int, min_overlap: float, question_overlap: float) -> list[tuple[frozenset, float]]:
    """The n-gram sets an item is matched on (`own_grams` of each of `item_texts`, a set equal
    to an earlier one left out), with the share each needs."""
    forms: list[tuple[frozenset, float]] = []
    for text, share in item_texts(item, n, min_overlap, question_overlap):
        grams = frozenset(own_grams(text, n))
        if grams and all(grams != known for known, _ in forms):
            forms.append((grams, share))
    return forms


def cited_texts(item: dict, n: int, key=_item_key) -> list[str]:
    """The words an item cites, in match form (`key`): its quoted spans of at least n
    characters, else its whole stem."""
    question = str(item.get("question") or "")
    quoted = [k for k in (key(span.group()) for span in _QUOTED.finditer(question)) if len(k) >= n]
    return quoted or [key(question)]


def cited_grams(item: dict, n: int) -> frozenset:
    """The n-grams of the words an item cites (`cited_texts`)."""
    return frozenset(text[i : i + n] for text in cited_texts(item, n) for i in range(len(text) - n + 1))


def answer_text(item: dict, key=_item_key) -> str:
    """The right option's text in match form (`answer` is that text for choice items), or "" when
    it has fewer than two characters (a letter, a digit: no evidence in a row)."""
    answer = key(str(item.get("answer") or ""))
    return answer if len(answer) >= 2 else ""


def _starts_of_runs(ordered: np.ndarray) -> np.ndarray:
    """Where each run of equal values of a sorted array starts (bool per element)."""
    starts = np.ones(len(ordered), bool)
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return starts


def _packed_points(points: np.ndarray, n: int) -> list[np.ndarray]:
    """Per k in 0, 3, 6, ... below n, one uint64 per position i: the code points i + k, i + k + 1
    and i + k + 2 (those below i + n) packed 21 bits each, so that two runs of n code points are
    equal when these words at their starts are."""
    padded = np.concatenate([points, np.zeros(n + 2, np.uint32)]).astype(np.uint64)
    words = []
    for k in range(0, n, 3):
        word = np.zeros(len(points), np.uint64)
        for j in range(k, min(k + 3, n)):
            word |= padded[j : j + len(points)] << np.uint64(21 * (2 - (j - k)))
        words.append(word)
    return words


def _rows_equal(rows: np.ndarray, left: np.ndarray, right: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Whether rows[left[i]] equals rows[right[i]] in every column, per i (`rows`: 2-D, any view),
    compared a chunk of pairs at a time so the gathered rows stay small."""
    equal = np.empty(len(left), bool)
    for at in range(0, len(left), chunk):
        a, b = rows[left[at : at + chunk]], rows[right[at : at + chunk]]
        np.all(a == b, axis=1, out=equal[at : at + chunk])
    return equal


class _Keys(dict):
    """Match forms of strings, each string keyed once, in batches (`normalize.match_keys`)."""

    def add(self, texts) -> None:
        missing = list(dict.fromkeys(t for t in texts if t not in self))
        self.update(zip(missing, match_keys(missing)))


@dataclass
class _Grams:
    """What `_Segments.grams` finds: the index's n-grams and which text and item holds which."""

    vocabulary: str  # n-gram g at [g*n, (g+1)*n)
    hashes: np.ndarray  # uint64, ascending, one per n-gram
    text_grams: np.ndarray  # int32: each text's n-gram numbers, sorted distinct, text after text
    text_bounds: np.ndarray  # int64: text t's numbers are text_grams[text_bounds[t]:text_bounds[t + 1]]
    postings: np.ndarray  # int32: per n-gram the items holding it, ascending, n-gram after n-gram
    posting_starts: np.ndarray  # int64, one more than there are n-grams
    cited: np.ndarray  # int32: each item's cited n-gram numbers, sorted distinct, item after item
    cited_bounds: np.ndarray  # int64, one more than there are items

    def of_text(self, text: int) -> np.ndarray:
        return self.text_grams[self.text_bounds[text] : self.text_bounds[text + 1]]

    def cited_of(self, item: int) -> np.ndarray:
        return self.cited[self.cited_bounds[item] : self.cited_bounds[item + 1]]


class _Segments:
    """Texts in match form whose n-grams make the index: the forms of the items (n-grams lying
    wholly inside quoted characters left out, unless no other is left: `own_grams`) and their
    cited words (every n-gram: `cited_grams`), numbered over all texts at once; a text given
    again (the same pieces) is hashed once."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, bool]] = []  # (key, quoted) pieces of every distinct text, in order
        self.ends: list[int] = []  # per distinct text, how many pieces precede its end
        self.distinct: dict[tuple, int] = {}  # a text's pieces -> its distinct number
        self.texts: list[int] = []  # per text, its distinct number (texts of the same pieces hash once)
        self.items: list[int] = []  # per text, the item it belongs to
        self.cited: list[bool] = []  # per text, whether it is cited words (else a form)

    def add(self, parts: list[tuple[str, bool]], item: int, cited: bool = False) -> int:
        """Add a text of `item` given as its keyed pieces (key, quoted); its number."""
        number = self.distinct.setdefault(tuple(parts), len(self.distinct))
        if number == len(self.ends):
            self.parts.extend(parts)
            self.ends.append(len(self.parts))
        self.texts.append(number)
        self.items.append(item)
        self.cited.append(cited)
        return len(self.texts) - 1

    def grams(self, n: int, items: int) -> _Grams:
        """The distinct n-grams of the texts numbered in order of their hash (`window_hashes`;
        equal hashes by code points), and who holds them (`items`: how many items there are)."""
        piece_lengths = np.fromiter((len(k) for k, _ in self.parts), np.int64, len(self.parts))
        text_ends = np.cumsum(piece_lengths)[np.asarray(self.ends, np.int64) - 1] if self.ends else np.zeros(0, np.int64)
        lengths = np.diff(text_ends, prepend=0)
        points = np.frombuffer("".join(k for k, _ in self.parts).encode("utf-32-le"), np.uint32)
        quoted = np.repeat(np.fromiter((q for _, q in self.parts), bool, len(self.parts)), piece_lengths)
        quoted_before = np.concatenate([[0], np.cumsum(quoted)])
        counts = np.maximum(lengths - n + 1, 0)
        owner = np.repeat(np.arange(len(lengths)), counts)
        start = np.repeat(text_ends - lengths - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
        # A form's own n-grams: not wholly inside quoted characters, unless none is left.
        own = quoted_before[start + n] - quoted_before[start] < n
        keep = own | (np.bincount(owner[own], minlength=len(lengths)) == 0)[owner]
        start, owner = start[keep], owner[keep]
        hashes = window_hashes(points, n)[start]
        order = np.argsort(hashes)
        same = hashes[order][1:] == hashes[order][:-1]
        # Equal hashes are confirmed on the code points: each n-gram as one row of n code points.
        grams = np.lib.stride_tricks.sliding_window_view(points, n) if len(points) >= n else np.zeros((0, n), np.uint32)
        ordered = start[order]
        left, right = ordered[1:][same], ordered[:-1][same]
        equal = _rows_equal(grams, left, right)
        if equal.all():
            same[same] = equal
        else:  # two n-grams share a hash: their code points order them
            columns = [word[start] for word in _packed_points(points, n)]
            order = np.lexsort(columns[::-1] + [hashes])
            same = hashes[order][1:] == hashes[order][:-1]
            for column in columns:
                same &= column[order][1:] == column[order][:-1]
        del left, right, equal
        heads = np.concatenate([[True], ~same]) if len(order) else np.zeros(0, bool)
        numbers = np.empty(len(order), np.int64)
        numbers[order] = np.cumsum(heads) - 1
        representative = start[order[heads]]  # a window of each n-gram, in number order
        count = len(representative)
        vocabulary = grams[representative].astype("<u4").tobytes().decode("utf-32-le")
        distinct_grams, distinct_bounds = _grouped(owner, numbers, count, len(lengths))
        # Every text's n-grams (its distinct text's), with the item holding them.
        texts = np.asarray(self.texts, np.int64)
        text_bounds = np.zeros(len(texts) + 1, np.int64)
        sizes = distinct_bounds[texts + 1] - distinct_bounds[texts]
        np.cumsum(sizes, out=text_bounds[1:])
        text_grams = distinct_grams[np.repeat(distinct_bounds[texts] - text_bounds[:-1], sizes) + np.arange(text_bounds[-1])]
        holder = np.repeat(np.asarray(self.items, np.int64), sizes)
        cited = np.repeat(np.asarray(self.cited, bool), sizes)
        by_gram, posting_starts = _grouped(text_grams.astype(np.int64), holder, items, count)
        cited_grams, cited_bounds = _grouped(holder[cited], text_grams[cited].astype(np.int64), count, items)
        return _Grams(vocabulary, hashes[order[heads]], text_grams, text_bounds, by_gram, posting_starts, cited_grams, cited_bounds)


def _grouped(groups: np.ndarray, values: np.ndarray, value_count: int, group_count: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of each group (sorted int32, group after group) and where each
    group's start (int64, group_count + 1): pairs (groups[i], values[i]), values below value_count."""
    pairs = np.sort(groups * max(value_count, 1) + values)
    pairs = pairs[_starts_of_runs(pairs)]
    bounds = np.searchsorted(pairs, np.arange(group_count + 1) * max(value_count, 1))
    return (pairs % max(value_count, 1)).astype(np.int32), bounds.astype(np.int64)


@dataclass
class ContaminationIndex:
    """The benchmark items' n-grams, numbered: `vocabulary` holds n-gram g at [g*n, (g+1)*n);
    `hashes` (sorted) and `hash_grams` find a number by hash; `postings[g]` lists, in item order,
    the items whose n-grams include g (`posting_starts` delimits them). Compact (about 32 MB with
    its screen, as bits), so it pickles to a worker in tens of milliseconds."""

    ngram: int
    min_overlap: float
    question_overlap: float = 0.9
    cite_overlap: float = 0.6
    answer_window: int = 64
    items: list[IndexedItem] = field(default_factory=list)
    vocabulary: str = ""
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    hash_grams: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    posting_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    postings: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    # per item: the fewest of its n-grams a text must hold for any form or its cited words to pass
    floors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    # benchmark -> {"items": read, "indexed": in the index, "too_short": not indexable}
    coverage: dict[str, Counter] = field(default_factory=dict)

    @classmethod
    def from_params(cls, items: list[dict], params: dict) -> "ContaminationIndex":
        """The index a [decontaminate] section describes."""
        return cls.build(
            items, params.get("ngram", 13), params.get("min_overlap", 0.5), params.get("min_question_chars", 8),
            params.get("question_overlap", 0.9), params.get("cite_overlap", 0.6), params.get("answer_window", 64),
        )

    def reference_stats(self) -> dict:
        """What the stage's manifest says of the reference: items indexed, per benchmark."""
        return {"reference_items": len(self.items), "benchmarks": dict(Counter(item.benchmark for item in self.items))}

    @property
    def gram_count(self) -> int:
        return len(self.vocabulary) // self.ngram if self.ngram else 0

    @classmethod
    def build(
        cls, items: list[dict], ngram: int = 13, min_overlap: float = 0.5, min_chars: int = 8, question_overlap: float = 0.9,
        cite_overlap: float = 0.6, answer_window: int = 64,
    ) -> "ContaminationIndex":
        index = cls(ngram=ngram, min_overlap=min_overlap, question_overlap=question_overlap, cite_overlap=cite_overlap,
                    answer_window=answer_window)
        keys = _Keys()
        fields = [[str(item.get(k) or "") for k in ("question", "options", "answer")] for item in items]
        keys.add([text for three in fields for text in three])
        keys.add([span.group() for question, _, _ in fields for span in _QUOTED.finditer(question)])
        # Per indexed item: its texts (form texts then cited texts) as pieces, keyed below in one batch.
        planned = []
        for item, (question, options, answer) in zip(items, fields):
            benchmark = str(item.get("benchmark", ""))
            counts = index.coverage.setdefault(benchmark, Counter())
            counts["items"] += 1
            texts = []
            if len(keys[question]) + len(keys[options]) + len(keys[answer]) >= min_chars:
                texts = item_texts(item, ngram, min_overlap, question_overlap, keys.__getitem__)
            planned.append((item, benchmark, counts, texts, [quoted_pieces(text) for text, _ in texts]))
        keys.add([piece for *_, pieces in planned for text_pieces in pieces for piece, _ in text_pieces])
        segments = _Segments()
        texts_of: list[list[tuple[int, float]]] = []  # per indexed item: (text number, share) of its forms
        for item, benchmark, counts, texts, pieces in planned:
            form_keys = [[(keys[piece], inside) for piece, inside in text_pieces] for text_pieces in pieces]
            long_enough = [sum(len(k) for k, _ in parts) >= ngram for parts in form_keys]
            if not any(long_enough):  # no form has an n-gram
                counts["too_short"] += 1
                continue
            number = len(index.items)
            counts["indexed"] += 1
            answer = answer_text(item, keys.__getitem__)
            texts_of.append([(segments.add(parts, number), share) for parts, (_, share), enough in zip(form_keys, texts, long_enough) if enough])
            for text in cited_texts(item, ngram, keys.__getitem__) if answer else []:
                if len(text) >= ngram:
                    segments.add([(text, False)], number, cited=True)
            index.items.append(IndexedItem(benchmark, str(item.get("item", number)), (), answer_key=answer))
        found = segments.grams(ngram, len(index.items))
        index.vocabulary, index.hashes = found.vocabulary, found.hashes
        index.hash_grams = np.arange(len(index.hashes), dtype=np.int64)
        index.postings, index.posting_starts = found.postings, found.posting_starts
        for number, (item, texts) in enumerate(zip(index.items, texts_of)):
            forms: list[tuple[np.ndarray, float]] = []
            for text, share in texts:
                grams = found.of_text(text)
                if all(len(grams) != len(known) or (grams != known).any() for known, _ in forms):
                    forms.append((grams, share))
            item.forms, item.cited = tuple(forms), found.cited_of(number)
        index.floors = np.array([
            min([needed * len(form) for form, needed in item.forms] + ([cite_overlap * len(item.cited)] if len(item.cited) else []))
            for item in index.items
        ], np.float64)
        return index

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        # Rebuilt where they are needed: cheaper to build than to send.
        state.pop("_item_sets", None)
        # The screen, once built, travels as bits (2 MiB): cheaper to unpack than to build again.
        screen = state.pop("_filter", None)
        if screen is not None:
            state["_filter_bits"] = np.packbits(screen)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        bits = state.pop("_filter_bits", None)
        self.__dict__.update(state)
        if bits is not None:
            self.__dict__["_filter"] = np.unpackbits(bits).view(bool)

    def _sampling(self) -> tuple[int, int]:
        """(sample, stride): the screen hashes `sample` characters at every `stride`-th position
        of a text. An n-gram found at position p holds the sample at the first multiple of the
        stride from p on, so only the `stride` windows ending a passing sample are looked up."""
        sample = min(self.ngram, _SAMPLE_CHARS)
        return sample, self.ngram - sample + 1

    def screen(self) -> np.ndarray:
        """Per bucket of the mixed hash's top FILTER_BITS bits: whether an n-gram of the index,
        or a sample (`_sampling`) of one at any of the offsets a stride covers, falls in it."""
        screen = self.__dict__.get("_filter")
        if screen is None:
            sample, stride = self._sampling()
            points = np.frombuffer(self.vocabulary.encode("utf-32-le"), np.uint32)
            screen = np.zeros(1 << FILTER_BITS, bool)
            screen[_bucket(self.hashes)] = True
            # The samples of every run in the vocabulary; those starting at an n-gram's first
            # `stride` positions are its own (the others run into the next n-gram).
            if len(points):
                runs = np.concatenate([window_hashes(points, sample), np.zeros(sample - 1, np.uint64)])
                screen[_bucket(runs.reshape(-1, self.ngram)[:, :stride].ravel())] = True
            self.__dict__["_filter"] = screen
        return screen

    def _screened(self, points: np.ndarray) -> np.ndarray:
        """The windows (start positions, ascending) of `points` that may hold an n-gram of the
        index: those ending a sample that the screen passes."""
        sample, stride = self._sampling()
        last = len(points) - self.ngram  # the last window's start
        if last < 0:
            return np.zeros(0, np.int64)
        count = (len(points) - sample) // stride + 1
        samples = _horner(points[k : k + (count - 1) * stride + 1 : stride] for k in range(sample))
        passing = np.flatnonzero(self.screen()[_bucket(samples)]) * stride
        windows = (passing[:, None] + np.arange(1 - stride, 1)).ravel()
        return windows[(windows >= 0) & (windows <= last)]

    def _present(self, points: np.ndarray, ends: np.ndarray) -> list[dict[int, int]]:
        """Per match form, given as code points (`points`, uint32) cut at `ends`: its n-grams that
        are in the index, as {n-gram number: first position}."""
        n = self.ngram
        present: list[dict[int, int]] = [{} for _ in range(len(ends))]
        if not len(self.hashes) or not len(ends):
            return present
        windows = self._screened(points)
        found = _horner(points[windows + k] for k in range(n))
        passing = self.screen()[_bucket(found)]
        windows, found = windows[passing], found[passing]
        slots = np.searchsorted(self.hashes, found)
        hit = self.hashes[np.minimum(slots, len(self.hashes) - 1)] == found
        windows, slots = windows[hit], slots[hit]
        owners = np.searchsorted(ends, windows, side="right")
        inside = windows + n <= ends[owners]  # a window across two texts is no n-gram of either
        starts = np.concatenate([[0], ends[:-1]])
        for window, slot, owner in zip(windows[inside].tolist(), slots[inside].tolist(), owners[inside].tolist()):
            gram, value = points[window : window + n].tobytes().decode("utf-32-le"), self.hashes[slot]
            # Equal hashes: every n-gram of the index with this hash is compared.
            while slot < len(self.hashes) and self.hashes[slot] == value:
                number = int(self.hash_grams[slot])
                if self.vocabulary[number * n : (number + 1) * n] == gram:
                    present[owner].setdefault(number, window - int(starts[owner]))
                    break
                slot += 1
        return present

    def find(self, text: str) -> list[tuple[str, str, float]]:
        """The items found in a text: (benchmark, item, share of the item's n-grams present)."""
        return self.find_all(text)[0]

    def find_all(self, text: str) -> tuple[list[tuple[str, str, float]], list[tuple[str, str, float]]]:
        """(items found, items cited with their answer) in a text, each as (benchmark, item,
        share of the n-grams present: of the item's forms, or of its cited words); an item
        found is not listed again as cited."""
        return self.find_batch([text])[0]

    def find_batch(self, texts: list[str]) -> list[tuple[list, list]]:
        """find_all of each text, for a batch at once (match forms and n-gram look-ups over the
        whole batch; only texts sharing an n-gram with the index are judged one by one)."""
        points, ends = match_key_points(texts)
        judged: list[tuple[list, list]] = [([], [])] * len(texts)
        for i, present in enumerate(self._present(points, ends)):
            if present:
                start = int(ends[i - 1]) if i else 0
                judged[i] = self._judge(points[start : ends[i]].tobytes().decode("utf-32-le"), present)
        return judged

    def _sets(self, number: int) -> tuple[tuple[tuple[frozenset, float], ...], frozenset]:
        """An item's forms and cited words as sets of n-gram numbers, made when first needed."""
        cache = self.__dict__.setdefault("_item_sets", {})
        if number not in cache:
            item = self.items[number]
            cache[number] = (tuple((frozenset(form.tolist()), needed) for form, needed in item.forms), frozenset(item.cited.tolist()))
        return cache[number]

    def _judge(self, key: str, present: dict[int, int]) -> tuple[list, list]:
        # Items in the order of their first n-gram in the text, then of the index.
        grams = sorted(present, key=present.__getitem__)
        listed = np.concatenate([self.postings[self.posting_starts[g] : self.posting_starts[g + 1]] for g in grams])
        numbers, first, held = np.unique(listed, return_index=True, return_counts=True)
        # An item holding fewer of the text's n-grams than its smallest form or cited words need
        # cannot pass: left out before its sets are compared.
        able = held >= self.floors[numbers] * (1 - 1e-9)
        candidates = listed[np.sort(first[able])].tolist()
        here = set(present)
        found, cited = [], []
        for number in candidates:
            item = self.items[number]
            forms, cited_words = self._sets(number)
            shares = [(len(form & here) / len(form), needed) for form, needed in forms]
            passing = [share for share, needed in shares if share >= needed]
            if passing:
                found.append((item.benchmark, item.item, max(passing)))
                continue
            if not cited_words:
                continue
            where = [present[g] for g in cited_words & here]
            share = len(where) / len(cited_words)
            if share >= self.cite_overlap and self._answer_near(key, item.answer_key, where):
                cited.append((item.benchmark, item.item, share))
        return sorted(found, key=lambda hit: -hit[2]), sorted(cited, key=lambda hit: -hit[2])

    def _answer_near(self, key: str, answer: str, positions: list[int]) -> bool:
        """Whether `answer` occurs in `key` within answer_window characters of a cited n-gram."""
        lo, hi = min(positions), max(positions) + self.ngram
        start = key.find(answer, max(0, lo - self.answer_window - len(answer)))
        while start != -1 and start <= hi + self.answer_window:
            if any(p - self.answer_window - len(answer) <= start <= p + self.ngram + self.answer_window for p in positions):
                return True
            start = key.find(answer, start + 1)
        return False


def decontaminate_with_hits(
    batch: pa.RecordBatch | pa.Table, kind: str, index: ContaminationIndex, action: str = "remove"
) -> tuple[pa.Table, pa.Table, list[dict]]:
    """(kept, rejected, hits): every item found or cited with its answer, one dict per (row,
    item) with `match` "item" or "cites_answer". Kept rows carry a `contamination` column:
    `contaminated:<benchmark>:<item>` (action flag), `cites_answer:<benchmark>:<item>`, or null."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    texts = text_of(table, kind)
    judged = index.find_batch(texts) if index.items else [([], [])] * len(texts)
    labels: list[str | None] = [None] * len(texts)
    removed = np.zeros(len(texts), bool)
    hits: list[dict] = []
    holding = [row for row, (found, cited) in enumerate(judged) if found or cited]
    ids = table.column("id").take(pa.array(holding, pa.int64())).to_pylist() if holding else []
    for row, row_id in zip(holding, ids):
        found, cited = judged[row]
        if found:
            labels[row] = f"contaminated:{found[0][0]}:{found[0][1]}"
        else:
            labels[row] = f"cites_answer:{cited[0][0]}:{cited[0][1]}"
        removed[row] = bool(found) and action == "remove"
        for match, listed in (("item", found), ("cites_answer", cited)):
            hits.extend({"kind": kind, "id": row_id, "benchmark": b, "item": i, "share": round(s, 4), "match": match} for b, i, s in listed)
    reasons = pa.array([labels[row] for row in np.flatnonzero(removed).tolist()], pa.string())
    rows = table  # rejected rows as they came, without the flag in their meta
    if holding and "meta" in table.schema.names:
        # The column stops at the corpus schema; the row's meta carries the flag to the shards and exports.
        metas = [_with_flag(meta, label) for meta, label in zip(table.column("meta").to_pylist(), labels)]
        meta_type = table.schema.field("meta").type
        # A batch whose meta is all null carries Arrow's null type; a flag makes it text.
        meta_type = pa.string() if pa.types.is_null(meta_type) else meta_type
        table = table.set_column(table.schema.get_field_index("meta"), "meta", pa.array(metas, meta_type))
    flagged = table.append_column("contamination", pa.array(labels, pa.string()) if holding else pa.nulls(len(texts), pa.string()))
    if not removed.any():  # nothing removed: no copy of the batch through a filter
        return flagged, rows.slice(0, 0).append_column("reason", reasons), hits
    mask = pa.array(removed)
    return flagged.filter(pc.invert(mask)), rows.filter(mask).append_column("reason", reasons), hits


def _with_flag(meta: str | None, label: str | None) -> str | None:
    if label is None:
        return meta
    try:
        data = json.loads(meta) if meta else {}
    except ValueError:
        data = {"meta": meta}
    if not isinstance(data, dict):
        data = {"meta": data}
    return json.dumps({**data, "contamination": label}, ensure_ascii=False)


def contamination_report(index: ContaminationIndex, hits: list[dict], action: str) -> dict:
    """Per benchmark: items read, indexed and too short; items found and the rows holding them;
    items cited with their answer and the rows citing them (flagged, whatever the action)."""
    report = {}
    for benchmark in sorted(index.coverage):
        mine = [h for h in hits if h["benchmark"] == benchmark and h.get("match", "item") == "item"]
        citing = [h for h in hits if h["benchmark"] == benchmark and h.get("match") == "cites_answer"]
        coverage = index.coverage[benchmark]
        report[benchmark] = {
            "items": coverage["items"],
            "indexed": coverage["indexed"],
            "too_short": coverage["too_short"],
            "items_found": len({h["item"] for h in mine}),
            "rows": len({(h["kind"], h["id"]) for h in mine}),
            "items_cited_with_answer": len({h["item"] for h in citing}),
            "rows_citing": len({(h["kind"], h["id"]) for h in citing}),
        }
    return {"action": action, "ngram": index.ngram, "min_overlap": index.min_overlap,
            "question_overlap": index.question_overlap, "cite_overlap": index.cite_overlap,
            "answer_window": index.answer_window, "benchmarks": report, "hits": hits}


def report_markdown(report: dict) -> str:
    lines = [
        "# Decontamination report",
        "",
        f"{report['ngram']}-character n-grams; an item is found at {report['min_overlap']:.0%} of its own n-grams, "
        f"its question alone at {report['question_overlap']:.0%}; "
        f"contaminated rows were {'removed' if report['action'] == 'remove' else 'flagged'}.",
        f"An item is cited with its answer when a row holds {report.get('cite_overlap', 0.6):.0%} of the n-grams of the words it "
        f"quotes (else of its stem) and the right option within {report.get('answer_window', 64)} characters of them: "
        "such rows (the classics the exams quote) are kept and flagged in the `contamination` column "
        "(`cites_answer:<benchmark>:<item>`), whatever the action.",
        "",
        "| benchmark | items | indexed | too short | items found | rows | cited with answer | rows citing |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["benchmarks"].items():
        lines.append(
            f"| {name} | {row['items']} | {row['indexed']} | {row['too_short']} | {row['items_found']} | {row['rows']} "
            f"| {row.get('items_cited_with_answer', 0)} | {row.get('rows_citing', 0)} |"
        )
    if report["hits"]:
        lines += ["", "| row | kind | benchmark | item | match | share |", "|---|---|---|---|---|---:|"]
        lines += [
            f"| {h['id']} | {h['kind']} | {h['benchmark']} | {h['item']} | {h.get('match', 'item')} | {h['share']:.2f} |"
            for h in report["hits"][:500]
        ]
        if len(report["hits"]) > 500:
            lines.append(f"\n{len(report['hits']) - 500} more hits in contamination.json")
    return "\n".join(lines) + "\n"


def report_files(report: dict) -> dict[str, str]:
    """The report's files by name: contamination.json and contamination.md."""
    return {"contamination.json": json.dumps(report, ensure_ascii=False, indent=1), "contamination.md": report_markdown(report)}
