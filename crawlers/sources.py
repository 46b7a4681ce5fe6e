"""A crawl source as the spider uses it, checked before any crawl process starts.

This module imports no Scrapy: the process that starts a crawl (`crawlers.run.run_crawl`) checks
its sources here, and only the crawl process itself imports Scrapy and Twisted."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from w3lib.url import canonicalize_url

from schemas.records import CATEGORIES

SOURCE_KEYS = {
    "name", "category", "start_urls", "allowed_domains", "allow", "deny", "max_depth", "max_pages", "sitemap_urls",
    "record_origin",
}


def crawl_source(source: dict) -> dict:
    """A source as the spider uses it: checked, with defaults filled in and domains derived."""
    unknown = set(source) - SOURCE_KEYS
    if unknown:
        raise ValueError(f"crawl source {source.get('name')!r}: unknown key(s) {', '.join(sorted(unknown))}")
    name = source.get("name")
    if not name:
        raise ValueError("crawl source without a name")
    if source.get("category") not in CATEGORIES:
        raise ValueError(f"crawl source {name!r}: category must be one of {', '.join(CATEGORIES)}")
    start_urls = [canonical_url(u) for u in source.get("start_urls") or []]
    sitemap_urls = [canonical_url(u) for u in source.get("sitemap_urls") or []]
    if not (start_urls or sitemap_urls) or any(
        urlsplit(u).scheme not in ("http", "https") for u in start_urls + sitemap_urls
    ):
        raise ValueError(f"crawl source {name!r}: start_urls (or sitemap_urls) must be a non-empty list of http(s) URLs")
    domains = source.get("allowed_domains") or sorted({urlsplit(u).hostname for u in start_urls + sitemap_urls})
    for key in ("allow", "deny"):
        for pattern in source.get(key) or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"crawl source {name!r}: bad {key} pattern {pattern!r} ({exc})") from exc
    return {
        "name": name,
        "category": source["category"],
        "start_urls": start_urls,
        "sitemap_urls": sitemap_urls,
        "allowed_domains": [d.lower() for d in domains],
        "allow": list(source.get("allow") or []),
        "deny": list(source.get("deny") or []),
        "max_depth": int(source.get("max_depth", 3)),
        "max_pages": int(source.get("max_pages", 1000)),
        # {"served": "http://127.0.0.1:PORT/", "as": "site-dir://NAME/"}: a local folder served
        # for the crawl is recorded under a stable origin, not under the port it happened to get.
        "record_origin": dict(source["record_origin"]) if source.get("record_origin") else None,
    }


def canonical_url(url: str) -> str:
    """One spelling per page: sorted query, normalised escapes, no fragment."""
    return canonicalize_url(url, keep_fragments=False)
