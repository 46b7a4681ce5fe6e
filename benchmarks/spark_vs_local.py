"""Spark local[N] against the local engine on the ancient books: clean, dedup, sample.

    python benchmarks/spark_vs_local.py [--shared ../shared/data] [--books N] [--cores 2] [--minhash]

Imports the books once (ingest does not depend on the engine), then runs clean, exact dedup and
priority sampling on each engine over the same input, checks that both keep the same rows, and
prints seconds, rows/s and MB/s of book text per stage, and the per-core rate the 1 TB estimate
in docs/SCALING.md starts from. With --minhash, also MinHash near-duplicate dedup on Spark.
Spark's session start is timed apart: a cluster pays it once per job, not per stage.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CLEAN = {"opencc": "t2s", "unicode_form": "NFKC", "min_chars": 20, "min_han_ratio": 0.0, "min_turn_chars": 1}
DEDUP = {"method": "exact", "keep": "first"}
MINHASH = {"method": "minhash", "keep": ["longest", "first"], "threshold": 0.8, "num_perm": 128, "ngram": 5, "seed": 1}
SAMPLE = {"mode": "priority", "weights": {"books": 4}, "source_weights": {}, "sft_epochs": 1, "shard_rows": 20000, "seed": 42}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--books", type=int, help="only the first N books")
    parser.add_argument("--cores", type=int, default=2, help="local engine workers and Spark local[N]")
    parser.add_argument("--minhash", action="store_true", help="also MinHash dedup on Spark")
    args = parser.parse_args()
    if not args.shared.is_dir():
        sys.exit(f"shared data not found at {args.shared}")
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from schemas.dataset import StageManifest, read_kind
    from transforms import stages
    from transforms.engines.local import LocalEngine
    from transforms.engines.spark import SparkEngine

    root = Path(tempfile.mkdtemp(prefix="tcm-spark-bench-"))
    books = sorted((args.shared / "corpus" / "ancient-books").glob("*.txt"))[: args.books or None]
    folder = root / "books"
    folder.mkdir()
    for path in books:
        os.symlink(path, folder / path.name)
    megabytes = sum(p.stat().st_size for p in books) / 1e6
    source = [{"name": "ancient-books", "category": "books", "path": str(folder), "format": "book", "encoding": "auto"}]
    started = time.perf_counter()
    stages.run_ingest(source, [], root / "ingest", {"min_chars": 20}, StageManifest(stage="ingest"))
    print(f"ingest: {len(books)} books, {megabytes:.1f} MB (GB18030) in {time.perf_counter() - started:.1f} s")

    spark_engine = SparkEngine(f"local[{args.cores}]", {"spark.sql.shuffle.partitions": str(4 * args.cores)}, batch_rows=512)
    started = time.perf_counter()
    spark_engine.session
    session_seconds = time.perf_counter() - started
    engines = {"local": LocalEngine(args.cores, 512), "spark": spark_engine}

    def clean(engine, out):
        return stages.run_clean([root / "ingest"], out, CLEAN, StageManifest(stage="clean"), engine)

    def dedup(engine, out, params=DEDUP):
        return stages.run_dedup([root / "local-clean"], out, params, StageManifest(stage="dedup"), engine)

    def sample(engine, out):
        return stages.run_sample([root / "local-dedup"], out, SAMPLE, StageManifest(stage="sample"), "bench", engine=engine)

    timings: dict[tuple[str, str], tuple[float, int]] = {}
    for stage, run in (("clean", clean), ("dedup", dedup), ("sample", sample)):
        for name, engine in engines.items():
            out = root / f"{name}-{stage}"
            started = time.perf_counter()
            manifest = run(engine, out)
            timings[(stage, name)] = (time.perf_counter() - started, sum(manifest.rows_in.values()))
        same = read_kind(root / f"local-{stage}", "corpus" if stage == "sample" else "documents").column("id").to_pylist() == read_kind(
            root / f"spark-{stage}", "corpus" if stage == "sample" else "documents"
        ).column("id").to_pylist()
        print(f"{stage}: both engines keep the same rows in the same order: {same}")
    if args.minhash:
        started = time.perf_counter()
        manifest = dedup(spark_engine, root / "spark-minhash", MINHASH)
        timings[("dedup (minhash)", "spark")] = (time.perf_counter() - started, sum(manifest.rows_in.values()))
        print(f"minhash on spark: {manifest.rejected_by_reason} {manifest.stats['dedup']}")

    print(f"\n{len(books)} books, {megabytes:.1f} MB; {args.cores} cores; Spark session start {session_seconds:.1f} s (not in the stage times)")
    print(f"{'stage':>16} {'engine':>6} {'rows in':>8} {'seconds':>8} {'rows/s':>8} {'MB/s':>6} {'MB/s/core':>9}")
    for (stage, name), (seconds, rows) in timings.items():
        rate = megabytes / seconds
        print(f"{stage:>16} {name:>6} {rows:>8} {seconds:>8.2f} {rows / seconds:>8.0f} {rate:>6.2f} {rate / args.cores:>9.3f}")
    spark_engine.session.stop()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
