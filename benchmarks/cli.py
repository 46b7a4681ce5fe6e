"""What a `flows` command costs as a whole: wall time, CPU seconds (the command and its children,
and what the shared Prefect server spent for it) and peak memory.

    python benchmarks/cli.py [--repeat 3] [--home DIR] [--temporary] [--skip-build]

On a fresh PREFECT_HOME (a temporary folder unless --home), it times:
  1. `flows run clean` on 10 rows with no server running (the first call: it starts the
     shared local server; on a fresh home that includes migrating the database),
  2. the same command again, `--repeat` times (the shared server is running),
  3. `flows run build-corpus` on the embedded sample, in a fresh work folder,
and with `--temporary` the same with TCM_CORPUS_PREFECT_SERVER=temporary (Prefect's own
temporary server per command, as before the shared one). It prints wall seconds, the command's
CPU-seconds (children included, from wait4), the shared server's CPU-seconds during the
command (from /proc), peak resident memory of the command, and the load average, and stops the
shared server at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import pyarrow as pa  # noqa: E402
from measure import server_cpu  # noqa: E402

from schemas import DOCUMENTS, document_id, dumps_meta  # noqa: E402
from schemas.dataset import DatasetWriter, StageManifest  # noqa: E402

HERB = "味甘，性微温，归肺、脾经。能补气升阳，固表止汗，利水消肿，生津养血，行滞通痹，托毒排脓，敛疮生肌。用于气虚乏力，食少便溏。"


def write_rows(folder: Path, n: int = 10) -> Path:
    rows = []
    for i in range(n):
        text = f"黄芪{i}\n第{i}味药。" + HERB * 3
        rows.append({"id": document_id("bench", text), "text": text, "source": "bench", "category": "books",
                     "title": "本草", "meta": dumps_meta({"book": "本草"})})
    with DatasetWriter(folder, StageManifest(stage="input", rows_in={DOCUMENTS: n})) as writer:
        writer.write(DOCUMENTS, pa.Table.from_pylist(rows))
        writer.commit()
    return folder


def timed(args: list[str], env: dict, home: Path) -> dict:
    """Run `python -m flows ARGS`; wall, CPU (wait4: the command and the children it waited
    for), the shared server's CPU meanwhile, and peak RSS."""
    server_before = server_cpu(home)
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "flows", *args], cwd=REPO, env=env,
                                 stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this command's own rusage, its children included
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if child.returncode:
            err.seek(0)
            sys.exit(f"flows {' '.join(args)} failed ({child.returncode}):\n{err.read().decode()[-3000:]}")
    # A server started by this command is not its child: count its whole CPU so far.
    server = server_cpu(home) - server_before
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "server_cpu": server, "peak_mb": usage.ru_maxrss / 1024}


def line(what: str, figures: dict) -> str:
    return (f"{what:<46} {figures['wall']:7.1f} s wall {figures['cpu']:6.1f} CPU-s command "
            f"+ {figures['server_cpu']:5.1f} CPU-s server, peak {figures['peak_mb']:5.0f} MB")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def scenario(label: str, home: Path, work: Path, rows: Path, repeat: int, build: bool, extra_env: dict) -> None:
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "WARNING", **extra_env}
    env.pop("PREFECT_API_URL", None)
    print(f"-- {label} (PREFECT_HOME {home}); load average {load()}")
    clean = ["run", "clean", "--input", str(rows), "--output"]
    print(line("flows run clean, 10 rows, first call", timed([*clean, str(work / f"{label}-clean-0")], env, home)))
    runs = [timed([*clean, str(work / f"{label}-clean-{i + 1}")], env, home) for i in range(repeat)]
    for i, figures in enumerate(runs):
        print(line(f"flows run clean, 10 rows, call {i + 2}", figures))
    if build:
        print(line("flows run build-corpus (embedded sample)", timed(["run", "build-corpus", "--workdir", str(work / f"{label}-build")], env, home)))
    print(f"   load average after: {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--home", type=Path, help="PREFECT_HOME to use (default: a fresh temporary one)")
    parser.add_argument("--temporary", action="store_true", help="also time Prefect's temporary server per command")
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()

    from flows.local_server import stop

    with tempfile.TemporaryDirectory(prefix="cli-bench-") as tmp:
        work = Path(tmp)
        rows = write_rows(work / "in10")
        home = args.home or work / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        stop(home)  # the first call starts the server
        try:
            scenario("shared", home, work, rows, args.repeat, not args.skip_build, {})
        finally:
            stop(home)
        if args.temporary:
            scenario("temporary", home, work, rows, args.repeat, not args.skip_build, {"TCM_CORPUS_PREFECT_SERVER": "temporary"})
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
