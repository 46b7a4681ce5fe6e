"""Near-duplicate detection scored against the truth, ours and the peers' on the same set.

    python benchmarks/dedup_eval.py [--shared ../shared/data] [--passages 1500] [--threshold 0.8]
                                    [--data-juicer-python PATH]

Passages of 500 characters are cut from the shared ancient books (which quote and copy each other,
so some true near-duplicates are real, not planted); a near-copy of each is made at an edit rate
drawn from EDIT_RATES (substitutions, insertions and deletions of characters), most of them near
the threshold, where an estimator's noise decides. The truth is every pair whose 5-character
shingle sets (of the match form) have an exact Jaccard >= threshold, computed for all pairs with
a sparse product.

Every system is scored by what it removes, keeping the first row of each cluster:
- recall: of the planted pairs at true Jaccard >= threshold, the share of which at most one row
  is left;
- distinct removed: of the rows with no partner at true Jaccard >= threshold, the share removed.
Systems: this project's dedup core (LSH candidates verified by the exact Jaccard of the shingle
sets, the stage's default), the same core verifying on the signatures' estimate (how the stage
verified before), datasketch's MinHashLSH (128 permutations at the threshold, same shingles, LSH
buckets taken as they are, joined by union-find), and data-juicer's
`document_minhash_deduplicator` (character tokens, window 5, 128 permutations) when
`--data-juicer-python` names a Python with py-data-juicer installed (a separate virtual
environment: it is no dependency of this project), else it is reported as not installed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
import re
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from transforms.clean.normalize import match_key  # noqa: E402
from transforms.dedup import minhash  # noqa: E402
from transforms.dedup.clusters import UnionFind, cluster_duplicates  # noqa: E402
from transforms.dedup.deduplicate import DedupSettings, fingerprint_batch  # noqa: E402

EDIT_RATES = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.06, 0.12)
_MARKUP = re.compile(r"^(<[^>]*>.*|书名：.*|作者：.*|朝代：.*|年份：.*|内容：)")


def book_text(path: Path) -> str:
    """A book's body as one string: header lines dropped, hard-wrapped lines joined."""
    raw = path.read_bytes().decode("gb18030", errors="replace")
    lines = [_MARKUP.sub("", line.strip()) for line in raw.splitlines()]
    return "".join(line for line in lines if line)


def load_passages(books_dir: Path, count: int, length: int = 500, seed: int = 7) -> list[str]:
    """`count` passages of `length` characters, taken round-robin from the books at random offsets."""
    rng = random.Random(seed)
    books = [t for t in (book_text(p) for p in sorted(books_dir.glob("*.txt"))) if len(t) > 4 * length]
    passages = []
    while len(passages) < count:
        text = books[len(passages) % len(books)]
        start = rng.randrange(0, len(text) - length)
        passages.append(text[start : start + length])
    return passages


def plant_copy(text: str, rate: float, rng: random.Random, alphabet: str) -> str:
    """A copy of `text` with about `rate` of its characters edited (substituted, inserted, deleted)."""
    out = []
    for char in text:
        if rng.random() < rate:
            edit = rng.randrange(3)
            if edit == 0:
                out.append(rng.choice(alphabet))
            elif edit == 1:
                out.extend((char, rng.choice(alphabet)))
            # edit == 2: deleted
        else:
            out.append(char)
    return "".join(out)


def build_collection(passages: list[str], seed: int = 11) -> tuple[list[str], list[float]]:
    """The passages followed by one near-copy of each; the edit rate of each copy (NaN for originals)."""
    rng = random.Random(seed)
    alphabet = "".join(sorted(set("".join(passages))))
    rates = [EDIT_RATES[i % len(EDIT_RATES)] for i in range(len(passages))]
    copies = [plant_copy(text, rate, rng, alphabet) for text, rate in zip(passages, rates)]
    return passages + copies, [float("nan")] * len(passages) + rates


def exact_jaccard_pairs(texts: list[str], ngram: int, threshold: float) -> dict[tuple[int, int], float]:
    """Every pair (i < j) whose shingle sets have Jaccard >= threshold, with its Jaccard."""
    sets = [minhash.shingle_hashes(t, ngram) for t in texts]
    vocabulary, columns = np.unique(np.concatenate(sets), return_inverse=True)
    rows = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    matrix = sparse.csr_matrix((np.ones(len(rows), np.int32), (rows, columns)), shape=(len(sets), len(vocabulary)))
    overlap = sparse.triu(matrix @ matrix.T, k=1).tocoo()
    sizes = np.array([len(s) for s in sets])
    jaccard = overlap.data / (sizes[overlap.row] + sizes[overlap.col] - overlap.data)
    keep = jaccard >= threshold
    return {(int(i), int(j)): float(s) for i, j, s in zip(overlap.row[keep], overlap.col[keep], jaccard[keep])}


