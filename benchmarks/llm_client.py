"""Throughput and memory of the LLM conversion against the loopback OpenAI-compatible server.

    python benchmarks/llm_client.py [--passages 10000] [--latency-ms 200] [--concurrency 32]

Starts tests/openai_server.py in its own process (so the server's threads do not share this
process's interpreter), writes `--passages` one-passage documents as a dataset, runs the convert
stage with the openai backend on them (two requests per passage: question, answer; a fresh
cache, so every request is sent), and prints achieved requests/s against the ideal
concurrency / latency, and this process's resident memory sampled through the run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402

from schemas import DOCUMENTS, document_id, dumps_meta  # noqa: E402
from schemas.dataset import DatasetWriter, StageManifest  # noqa: E402
from transforms import stages  # noqa: E402
from transforms.engines.local import LocalEngine  # noqa: E402

HERB = "味甘，性微温，归肺、脾经。能补气升阳，固表止汗，利水消肿，生津养血，行滞通痹，托毒排脓，敛疮生肌。用于气虚乏力，食少便溏，中气下陷，久泻脱肛，便血崩漏，表虚自汗，气虚水肿。"


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def write_documents(folder: Path, n: int) -> None:
    with DatasetWriter(folder, StageManifest(stage="input", rows_in={DOCUMENTS: n})) as writer:
        for start in range(0, n, 2000):
            rows = []
            for i in range(start, min(n, start + 2000)):
                text = f"编号P{i}。第{i}味药" + HERB
                rows.append({"id": document_id("bench", text), "text": text, "source": "bench", "category": "books",
                             "title": "本草", "meta": dumps_meta({"book": "本草", "chapter": str(i)})})
            writer.write(DOCUMENTS, pa.Table.from_pylist(rows))
        writer.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "openai_server.py"), "--latency-ms", str(args.latency_ms)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
            work = Path(tmp)
            write_documents(work / "in", args.passages)
            os.environ["LLM_BENCH_KEY"] = "bench-key"
            params = {
                "backend": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "bench-model",
                "api_key_env": "LLM_BENCH_KEY", "llm_categories": ["books"], "min_passage_chars": 20,
                "max_passage_chars": 400, "concurrency": args.concurrency, "request_timeout": 30,
                "cache_dir": str(work / "cache"), "keep_text": True,
            }
            samples: list[tuple[int, float]] = []
            done = [0]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    samples.append((done[0], rss_mb()))
                    stop.wait(0.25)

            def progress(kind: str, n: int) -> None:
                done[0] += n

            sampler = threading.Thread(target=sample, daemon=True)
            start_rss = rss_mb()
            sampler.start()
            started = time.perf_counter()
            manifest = stages.run_convert([work / "in"], work / "out", params, StageManifest(stage="convert"),
                                          LocalEngine(1, 1024), progress=progress)
            seconds = time.perf_counter() - started
            stop.set()
            sampler.join()
    finally:
        server.terminate()
        server.wait()

    llm = manifest.stats["llm"]
    rate = llm["requests_sent"] / seconds
    ideal = args.concurrency / (args.latency_ms / 1000)
    print(f"passages: {args.passages}, converted: {manifest.stats.get('passages_converted', 0)}, "
          f"rejected: {manifest.stats.get('passages_rejected', 0)}")
    print(f"requests sent: {llm['requests_sent']} in {seconds:.1f} s = {rate:.1f} requests/s "
          f"({rate / ideal:.0%} of the ideal {ideal:.0f}/s at concurrency {args.concurrency}, latency {args.latency_ms:.0f} ms)")
    print(f"tokens: {llm['usage']['total_tokens']}, retries: {llm['retries'] or 'none'}")
    peak = max(r for _, r in samples)
    print(f"RSS: {start_rss:.0f} MB before, peak {peak:.0f} MB; by share of passages done:")
    for tenth in range(1, 11):
        seen = [r for d, r in samples if d <= args.passages * tenth / 10]
        if seen:
            print(f"  {tenth * 10:3d}%: {max(seen):6.0f} MB")


if __name__ == "__main__":
    main()
