"""Near-duplicate detection scored against the truth: precision and recall of MinHash LSH dedup
on real book text with planted near-copies, against the exact Jaccard similarity of the same
shingles.

    python benchmarks/dedup_eval.py [--shared ../shared/data] [--passages 1500] [--threshold 0.8]

Passages of 500 characters are cut from the shared ancient books (which quote and copy each other,
so some true near-duplicates are real, not planted); a near-copy of each is made at an edit rate
drawn from EDIT_RATES (substitutions, insertions and deletions of characters). The truth is every
pair whose shingle sets have Jaccard >= threshold (all pairs, computed exactly with a sparse
product); the prediction is every pair put in one cluster by the dedup core. Prints precision,
recall, and per edit rate the mean exact Jaccard and the share of copies found.
"""
from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from transforms.dedup import minhash  # noqa: E402
from transforms.dedup.clusters import cluster_duplicates  # noqa: E402
from transforms.dedup.deduplicate import DedupSettings, fingerprint_batch  # noqa: E402

EDIT_RATES = (0.005, 0.01, 0.03, 0.06, 0.12, 0.25)
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


def predicted_pairs(texts: list[str], settings: DedupSettings) -> set[tuple[int, int]]:
    """Pairs of rows the dedup core puts in one cluster."""
    import pyarrow as pa

    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "source": ["eval"] * len(texts)})
    rows, _ = fingerprint_batch(table, "documents", settings.minhash_params(), settings.quality_column)
    decisions = cluster_duplicates(rows, None, settings.minhash_params(), ["first"])
    members: dict[str, list[int]] = {}
    for row_id, cluster in zip(decisions.clusters.column("id").to_pylist(), decisions.clusters.column("cluster").to_pylist()):
        members.setdefault(cluster, []).append(int(row_id))
    return {(a, b) for group in members.values() for a in group for b in group if a < b}


def evaluate(books_dir: Path, passages: int, threshold: float = 0.8, false_negative_weight: float = 0.9) -> dict:
    settings = DedupSettings(threshold=threshold, false_negative_weight=false_negative_weight)
    texts, rates = build_collection(load_passages(books_dir, passages))
    truth = exact_jaccard_pairs(texts, settings.ngram, threshold)
    started = time.perf_counter()
    predicted = predicted_pairs(texts, settings)
    seconds = time.perf_counter() - started
    true_positive = len(predicted & truth.keys())
    n = len(texts) // 2
    per_rate = {}
    planted = {}
    for i in range(n):
        planted[(i, i + n)] = rates[i + n]
    everything = exact_jaccard_pairs(texts, settings.ngram, 1e-9)
    for rate in EDIT_RATES:
        pairs = [p for p, r in planted.items() if r == rate]
        per_rate[rate] = {
            "copies": len(pairs),
            "mean_exact_jaccard": float(np.mean([everything.get(p, 0.0) for p in pairs])),
            "above_threshold": sum(p in truth for p in pairs),
            "found": sum(p in predicted for p in pairs),
        }
    near = sum(abs(s - threshold) < 0.05 for s in everything.values())
    return {
        "documents": len(texts),
        "threshold": threshold,
        "params": settings.minhash_params(),
        "true_pairs": len(truth),
        "predicted_pairs": len(predicted),
        "true_positives": true_positive,
        "precision": true_positive / len(predicted) if predicted else 1.0,
        "recall": true_positive / len(truth) if truth else 1.0,
        "pairs_within_0.05_of_threshold": near,
        "per_rate": per_rate,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--passages", type=int, default=1500)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--false-negative-weight", type=float, default=0.9)
    args = parser.parse_args()
    result = evaluate(args.shared / "corpus" / "ancient-books", args.passages, args.threshold, args.false_negative_weight)
    p = result["params"]
    print(f"documents {result['documents']} (passages + one planted near-copy each), threshold {result['threshold']}")
    print(f"MinHash: {p.num_perm} permutations, {p.bands} bands x {p.rows} rows, {p.ngram}-character shingles")
    print(f"true pairs (exact Jaccard >= threshold) {result['true_pairs']}, predicted pairs {result['predicted_pairs']}, "
          f"both {result['true_positives']}")
    print(f"precision {result['precision']:.4f}  recall {result['recall']:.4f}")
    print(f"pairs within 0.05 of the threshold (hard cases): {result['pairs_within_0.05_of_threshold']}")
    print("edit rate  copies  mean exact J  above threshold  found")
    for rate, row in result["per_rate"].items():
        print(f"{rate:9.3f}  {row['copies']:6d}  {row['mean_exact_jaccard']:12.3f}  {row['above_threshold']:15d}  {row['found']:5d}")
    print(f"dedup core (fingerprints + clusters) {result['seconds']:.2f} s")


if __name__ == "__main__":
    main()