def removed_by_core(texts: list[str], settings: DedupSettings, exact: bool = True) -> set[int]:
    """Rows the dedup core rejects (keep the first of each cluster); `exact=False` verifies the
    candidates on the signatures' estimate, as the stage did before."""
    import pyarrow as pa

    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "source": ["eval"] * len(texts)})
    rows, _ = fingerprint_batch(table, "documents", settings.minhash_params(), settings.quality_column)
    if not exact:
        rows.shingles = None
    decisions = cluster_duplicates(rows, None, settings.minhash_params(), ["first"])
    return set(decisions.reasons)


def removed_by_datasketch(texts: list[str], settings: DedupSettings) -> set[int]:
    """datasketch MinHashLSH at the threshold on the same shingles; buckets joined by union-find."""
    from datasketch import MinHash, MinHashLSH

    n = settings.ngram
    lsh = MinHashLSH(threshold=settings.threshold, num_perm=settings.num_perm)
    keys = [match_key(t) for t in texts]
    signatures = MinHash.bulk([[k[i : i + n].encode("utf-8") for i in range(max(1, len(k) - n + 1))] for k in keys], num_perm=settings.num_perm)
    for i, signature in enumerate(signatures):
        lsh.insert(i, signature)
    sets = UnionFind(len(texts))
    for i, signature in enumerate(signatures):
        for j in lsh.query(signature):
            sets.union(i, j)
    roots = sets.roots()
    first = {}
    for i, root in enumerate(roots.tolist()):
        first.setdefault(root, i)
    return {i for i, root in enumerate(roots.tolist()) if first[root] != i}


_DATA_JUICER_SCRIPT = """
import json, sys
from data_juicer.core.data import NestedDataset
from data_juicer.ops.deduplicator.document_minhash_deduplicator import DocumentMinhashDeduplicator
texts = json.load(open(sys.argv[1], encoding="utf-8"))
dataset = NestedDataset.from_list([{"text": t, "row": i} for i, t in enumerate(texts)])
op = DocumentMinhashDeduplicator(tokenization="character", window_size=int(sys.argv[3]), num_permutations=int(sys.argv[4]),
                                 jaccard_threshold=float(sys.argv[5]))
json.dump([r["row"] for r in op.run(dataset)], open(sys.argv[2], "w"))
"""


