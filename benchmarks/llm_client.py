"""Throughput of the LLM conversion against the loopback OpenAI-compatible server, through the
command users run (`flows run convert`) and through the stage function alone.

    python benchmarks/llm_client.py [--passages 200] [--latency-ms 30 200] [--concurrency 16]
                                    [--slots 8] [--function] [--memory]

Starts tests/openai_server.py in its own process per latency (so the server's threads do not
share an interpreter with the client), writes `--passages` one-passage documents as a dataset,
and converts them with the openai backend (two requests per passage: question, answer; a fresh
cache, so every request is sent) by `flows run convert` with `[convert] concurrency` and
`[operations.llm] slots` (a limit of its own, so the run holds Prefect global concurrency
slots as it would in production). It prints, per latency, the requests/s the endpoint saw
(between its first request and its last answer) against the ideal min(concurrency, slots) /
latency, the most requests in flight at once, the whole command's wall and CPU seconds (its
children included, the endpoint's own CPU apart) and those CPU seconds per request.
`--function` also runs the stage function in this process, without Prefect or a slot (ideal:
concurrency / latency); `--memory` samples its resident memory through the run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
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

HERB = "味甘，性微温，归肺、脾经。能补气升阳，固表止汗，利水消肿，生津养血，行滞通痹，托毒排脓，敛疮生肌。用于气虚乏力，食少便溏，中气下陷，久泻脱肛，便血崩漏，表虚自汗，气虚水肿。"
KEY_ENV = "LLM_BENCH_KEY"


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


class Endpoint:
    """tests/openai_server.py in a child process; `stop()` returns what it counted."""

    def __init__(self, latency_ms: float):
        self.process = subprocess.Popen([sys.executable, str(REPO / "tests" / "openai_server.py"), "--latency-ms", str(latency_ms)],
                                        stdout=subprocess.PIPE, text=True)
        self.base_url = f"http://127.0.0.1:{int(self.process.stdout.readline())}/v1"

    def stop(self) -> dict:
        self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


def convert_params(base_url: str, concurrency: int, cache_dir: Path) -> dict:
    return {"backend": "openai", "base_url": base_url, "model": "bench-model", "api_key_env": KEY_ENV,
            "llm_categories": ["books"], "min_passage_chars": 20, "max_passage_chars": 400, "concurrency": concurrency,
            "request_timeout": 30, "cache_dir": str(cache_dir), "keep_text": True}


def toml_value(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(work: Path, latency_ms: float, concurrency: int, slots: int, limit_name: str) -> dict:
    endpoint = Endpoint(latency_ms)
    params = convert_params(endpoint.base_url, concurrency, work / f"cache-{latency_ms:g}")
    config = work / f"convert-{latency_ms:g}.toml"
    config.write_text("[convert]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in params.items())
                      + f'[operations.llm]\nconcurrency_limit = "{limit_name}"\nslots = {slots}\n', encoding="utf-8")
    env = {**os.environ, KEY_ENV: "bench-key", "PREFECT_LOGGING_LEVEL": "WARNING"}
    cpu_before, started = children_cpu(), time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "flows", "run", "convert", "--config", str(config), "--input", str(work / "in"),
                               "--output", str(work / f"out-{latency_ms:g}"), "--json"], cwd=REPO, env=env,
                              capture_output=True, text=True)
    finally:
        seen = endpoint.stop()
    # The endpoint is a child too, reaped by stop(): its own CPU is not the client's.
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu_before - seen["cpu_s"]
    if done.returncode:
        sys.exit(f"flows run convert failed:\n{done.stderr[-3000:]}")
    stats = json.loads(done.stdout)["stats"]
    return {"seen": seen, "wall": wall, "cpu": cpu, "stats": stats,
            "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run_function(work: Path, latency_ms: float, concurrency: int, passages: int, memory: bool) -> dict:
    from transforms import stages
    from transforms.engines.local import LocalEngine

    endpoint = Endpoint(latency_ms)
    os.environ[KEY_ENV] = "bench-key"
    params = convert_params(endpoint.base_url, concurrency, work / f"cache-function-{latency_ms:g}")
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
    if memory:
        sampler.start()
    try:
        manifest = stages.run_convert([work / "in"], work / f"out-function-{latency_ms:g}", params, StageManifest(stage="convert"),
                                      LocalEngine(1, 1024), progress=progress)
    finally:
        stop.set()
        seen = endpoint.stop()
    if memory:
        sampler.join()
        peak = max(r for _, r in samples)
        print(f"  RSS: {start_rss:.0f} MB before, peak {peak:.0f} MB; by share of passages done:")
        for tenth in range(1, 11):
            held = [r for d, r in samples if d <= passages * tenth / 10]
            if held:
                print(f"    {tenth * 10:3d}%: {max(held):6.0f} MB")
    return {"seen": seen, "stats": manifest.stats}


def endpoint_rate(seen: dict) -> tuple[float, float]:
    seconds = max(1e-9, seen["last_at"] - seen["first_at"])
    return seen["requests"] / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[30, 200])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--slots", type=int, default=8, help="[operations.llm] slots of the benchmark's own limit")
    parser.add_argument("--function", action="store_true", help="also run the stage function without Prefect")
    parser.add_argument("--memory", action="store_true", help="with --function: sample resident memory")
    args = parser.parse_args()

    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.passages} passages, "
          f"concurrency {args.concurrency}, slots {args.slots}")
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        work = Path(tmp)
        write_documents(work / "in", args.passages)
        limit_name = f"llm-bench-{os.getpid()}"  # a fresh limit, created with --slots
        for latency in args.latency_ms:
            ideal = min(args.concurrency, args.slots) / (latency / 1000)
            cli = run_cli(work, latency, args.concurrency, args.slots, limit_name)
            rate, seconds = endpoint_rate(cli["seen"])
            print(f"flows run convert, latency {latency:g} ms: {cli['seen']['requests']} requests in {seconds:.2f} s = "
                  f"{rate:.1f} requests/s, {rate / ideal:.0%} of min(concurrency, slots) / latency = {ideal:.0f}/s; "
                  f"at most {cli['seen']['most_in_flight']} in flight; converted {cli['stats'].get('passages_converted', 0)}")
            print(f"  whole command: {cli['wall']:.1f} s wall, {cli['cpu']:.1f} CPU-s (children included; the endpoint's "
                  f"{cli['seen']['cpu_s']:.2f} CPU-s apart) = {1000 * cli['cpu'] / max(1, cli['seen']['requests']):.1f} ms CPU per request")
            if args.function:
                function = run_function(work, latency, args.concurrency, args.passages, args.memory)
                rate, seconds = endpoint_rate(function["seen"])
                ideal = args.concurrency / (latency / 1000)
                print(f"stage function (no Prefect, no slot), latency {latency:g} ms: {function['seen']['requests']} requests in "
                      f"{seconds:.2f} s = {rate:.1f} requests/s, {rate / ideal:.0%} of concurrency / latency = {ideal:.0f}/s")


if __name__ == "__main__":
    main()
