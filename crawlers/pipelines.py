"""Item pipeline that turns the spider's page records into a pages dataset."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

from schemas.dataset import DatasetWriter, StageManifest
from schemas.records import PAGES

from .spiders.site import CRAWL_PAGE_SCHEMA, page_record
from .state import CrawlState, sources_key

OUTCOME = "pages/outcome"  # stats key crawlers.run reads after the crawl: "committed" or what went wrong
COMMITTED = "committed"


class PageDatasetPipeline:
    """Journals every page record in the crawl state as it arrives, and writes the dataset
    through DatasetWriter once the crawl has finished, in URL order, so that the same pages give
    the same dataset.

    The crawl state lives in CRAWL_STATE_DIR when there is one, so a stopped crawl resumes
    without refetching and a re-crawl asks only for what changed (crawlers.state); otherwise in
    a temporary folder removed after the run."""

    def __init__(self, crawler: Crawler, output: Path, manifest: StageManifest):
        self.crawler = crawler
        self.output = output
        self.manifest = manifest
        self.temporary: str | None = None
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

    @property
    def state(self) -> CrawlState:
        spider = self.crawler.spider
        if spider.crawl_state is None:
            self.temporary = tempfile.mkdtemp(prefix="tcm-crawl-state-")
            spider.crawl_state = CrawlState(self.temporary, sources_key(list(spider.sources.values())))
        return spider.crawl_state

    def open_spider(self) -> None:
        self.state  # noqa: B018 - opened before the first record arrives

    def process_item(self, item: dict) -> dict:
        self._append(item)
        return item

    def request_dropped(self, request: Request, spider: Spider) -> None:
        # A redirect to a page already crawled: the first URL was fetched, but its page is kept
        # under the target's own URL, so it is accounted for here rather than lost.
        if request.meta.get("redirect_urls") and request.meta.get("source") in getattr(spider, "sources", {}):
            self._append(page_record(request, spider.sources[request.meta["source"]], "redirect_seen"))

    def _append(self, item: dict) -> None:
        record = {key: value for key, value in item.items() if key != "link_depth"}
        try:
            self.state.journal(record, item.get("link_depth"))
        except Exception as exc:  # Scrapy logs a failing pipeline and goes on: a lost row must fail the crawl
            self.failure = self.failure or f"crawl state {self.state.folder}: {type(exc).__name__}: {exc}"
            raise

    def spider_closed(self, spider: Spider, reason: str) -> None:
        stats = self.crawler.stats
        try:
            if self.failure:
                stats.set_value(OUTCOME, self.failure)
                return
            if reason != "finished":
                stats.set_value(OUTCOME, f"crawl stopped before finishing ({reason}); nothing written")
                return
            try:
                self.write_dataset(stats.get_stats())
                self.state.commit_run()
            except Exception as exc:  # noqa: BLE001 - reported to the parent process as one line
                stats.set_value(OUTCOME, f"writing {self.output} failed: {type(exc).__name__}: {exc}")
                return
            stats.set_value(OUTCOME, COMMITTED)
        finally:
            if spider.crawl_state is not None:
                spider.crawl_state.close()
            if self.temporary:
                shutil.rmtree(self.temporary, ignore_errors=True)

    def recorded(self, record: dict) -> dict:
        source = getattr(self.crawler.spider, "sources", {}).get(record.get("source")) or {}
        return with_origin(record, source.get("record_origin"))

    def write_dataset(self, crawl_stats: dict) -> StageManifest:
        rejected = pa.schema([*CRAWL_PAGE_SCHEMA, pa.field("reason", pa.string())])
        writer = DatasetWriter(self.output, self.manifest)
        with writer:
            total = unchanged = 0
            for records in chunked(r for r, _ in self.state.journalled()):
                total += len(records)
                settled = [self.state.settled(r) for r in records]
                unchanged += sum(a is not b for a, b in zip(settled, records))
                settled = [self.recorded(r) for r in settled]
                kept = [r for r in settled if r["reason"] is None]
                writer.write(PAGES, pa.Table.from_pylist(kept, schema=CRAWL_PAGE_SCHEMA))
                writer.reject(PAGES, pa.Table.from_pylist([r for r in settled if r["reason"]], schema=rejected))
            self.manifest.rows_in = {PAGES: total}
            self.manifest.stats["crawl"] = {**crawl_summary(crawl_stats), "pages/unchanged": unchanged}
            return writer.commit()


def with_origin(record: dict, origin: dict | None) -> dict:
    """`record` as a page of a served local folder is kept (see `record_origin`): its URLs under
    the stable origin, and no fetch time, so the same folder gives the same rows on every build."""
    if not origin:
        return record
    served, recorded = origin["served"], origin["as"]
    moved = {key: recorded + record[key][len(served):] for key in ("url", "final_url")
             if isinstance(record.get(key), str) and record[key].startswith(served)}
    return {**record, **moved, "fetched_at": None}


def chunked(records: Iterable[dict], size: int = 500) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def crawl_summary(stats: dict) -> dict:
    """The Scrapy counters worth keeping beside the pages: requests, statuses, retries, budgets."""
    keep = ("downloader/", "retry/", "robotstxt/", "offsite/", "pages/", "item_scraped_count", "elapsed_time_seconds")
    return {
        key: value if isinstance(value, (int, float, str)) else str(value)
        for key, value in sorted(stats.items())
        if key.startswith(keep) and key != OUTCOME
    }
