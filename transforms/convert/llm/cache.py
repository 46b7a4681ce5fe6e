"""A persistent cache of LLM responses in SQLite, so no request is paid for twice.

The key covers everything that decides a response: the model, the prompt version, the step, the
passage's hash and the request parameters (and, for answers, the question). Each response is
committed as soon as it arrives, so a run killed mid-way loses at most the requests in flight.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path


def cache_key(**parts) -> str:
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class CachedResponse:
    content: str
    prompt_tokens: int
    completion_tokens: int


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        # WAL: a reader (a report, a test) never blocks the writer; NORMAL: a commit survives a
        # killed process, which is the failure this cache is for.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, prompt_version TEXT, step TEXT,"
            " passage_hash TEXT, content TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, created_at REAL)"
        )

    def get(self, key: str) -> CachedResponse | None:
        row = self._db.execute("SELECT content, prompt_tokens, completion_tokens FROM responses WHERE key = ?", (key,)).fetchone()
        return CachedResponse(row[0], row[1] or 0, row[2] or 0) if row else None

    def put(self, key: str, response: CachedResponse, *, model: str, prompt_version: str, step: str, passage_hash: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, model, prompt_version, step, passage_hash, response.content, response.prompt_tokens,
             response.completion_tokens, time.time()),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()
