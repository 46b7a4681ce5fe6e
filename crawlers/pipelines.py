"""Item pipeline that turns the spider's page records into a pages dataset."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

from schemas.dataset import DatasetWriter, StageManifest
from schemas.records import PAGE_SCHEMA, PAGES, rejected_schema

from .spiders.site import page_record

OUTCOME = "pages/outcome"  # stats key crawlers.run reads after the crawl: "committed" or what went wrong
COMMITTED = "committed"


class PageDatasetPipeline:
    """Appends every page record to a journal as it arrives, and writes the dataset through
    DatasetWriter once the crawl has finished.

    The journal lives in JOBDIR when there is one, so a resumed crawl keeps the pages its first
    run fetched (Scrapy will not fetch them again); otherwise in a temporary folder."""

    def __init__(self, crawler: Crawler, output: Path, manifest: StageManifest):
        self.crawler = crawler
        self.output = output
        self.manifest = manifest
        jobdir = crawler.settings.get("JOBDIR")
        self.journal_dir = Path(jobdir) if jobdir else Path(tempfile.mkdtemp(prefix="tcm-crawl-"))
        self.temporary = not jobdir
        self.journal_path = self.journal_dir / "pages.jsonl"
        self.journal = None
        self.failure: str | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> "PageDatasetPipeline":
        output = crawler.settings.get("PAGES_OUTPUT")
        if not output:
            raise NotConfigured("PAGES_OUTPUT is not set")
        manifest = StageManifest.from_dict(crawler.settings.getdict("PAGES_MANIFEST") or {"stage": "crawl"})
        pipeline = cls(crawler, Path(output), manifest)
        # The close reason only reaches signal handlers: a dataset is written only for a finished crawl.
        crawler.signals.connect(pipeline.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(pipeline.request_dropped, signal=signals.request_dropped)
        return pipeline

    def open_spider(self) -> None:
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self.journal = self.journal_path.open("a", encoding="utf-8")

    def process_item(self, item: dict) -> dict:
        self._append(item)
        return item

    def request_dropped(self, request: Request, spider: Spider) -> None:
        # A redirect to a page already crawled: the first URL was fetched, but its page is kept
        # under the target's own URL, so it is accounted for here rather than lost.
        if request.meta.get("redirect_urls") and request.meta.get("source") in getattr(spider, "sources", {}):
            self._append(page_record(request, spider.sources[request.meta["source"]], "redirect_seen"))

    def close_spider(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def _append(self, record: dict) -> None:
        try:
            self.journal.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.journal.flush()
        except Exception as exc:  # Scrapy logs a failing pipeline and goes on: a lost row must fail the crawl
            self.failure = self.failure or f"journal {self.journal_path}: {type(exc).__name__}: {exc}"
            raise

    def spider_closed(self, spider: Spider, reason: str) -> None:
        stats = self.crawler.stats
        if self.failure:
            stats.set_value(OUTCOME, self.failure)
            return
        if reason != "finished":
            stats.set_value(OUTCOME, f"crawl stopped before finishing ({reason}); nothing written")
            return
        try:
            self.write_dataset(stats.get_stats())
        except Exception as exc:  # noqa: BLE001 - reported to the parent process as one line
            stats.set_value(OUTCOME, f"writing {self.output} failed: {type(exc).__name__}: {exc}")
            return
        stats.set_value(OUTCOME, COMMITTED)
        if self.temporary:
            shutil.rmtree(self.journal_dir, ignore_errors=True)

    def write_dataset(self, crawl_stats: dict) -> StageManifest:
        rejected = rejected_schema(PAGES)
        writer = DatasetWriter(self.output, self.manifest)
        with writer:
            total = 0
            for records in read_journal(self.journal_path):
                total += len(records)
                kept = [r for r in records if r["reason"] is None]
                writer.write(PAGES, pa.Table.from_pylist(kept, schema=PAGE_SCHEMA))
                writer.reject(PAGES, pa.Table.from_pylist([r for r in records if r["reason"]], schema=rejected))
            self.manifest.rows_in = {PAGES: total}
            self.manifest.stats["crawl"] = crawl_summary(crawl_stats)
            return writer.commit()


def read_journal(path: Path, chunk: int = 500) -> Iterator[list[dict]]:
    if not path.exists():
        return
    records: list[dict] = []
    with path.open(encoding="utf-8") as journal:
        for line in journal:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by an interrupted run
            if len(records) >= chunk:
                yield records
                records = []
    if records:
        yield records


def crawl_summary(stats: dict) -> dict:
    """The Scrapy counters worth keeping beside the pages: requests, statuses, retries, budgets."""
    keep = ("downloader/", "retry/", "robotstxt/", "offsite/", "pages/", "item_scraped_count", "elapsed_time_seconds")
    return {
        key: value if isinstance(value, (int, float, str)) else str(value)
        for key, value in sorted(stats.items())
        if key.startswith(keep) and key != OUTCOME
    }
