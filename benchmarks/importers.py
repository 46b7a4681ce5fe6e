"""Importer throughput on the shared data: the 261 classical books (about 40 MB of GB18030
text), then the pharmacopoeia, the instruction datasets and the evaluation sets. Run by hand:

    .venv/bin/python benchmarks/importers.py [--data ../shared/data]

Prints, per format: files, MB read, records kept and rejected, seconds, MB/s, and the process's
peak resident memory at the end."""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transforms.ingest.importers import import_file, list_files, load_benchmark  # noqa: E402

SETS = (
    ("book", "corpus/ancient-books"),
    ("monograph", "corpus/pharmacopoeia/2022年中药药典.txt"),
    ("terms", "corpus/pharmacopoeia/中医临床诊疗术语证候.txt"),
    ("instructions", "instructions"),
    ("benchmark", "benchmarks"),
)


def measure(fmt: str, path: Path) -> dict:
    files = list_files(path, fmt)
    size = sum(f.stat().st_size for f in files)
    kept = rejected = 0
    started = time.perf_counter()
    for file in files:
        if fmt == "benchmark":
            kept += len(load_benchmark(file))
            continue
        for record in import_file(file, fmt, "bench", "books"):
            if record.reason is None:
                kept += 1
            else:
                rejected += 1
    seconds = time.perf_counter() - started
    return {"format": fmt, "files": len(files), "MB": size / 1e6, "kept": kept, "rejected": rejected,
            "seconds": seconds, "MB/s": size / 1e6 / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    for fmt, relative in SETS:
        path = args.data / relative
        if not path.exists():
            print(f"{fmt}: {path} not found, skipped")
            continue
        r = measure(fmt, path)
        print(f"{r['format']:<12} {r['files']:>4} files {r['MB']:7.1f} MB  kept {r['kept']:>6}  "
              f"rejected {r['rejected']:>4}  {r['seconds']:6.2f} s  {r['MB/s']:6.2f} MB/s")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS: {peak_kb / 1024:.0f} MB")


if __name__ == "__main__":
    main()
