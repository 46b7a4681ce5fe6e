"""Runs a crawl of named sources into a pages dataset.

`run_crawl` is what the flows call. It runs Scrapy in a fresh child process
(`python -m crawlers.run -`, the spec as JSON on its stdin; or `python -m crawlers.run
SPEC.json`), because Twisted's reactor cannot be restarted inside one process and the caller is a
long-lived worker. The child writes the dataset; the parent returns its manifest or raises
CrawlError with the child's last words.

The child imports Scrapy, Twisted and the dataset writer (about a CPU-second) before it reads its
spec, so a caller that knows a crawl is coming can `start_ahead()`: the child's imports then
overlap the caller's own work, and the next `run_crawl` in that process hands its spec to the
waiting child. The caller itself imports no Scrapy (sources are checked by `crawlers.sources`)."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from schemas.dataset import StageManifest, read_manifest

from .sources import crawl_source

PRODUCT = "tcm-corpus/0.1"
DEFAULT_SETTINGS = {
    "user_agent": PRODUCT,  # the product token; the contact URL is added to it
    "contact_url": "https://example.invalid/tcm-corpus",
    "download_timeout": 15,
    "max_page_bytes": 5 * 1024 * 1024,
    "obey_robots": True,
    "concurrency": 8,
    "concurrency_per_domain": 4,
    "download_delay": 0.0,  # seconds between requests to one site; AutoThrottle never goes below it
    "autothrottle": True,
    "retries": 2,
    "retry_backoff": 0.5,  # seconds before the first retry, doubled for each further one
    "state_dir": None,  # journal and stored pages for resuming and re-crawling (crawlers.state)
    "log_file": None,  # keep the crawl's Scrapy log here; otherwise it is discarded
}
SCRAPY_NAMES = {
    "download_timeout": "DOWNLOAD_TIMEOUT",
    "max_page_bytes": "DOWNLOAD_MAXSIZE",
    "obey_robots": "ROBOTSTXT_OBEY",
    "concurrency": "CONCURRENT_REQUESTS",
    "concurrency_per_domain": "CONCURRENT_REQUESTS_PER_DOMAIN",
    "download_delay": "DOWNLOAD_DELAY",
    "autothrottle": "AUTOTHROTTLE_ENABLED",
    "retries": "RETRY_TIMES",
    "retry_backoff": "RETRY_BACKOFF_BASE",
    "state_dir": "CRAWL_STATE_DIR",
    "log_file": "LOG_FILE",
}
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class CrawlError(RuntimeError):
    """A crawl that did not produce its dataset."""


def run_crawl(
    sources: list[dict],
    output: str | Path,
    manifest: StageManifest,
    settings: dict | None = None,
) -> StageManifest:
    """Crawl `sources` into the pages dataset at `output` and return its manifest; CrawlError
    (one line, the child's last words) when the crawl process fails. Uses the process
    `start_ahead` started, if any; otherwise starts one."""
    spec = crawl_spec(sources, output, manifest, settings)
    process = _take_ahead() or CrawlProcess()
    process.run(spec)
    result = read_manifest(spec["output"])
    if result is None:
        raise CrawlError(f"crawl finished without writing {spec['output']}")
    return result


class CrawlProcess:
    """One crawl child process (`python -m crawlers.run -`), started at once: it imports what a
    crawl needs, then waits for its spec on stdin. Its stderr goes to a temporary file, whose
    last line is the CrawlError of a failed crawl. A process that is never given a spec reads
    the end of its stdin (`close`, or this process ending) and exits without crawling."""

    def __init__(self):
        self._folder = tempfile.TemporaryDirectory(prefix="tcm-crawl-")
        self.log_path = Path(self._folder.name) / "stderr.log"
        with self.log_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                crawl_command("-"), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                env=child_environment(),
            )

    def run(self, spec: dict) -> None:
        """Hand the process `spec` and wait for it to end; CrawlError if it fails. The process is
        killed if the wait is interrupted (Ctrl-C, a time-out)."""
        try:
            self.process.communicate(json.dumps(spec, ensure_ascii=False).encode("utf-8"))
        except BaseException:
            self.process.kill()
            self.process.wait()
            self._folder.cleanup()
            raise
        try:
            if self.process.returncode != 0:
                raise CrawlError(last_line(self.log_path) or f"crawl process exited with status {self.process.returncode}")
        finally:
            self._folder.cleanup()

    def close(self) -> None:
        """End a process that was given no spec."""
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        self.process.wait()
        self._folder.cleanup()


_ahead: Optional[CrawlProcess] = None
_ahead_lock = threading.Lock()


def start_ahead() -> None:
    """Start the next crawl's process now, so that its imports overlap what this process does
    before `run_crawl` (a command's own imports and checks). Once: a process already waiting is
    kept. One never used exits when this process ends."""
    global _ahead
    with _ahead_lock:
        if _ahead is None:
            _ahead = CrawlProcess()


def _take_ahead() -> Optional[CrawlProcess]:
    global _ahead
    with _ahead_lock:
        process, _ahead = _ahead, None
    if process is not None and process.process.poll() is not None:
        process.close()  # it died waiting (killed from outside): a fresh one runs the crawl
        return None
    return process


def crawl_spec(sources: list[dict], output: str | Path, manifest: StageManifest, settings: dict | None = None) -> dict:
    """What the child process needs, as plain JSON: checked sources, output, manifest, settings."""
    if not sources:
        raise ValueError("run_crawl needs at least one source")
    return {
        "sources": [crawl_source(s) for s in sources],
        "output": str(Path(output).resolve()),
        "manifest": asdict(manifest),
        "scrapy_settings": scrapy_settings(settings),
    }


def crawl_command(spec_path: str | Path) -> list[str]:
    """The crawl child's command line; `spec_path` "-" reads the spec from stdin."""
    return [sys.executable, "-m", "crawlers.run", str(spec_path)]


def child_environment() -> dict:
    # The child imports this package even when the caller found it on its own sys.path.
    import_path = [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(import_path)}


def scrapy_settings(settings: dict | None) -> dict:
    """The crawl settings a configuration may give, as Scrapy settings."""
    settings = {key: value for key, value in (settings or {}).items() if value is not None}
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown crawl setting(s): {', '.join(sorted(unknown))}")
    merged = {**DEFAULT_SETTINGS, **settings}
    scrapy = {SCRAPY_NAMES[key]: value for key, value in merged.items() if key in SCRAPY_NAMES and value is not None}
    scrapy["USER_AGENT"] = user_agent(merged["user_agent"], merged["contact_url"])
    for key in ("state_dir", "log_file"):
        if merged[key] is not None:
            scrapy[SCRAPY_NAMES[key]] = str(Path(merged[key]).resolve())
    if merged["state_dir"] is not None and Path(merged["state_dir"]).exists() and not Path(merged["state_dir"]).is_dir():
        raise ValueError(f"crawl state_dir {merged['state_dir']} is not a folder")
    return scrapy


def user_agent(product: str, contact_url: str | None) -> str:
    """`product (+contact)`, the form site operators look for to learn who crawls them."""
    product = " ".join(str(product).split())
    if not product:
        raise ValueError("crawl user_agent must name the product")
    if not contact_url or contact_url in product:
        return product
    if not str(contact_url).startswith(("http://", "https://", "mailto:")):
        raise ValueError(f"crawl contact_url must be an http(s) or mailto URL, not {contact_url!r}")
    return f"{product} (+{contact_url})"


def last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def crawl(spec: dict) -> str:
    """Run the crawl described by `spec` in this process; returns the pipeline's outcome."""
    from scrapy.crawler import CrawlerProcess
    from scrapy.settings import Settings

    from .pipelines import OUTCOME
    from .spiders.site import SiteSpider

    settings = Settings()
    settings.setmodule("crawlers.settings", priority="project")
    settings.update(spec["scrapy_settings"], priority="cmdline")
    settings.set("PAGES_OUTPUT", spec["output"], priority="cmdline")
    settings.set("PAGES_MANIFEST", spec["manifest"], priority="cmdline")
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(SiteSpider)
    failures: list[str] = []
    running = process.crawl(crawler, sources=spec["sources"])
    running.addErrback(lambda failure: failures.append(f"{failure.type.__name__}: {failure.value}"))
    process.start()
    if failures:
        return failures[0]
    return crawler.stats.get_value(OUTCOME) or "crawl ended without a result"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m crawlers.run SPEC.json|-", file=sys.stderr)
        return 2
    from .pipelines import COMMITTED

    try:
        text = sys.stdin.read() if args[0] == "-" else Path(args[0]).read_text(encoding="utf-8")
        if not text.strip():
            return 0  # started ahead and never given a crawl
        outcome = crawl(json.loads(text))
    except Exception as exc:  # noqa: BLE001 - the parent wants one line, not a traceback
        outcome = f"{type(exc).__name__}: {exc}"
    if outcome != COMMITTED:
        print("crawl failed: " + " ".join(str(outcome).split()), file=sys.stderr, flush=True)
        return 1
    return 0


def _import_crawl_modules() -> None:
    """What a crawl imports, imported before the spec arrives (see the module's docstring)."""
    import pyarrow.compute  # noqa: F401 - the dataset writer's
    import scrapy.core.downloader.handlers.http11  # noqa: F401 - the handler of http(s) URLs
    import scrapy.crawler  # noqa: F401

    from . import pipelines  # noqa: F401
    from .spiders import site  # noqa: F401


class _WithoutPandas:
    """An import finder that refuses pandas. pyarrow imports pandas the first time it converts a
    Python list, only to tell pandas objects apart (a third of a crawl process's start); a crawl
    process converts lists of page records and nothing else, so it installs this finder and
    pyarrow goes on without pandas. (Marking pandas None in `sys.modules` is not enough: pyarrow's
    compiled import reads that None as the module.)"""

    def find_spec(self, name: str, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("the crawl process does not import pandas", name=name)
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, _WithoutPandas())
    # No collection passes over the imports' objects, which live until the process ends, nor
    # over the whole heap at exit, when it is freed with the process (a fifth of a second).
    gc.disable()
    _import_crawl_modules()
    gc.freeze()
    gc.enable()
    code = main()
    gc.freeze()
    sys.exit(code)
