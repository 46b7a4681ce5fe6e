"""The site spider: crawls each named source from its seeds, within its domains, depth and page
budget, and turns every URL it requests into exactly one page record, kept or rejected."""
from __future__ import annotations

import codecs
import hashlib
import re
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Iterator
from urllib.parse import urljoin, urlsplit

import parsel
import pyarrow as pa
import scrapy
from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadFailedError,
    DownloadTimeoutError,
    IgnoreRequest,
    ResponseDataLossError,
)
from scrapy.linkextractors import IGNORED_EXTENSIONS
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.gz import gunzip
from scrapy.utils.sitemap import Sitemap, sitemap_urls_from_robots
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost
from twisted.internet.error import TimeoutError as TwistedTimeout
from twisted.python.failure import Failure

from schemas.records import PAGE_SCHEMA

from ..middlewares import OffsiteRequest, RedirectSeen, in_domains
from ..sources import canonical_url, crawl_source  # noqa: F401 - crawl_source is part of this module's API
from ..state import CrawlState, sources_key

KEPT_TYPES = ("text/html", "text/plain")
# Links to archives, images, audio, video and office files are not followed.
IGNORED_SUFFIXES = frozenset(IGNORED_EXTENSIONS)
# Conditional re-crawls ask with these; a 304 answers that the stored page is still current.
NOT_MODIFIED = 304
# Columns the crawl writes beside the pages schema's own.
PAGE_EXTRA_FIELDS = (
    pa.field("etag", pa.string()),
    pa.field("last_modified", pa.string()),
    pa.field("replaced_bytes", pa.int32()),
)
CRAWL_PAGE_SCHEMA = pa.schema([*PAGE_SCHEMA, *PAGE_EXTRA_FIELDS])


