"""Time build-corpus stage by stage on the shared data and print the figures.

    python benchmarks/build_stages.py [--shared ../shared/data] [--workdir DIR] [--books N] [--workers W] [--lexicon]

Uses the real files beside the repository: the ancient books (GB18030), the pharmacopoeia
monographs, the instruction datasets and the evaluation sets. Prints, per stage, rows in and out,
wall seconds, CPU seconds (the stage's process and its worker processes) and its share of the
build's CPU, rows/s; then the whole run, the peak memory of this process and its workers, and
the floor: the CPU seconds pyarrow takes to read the same input files, decode them and write
them once as Parquet (one row per line), and how many times that floor the build costs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_config(shared: Path, folder: Path, books: int | None, workers: int, lexicon: Path | None = None) -> Path:
    book_dir = shared / "corpus" / "ancient-books"
    if books:
        book_dir = folder / "books"
        book_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted((shared / "corpus" / "ancient-books").glob("*.txt"))[:books]:
            os.symlink(path, book_dir / path.name)
    instructions = shared / "instructions"
    benchmarks = sorted(p for p in (shared / "benchmarks").iterdir() if p.is_file())
    config = f"""
name = "shared-data-benchmark"

[[sources]]
name = "ancient-books"
kind = "files"
path = "{book_dir}"
format = "book"
category = "books"

[[sources]]
name = "pharmacopoeia"
kind = "files"
path = "{shared / 'corpus' / 'pharmacopoeia' / '2022年中药药典.txt'}"
format = "monograph"
category = "encyclopedia"

[[sources]]
name = "cmtmedqa"
kind = "dataset"
path = "{instructions / 'cmtmedqa_test.json'}"
format = "instructions"
category = "sft"

[[sources]]
name = "huatuo26m"
kind = "dataset"
path = "{instructions / 'huatuo26m_test.json'}"
format = "instructions"
category = "sft"

[[sources]]
name = "tcm-qr"
kind = "dataset"
path = "{instructions / 'tcm_qr.json'}"
format = "instructions"
category = "sft"

[[sources]]
name = "mtcmb-dialogues"
kind = "dataset"
path = "{instructions / 'mtcmb_tcm_chgd.jsonl'}"
format = "instructions"
category = "sft"

{f'[clean]{chr(10)}domain_lexicon = "{lexicon}"{chr(10)}' if lexicon else ""}
[decontaminate]
benchmarks = [{", ".join(json.dumps(str(p)) for p in benchmarks)}]

[sample]
shard_rows = 20000

[engine]
workers = {workers}
"""
    path = folder / "benchmark.toml"
    path.write_text(config, encoding="utf-8")
    return path


def input_files(shared: Path, books: Path) -> list[tuple[Path, str]]:
    """The files the benchmark build reads, with their encodings."""
    files = [(path, "gb18030") for path in sorted(books.glob("*.txt"))]
    files.append((shared / "corpus" / "pharmacopoeia" / "2022年中药药典.txt", "utf-8"))
    files += [(path, "utf-8") for path in sorted((shared / "instructions").iterdir()) if path.is_file()]
    files += [(path, "utf-8") for path in sorted((shared / "benchmarks").iterdir()) if path.is_file()]
    return files


def pyarrow_floor(files: list[tuple[Path, str]], folder: Path) -> tuple[float, float]:
    """(CPU seconds, MB read) to read the files, decode them and write them once with pyarrow:
    one Parquet file, one row per line. What any build of the same input pays at least."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.process_time()
    size = 0
    with pq.ParquetWriter(folder / "floor.parquet", pa.schema([("file", pa.string()), ("text", pa.string())])) as writer:
        for path, encoding in files:
            raw = path.read_bytes()
            size += len(raw)
            lines = raw.decode(encoding, errors="replace").splitlines()
            writer.write_table(pa.table({"file": pa.array([path.name] * len(lines), pa.string()), "text": pa.array(lines, pa.string())}))
    return time.process_time() - started, size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--books", type=int, help="only the first N books")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--lexicon", action="store_true",
                        help="build the TCM lexicon from the pharmacopoeia and the books first (flows lexicon build) and tag with it")
    args = parser.parse_args()
    if not args.shared.is_dir():
        sys.exit(f"shared data not found at {args.shared}")

    sys.path.insert(0, str(REPO))
    from flows.runtime import prepare_environment

    prepare_environment()
    folder = Path(tempfile.mkdtemp(prefix="tcm-bench-"))
    workdir = args.workdir or folder / "work"
    if workdir.exists():
        shutil.rmtree(workdir)
    lexicon = None
    if args.lexicon:
        from transforms.clean.lexicon import build_lexicon, write_lexicon

        lexicon = write_lexicon(build_lexicon([args.shared / "corpus" / "pharmacopoeia", args.shared / "corpus" / "ancient-books"]), folder / "lexicon.txt")
    config = write_config(args.shared, folder, args.books, args.workers, lexicon)
    input_mb = sum(p.stat().st_size for p in Path(folder / "books" if args.books else args.shared / "corpus" / "ancient-books").glob("*.txt")) / 1e6

    from flows.pipeline import build_corpus
    from flows.stages.runner import cpu_seconds

    started, cpu_started = time.perf_counter(), cpu_seconds()
    result = build_corpus(config=str(config), workdir=str(workdir))
    total = time.perf_counter() - started
    cpu_total = cpu_seconds() - cpu_started

    print(f"\nbuild-corpus on {args.shared} ({input_mb:.1f} MB of books, {args.workers} worker(s))")
    print(f"{'stage':>14} {'rows in':>10} {'rows out':>10} {'seconds':>8} {'CPU-s':>8} {'CPU share':>9} {'rows/CPU-s':>11}")
    stage_cpu = 0.0
    for stage, summary in result["stages"].items():
        rows_in = sum(summary["rows_in"].values())
        rows_out = sum(summary["rows_out"].values())
        seconds = summary.get("seconds", 0.0)
        cpu = summary.get("cpu_seconds", 0.0)
        stage_cpu += cpu
        rate = rows_in / cpu if cpu else 0.0
        print(f"{stage:>14} {rows_in:>10} {rows_out:>10} {seconds:>8.2f} {cpu:>8.2f} {cpu / cpu_total:>9.1%} {rate:>11.0f}")
    rest = cpu_total - stage_cpu
    print(f"{'rest':>14} {'':>10} {'':>10} {'':>8} {rest:>8.2f} {rest / cpu_total:>9.1%}   (Prefect, the suites after each stage, the report)")
    ingest = result["stages"]["ingest"]
    if ingest.get("seconds"):
        print(f"ingest of books + datasets: {input_mb / ingest['seconds']:.2f} MB/s of book text (all sources in that time)")
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"total {total:.1f} s wall (load average {os.getloadavg()[0]:.1f}), {cpu_total:.1f} CPU-s in this process and its "
          f"workers (a temporary Prefect server's own CPU is not counted); peak RSS {self_peak:.0f} MB (driver), "
          f"{child_peak:.0f} MB (largest worker)")
    books_dir = folder / "books" if args.books else args.shared / "corpus" / "ancient-books"
    floor, floor_mb = pyarrow_floor(input_files(args.shared, books_dir), folder)
    print(f"floor: pyarrow reads, decodes and writes the same {floor_mb:.1f} MB in {floor:.2f} CPU-s; "
          f"the build costs {cpu_total / floor:.0f}x that")
    print(f"output: {result['corpus']}")


if __name__ == "__main__":
    main()
