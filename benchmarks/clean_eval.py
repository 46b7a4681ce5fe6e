"""Precision and recall of language identification as the pipeline decides it, on a labelled set
built from the shared data (see benchmarks/langid_set.py).

    python benchmarks/clean_eval.py [--shared ../shared/data] [--books 40]

Prints, for the decision "Chinese and kept by [select]'s language rules" and for "English":
precision, recall and counts; then the share kept as Chinese per origin, and every mistake.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from langid_set import evaluate, labelled_set  # noqa: E402

from flows.config import SelectConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--books", type=int, default=40)
    args = parser.parse_args()
    rows = labelled_set(args.shared, books=args.books)
    started = time.perf_counter()
    report = evaluate(rows, SelectConfig().model_dump())
    seconds = time.perf_counter() - started
    print(f"labelled rows: {report['rows']} (cleaned and tagged in {seconds:.1f} s)")
    for name in ("chinese", "english"):
        m = report[name]
        print(f"{name:8s} precision {m['precision']:.4f}  recall {m['recall']:.4f}  (tp {m['true_positives']}, fp {m['false_positives']}, fn {m['false_negatives']})")
    print("kept as Chinese, per origin:")
    for origin, entry in report["by_origin"].items():
        print(f"  {origin:10s} {entry['kept_as_chinese']:>5} / {entry['rows']}")
    for mistake in report["mistakes"]:
        print(f"  mistake: {mistake}")


if __name__ == "__main__":
    main()
