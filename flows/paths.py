"""Where a run may write: checked before any work, so no run can replace what it reads or a
user's own files.

A stage writes its output folder by renaming a finished temporary folder over it, so the output
must not be, contain or lie inside anything the run reads (its `--input` datasets, the config's
source paths), must not be a file, and, when it exists, must be a dataset this tool wrote (a
folder with `_manifest.json`) or an empty folder. A work folder must not be a file, nor lie inside
a source folder (a later ingest would read the build's own files), and no source may lie at or
inside what a build writes in it (`WORKDIR_OUTPUTS`: a source folder `WORKDIR/corpus` would be
replaced by the corpus shards).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

MANIFEST = "_manifest.json"
# What build-corpus and refresh write in a work folder: stage outputs, the corpus, the suites'
# results, packed sequences, refreshed sources, the report and the work folder's lock.
WORKDIR_OUTPUTS = ("stages", "corpus", "quality", "packed", "refresh", "report.html", ".tcm-corpus.lock")


class PathRefused(ValueError):
    """A path that would destroy data or cannot be written; the message says which and why."""


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _file_on_the_way(path: Path) -> Path | None:
    """`path` itself, or the nearest existing ancestor, when it is not a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def check_output(output: str | os.PathLike, reads: Iterable[tuple[str, str | os.PathLike]]) -> Path:
    """Refuse an `output` folder that is, holds or lies inside a path of `reads` ((what, path)
    pairs), that is a file or lies under one, or that is a non-empty folder this tool did not write."""
    given = Path(output)
    real = _real(output)
    for what, path in reads:
        source = _real(path)
        if real == source:
            raise PathRefused(f"--output {given} is the same folder as {what} {path}: the run would replace what it reads; choose another output")
        if _within(real, source):
            raise PathRefused(f"--output {given} lies inside {what} {path}: the run would write into what it reads; choose an output outside it")
        if _within(source, real):
            raise PathRefused(f"--output {given} holds {what} {path}: the run would replace what it reads; choose another output")
    blocker = _file_on_the_way(real)
    if blocker is not None:
        if blocker == real:
            raise PathRefused(f"--output {given} is a file, not a dataset folder; choose a folder path")
        raise PathRefused(f"--output {given}: {blocker} is a file, so no folder can be made there")
    if real.is_dir() and not (real / MANIFEST).is_file() and any(real.iterdir()):
        raise PathRefused(f"--output {given} is a folder with other files in it (no {MANIFEST}); the run would replace it: choose a new or empty folder")
    return real


def check_workdir(workdir: str | os.PathLike, sources: Iterable[tuple[str, str | os.PathLike]]) -> Path:
    """Refuse a work folder that is a file, lies under a file, or lies inside a source folder."""
    given = Path(workdir)
    real = _real(workdir)
    blocker = _file_on_the_way(real)
    if blocker is not None:
        if blocker == real:
            raise PathRefused(f"--workdir {given} is a file, not a folder; choose a folder path")
        raise PathRefused(f"--workdir {given}: {blocker} is a file, so no folder can be made there")
    for what, path in sources:
        source = _real(path)
        if source.is_dir() and _within(real, source):
            raise PathRefused(f"--workdir {given} lies inside {what} {path}: the build would read its own files as input; choose a work folder outside it")
        for name in WORKDIR_OUTPUTS:
            if _within(source, real / name):
                raise PathRefused(
                    f"--workdir {given}: {what} {path} lies at {given / name}, where the build writes its {name}; "
                    "the build would replace what it reads: choose a work folder that does not hold the sources"
                )
    return real


def source_paths(config) -> list[tuple[str, str | os.PathLike]]:
    """(what, path) of every path a config's sources read: a source's `path`, a crawl's `site_dir`."""
    paths = [(f"source {s.name}'s path", s.path) for s in config.sources if s.path is not None]
    paths += [(f"source {s.name}'s site_dir", s.site_dir) for s in config.sources if getattr(s, "site_dir", None) is not None]
    return paths
