"""Time `flows run build-corpus` stage by stage on the shared data and print the figures.

    python benchmarks/build_stages.py [--shared ../shared/data] [--workdir DIR] [--books N] [--workers W] [--lexicon]

Uses the real files beside the repository: the ancient books (GB18030), the pharmacopoeia
monographs, the instruction datasets and the evaluation sets. Writes a config for them and runs
the command users run, `python -m flows run build-corpus --config FILE --workdir DIR --json`, as
a subprocess on the shared local Prefect server of PREFECT_HOME (started by the command if none
runs, left running afterwards as for a user). `--json` only changes what is printed: with stdout
not a terminal the command draws no progress bars either way.

Prints, per stage, rows in and out (from the build's summary, checked against each stage's
`_manifest.json`), wall seconds and CPU-seconds (the stage's task and its worker processes, as
the build's summary records them), its share of the command's CPU and rows per CPU-second; the
rest of the command's CPU (imports, Prefect flow and sub-flow runs, the suites after each stage,
the report), with the suites' own CPU-seconds as the build's summary records them, and, apart,
the shared server's CPU during the command; wall seconds, the load
average, peak resident memory (the largest process, from wait4, and the command's whole process
tree, sampled); and the floor: the CPU seconds pyarrow takes to read the same input files, decode
them and write them once as Parquet (one row per line), with how many times that floor the
command costs, without and with the server's CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


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


def pyarrow_floor(files: list[tuple[Path, str]], folder: Path, repeat: int = 3) -> tuple[float, float]:
    """(CPU seconds, MB read) to read the files, decode them and write them once with pyarrow:
    one Parquet file, one row per line. What any build of the same input pays at least. The
    least of `repeat` runs: one run swings by a third on a shared machine."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        size = 0
        with pq.ParquetWriter(folder / "floor.parquet", pa.schema([("file", pa.string()), ("text", pa.string())])) as writer:
            for path, encoding in files:
                raw = path.read_bytes()
                size += len(raw)
                lines = raw.decode(encoding, errors="replace").splitlines()
                writer.write_table(pa.table({"file": pa.array([path.name] * len(lines), pa.string()), "text": pa.array(lines, pa.string())}))
        best = min(best, time.process_time() - started)
    return best, size / 1e6


def timed_build(config: Path, workdir: Path, env: dict, home: Path) -> dict:
    """Run `flows run build-corpus --config CONFIG --workdir WORKDIR --json` as a user would, on
    the shared local Prefect server of `home`. Returns the build's result (its JSON summary) with
    wall seconds, the command's CPU-seconds (wait4: the command and every child it waited for),
    the shared server's CPU-seconds meanwhile, whether this command started that server, and
    peak resident memory (bytes): the largest single process (wait4) and the command's process
    tree sampled every 0.2 s. Exits with the command's stderr tail if it fails."""
    from measure import server_cpu, tree_rss

    server_before = server_cpu(home)
    command = [sys.executable, "-m", "flows", "run", "build-corpus", "--config", str(config), "--workdir", str(workdir), "--json"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)
        tree_peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                tree_peak[0] = max(tree_peak[0], tree_rss(child.pid))
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            err.seek(0)
            sys.exit(f"{' '.join(command)} failed ({child.returncode}):\n{err.read().decode(errors='replace')[-3000:]}")
        out.seek(0)
        result = json.loads(out.read().decode())
    # A server this command started is not its child: its whole CPU so far is counted.
    return {"result": result, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "server_cpu": server_cpu(home) - server_before, "server_started": server_before == 0.0,
            "peak": usage.ru_maxrss * 1024, "tree_peak": tree_peak[0]}


