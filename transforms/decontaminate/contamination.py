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
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from transforms.dedup.keys import text_of
from transforms.clean.normalize import match_key

# Spans an exam item quotes from elsewhere: quotations and book titles.
_QUOTED = re.compile(r"“[^”]*”|「[^」]*」|『[^』]*』|‘[^’]*’|\"[^\"]*\"|《[^》]*》")
_OPTION_LABEL = re.compile(r"^\s*[A-Ha-h][.．、:：)）]\s*", re.MULTILINE)


def keyed_with_quotes(text: str) -> tuple[str, list[bool]]:
    """The match form of a text, and for each of its characters whether it was quoted."""
    parts, quoted, last = [], [], 0
    for span in _QUOTED.finditer(text):
        for piece, inside in ((text[last : span.start()], False), (span.group(), True)):
            key = match_key(piece)
            parts.append(key)
            quoted.extend([inside] * len(key))
        last = span.end()
    key = match_key(text[last:])
    parts.append(key)
    quoted.extend([False] * len(key))
    return "".join(parts), quoted


def own_grams(text: str, n: int) -> set[str]:
    """The n-grams of a text's match form that are not wholly inside a quotation; all of them
    when every one is quoted."""
    key, quoted = keyed_with_quotes(text)
    grams, own = set(), set()
    for i in range(len(key) - n + 1):
        gram = key[i : i + n]
        grams.add(gram)
        if not all(quoted[i : i + n]):
            own.add(gram)
    return own or grams


@dataclass
class IndexedItem:
    benchmark: str
    item: str
    # (n-grams, share needed) of each way the item may be printed; found when one is covered
    forms: tuple[tuple[frozenset, float], ...]


def item_forms(item: dict, n: int, min_overlap: float, question_overlap: float) -> list[tuple[frozenset, float]]:
    """The n-gram sets an item is matched on, with the share each needs: whole with option
    letters, whole without them, and the question alone."""
    question = str(item.get("question") or "")
    options = str(item.get("options") or "")
    answer = str(item.get("answer") or "")
    bare_options = _OPTION_LABEL.sub("", options)
    bare_answer = answer if len(match_key(answer)) > 1 else ""
    texts = [(f"{question}\n{options}\n{answer}", min_overlap), (f"{question}\n{bare_options}\n{bare_answer}", min_overlap)]
    if len(match_key(question)) >= n:
        texts.append((question, question_overlap if options.strip() else min_overlap))
    forms: list[tuple[frozenset, float]] = []
    for text, share in texts:
        grams = frozenset(own_grams(text, n))
        if grams and all(grams != known for known, _ in forms):
            forms.append((grams, share))
    return forms


@dataclass
class ContaminationIndex:
    ngram: int
    min_overlap: float
    question_overlap: float = 0.9
    grams: dict[str, list[int]] = field(default_factory=dict)
    items: list[IndexedItem] = field(default_factory=list)
    # benchmark -> {"items": read, "indexed": in the index, "too_short": not indexable}
    coverage: dict[str, Counter] = field(default_factory=dict)

    @classmethod
    def from_params(cls, items: list[dict], params: dict) -> "ContaminationIndex":
        """The index a [decontaminate] section describes."""
        return cls.build(
            items, params.get("ngram", 13), params.get("min_overlap", 0.5), params.get("min_question_chars", 8),
            params.get("question_overlap", 0.9),
        )

    def reference_stats(self) -> dict:
        """What the stage's manifest says of the reference: items indexed, per benchmark."""
        return {"reference_items": len(self.items), "benchmarks": dict(Counter(item.benchmark for item in self.items))}

    @classmethod
    def build(
        cls, items: list[dict], ngram: int = 13, min_overlap: float = 0.5, min_chars: int = 8, question_overlap: float = 0.9
    ) -> "ContaminationIndex":
        index = cls(ngram=ngram, min_overlap=min_overlap, question_overlap=question_overlap)
        for item in items:
            benchmark = str(item.get("benchmark", ""))
            counts = index.coverage.setdefault(benchmark, Counter())
            counts["items"] += 1
            whole = "".join(match_key(str(item.get(k) or "")) for k in ("question", "options", "answer"))
            forms = item_forms(item, ngram, min_overlap, question_overlap) if len(whole) >= min_chars else []
            if not forms:
                counts["too_short"] += 1
                continue
            number = len(index.items)
            index.items.append(IndexedItem(benchmark, str(item.get("item", number)), tuple(forms)))
            counts["indexed"] += 1
            for gram in frozenset().union(*(grams for grams, _ in forms)):
                index.grams.setdefault(gram, []).append(number)
        return index

    def find(self, text: str) -> list[tuple[str, str, float]]:
        """The items found in a text: (benchmark, item, share of the item's n-grams present)."""
        key = match_key(text)
        n = self.ngram
        hits: dict[int, set[str]] = defaultdict(set)
        for i in range(len(key) - n + 1):
            gram = key[i : i + n]
            numbers = self.grams.get(gram)
            if numbers:
                for number in numbers:
                    hits[number].add(gram)
        found = []
        for number, grams in hits.items():
            item = self.items[number]
            shares = [(len(grams & form) / len(form), needed) for form, needed in item.forms]
            passing = [share for share, needed in shares if share >= needed]
            if passing:
                found.append((item.benchmark, item.item, max(passing)))
        return sorted(found, key=lambda hit: -hit[2])


