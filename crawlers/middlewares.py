"""Downloader middlewares of the crawl room."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response


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


class RetryAfterMiddleware(RetryMiddleware):
    """Scrapy's retries, and a server's Retry-After (429, 503) kept on the retried request, so
    that RetryBackoffMiddleware waits as long as the server asked, up to RETRY_AFTER_MAX."""

    def process_response(self, request: Request, response: Response, spider=None) -> Request | Response:
        result = super().process_response(request, response)
        if isinstance(result, Request):
            wait = retry_after_seconds(response.headers.get(b"Retry-After"))
            if wait is not None:
                result.meta["retry_after"] = min(wait, self.crawler.settings.getfloat("RETRY_AFTER_MAX", 60.0))
                self.crawler.stats.inc_value("retry/retry_after")
        return result


def retry_after_seconds(value: bytes | str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for (a number or an HTTP date), or None."""
    if not value:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


class RetryBackoffMiddleware:
    """Waits before sending a retried request: Scrapy's RetryMiddleware re-sends at once, which
    hammers a server that is already failing. The wait doubles with each retry, and is at least
    what the server's Retry-After asked for."""

    def __init__(self, base_delay: float):
        self.base_delay = base_delay

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> "RetryBackoffMiddleware":
        return cls(crawler.settings.getfloat("RETRY_BACKOFF_BASE", 0.5))

    async def process_request(self, request: Request) -> None:
        wait = retry_wait(request.meta.get("retry_times", 0), self.base_delay, request.meta.get("retry_after"))
        if wait > 0:
            await asyncio.sleep(wait)
        return None


def retry_wait(retries: int, base_delay: float, retry_after: float | None = None) -> float:
    """Seconds to wait before sending a request for the `retries`-th time (0: a first request)."""
    if not retries:
        return 0.0
    return max(base_delay * 2 ** (retries - 1), retry_after or 0.0)
