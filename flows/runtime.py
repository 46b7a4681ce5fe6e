"""Process set-up that must happen before Prefect or Great Expectations is imported."""
from __future__ import annotations

import os
import tempfile
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
    # The first run on a fresh PREFECT_HOME migrates the local database, which can be slow.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