class SiteSpider(scrapy.Spider):
    name = "site"

    def __init__(self, sources: list[dict], **kwargs: Any):
        super().__init__(**kwargs)
        # Links are kept within their source's domains here, redirects by SourceDomainsMiddleware.
        self.sources = {s["name"]: s for s in map(crawl_source, sources)}
        self.link_rules = {
            name: ([re.compile(p) for p in s["allow"]], [re.compile(p) for p in s["deny"]])
            for name, s in self.sources.items()
        }
        # Canonical URLs requested so far, per source, resumed ones included.
        self.requested: dict[str, set[str]] = {}
        self.crawl_state: CrawlState | None = None

    @classmethod
    def from_crawler(cls, crawler, *args: Any, **kwargs: Any) -> "SiteSpider":
        spider = super().from_crawler(crawler, *args, **kwargs)
        folder = crawler.settings.get("CRAWL_STATE_DIR")
        if folder:
            spider.crawl_state = CrawlState(folder, sources_key(list(spider.sources.values())))
        return spider

    def requested_before(self, url: str) -> bool:
        return any(url in urls for urls in self.requested.values())

    def claim(self, url: str, source: dict) -> bool:
        """Record `url` as requested for `source`; False if the crawl has requested it already."""
        url = canonical_url(url)
        if self.requested_before(url):
            return False
        self.requested.setdefault(source["name"], set()).add(url)
        return True

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for request in self.resumed_requests():
            yield request
        for source in self.sources.values():
            for url in source["start_urls"]:
                request = self.page_request(url, source, depth=0)
                if request is not None:
                    yield request
            for url in source["sitemap_urls"]:
                yield self.sitemap_request(url, source)

    def resumed_requests(self) -> Iterator[scrapy.Request]:
        """A stopped run's journal: its URLs count as requested, and its pages' links are
        followed again, since the requests they made were lost with the stopped process."""
        if self.crawl_state is None:
            return
        journalled = [(r, d) for r, d in self.crawl_state.journalled() if r["source"] in self.sources]
        for record, _ in journalled:
            for url in (record["url"], record["final_url"]):
                if url:
                    self.claim(url, self.sources[record["source"]])
        if journalled:
            self.crawler.stats.set_value("pages/resumed", len(journalled))
        for record, depth in journalled:
            source = self.sources[record["source"]]
            if record["reason"] is None and depth is not None:
                yield from self.follow_links(record["body"], record["final_url"] or record["url"],
                                             record["content_type"], source, depth)

    def page_request(self, url: str, source: dict, depth: int) -> scrapy.Request | None:
        if self.requested_before(url):
            return None
        if len(self.requested.get(source["name"], ())) >= source["max_pages"]:
            self.crawler.stats.inc_value(f"pages/budget_skipped/{source['name']}")
            return None
        self.claim(url, source)
        headers = {}
        stored = self.crawl_state.stored(url) if self.crawl_state is not None else None
        if stored is not None and stored["reason"] is None:
            if stored.get("etag"):
                headers["If-None-Match"] = stored["etag"]
            if stored.get("last_modified"):
                headers["If-Modified-Since"] = stored["last_modified"]
        return scrapy.Request(
            url,
            headers=headers,
            callback=self.parse_page,
            errback=self.page_failed,
            meta={"source": source["name"], "link_depth": depth, "handle_httpstatus_list": [NOT_MODIFIED]},
        )

    def sitemap_request(self, url: str, source: dict) -> scrapy.Request:
        return scrapy.Request(
            url, callback=self.parse_sitemap, errback=self.page_failed,
            meta={"source": source["name"], "sitemap": True},
        )

    def parse_sitemap(self, response: scrapy.http.Response) -> Iterator[dict | scrapy.Request]:
        """Sitemaps, sitemap indexes (gzipped or not) and robots.txt `Sitemap:` lines: their
        page URLs are seeds of the source, filtered like links."""
        source = self.sources[response.meta["source"]]
        if urlsplit(response.url).path.endswith("/robots.txt"):
            for url in sitemap_urls_from_robots(response.body, base_url=response.url):
                if in_domains(url, source["allowed_domains"]):
                    yield self.sitemap_request(canonical_url(url), source)
            return
        body = response.body
        try:
            if body[:2] == b"\x1f\x8b":
                body = gunzip(body, max_size=self.crawler.settings.getint("DOWNLOAD_MAXSIZE"))
            sitemap = Sitemap(body)
        except Exception:  # noqa: BLE001 - lxml and gzip fail in many ways on a page that is no sitemap
            yield page_record(response.request, source, "not_sitemap", response)
            return
        for entry in sitemap:
            url = canonical_url(urljoin(response.url, entry.get("loc", "")))
            if not self.wanted(url, source):
                continue
            if sitemap.type == "sitemapindex":
                yield self.sitemap_request(url, source)
            else:
                self.crawler.stats.inc_value("pages/from_sitemap")
                request = self.page_request(url, source, depth=0)
                if request is not None:
                    yield request

    def parse_page(self, response: scrapy.http.Response) -> Iterator[dict | scrapy.Request]:
        source = self.sources[response.meta["source"]]
        depth = response.meta["link_depth"]
        if response.status == NOT_MODIFIED:
            # Stored under the URL first asked for, which a redirect may have led elsewhere.
            first_url = (response.request.meta.get("redirect_urls") or [response.request.url])[0]
            stored = self.crawl_state.stored(first_url) if self.crawl_state is not None else None
            if stored is None:
                yield page_record(response.request, source, "http_status:304", response)
                return
            self.crawler.stats.inc_value("pages/not_modified")
            yield {**stored, "link_depth": depth}
            yield from self.follow_links(stored["body"], stored["final_url"] or stored["url"],
                                         stored["content_type"], source, depth)
            return
        content_type = response.headers.get(b"Content-Type", b"").decode("latin-1").strip()
        mime = content_type.split(";", 1)[0].strip().lower() or sniff_type(response.body)
        if mime not in KEPT_TYPES:
            yield page_record(response.request, source, f"not_html:{mime}", response)
            return
        if looks_binary(response.body):
            # A file served under a text type (a misconfigured server, a download script).
            yield page_record(response.request, source, "not_html:binary", response)
            return
        body, charset, replaced = decode_page_counted(response.body, header_charset(content_type))
        if replaced:
            self.crawler.stats.inc_value("pages/replaced_bytes", replaced)
        record = page_record(response.request, source, None, response, body=body, charset=charset)
        yield {**record, "replaced_bytes": replaced, "link_depth": depth}
        yield from self.follow_links(body, response.url, content_type, source, depth)

    def follow_links(self, body: str, page_url: str, content_type: str | None, source: dict,
                     depth: int) -> Iterator[scrapy.Request]:
        if not (content_type or "text/html").lower().startswith("text/html") or depth >= source["max_depth"]:
            return
        for url in self.page_links(body, page_url, source):
            request = self.page_request(url, source, depth + 1)
            if request is not None:
                yield request

    def page_failed(self, failure: Failure) -> Iterator[dict]:
        request = failure.request
        response = failure.value.response if failure.check(HttpError) else None
        yield page_record(request, self.sources[request.meta["source"]], failure_reason(failure), response)

    def page_links(self, html: str, page_url: str, source: dict) -> Iterator[str]:
        selector = parsel.Selector(text=html)
        base = urljoin(page_url, (selector.css("base::attr(href)").get() or "").strip())
        for href in selector.css("a::attr(href), area::attr(href)").getall():
            href = href.strip()
            if not href or href.startswith("#"):
                continue
            url = canonical_url(urljoin(base, href))
            if self.wanted(url, source):
                yield url

    def wanted(self, url: str, source: dict) -> bool:
        """Whether a link or sitemap entry is one the source crawls."""
        allow, deny = self.link_rules[source["name"]]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not in_domains(url, source["allowed_domains"]):
            return False
        if parts.path.rsplit(".", 1)[-1].lower() in IGNORED_SUFFIXES - {"xml", "gz"}:
            return False
        return not ((allow and not any(p.search(url) for p in allow)) or any(p.search(url) for p in deny))