def stage_figures(result: dict) -> list[dict]:
    """Per stage, from the build's summary: rows in and out (checked against the stage's
    `_manifest.json`), wall seconds and CPU-seconds (the stage's task and its worker processes),
    and the seconds its dataset writer recorded in the manifest's timings."""
    from schemas.dataset import read_manifest

    figures = []
    for stage, summary in result["stages"].items():
        manifest = read_manifest(summary["output"])
        if manifest is None:
            sys.exit(f"{stage}: no manifest in {summary['output']}")
        if manifest.rows_in != summary["rows_in"] or manifest.rows_out != summary["rows_out"]:
            sys.exit(f"{stage}: the build's summary and {summary['output']}/_manifest.json disagree on the rows")
        figures.append({"stage": stage, "rows_in": sum(manifest.rows_in.values()), "rows_out": sum(manifest.rows_out.values()),
                        "seconds": summary.get("seconds") or 0.0, "cpu": summary.get("cpu_seconds") or 0.0,
                        "written_seconds": manifest.timings.get("seconds"), "skipped": bool(summary.get("skipped"))})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, help="the build's work folder (emptied first); default: a temporary one")
    parser.add_argument("--books", type=int, help="only the first N books")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--lexicon", action="store_true",
                        help="build the TCM lexicon from the pharmacopoeia and the books first (flows lexicon build) and tag with it")
    args = parser.parse_args()
    if not args.shared.is_dir():
        sys.exit(f"shared data not found at {args.shared}")

    from flows.runtime import prepare_environment

    prepare_environment()  # the PREFECT_HOME the command will use, so its server is the one measured
    home = Path(os.environ["PREFECT_HOME"]).expanduser()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("PREFECT_API_URL", None)  # the shared local server, as `flows run` picks it
    folder = Path(tempfile.mkdtemp(prefix="tcm-bench-"))
    workdir = (args.workdir or folder / "work").resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    lexicon = None
    if args.lexicon:
        lexicon = folder / "lexicon.txt"
        subprocess.run([sys.executable, "-m", "flows", "lexicon", "build", "--from", str(args.shared / "corpus" / "pharmacopoeia"),
                        str(args.shared / "corpus" / "ancient-books"), "--output", str(lexicon)],
                       cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    config = write_config(args.shared, folder, args.books, args.workers, lexicon)
    books_dir = folder / "books" if args.books else args.shared / "corpus" / "ancient-books"
    input_mb = sum(p.stat().st_size for p in books_dir.glob("*.txt")) / 1e6

    load_before = os.getloadavg()
    run = timed_build(config, workdir, env, home)
    load_after = os.getloadavg()
    result, cpu_total = run["result"], run["cpu"]
    stages = stage_figures(result)

    print(f"\nflows run build-corpus on {args.shared} ({input_mb:.1f} MB of books, {args.workers} worker(s)), "
          f"PREFECT_HOME {home}")
    print(f"{'stage':>14} {'rows in':>10} {'rows out':>10} {'seconds':>8} {'CPU-s':>8} {'CPU share':>9} {'rows/CPU-s':>11}")
    stage_cpu = 0.0
    for s in stages:
        stage_cpu += s["cpu"]
        rate = s["rows_in"] / s["cpu"] if s["cpu"] else 0.0
        note = "  [skipped: already done]" if s["skipped"] else ""
        print(f"{s['stage']:>14} {s['rows_in']:>10} {s['rows_out']:>10} {s['seconds']:>8.2f} {s['cpu']:>8.2f} "
              f"{s['cpu'] / cpu_total:>9.1%} {rate:>11.0f}{note}")
    rest = cpu_total - stage_cpu
    print(f"{'rest':>14} {'':>10} {'':>10} {'':>8} {rest:>8.2f} {rest / cpu_total:>9.1%}   "
          "(the command's CPU outside the stages: imports, Prefect flow and sub-flow runs, the suites after each stage, the report)")
    suites = {stage: v.get("cpu_seconds") or 0.0 for stage, v in (result.get("validation") or {}).items()}
    if suites:
        print(f"{'':>14} of which the suites on each stage's output (validate.every_stage): {sum(suites.values()):.2f} CPU-s ("
              + ", ".join(f"{stage} {cpu:.2f}" for stage, cpu in suites.items()) + ")")
    started_note = "; this command started it, its start-up included" if run["server_started"] else ""
    print(f"{'server':>14} {'':>10} {'':>10} {'':>8} {run['server_cpu']:>8.2f} {run['server_cpu'] / cpu_total:>9.1%}   "
          f"(the shared Prefect server's CPU during the command, beside the command's own{started_note})")
    ingest = next((s for s in stages if s["stage"] == "ingest"), None)
    if ingest and ingest["seconds"]:
        print(f"ingest of books + datasets: {input_mb / ingest['seconds']:.2f} MB/s of book text (all sources in that time)")
    print(f"total {run['wall']:.1f} s wall (load average {load_before[0]:.1f} before, {load_after[0]:.1f} after), "
          f"{cpu_total:.1f} CPU-s of the command and its children + {run['server_cpu']:.1f} CPU-s of the shared server; "
          f"peak RSS {run['peak'] / 2**20:.0f} MB (largest process), {run['tree_peak'] / 2**20:.0f} MB (the command's process tree, sampled)")
    floor, floor_mb = pyarrow_floor(input_files(args.shared, books_dir), folder)
    print(f"floor: pyarrow reads, decodes and writes the same {floor_mb:.1f} MB in {floor:.2f} CPU-s (least of 3 runs); the build costs "
          f"{cpu_total / floor:.0f}x that (the command alone), {(cpu_total + run['server_cpu']) / floor:.0f}x with the server's CPU")
    print(f"output: {result['corpus']}")


if __name__ == "__main__":
    main()
