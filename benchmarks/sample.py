"""Time priority sampling and print the figures.

    python benchmarks/sample.py [--items 10000000] [--sft-share 0.2] [--epochs 3] [--full 1000000]

Order of N items with ids: the ids arrive as Arrow string columns in batches of 65,536, as the
sample stage reads them; each is hashed (FNV-1a, vectorised), then `plan_order` draws the keys,
sorts them and inverts the permutation. Printed: seconds for hashing, for the plan, in all, and
the peak memory of the process. With --full M, also the whole stage on M synthetic rows of text
and dialogue on disk (keys, streamed gather, shards), in rows per second.
One core: numpy's sort and these loops are single-threaded.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from schemas import CATEGORIES, CONVERSATIONS, DOCUMENTS, SCHEMAS  # noqa: E402
from transforms.sample.order import id_hashes, plan_order  # noqa: E402
from transforms.sample.shards import write_corpus  # noqa: E402

BATCH = 65_536
WEIGHTS = {"web": 32, "literature": 16, "encyclopedia": 8, "books": 4, "sft": 1}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def id_batches(items: int):
    """Content-like ids (20 hex characters, as `content_id` makes them) as Arrow columns."""
    rng = np.random.default_rng(0)
    for start in range(0, items, BATCH):
        n = min(BATCH, items - start)
        raw = rng.integers(0, 1 << 63, size=n, dtype=np.int64).view(np.uint64)
        yield pa.array(np.char.mod("%020x", raw).astype(object), pa.string())


def time_order(items: int, sft_share: float, epochs: int) -> None:
    rng = np.random.default_rng(1)
    category_codes = np.where(rng.random(items) < sft_share, CATEGORIES.index("sft"), rng.integers(0, 4, items)).astype(np.int32)
    source_codes = np.zeros(items, dtype=np.int32)
    batches = list(id_batches(items))  # made before the clock starts: reading them is I/O, not sampling
    started, cpu_started = time.perf_counter(), time.process_time()
    hashes = np.concatenate([id_hashes(batch) for batch in batches])
    hashed = time.perf_counter()
    plan = plan_order(hashes, category_codes, source_codes, list(CATEGORIES), ["s"], {"weights": WEIGHTS, "sft_epochs": epochs, "seed": 42})
    planned, cpu = time.perf_counter(), time.process_time() - cpu_started
    print(f"priority order of {items:,} items ({plan.rows:,} with {epochs} epochs of {sft_share:.0%} sft), one core:")
    print(f"  hash ids    {hashed - started:6.2f} s")
    print(f"  keys + sort {planned - hashed:6.2f} s   (keys, argsort, inverse permutation, curve codes)")
    print(f"  total       {planned - started:6.2f} s   target < 30 s ({cpu:.2f} s of CPU: the figure a busy machine disturbs least)")
    print(f"  peak RSS    {peak_mb():.0f} MB (with this benchmark's 10 million id strings)")
    print(f"  plan memory {(plan.starts.nbytes + plan.epoch.nbytes + plan.position.nbytes + plan.category_in_order.nbytes) / 1e6:.0f} MB "
          f"+ item keys {(hashes.nbytes + category_codes.nbytes + source_codes.nbytes) / 1e6:.0f} MB")


def time_stage(rows: int, sft_share: float, epochs: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="tcm-sample-bench-"))
    try:
        rng = np.random.default_rng(2)
        sft_rows = int(rows * sft_share)
        for kind, n in ((DOCUMENTS, rows - sft_rows), (CONVERSATIONS, sft_rows)):
            (folder / "items" / kind).mkdir(parents=True)
            schema = pa.schema([f.with_nullable(True) for f in SCHEMAS[kind]])
            for part, start in enumerate(range(0, n, 100_000)):
                m = min(100_000, n - start)
                ids = [f"{kind[0]}{start + i:019x}" for i in range(m)]
                if kind == DOCUMENTS:
                    text = ["人参，味甘微寒，主补五脏，安精神。" * int(k) for k in rng.integers(2, 30, m)]
                    columns = {"id": ids, "text": text, "source": ["books"] * m, "category": list(np.array(CATEGORIES[:4])[rng.integers(0, 4, m)])}
                else:
                    messages = [[{"role": "user", "content": "失眠多梦怎么办？"}, {"role": "assistant", "content": "可考虑酸枣仁汤。" * 5}]] * m
                    columns = {"id": ids, "messages": messages, "source": ["qa"] * m, "category": ["sft"] * m}
                table = pa.table({f.name: columns.get(f.name, pa.nulls(m, f.type)) for f in schema}, schema=schema)
                pq.write_table(table, folder / "items" / kind / f"part-{part:05d}.parquet")
        # A fresh process, so that its peak memory is the stage's alone, not this data's making.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            seconds, manifest, stage_peak = pool.apply(run_stage, (str(folder), epochs))
        text_mb = sum(p.stat().st_size for p in (folder / "items").rglob("*.parquet")) / 1e6
        print(f"whole sample stage, {rows:,} rows on disk ({text_mb:.0f} MB of Parquet) -> {manifest['rows']:,} in {len(manifest['shards'])} shards:")
        print(f"  {seconds:.1f} s, {manifest['rows'] / seconds:,.0f} rows/s; peak RSS of the stage's process {stage_peak:.0f} MB")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_stage(folder: str, epochs: int) -> tuple[float, dict, float]:
    started = time.perf_counter()
    params = {"weights": WEIGHTS, "sft_epochs": epochs, "seed": 42, "shard_rows": 100_000}
    manifest = write_corpus([Path(folder) / "items"], Path(folder) / "corpus", params, "bench")
    return time.perf_counter() - started, manifest, peak_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--sft-share", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--full", type=int, default=0, help="also run the whole stage on this many rows")
    args = parser.parse_args()
    time_order(args.items, args.sft_share, args.epochs)
    if args.full:
        time_stage(args.full, args.sft_share, args.epochs)


if __name__ == "__main__":
    main()