def removed_by_data_juicer(texts: list[str], settings: DedupSettings, python: str) -> set[int]:
    """data-juicer's document_minhash_deduplicator, run by `python` (its own environment) on the
    match forms (so punctuation is treated as ours is)."""
    with tempfile.TemporaryDirectory() as folder:
        source, kept = os.path.join(folder, "texts.json"), os.path.join(folder, "kept.json")
        with open(source, "w", encoding="utf-8") as handle:
            json.dump([match_key(t) for t in texts], handle, ensure_ascii=False)
        script = os.path.join(folder, "run.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(_DATA_JUICER_SCRIPT)
        subprocess.run(
            [python, script, source, kept, str(settings.ngram), str(settings.num_perm), str(settings.threshold)],
            check=True, capture_output=True, text=True,
        )
        with open(kept, encoding="utf-8") as handle:
            survivors = set(json.load(handle))
    return set(range(len(texts))) - survivors


def score(removed: set[int], planted: dict[tuple[int, int], float], truth: dict, documents: int) -> dict:
    """Recall on planted pairs at true Jaccard >= threshold, and the share of distinct rows removed."""
    true_planted = [p for p in planted if p in truth]
    caught = [p for p in true_planted if p[0] in removed or p[1] in removed]
    partnered = {i for pair in truth for i in pair}
    distinct = [i for i in range(documents) if i not in partnered]
    wrongly = [i for i in distinct if i in removed]
    return {
        "planted_true_pairs": len(true_planted),
        "caught": len(caught),
        "recall": len(caught) / len(true_planted) if true_planted else 1.0,
        "missed_jaccard": sorted(round(truth[p], 3) for p in true_planted if p not in caught),
        "distinct": len(distinct),
        "distinct_removed": len(wrongly),
        "distinct_removed_share": len(wrongly) / len(distinct) if distinct else 0.0,
        "removed": len(removed),
    }


def evaluate(books_dir: Path, passages: int, threshold: float = 0.8, false_negative_weight: float = 0.9,
             data_juicer_python: str | None = None) -> dict:
    settings = DedupSettings(threshold=threshold, false_negative_weight=false_negative_weight)
    texts, rates = build_collection(load_passages(books_dir, passages))
    truth = exact_jaccard_pairs(texts, settings.ngram, threshold)
    everything = exact_jaccard_pairs(texts, settings.ngram, 1e-9)
    n = len(texts) // 2
    planted = {(i, i + n): rates[i + n] for i in range(n)}
    systems = {}
    runs = [
        ("tcm-corpus (exact Jaccard verification)", lambda: removed_by_core(texts, settings, exact=True)),
        ("tcm-corpus (estimated Jaccard verification, before)", lambda: removed_by_core(texts, settings, exact=False)),
        ("datasketch MinHashLSH", lambda: removed_by_datasketch(texts, settings)),
    ]
    if data_juicer_python:
        runs.append(("data-juicer document_minhash_deduplicator", lambda: removed_by_data_juicer(texts, settings, data_juicer_python)))
    for name, run in runs:
        started = time.perf_counter()
        removed = run()
        systems[name] = {**score(removed, planted, truth, len(texts)), "seconds": time.perf_counter() - started}
    per_rate = {}
    core_removed = removed_by_core(texts, settings)
    for rate in EDIT_RATES:
        pairs = [p for p, r in planted.items() if r == rate]
        per_rate[rate] = {
            "copies": len(pairs),
            "mean_exact_jaccard": float(np.mean([everything.get(p, 0.0) for p in pairs])),
            "above_threshold": sum(p in truth for p in pairs),
            "caught": sum(p in truth and (p[0] in core_removed or p[1] in core_removed) for p in pairs),
        }
    return {
        "documents": len(texts),
        "threshold": threshold,
        "params": settings.minhash_params(),
        "true_pairs": len(truth),
        "pairs_within_0.05_of_threshold": sum(abs(s - threshold) < 0.05 for s in everything.values()),
        "systems": systems,
        "per_rate": per_rate,
        "data_juicer": data_juicer_python,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--passages", type=int, default=1500)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--false-negative-weight", type=float, default=0.9)
    parser.add_argument("--data-juicer-python", help="a Python with py-data-juicer installed (its own virtual environment)")
    args = parser.parse_args()
    books = args.shared / "corpus" / "ancient-books"
    if not any(books.glob("*.txt")):
        sys.exit(f"no books in {books}: give --shared, the folder holding corpus/ancient-books")
    result = evaluate(books, args.passages, args.threshold, args.false_negative_weight, args.data_juicer_python)
    p = result["params"]
    print(f"documents {result['documents']} (passages + one planted near-copy each), threshold {result['threshold']}")
    print(f"MinHash: {p.num_perm} permutations, {p.bands} bands x {p.rows} rows, {p.ngram}-character shingles")
    print(f"true pairs (exact Jaccard >= threshold) {result['true_pairs']}; "
          f"pairs within 0.05 of the threshold (hard cases) {result['pairs_within_0.05_of_threshold']}")
    print(f"{'system':<52} {'planted>=thr':>12} {'caught':>7} {'recall':>7} {'distinct':>8} {'removed':>8} {'share':>7} {'s':>6}")
    for name, row in result["systems"].items():
        print(f"{name:<52} {row['planted_true_pairs']:12d} {row['caught']:7d} {row['recall']:7.4f} {row['distinct']:8d} "
              f"{row['distinct_removed']:8d} {row['distinct_removed_share']:7.2%} {row['seconds']:6.2f}")
    for name, row in result["systems"].items():
        if row["missed_jaccard"]:
            shown = ", ".join(str(j) for j in row["missed_jaccard"][:12])
            print(f"  {name}: missed pairs at true Jaccard {shown}{' ...' if len(row['missed_jaccard']) > 12 else ''}")
    if not result["data_juicer"]:
        print("data-juicer document_minhash_deduplicator: not installed (give --data-juicer-python)")
    print("edit rate  copies  mean exact J  above threshold  caught (tcm-corpus)")
    for rate, row in result["per_rate"].items():
        print(f"{rate:9.3f}  {row['copies']:6d}  {row['mean_exact_jaccard']:12.3f}  {row['above_threshold']:15d}  {row['caught']:6d}")


if __name__ == "__main__":
    main()
