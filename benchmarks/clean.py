"""Throughput of the clean (tagging) and select steps on the classical books, on one core.

    python benchmarks/clean.py [--shared ../shared/data] [--books N] [--batch-rows 2048] [--profile]

Imports the books (GB18030 files, 40 MB) into chapters first (not timed), then runs the clean
step batch by batch in this process, as one engine worker would, and then selection. Prints MB/s
of input text (UTF-8 bytes of the chapters) per step, per quality rule and overall, in wall time
and in CPU time of this process (less disturbed by other load on the machine). --profile prints
the top functions by cumulative time.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402

from flows.config import CleanConfig, SelectConfig  # noqa: E402
from transforms.clean.steps import clean_documents  # noqa: E402
from transforms.ingest.importers import import_file  # noqa: E402
from transforms.select.rules import select_batch  # noqa: E402


def load_books(shared: Path, limit: int | None) -> tuple[pa.Table, int]:
    files = sorted((shared / "corpus" / "ancient-books").glob("*.txt"))[:limit]
    rows = [r.row for path in files for r in import_file(path, "book", "books", "books") if not r.reason]
    return pa.Table.from_pylist(rows), sum(p.stat().st_size for p in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--books", type=int, default=None, help="first N books only")
    parser.add_argument("--batch-rows", type=int, default=2048)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    table, file_bytes = load_books(args.shared, args.books)
    text_mb = sum(len(t.encode("utf-8")) for t in table.column("text").to_pylist()) / 1e6
    print(f"{table.num_rows} chapters, {file_bytes / 1e6:.1f} MB of book files, {text_mb:.1f} MB of text (UTF-8)")
    clean_params = CleanConfig().model_dump(mode="json")
    select_params = SelectConfig().model_dump()
    # Start-up, once per worker process and outside the timing: the language model, jieba's
    # dictionary (loaded when a flagged-word candidate first needs segmenting), character tables.
    from transforms.clean.words import tokenizer

    started = time.perf_counter()
    clean_documents(table.slice(0, 50), clean_params)
    tokenizer(None)
    print(f"start-up of a worker: {time.perf_counter() - started:.1f} s")

    profiler = cProfile.Profile() if args.profile else None
    stats: dict = {}
    tagged = []
    wall, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    for batch in table.to_batches(args.batch_rows):
        kept, _ = clean_documents(batch, clean_params, stats)
        tagged.append(kept)
    clean_wall, clean_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    selected = 0
    for part in tagged:
        kept, _ = select_batch(part, "documents", select_params)
        selected += kept.num_rows
    select_wall, select_cpu = time.perf_counter() - wall, time.process_time() - cpu
    if profiler:
        profiler.disable()

    print(f"\n{'step':<24}{'cpu s':>9}{'MB/s':>9}   (CPU time of this process, per step of clean)")
    for step, seconds in sorted(stats["seconds"].items(), key=lambda item: -item[1]):
        print(f"{step:<24}{seconds:>9.2f}{text_mb / seconds if seconds else float('inf'):>9.1f}")
    print(f"\n{'overall':<24}{'wall s':>9}{'MB/s':>9}{'cpu s':>9}{'MB/s':>9}")
    for name, w, c in (("clean (tag)", clean_wall, clean_cpu), ("select", select_wall, select_cpu), ("clean + select", clean_wall + select_wall, clean_cpu + select_cpu)):
        print(f"{name:<24}{w:>9.2f}{text_mb / w:>9.2f}{c:>9.2f}{text_mb / c:>9.2f}")
    print(f"\nrows: {table.num_rows} in, {sum(t.num_rows for t in tagged)} tagged, {selected} selected")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
