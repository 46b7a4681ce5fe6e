"""Throughput and memory of MinHash signatures and LSH on real text, in one process (one core).

    python benchmarks/minhash.py [--shared ../shared/data] [--documents 20000] [--threshold 0.8]

Documents are 500-character passages of the shared ancient books. Prints documents per second
for: normalising (match form), signatures of normalised text, band keys + candidate pairs, the
whole dedup core (fingerprints, LSH, verification, union-find clusters); datasketch's MinHash.bulk
on a sample for reference; peak memory of the process, and the memory the dedup core holds per
million documents (measured with tracemalloc on this run and scaled).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.dedup_eval import load_passages  # noqa: E402
from transforms.dedup import minhash  # noqa: E402
from transforms.dedup.clusters import cluster_duplicates  # noqa: E402
from transforms.dedup.deduplicate import DedupSettings, fingerprint_batch  # noqa: E402
from transforms.clean.normalize import match_key  # noqa: E402


class Timer:
    """Wall and CPU seconds of a block: CPU time of this process is what one core delivers,
    whatever else the machine is running."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def rate(count: int, timer: Timer) -> str:
    return (f"{count / timer.cpu:10,.0f} docs/s/core ({timer.cpu / count * 1e6:7.1f} us/doc CPU, "
            f"{timer.wall / count * 1e6:7.1f} us/doc wall)")


def core_peak(texts: list[str], settings: DedupSettings) -> tuple[int, int, int]:
    """(fingerprint bytes held, peak bytes, duplicates) of the dedup core over `texts`."""
    import pyarrow as pa

    table = pa.table({"id": [f"doc-{i:09d}" for i in range(len(texts))], "text": texts, "source": ["books"] * len(texts)})
    params = settings.minhash_params()
    tracemalloc.start()
    rows, _ = fingerprint_batch(table, "documents", params, settings.quality_column)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()  # the batch's texts are gone: from here on, what grows with the corpus
    decisions = cluster_duplicates(rows, None, params, settings.keep)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return held, peak, len(decisions.reasons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--reference", type=int, default=500, help="documents hashed by datasketch for comparison")
    args = parser.parse_args()

    import pyarrow as pa

    texts = load_passages(args.shared / "corpus" / "ancient-books", args.documents)
    settings = DedupSettings(threshold=args.threshold)
    params = settings.minhash_params()
    print(f"{len(texts)} documents of 500 characters; {params.num_perm} permutations, "
          f"{params.bands} bands x {params.rows} rows, {params.ngram}-character shingles")
    match_key("预热")  # load OpenCC's dictionaries before timing

    with Timer() as normalise:
        keys = [match_key(t) for t in texts]
    with Timer() as signing:
        sig = minhash.signatures_of_keys(keys, params)
    with Timer() as lsh:
        bands = minhash.band_hashes(sig, params)
        first, _ = minhash.candidate_pairs(bands)
    both = Timer()
    both.wall, both.cpu = signing.wall + lsh.wall, signing.cpu + lsh.cpu
    everything = Timer()
    everything.wall, everything.cpu = both.wall + normalise.wall, both.cpu + normalise.cpu
    print(f"normalise (match form)       {rate(len(texts), normalise)}")
    print(f"signatures                   {rate(len(texts), signing)}")
    print(f"band keys + candidate pairs  {rate(len(texts), lsh)}  {len(first)} pairs")
    print(f"signatures + LSH             {rate(len(texts), both)}")
    print(f"normalise + signatures + LSH {rate(len(texts), everything)}")

    from datasketch import MinHash

    sample = keys[: args.reference]
    with Timer() as reference:
        MinHash.bulk([[k[i : i + params.ngram].encode() for i in range(len(k) - params.ngram + 1)] for k in sample], num_perm=params.num_perm)
    print(f"datasketch MinHash.bulk      {rate(len(sample), reference)}  reference, {len(sample)} docs")

    with Timer() as core:
        small_held, small_peak, _ = core_peak(texts[: len(texts) // 4], settings)
        held, peak, duplicates = core_peak(texts, settings)
    print(f"dedup core: fingerprints, LSH, verification, union-find clusters ({duplicates} duplicates), "
          f"two runs {core.cpu:.1f} s CPU under tracemalloc")
    extra = len(texts) - len(texts) // 4
    gib = 1e6 / 2**30
    print(f"fingerprints held: {(held - small_held) / extra:.0f} bytes/doc = {(held - small_held) / extra * gib:.2f} GiB "
          f"per million documents (a signature alone is {params.num_perm * 4} bytes)")
    print(f"dedup core peak while clustering (fingerprints included): {(peak - small_peak) / extra:.0f} bytes/doc = {(peak - small_peak) / extra * gib:.2f} GiB "
          f"per million documents (slope between {len(texts) // 4} and {len(texts)} documents), "
          f"{peak / 2**20:.0f} MiB at {len(texts)}")
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