def page_record(
    request: scrapy.Request,
    source: dict,
    reason: str | None,
    response: scrapy.http.Response | None = None,
    body: str | None = None,
    charset: str | None = None,
) -> dict:
    """One row of the pages dataset; `reason` is None for a kept page."""
    raw = response.body if response is not None and body is not None else None
    headers = response.headers if response is not None else {}
    content_type = headers.get(b"Content-Type")
    etag, last_modified = headers.get(b"ETag"), headers.get(b"Last-Modified")
    return {
        # The URL as the crawl asked for it, before any redirect.
        "url": (request.meta.get("redirect_urls") or [request.url])[0],
        "final_url": response.url if response is not None else request.url,
        "status": response.status if response is not None else None,
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "content_type": content_type.decode("latin-1") if content_type else None,
        "charset": charset,
        "body": body,
        "content_hash": hashlib.sha256(raw).hexdigest() if raw is not None else None,
        "source": source["name"],
        "category": source["category"],
        "reason": reason,
        "etag": etag.decode("latin-1") if etag and reason is None else None,
        "last_modified": last_modified.decode("latin-1") if last_modified and reason is None else None,
        "replaced_bytes": None,
    }


def failure_reason(failure: Failure) -> str:
    """Why the crawl gave up on a request, as a short rejection reason."""
    if failure.check(HttpError):
        return f"http_status:{failure.value.response.status}"
    if failure.check(DownloadTimeoutError, TwistedTimeout):
        return "timeout"
    if failure.check(DownloadCancelledError):
        return "too_large"  # the only cancellation Scrapy makes itself is for DOWNLOAD_MAXSIZE
    if failure.check(CannotResolveHostError):
        return "dns"
    if failure.check(
        DownloadConnectionRefusedError, DownloadFailedError, ResponseDataLossError,
        ConnectError, ConnectionDone, ConnectionLost,
    ):
        return "connection"
    if failure.check(RedirectSeen):
        return "redirect_seen"
    if failure.check(OffsiteRequest):
        return "offsite_redirect" if failure.request.meta.get("redirect_urls") else "offsite"
    if failure.check(IgnoreRequest):
        message = str(failure.value)
        # Scrapy tells its reasons for ignoring a request only by message (pinned by tests/test_crawl.py).
        if message.startswith("Forbidden by robots.txt"):
            return "robots"
        if message.startswith("max redirections"):
            return "too_many_redirects"
        return "ignored"
    return f"error:{failure.type.__name__}"


# --- character sets -------------------------------------------------------------------------

BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
# GBK and GB2312 are subsets of GB18030; servers often name the smaller one for the larger.
WIDER = {"gbk": "gb18030", "gb2312": "gb18030", "ascii": "utf-8"}
# Labels browsers accept that Python does not know.
LABELS = {"x-gbk": "gbk", "x-x-big5": "big5"}
# Big5 as sites actually write it includes Microsoft's extensions.
DECODER = {"big5": "cp950"}
# A Western single-byte charset in a header is often a server default that the page's meta corrects.
WEAK_HEADER = {"iso8859-1", "cp1252"}
DETECT = ("utf-8", "gb18030", "big5")
META_CHARSET = re.compile(rb"""<meta[^>]+?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.IGNORECASE)
HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?([^;"'\s]+)""", re.IGNORECASE)
# Characters that a wrong guess between GB18030 and Big5 produces and real Chinese prose rarely has:
# kana, Hangul, box drawing, Greek and Cyrillic, CJK extension A, private use.
UNLIKELY = re.compile(
    "[\u0370-\u04ff\u2500-\u257f\u3040-\u30ff\u3400-\u4dbf\uac00-\ud7af\ue000-\uf8ff\U00010000-\U0010ffff]"
)


