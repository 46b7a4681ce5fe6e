"""Peak memory and CPU of the local dedup stage as the corpus grows: `flows run dedup` on
generated 80-character texts.

    python benchmarks/dedup_memory.py [--rows 100000 1000000 2000000 4000000] [--workdir DIR]
    python benchmarks/dedup_memory.py --quick          # 50,000 rows only
    python benchmarks/dedup_memory.py --phases --rows 1000000   # where the memory goes, per phase

Each size runs the command users run, `flows run dedup --input IN --output OUT --config CFG`,
with the default dedup settings (MinHash at 0.8, 128 permutations, repeated paragraphs judged
for `web`) and the default engine (local, 2 workers, batches of 2,048 rows). Printed per size:
- driver peak: the peak resident memory of the `flows` process (where the fingerprints, pairs
  and clusters live), sampled from /proc every 0.05 s and read from its high-water mark;
- tree peak: the peak of the sum over the whole process tree (driver, the engine's worker
  processes, Prefect's temporary server), sampled;
- bytes per row: driver peak / rows, and the marginal bytes per row between two sizes (what
  each added million rows costs, the fixed cost of Python, Prefect and the libraries removed);
- CPU seconds of the run, children included (resource.getrusage), and wall seconds.

The input (cached under --workdir, by size and seed): documents of 80 Han characters drawn from
the 3,500 most common characters, in 8 sources, category `web`; 5% are exact copies of another
row (half with punctuation added, which the match form ignores), 5% near copies (1 to 3
characters replaced: Jaccard 0.6-0.9, across the 0.8 threshold), and a tenth of one source's
documents carry a footer line, which the repeated-paragraph pass removes. Copies sit at random
positions. Texts 80 characters long, so the figures are per row of short text: the fingerprints
grow with the text only through the shingle work, not what is held (see docs/SCALING.md).

--phases runs the stage in this process instead (the same code the command runs, without
Prefect) and prints the peak resident memory of each phase the stage logs (fingerprints,
LSH band keys, candidate pairs, verification, clusters and the keep decision, writing).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from measure import PAGE, run_sampled, tree_rss  # noqa: E402
GENERATOR_VERSION = 1
TEXT_CHARS = 80
SOURCES = 8
FOOTER = "本站内容仅供参考不能代替执业医师的诊断和治疗"


# -- the input --------------------------------------------------------------------------------


def _alphabet() -> np.ndarray:
    """3,500 Han code points: the CJK block's first characters, a stand-in for common ones."""
    return np.arange(0x4E00, 0x4E00 + 3500, dtype=np.uint32)


def _texts(codes: np.ndarray) -> list[str]:
    """Rows of code points -> strings (one decode for the whole block)."""
    flat = np.ascontiguousarray(codes, dtype="<u4").tobytes().decode("utf-32-le")
    width = codes.shape[1]
    return [flat[i : i + width] for i in range(0, len(flat), width)]


def generate(rows: int, folder: Path, seed: int = 7, file_rows: int = 500_000) -> Path:
    """Write the benchmark input (see the module docstring) as Parquet parts in `folder`."""
    done = folder / "_complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    alphabet = _alphabet()
    base = alphabet[rng.integers(0, len(alphabet), size=(rows, TEXT_CHARS))]
    kind = rng.random(rows)
    exact = np.flatnonzero(kind < 0.05)
    near = np.flatnonzero((kind >= 0.05) & (kind < 0.10))
    originals = rng.integers(0, rows, size=len(exact) + len(near))
    base[exact] = base[originals[: len(exact)]]
    base[near] = base[originals[len(exact) :]]
    edits = rng.integers(1, 4, size=len(near))
    for count in (1, 2, 3):
        rows_edited = near[edits == count]
        for _ in range(count):
            columns = rng.integers(0, TEXT_CHARS, size=len(rows_edited))
            base[rows_edited, columns] = alphabet[rng.integers(0, len(alphabet), size=len(rows_edited))]
    punctuated = set(exact[rng.random(len(exact)) < 0.5].tolist())
    sources = rng.integers(0, SOURCES, size=rows)
    footed = (sources == 0) & (rng.random(rows) < 0.10)
    part = 0
    for start in range(0, rows, file_rows):
        end = min(rows, start + file_rows)
        texts = _texts(base[start:end])
        for i in range(start, end):
            if i in punctuated:
                t = texts[i - start]
                texts[i - start] = f"{t[:40]}，{t[40:]}。"
            if footed[i]:
                texts[i - start] += "\n" + FOOTER
        table = pa.table(
            {
                "id": pa.array([f"doc-{i:012d}" for i in range(start, end)], pa.string()),
                "text": pa.array(texts, pa.string()),
                "source": pa.array([f"site-{s}" for s in sources[start:end].tolist()], pa.string()),
                "category": pa.array(["web"] * (end - start), pa.string()),
            }
        )
        pq.write_table(table, folder / f"part-{part:05d}.parquet", row_group_size=65_536, compression="zstd")
        part += 1
    done.write_text(json.dumps({"rows": rows, "seed": seed, "version": GENERATOR_VERSION}))
    return folder


