"""One run at a time per work folder: an OS file lock (the `filelock` library, `flock` on Unix).

A build or refresh holds `WORKDIR/.tcm-corpus.lock` for as long as it runs; a stage run on its
own holds the lock of the work folder its output lies in, or else `.NAME.lock` beside its output
folder NAME. A second run is refused with one line naming the holder (pid, host, start time,
command), or waits for it with `wait=True`.

The kernel drops the lock the moment its process dies (killed, crashed, power-cycled container):
the next run takes it over without anyone deleting anything, and says whose lock it took. The
holder record in the lock file is only a description; the lock itself is the `flock`.
Locks are reentrant within one process: a build's stage flows take their output's lock again.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from filelock import FileLock, Timeout

WORKDIR_LOCK = ".tcm-corpus.lock"


class LockBusy(Exception):
    """Another live run holds the lock; the message names it."""


_held: dict[Path, list] = {}  # lock file -> [FileLock, depth]
_guard = threading.Lock()


def workdir_lock_file(workdir: str | os.PathLike) -> Path:
    return Path(workdir).resolve() / WORKDIR_LOCK


def output_lock_file(output: str | os.PathLike) -> Path:
    """The lock guarding a stage output: its work folder's, when it lies in one, else its own."""
    output = Path(output).resolve()
    for folder in output.parents:
        if (folder / WORKDIR_LOCK).is_file() or _holding(folder / WORKDIR_LOCK):
            return folder / WORKDIR_LOCK
    return output.parent / f".{output.name}.lock"


def _holding(lock_file: Path) -> bool:
    with _guard:
        return lock_file in _held


def read_holder(lock_file: str | os.PathLike) -> Optional[dict]:
    """The holder record in a lock file (pid, host, started, command), or None when it is empty."""
    try:
        text = Path(lock_file).read_text(encoding="utf-8").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def describe_holder(holder: Optional[dict]) -> str:
    if not holder:
        return "another run (no holder recorded)"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


def _record(fd: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:300],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)


@contextmanager
def hold(lock_file: str | os.PathLike, what: str, wait: bool = False,
         on_wait: Optional[Callable[[str], None]] = None, on_takeover: Optional[Callable[[str], None]] = None) -> Iterator[Path]:
    """Hold `lock_file` for the body. Busy: raise LockBusy naming the holder, or, with `wait`,
    call `on_wait(message)` once and block until it is free. A record left by a process that is
    gone (the lock is free, the file still names it) is reported through `on_takeover`."""
    lock_file = Path(lock_file).resolve()
    with _guard:
        entry = _held.get(lock_file)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_file, thread_local=False, on_acquired=_record)
        previous = read_holder(lock_file)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            message = f"{what} is in use by {describe_holder(read_holder(lock_file) or previous)}"
            if not wait:
                raise LockBusy(f"{message}; wait for it to finish, or pass --wait to start when it does") from None
            if on_wait:
                on_wait(f"{message}; waiting for it to finish")
            lock.acquire()
        else:
            if previous and previous.get("pid") != os.getpid() and on_takeover:
                on_takeover(f"{what}: took over the lock left by {describe_holder(previous)}, which is no longer running")
        with _guard:
            _held[lock_file] = [lock, 1]
    try:
        yield lock_file
    finally:
        with _guard:
            entry = _held[lock_file]
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[lock_file]
        if last:
            try:
                os.truncate(lock_file, 0)  # released cleanly: the next run finds no holder to report
            except OSError:
                pass
            entry[0].release(force=True)
