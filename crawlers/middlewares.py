"""Downloader middlewares of the crawl room."""
from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest


def in_domains(url: str, domains: list[str]) -> bool:
    """Whether `url`'s host is one of `domains` or a subdomain of one."""
    host = (urlsplit(url).hostname or "").lower()
    return any(host == d or host.endswith("." + d) for d in domains)


class OffsiteRequest(IgnoreRequest):
    """A request outside its source's domains (in practice, a redirect off the site)."""


class RedirectSeen(IgnoreRequest):
    """A redirect to a page the crawl has requested already."""


class SourceDomainsMiddleware:
    """Keeps each request within the domains of the source it was made for, and each redirect
    off pages the crawl has requested already.

    It replaces Scrapy's OffsiteMiddleware, which drops an offsite redirect while scheduling it,
    where no errback hears of it: here the request fails in the downloader and becomes a
    rejected row. Scrapy's duplicate filter misses a redirect made by a retried request (retries
    are sent with dont_filter), so redirects are checked against the spider's own record.
    It runs before RobotsTxtMiddleware, so no robots.txt is fetched from a site that will not
    be crawled."""

    def __init__(self, crawler: Crawler):
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> "SourceDomainsMiddleware":
        return cls(crawler)

    def process_request(self, request: Request) -> None:
        sources = getattr(self.crawler.spider, "sources", {})
        source = sources.get(request.meta.get("source"))
        if source is not None and not in_domains(request.url, source["allowed_domains"]):
            self.crawler.stats.inc_value("offsite/filtered")
            raise OffsiteRequest(f"{request.url} is outside the domains of source {source['name']!r}")
        redirected = source is not None and request.meta.get("redirect_urls")
        if redirected and not self.crawler.spider.claim(request.url, source):
            raise RedirectSeen(f"{request.url} was requested already")
        return None


class RetryBackoffMiddleware:
    """Waits before sending a retried request: Scrapy's RetryMiddleware re-sends at once, which
    hammers a server that is already failing."""

    def __init__(self, base_delay: float):
        self.base_delay = base_delay

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> "RetryBackoffMiddleware":
        return cls(crawler.settings.getfloat("RETRY_BACKOFF_BASE", 0.5))

    async def process_request(self, request: Request) -> None:
        retries = request.meta.get("retry_times", 0)
        if retries and self.base_delay > 0:
            await asyncio.sleep(self.base_delay * 2 ** (retries - 1))
        return None
