"""What a crawl remembers between runs, in a folder of its own outside the stage output.

Two tables in one SQLite file (`crawl.sqlite`), written in transactions so that a killed crawl
leaves them whole:

- `journal`: every record of the run in progress, written as it arrives. A crawl stopped before
  finishing (Ctrl-C, kill, crash) leaves its journal; the next run with the same sources resumes
  it: journalled URLs are not fetched again, and the links of journalled pages are followed anew.
- `pages`: the last committed record of every URL, with its ETag and Last-Modified. A later run
  asks the server whether a page changed (If-None-Match / If-Modified-Since); an unchanged page,
  told by a 304 or by the same content hash, keeps its stored row as it was, so a re-crawl that
  finds nothing new writes the same dataset again.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterator

STATE_FILE = "crawl.sqlite"
# Columns that say when a row was fetched rather than what was found.
VOLATILE = ("fetched_at",)


def default_state_dir(output: str | Path) -> Path:
    """Where a crawl into `output` keeps its state when the config names no folder: under the
    user's cache (XDG_CACHE_HOME, else ~/.cache), one folder per output path; the system's
    temporary folder when the cache cannot be written."""
    output = Path(output).resolve()
    name = f"{output.name}-{hashlib.sha256(str(output).encode('utf-8')).hexdigest()[:12]}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tcm-corpus" / "crawl-state"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK):
            raise PermissionError(cache)
    except OSError:
        cache = Path(tempfile.gettempdir()) / "tcm-corpus-crawl-state"
    return cache / name


def sources_key(sources: list[dict]) -> str:
    """The identity of a crawl's sources: a journal is resumed only by the same sources."""
    text = json.dumps(sources, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class CrawlState:
    def __init__(self, folder: str | Path, key: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.folder / STATE_FILE, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # Each record is its own transaction; NORMAL survives a killed process without an fsync each.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS journal (url TEXT PRIMARY KEY, depth INTEGER, record TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS pages (url TEXT PRIMARY KEY, record TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS info (name TEXT PRIMARY KEY, value TEXT);
            """
        )
        previous = self.db.execute("SELECT value FROM info WHERE name = 'sources'").fetchone()
        if previous is not None and previous[0] != key:
            # A journal of other sources cannot be resumed: its pages would not belong to this crawl.
            self.db.execute("DELETE FROM journal")
        self.db.execute("INSERT OR REPLACE INTO info VALUES ('sources', ?)", (key,))

    def journal(self, record: dict, depth: int | None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO journal VALUES (?, ?, ?)",
            (record["url"], depth, json.dumps(record, ensure_ascii=False)),
        )

    def journalled(self) -> Iterator[tuple[dict, int | None]]:
        """The records of the run in progress, in URL order."""
        for depth, record in self.db.execute("SELECT depth, record FROM journal ORDER BY url"):
            yield json.loads(record), depth

    def journal_size(self) -> int:
        return self.db.execute("SELECT count(*) FROM journal").fetchone()[0]

    def stored(self, url: str) -> dict | None:
        """The last committed record of `url`, or None."""
        row = self.db.execute("SELECT record FROM pages WHERE url = ?", (url,)).fetchone()
        return json.loads(row[0]) if row else None

    def settled(self, record: dict) -> dict:
        """The row to write for `record`: the stored one when nothing but the fetch time differs."""
        stored = self.stored(record["url"])
        if stored is not None and same_content(stored, record):
            return stored
        return record

    def commit_run(self) -> None:
        """The run's dataset is written: its records become the stored ones (those of URLs this
        run did not reach are forgotten, so the store is the last dataset), the journal empties."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM pages WHERE url NOT IN (SELECT url FROM journal)")
            self.db.execute("INSERT OR REPLACE INTO pages SELECT url, record FROM journal")
            self.db.execute("DELETE FROM journal")

    def close(self) -> None:
        self.db.close()


def same_content(stored: dict, record: dict) -> bool:
    return all(stored.get(k) == record.get(k) for k in record if k not in VOLATILE)
