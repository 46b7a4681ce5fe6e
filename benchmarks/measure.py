"""Measuring a command's process tree from /proc, for the benchmarks that time what users run.

Linux only (reads /proc). Bytes and CPU-seconds."""
from __future__ import annotations

import json
import os
from pathlib import Path

from transforms.engines.local import process_cpu_seconds

PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_rss() -> tuple[dict[int, list[int]], dict[int, int]]:
    """(children of each pid, resident bytes of each pid) of every process now."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * PAGE
    return children, rss


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants."""
    children, rss = _stat_rss()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def high_water(pid: int) -> int:
    """VmHWM of a process in bytes: its peak resident memory so far (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def server_cpu(home: Path) -> float:
    """CPU-seconds the shared local Prefect server of PREFECT_HOME `home` has used so far (0 when
    none runs). It is no child of the command that started it, so a command's own rusage misses it."""
    try:
        pid = json.loads((home / "tcm-corpus-server" / "server.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return 0.0
    return process_cpu_seconds(pid)


def run_sampled(command: list[str], env: dict, cwd: Path, interval: float = 0.1) -> dict:
    """Run `command` to its end, sampling every `interval` seconds the resident memory of its
    process tree and the command's own high-water mark (VmHWM).

    Returns {"returncode", "stdout", "stderr", "wall" (s), "tree_peak", "driver_peak" (bytes)}."""
    import subprocess
    import threading
    import time

    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    peaks = {"tree_peak": 0, "driver_peak": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks["tree_peak"] = max(peaks["tree_peak"], tree_rss(process.pid))
            peaks["driver_peak"] = max(peaks["driver_peak"], high_water(process.pid))
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    return {"returncode": process.returncode, "stdout": stdout, "stderr": stderr, "wall": time.perf_counter() - started, **peaks}
