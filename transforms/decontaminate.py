"""Decontamination: find evaluation items (exam questions, cases) inside training rows.

An item is found in a row when at least `min_overlap` of its question's character n-grams occur
in the row, both compared in match form (simplified, without punctuation or spacing). A question
shorter than n is matched whole. One shared classical phrase is not enough: the share is of the
item's own n-grams, so quoting a famous clause does not flag a commentary.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from .dedup import text_of
from .normalize import match_key


@dataclass
class ContaminationIndex:
    ngram: int
    min_overlap: float
    # window size -> {gram: [item number, ...]}
    grams: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    items: list[tuple[str, str, int]] = field(default_factory=list)  # (benchmark, item, gram count)

    @classmethod
    def build(cls, items: list[dict], ngram: int = 13, min_overlap: float = 0.5, min_chars: int = 8) -> "ContaminationIndex":
        index = cls(ngram=ngram, min_overlap=min_overlap)
        for item in items:
            key = match_key(item.get("question") or "")
            if len(key) < min_chars:
                continue
            size = min(ngram, len(key))
            grams = {key[i : i + size] for i in range(len(key) - size + 1)}
            number = len(index.items)
            index.items.append((str(item.get("benchmark", "")), str(item.get("item", number)), len(grams)))
            table = index.grams.setdefault(size, {})
            for gram in grams:
                table.setdefault(gram, []).append(number)
        return index

    def find(self, text: str) -> list[tuple[str, str, float]]:
        """The items found in a text: (benchmark, item, share of the item's n-grams present)."""
        key = match_key(text)
        hits: dict[int, set[str]] = defaultdict(set)
        for size, table in self.grams.items():
            for i in range(len(key) - size + 1):
                gram = key[i : i + size]
                numbers = table.get(gram)
                if numbers:
                    for number in numbers:
                        hits[number].add(gram)
        found = []
        for number, grams in hits.items():
            benchmark, item, total = self.items[number]
            share = len(grams) / total
            if share >= self.min_overlap:
                found.append((benchmark, item, share))
        return sorted(found, key=lambda hit: -hit[2])


def decontaminate_batch(
    batch: pa.RecordBatch | pa.Table, kind: str, index: ContaminationIndex, action: str = "remove"
) -> tuple[pa.Table, pa.Table]:
    """(kept, rejected). With action 'flag', contaminated rows are kept with a `contamination`
    column naming the item instead of being removed."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    labels = []
    for text in text_of(table, kind):
        hits = index.find(text) if index.items else []
        labels.append(f"contaminated:{hits[0][0]}:{hits[0][1]}" if hits else None)
    if action == "flag":
        return table.append_column("contamination", pa.array(labels, pa.string())), table.schema.empty_table().append_column(
            "reason", pa.array([], pa.string())
        )
    mask = pa.array([label is not None for label in labels])
    rejected = table.filter(mask).append_column("reason", pa.array([l for l in labels if l], pa.string()))
    return table.filter(pc.invert(mask)), rejected
