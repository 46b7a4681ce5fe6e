"""Progress of a running stage: a Prefect progress artifact, and a bar on the terminal.

A stage function reports `progress(kind, rows)` after each batch. `StageProgress` adds the rows
up, and at most once per interval updates the stage's progress artifact (so the UI shows how
far a long stage is) and, when enabled, redraws one carriage-return line on stdout. The artifact
is first written once the stage has run an interval: a stage that ends sooner (most of a small
build's) writes it once, at 100 %, instead of creating it and updating it a moment later. The bar is
enabled by `flows run` when stdout is a terminal; flow runs started by `flows serve` never draw
it, so their logs stay clean.

An artifact update is a round trip to the Prefect API. It goes out on a thread of the tracker's
own (in the caller's Prefect context), so a stage that reports from an event loop (the LLM
conversion) never stalls on it; an update that finds the previous one still under way is
skipped, and `finish` writes the last one after any still under way, before it returns.
"""
from __future__ import annotations

import contextvars
import logging
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, TextIO

import pyarrow as pa

from schemas.dataset import count_rows, kinds_in

logger = logging.getLogger("tcm_corpus.progress")

_terminal: Optional[TextIO] = None


def enable_terminal(stream: Optional[TextIO] = None) -> None:
    """Draw progress bars on `stream` (default stdout) if it is a terminal."""
    global _terminal
    stream = stream if stream is not None else sys.stdout
    _terminal = stream if stream.isatty() else None


def input_rows(inputs: list[Path]) -> int:
    """Rows a stage will read: the Parquet footers of its input datasets (files are not counted).

    Only an estimate for the bar: a folder that is not a readable dataset (a source folder with a
    stray broken Parquet file) counts 0, and the stage itself reports what is wrong with it."""
    total = 0
    for path in inputs:
        path = Path(path)
        if path.is_dir():
            try:
                total += sum(count_rows(path, kind) for kind in kinds_in(path))
            except (pa.ArrowException, OSError, ValueError):
                continue
    return total


class StageProgress:
    """The `progress(kind, rows)` callback for one stage run."""

    def __init__(
        self,
        stage: str,
        total_rows: int,
        interval: float = 1.0,
        artifacts: bool = True,
        terminal: Optional[TextIO] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stage = stage
        self.total = max(int(total_rows), 0)
        self.interval = interval
        self.artifacts = artifacts
        self.terminal = terminal if terminal is not None else _terminal
        self.clock = clock
        self.started = clock()
        self.rows = 0
        self.by_kind: dict[str, int] = {}
        self.artifact_id = None
        self.updates = 0  # artifact writes, for the throttle's tests
        self._last_shown: Optional[float] = None
        self._drawn = False
        self._publisher: Optional[ThreadPoolExecutor] = None  # one thread, started by the first update
        self._publishing: Optional[Future] = None

    def __call__(self, kind: str, rows: int) -> None:
        self.rows += rows
        self.by_kind[kind] = self.by_kind.get(kind, 0) + rows
        now = self.clock()
        if self._last_shown is not None and now - self._last_shown < self.interval:
            return
        self._last_shown = now
        self._show(self.percent(), final=False)

    def percent(self) -> float:
        if not self.total:
            return 0.0
        # Some stages report more rows than they read (fan-out); 100 is for `finish`.
        return min(99.0, round(100.0 * self.rows / self.total, 1))

    def finish(self, completed: bool = True) -> None:
        """The last update: 100 % when the stage completed, where it stopped otherwise."""
        if self._publisher is not None:
            self._publisher.shutdown(wait=True)  # an update under way lands before the last one
            self._publisher = None
        if self.rows or self.artifact_id is not None:
            self._show(100.0 if completed else self.percent(), final=True)
        elif self._drawn:
            self._end_line()

    def describe(self) -> str:
        done = ", ".join(f"{n:,} {kind}" for kind, n in self.by_kind.items()) or "no rows yet"
        read = f"; input {self.total:,} rows" if self.total else ""
        return f"{self.stage}: {done} done{read}; {self.clock() - self.started:.0f} s"

    def _show(self, percent: float, final: bool) -> None:
        if self.artifacts:
            self._publish(percent, final)
        if self.terminal is not None:
            self._draw(percent, final)

    def _publish(self, percent: float, final: bool) -> None:
        if final:
            self._write(percent, self.describe())
            return
        if self.clock() - self.started < self.interval:
            return  # a stage that ends within the interval gets one artifact, written by `finish`
        if self._publishing is not None and not self._publishing.done():
            return  # the API is slow: this update is skipped, a later one says more
        if self._publisher is None:
            self._publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.stage}-progress")
        context = contextvars.copy_context()  # the task run the artifact belongs to
        self._publishing = self._publisher.submit(context.run, self._write, percent, self.describe())

    def _write(self, percent: float, description: str) -> None:
        if not self.artifacts:
            return
        try:
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    progress=percent, key=f"{self.stage}-progress", description=description
                )
            else:
                update_progress_artifact(self.artifact_id, progress=percent, description=description)
            self.updates += 1
        except Exception as exc:  # noqa: BLE001 - progress display must never fail a stage
            logger.warning("%s: progress artifact not updated (%s); the stage goes on", self.stage, exc)
            self.artifacts = False

    def _draw(self, percent: float, final: bool) -> None:
        width = 24
        if self.total:
            filled = int(width * percent / 100)
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}%"
        else:
            bar = f"[{'?' * width}]"
        line = f"\r{self.stage:>14} {bar} {self.rows:,} rows  {self.clock() - self.started:.1f} s"
        try:
            self.terminal.write(line + "\x1b[K")
            if final:
                self.terminal.write("\n")
            self.terminal.flush()
            self._drawn = not final
        except (OSError, ValueError):
            self.terminal = None

    def _end_line(self) -> None:
        try:
            self.terminal.write("\n")
            self.terminal.flush()
        except (OSError, ValueError):
            pass
        self._drawn = False
