"""Process set-up that must happen before Prefect or Great Expectations is imported."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
        return True
    except OSError:
        return False


def prepare_environment() -> None:
    """Quiet, offline-safe defaults; anything the user set in the environment wins."""
    if "PREFECT_HOME" not in os.environ:
        home = Path.home() / ".prefect"
        if not _writable(home):
            home = Path(tempfile.gettempdir()) / "tcm-corpus-prefect"
            home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's SDK analytics, checked on import
    # The first run on a fresh PREFECT_HOME migrates the local database, which can be slow.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def hold_collection() -> None:
    """Stop the garbage collector until `settle_heap` (`gc.disable`). A command calls it before
    its imports: Prefect, pydantic and Great Expectations make about a million objects that live
    until the process ends, and the collections their allocations set off (some hundreds, a few
    of them full passes over the growing heap) find almost nothing to free: 0.2 CPU-s of a small
    stage's command, 0.35 of a sample build."""
    import gc

    gc.disable()


def settle_heap(resume: bool = True) -> None:
    """Move every object alive now to the garbage collector's permanent generation (`gc.freeze`),
    and collect as usual from here on (`gc.enable`), unless `resume` is False: an import still
    under way on another thread (flows/cli.py) settles the heap when it ends.

    A command calls it once its imports are done (Prefect, pydantic models, Great Expectations:
    about a million objects that live until the process ends) and again before it exits: the
    collector's full passes then no longer walk them, nor does the interpreter's teardown, which
    otherwise spends about a CPU-second collecting a heap that is about to be freed whole. Objects
    created afterwards are collected as usual."""
    import gc

    gc.freeze()
    if resume:
        gc.enable()


@contextmanager
def without_heartbeats():
    """Flow runs started inside run without Prefect's flow-run heartbeat thread, unless the user
    set PREFECT_FLOWS_HEARTBEAT_FREQUENCY (then the context changes nothing).

    Prefect starts the thread with each flow run and joins it when the run ends; the thread
    sleeps in one-second steps, so a flow run lasts at least about a second. Heartbeats serve a
    server-side automation that marks a run whose heartbeats stop as crashed. Call once Prefect
    may be imported."""
    from prefect.settings import get_current_settings, temporary_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        yield
        return
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


def loaded_classes(*paths: str) -> tuple[type, ...]:
    """The classes named `module:Class` whose modules this process has imported. For sorting a
    raised exception: one of a class never imported cannot have been raised, and not importing
    them keeps aiohttp, scrapy and tokenizers out of commands that do not use them."""
    import sys

    found = []
    for path in paths:
        module, name = path.split(":")
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


class _FailureRecords:
    """A console-handler filter: the failure records Prefect logs while a run fails (its
    tracebacks, ERROR lines, "Finished in state Failed") stay off the terminal, which then shows
    only the CLI's one line. The handlers that send logs to the Prefect API keep every record."""

    def filter(self, record) -> bool:
        import logging

        if record.exc_info or record.levelno >= logging.ERROR:
            return False
        message = record.getMessage()
        return not ("Finished in state" in message and ("Failed(" in message or "Crashed(" in message))


# A log record carrying this attribute (True) is the build's final summary, which `flows run`
# prints itself once the run ends (`keep_summary_off_terminal`).
SUMMARY_RECORD = "tcm_corpus_summary"


class _SummaryRecords:
    """A console-handler filter: the final summary's record stays off the terminal, where the CLI
    prints the same text when the run ends. The Prefect API keeps it (the run's logs in the UI)."""

    def filter(self, record) -> bool:
        return not getattr(record, SUMMARY_RECORD, False)


def quiet_failures_on_terminal() -> None:
    """Keep Prefect's failure records off the terminal (see `_FailureRecords`); call once Prefect
    is imported, and not under `--debug`."""
    _filter_console(_FailureRecords)


def keep_summary_off_terminal() -> None:
    """Keep the build's final summary record off the terminal (see `_SummaryRecords`): for a
    command that prints the summary itself."""
    _filter_console(_SummaryRecords)


def _filter_console(kind: type) -> None:
    """Add a `kind()` filter to each of Prefect's console handlers that has none yet."""
    import logging

    import prefect.main  # noqa: F401 - configures Prefect's logging (its import does), whose console handlers are filtered here
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())