def decontaminate_with_hits(
    batch: pa.RecordBatch | pa.Table, kind: str, index: ContaminationIndex, action: str = "remove"
) -> tuple[pa.Table, pa.Table, list[dict]]:
    """(kept, rejected, hits): every item found, one dict per (row, item)."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    labels, hits = [], []
    for row_id, text in zip(table.column("id").to_pylist(), text_of(table, kind)):
        found = index.find(text) if index.items else []
        labels.append(f"contaminated:{found[0][0]}:{found[0][1]}" if found else None)
        hits.extend({"kind": kind, "id": row_id, "benchmark": b, "item": i, "share": round(s, 4)} for b, i, s in found)
    if action == "flag":
        empty = table.schema.empty_table().append_column("reason", pa.array([], pa.string()))
        return table.append_column("contamination", pa.array(labels, pa.string())), empty, hits
    mask = pa.array([label is not None for label in labels])
    rejected = table.filter(mask).append_column("reason", pa.array([l for l in labels if l], pa.string()))
    return table.filter(pc.invert(mask)), rejected, hits


def contamination_report(index: ContaminationIndex, hits: list[dict], action: str) -> dict:
    """Per benchmark: items read, indexed and too short; items found; rows holding them."""
    report = {}
    for benchmark in sorted(index.coverage):
        mine = [h for h in hits if h["benchmark"] == benchmark]
        coverage = index.coverage[benchmark]
        report[benchmark] = {
            "items": coverage["items"],
            "indexed": coverage["indexed"],
            "too_short": coverage["too_short"],
            "items_found": len({h["item"] for h in mine}),
            "rows": len({(h["kind"], h["id"]) for h in mine}),
        }
    return {"action": action, "ngram": index.ngram, "min_overlap": index.min_overlap,
            "question_overlap": index.question_overlap, "benchmarks": report, "hits": hits}


def report_markdown(report: dict) -> str:
    lines = [
        "# Decontamination report",
        "",
        f"{report['ngram']}-character n-grams; an item is found at {report['min_overlap']:.0%} of its own n-grams, "
        f"its question alone at {report['question_overlap']:.0%}; "
        f"contaminated rows were {'removed' if report['action'] == 'remove' else 'flagged'}.",
        "",
        "| benchmark | items | indexed | too short | items found | rows |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["benchmarks"].items():
        lines.append(f"| {name} | {row['items']} | {row['indexed']} | {row['too_short']} | {row['items_found']} | {row['rows']} |")
    if report["hits"]:
        lines += ["", "| row | kind | benchmark | item | share |", "|---|---|---|---|---:|"]
        lines += [f"| {h['id']} | {h['kind']} | {h['benchmark']} | {h['item']} | {h['share']:.2f} |" for h in report["hits"][:500]]
        if len(report["hits"]) > 500:
            lines.append(f"\n{len(report['hits']) - 500} more hits in contamination.json")
    return "\n".join(lines) + "\n"


def write_reports(folder, report: dict) -> list[str]:
    """contamination.json and contamination.md in `folder`; their names."""
    (folder / "contamination.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    (folder / "contamination.md").write_text(report_markdown(report), encoding="utf-8")
    return ["contamination.json", "contamination.md"]