def charset_name(label: str | bytes | None) -> str | None:
    """The codec a charset label means, or None for an unknown label."""
    if not label:
        return None
    if isinstance(label, bytes):
        label = label.decode("ascii", "ignore")
    label = label.strip().strip("'\"").lower()
    try:
        name = codecs.lookup(LABELS.get(label, label)).name
    except LookupError:
        return None
    return WIDER.get(name, name)


def header_charset(content_type: str) -> str | None:
    match = HEADER_CHARSET.search(content_type or "")
    return match.group(1) if match else None


def meta_charset(body: bytes) -> str | None:
    match = META_CHARSET.search(body[:4096])
    return match.group(1).decode("ascii") if match else None


def decode_page(body: bytes, header_label: str | None = None) -> tuple[str, str]:
    """Decode a page (see decode_page_counted); returns (text, charset used)."""
    text, charset, _ = decode_page_counted(body, header_label)
    return text, charset


def decode_page_counted(body: bytes, header_label: str | None = None) -> tuple[str, str, int]:
    """Decode a page: byte-order mark, else a declared charset that decodes cleanly (header, then
    <meta>) or nearly so, else detection (UTF-8, GB18030, Big5); never fails. Each run of
    undecodable bytes becomes one U+FFFD. Returns (text, charset used, bytes replaced)."""
    for bom, name in BOMS:
        if body.startswith(bom):
            text, replaced = _decode_replacing(body[len(bom):], name)
            return text, name, replaced
    header, meta = charset_name(header_label), charset_name(meta_charset(body))
    if header in WEAK_HEADER and meta:
        header = None
    declared = [c for c in dict.fromkeys((header, meta)) if c]
    for name in declared:
        text = _decode_strict(body, name)
        if text is not None:
            return text, name, 0
    for name in declared:
        # A page true to its declaration but for a few bad bytes: most of its non-ASCII decodes.
        text, replaced = _decode_replacing(body, name)
        if replaced <= 0.05 * sum(1 for ch in text if ord(ch) > 127):
            return text, name, replaced
    clean = [(name, text) for name in DETECT if (text := _decode_strict(body, name)) is not None]
    if clean:
        # UTF-8 decoding cleanly is near proof; between the two Chinese codecs, fewer odd characters wins.
        name, text = min(clean, key=lambda c: (c[0] != "utf-8", len(UNLIKELY.findall(c[1]))))
        return text, name, 0
    candidates = list(dict.fromkeys([*declared, *DETECT]))
    decoded = [(name, *_decode_replacing(body, name)) for name in candidates]
    name, text, replaced = min(decoded, key=lambda c: c[2])
    return text, name, replaced


# surrogateescape turns each undecodable byte into one lone surrogate: an exact count of bad bytes.
ESCAPED = re.compile("[\udc80-\udcff]+")


def _decode_replacing(body: bytes, name: str) -> tuple[str, int]:
    text = body.decode(DECODER.get(name, name), "surrogateescape")
    if not ESCAPED.search(text):
        return text, 0
    replaced = sum(len(run) for run in ESCAPED.findall(text))
    return ESCAPED.sub("\ufffd", text), replaced


def _decode_strict(body: bytes, name: str) -> str | None:
    try:
        return body.decode(DECODER.get(name, name))
    except (UnicodeDecodeError, LookupError):
        return None


def sniff_type(body: bytes) -> str:
    """A content type for a response that sent none."""
    head = body[:1024].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "text/html"
    return "application/octet-stream"


# Openings of common binary formats: PDF, PNG, JPEG, GIF, ZIP/Office, gzip, 7z, RAR, OLE (old
# Office), RIFF (WebP, WAV, AVI), ID3 (MP3), Ogg, FLAC, WebAssembly, ELF.
BINARY_MAGIC = (
    b"%PDF-", b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf",
    b"Rar!", b"\xd0\xcf\x11\xe0", b"RIFF", b"ID3", b"OggS", b"fLaC", b"\x00asm", b"\x7fELF",
)


def looks_binary(body: bytes) -> bool:
    """Whether a body sent as text is a binary file: a known magic number, or NUL bytes in its
    opening (text in UTF-16, which has them, starts with a byte-order mark)."""
    head = body[:1024]
    if head.startswith(BINARY_MAGIC) or head[4:8] == b"ftyp":  # ftyp: MP4 and QuickTime
        return True
    return b"\x00" in head and not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