def run_command(rows: int, data: Path, output: Path, config: Path) -> dict:
    """`flows run dedup` on `data`: peaks, CPU and wall seconds, and the stage's JSON result."""
    shutil.rmtree(output, ignore_errors=True)
    script = Path(sys.executable).with_name("flows")  # the console script users run
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]
    command = [*launcher, "run", "dedup", "--input", str(data), "--output", str(output), "--config", str(config), "--json"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = run_sampled(command, env, REPO, interval=0.05)
    peaks = {"tree": run["tree_peak"], "driver": run["driver_peak"]}
    stdout, stderr, wall = run["stdout"], run["stderr"], run["wall"]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run["returncode"] != 0:
        raise SystemExit(f"flows run dedup failed ({run['returncode']}):\n{stderr[-3000:]}")
    # The driver's own high-water mark as the kernel kept it (RUSAGE_CHILDREN's maxrss is the
    # largest of the waited-for processes, the driver here): covers the last tick before exit.
    peaks["driver"] = max(peaks["driver"], after.ru_maxrss * 1024 if after.ru_maxrss > before.ru_maxrss else 0)
    result = json.loads(stdout[stdout.index("{"):]) if "{" in stdout else {}
    return {
        "rows": rows,
        "driver_peak": peaks["driver"],
        "tree_peak": peaks["tree"],
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "wall": wall,
        "result": result,
    }


# -- per phase, in this process -------------------------------------------------------------------


class _PhaseLog(logging.Handler):
    """Collects the stage's phase records with the peak RSS (this process, and with its worker
    processes) since the previous one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.phases: list[tuple[str, int, int]] = []
        self.current = "start"
        self.peaks = [0, 0]
        self.guard = threading.Lock()  # not `lock`: logging.Handler holds that one around emit

    def emit(self, record: logging.LogRecord) -> None:
        with self.guard:
            self.phases.append((self.current, *self.peaks))
            self.current, self.peaks = record.getMessage().removeprefix("dedup phase: "), [0, 0]

    def sample(self, own: int, tree: int) -> None:
        with self.guard:
            self.peaks = [max(self.peaks[0], own), max(self.peaks[1], tree)]


def _own_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


def run_phases(rows: int, data: Path, output: Path) -> None:
    sys.path.insert(0, str(REPO))
    from schemas.dataset import StageManifest
    from transforms.dedup.deduplicate import run_dedup_stage
    from transforms.engines.local import LocalEngine

    shutil.rmtree(output, ignore_errors=True)
    log = _PhaseLog()
    logger = logging.getLogger("transforms.dedup")
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            log.sample(_own_rss(), tree_rss(os.getpid()))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.process_time()
    run_dedup_stage([data], output, {}, StageManifest(stage="dedup"), LocalEngine(workers=2, batch_rows=2048))
    done.set()
    sampler.join()
    log.emit(logging.makeLogRecord({"msg": "end"}))
    shutil.rmtree(output, ignore_errors=True)
    print(f"{rows:,} rows, in this process (the stage without Prefect), {time.process_time() - started:.1f} CPU-s in the driver")
    print(f"{'phase':<42} {'driver peak':>12} {'per row':>8} {'+ workers':>10}")
    for name, own, tree in log.phases[1:]:
        if not own:
            print(f"{name:<42} {'(too short to sample)':>32}")
            continue
        print(f"{name:<42} {own / 2**20:8.0f} MiB {own / rows:6.0f} B {tree / 2**20:6.0f} MiB")


# -- main ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000, 4_000_000])
    parser.add_argument("--quick", action="store_true", help="one small run (50,000 rows)")
    parser.add_argument("--phases", action="store_true", help="peak memory per phase, in this process")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "tcm-dedup-memory")
    parser.add_argument("--keep-output", action="store_true", help="leave each run's output in the work folder")
    args = parser.parse_args()
    sizes = [50_000] if args.quick else args.rows
    args.workdir.mkdir(parents=True, exist_ok=True)
    config = args.workdir / "dedup.toml"
    config.write_text("# the library's defaults for dedup and the engine\n[engine]\nkind = \"local\"\n")
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}; "
          f"{os.cpu_count()} CPUs; {TEXT_CHARS}-character texts")
    results = []
    for rows in sizes:
        started = time.perf_counter()
        data = generate(rows, args.workdir / f"input-{rows}")
        generated = time.perf_counter() - started
        output = args.workdir / f"output-{rows}"
        if args.phases:
            run_phases(rows, data, output)
            continue
        result = run_command(rows, data, output, config)
        if not args.keep_output:
            shutil.rmtree(output, ignore_errors=True)
        results.append(result)
        stats = result["result"]
        print(
            f"{rows:>10,} rows: driver peak {result['driver_peak'] / 2**20:7.0f} MiB "
            f"({result['driver_peak'] / rows:6.0f} B/row), tree peak {result['tree_peak'] / 2**20:7.0f} MiB "
            f"({result['tree_peak'] / rows:6.0f} B/row), {result['cpu']:7.1f} CPU-s, {result['wall']:7.1f} s wall "
            f"(input {generated:.0f} s; load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
        if stats:
            print(f"{'':>16}{json.dumps({k: stats[k] for k in ('rows_in', 'rows_kept', 'rows_rejected') if k in stats})}", flush=True)
    for small, large in zip(results, results[1:]):
        added = large["rows"] - small["rows"]
        print(
            f"marginal {small['rows']:,} -> {large['rows']:,}: driver {(large['driver_peak'] - small['driver_peak']) / added:6.0f} B/row, "
            f"tree {(large['tree_peak'] - small['tree_peak']) / added:6.0f} B/row, "
            f"{(large['cpu'] - small['cpu']) / added * 1e6:6.1f} CPU-us/row"
        )


if __name__ == "__main__":
    main()
