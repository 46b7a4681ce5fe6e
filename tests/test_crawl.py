"""The crawl room against real HTTP on the loopback interface: a test site with the troubles of
the web (odd charsets, robots, redirects, errors, a slow page, binaries, a link trap), and the
embedded sample site served by crawlers.localsite."""
from __future__ import annotations

import gzip
import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from crawlers.localsite import serve_folder
from crawlers.middlewares import retry_after_seconds, retry_wait
from crawlers.run import CrawlError, child_environment, crawl_command, crawl_spec, run_crawl, scrapy_settings
from crawlers.spiders.site import crawl_source, decode_page, decode_page_counted, looks_binary
from crawlers.state import STATE_FILE
from schemas.dataset import StageManifest, read_kind, read_manifest
from transforms.ingest.extract import pages_to_documents

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SITE = REPO / "flows" / "sample" / "site"

GBK_TEXT = "山药健脾益气，适合脾胃虚弱的人经常食用。"
BIG5_TEXT = "人參大補元氣，復脈固脫，補脾益肺。"
WRONG_TEXT = "枸杞子滋补肝肾，益精明目。"
DETECT_GB_TEXT = "当归补血活血，调经止痛，润肠通便。"
DETECT_BIG5_TEXT = "當歸補血活血，調經止痛，潤腸通便。"
DAMAGED_TEXT = "麦冬养阴生津，润肺清心。"
CONTACT = "https://tcm.example.org/crawler"
ARTICLE = (
    "<h1>菊花：疏散风热的常用药</h1><p>菊花味甘、苦，性微寒，归肺经、肝经，能够疏散风热、平抑肝阳、清肝明目、"
    "清热解毒。</p><h2>用法</h2><p>常用量为五至十克，煎服或泡茶。疏散风热多用黄菊花，平肝明目多用白菊花。</p>"
)
# The same article inside two different sets of page chrome, as a site and its archive print it.
BOILERPLATE = {
    "herb/juhua.html": (
        '<header class="site-header"><a href="/">杏林网</a><p>传承中医药知识</p></header>'
        '<nav><a href="/">首页</a> <a href="/index.html">本草</a> <a href="/gbk.html">方剂</a></nav>'
        '<div class="breadcrumb"><a href="/">首页</a> &gt; 本草</div><main><article>{article}</article></main>'
        '<aside class="related"><h3>相关阅读</h3><ul><li><a href="/big5.html">人参</a></li>'
        '<li><a href="/gbk.html">山药</a></li></ul></aside>'
        '<div class="ad-banner"><a href="http://ads.example.invalid/">限时特价，买一送一</a></div>'
        '<footer><p>杏林网 版权所有 2024</p></footer><script>track("pv")</script>'
    ),
    "archive/2019/juhua.html": (
        '<div id="topbar">旧版首页 | 登录 | 注册</div><ul class="menu"><li><a href="/">首页</a></li>'
        '<li><a href="/wrong.html">养生</a></li><li><a href="/plain.txt">文库</a></li></ul>'
        '<div class="main-content"><div class="content">{article}</div>'
        '<div class="share">分享到：<a href="#">微博</a> <a href="#">微信</a></div>'
        '<div class="comments"><h3>网友评论</h3><p>好文章，收藏了。</p></div></div>'
        '<div class="sidebar"><h3>热门文章</h3><a href="/big5.html">人参大补元气</a><a href="/gbk.html">山药健脾</a></div>'
        '<div id="footer">Copyright 2019 杏林网（旧版） 京ICP备00000000号</div>'
    ),
}


CHAIN_LENGTH = 8


def html(title: str, body: str, meta: str = "") -> str:
    return f"<!DOCTYPE html><html><head>{meta}<title>{title}</title></head><body>{body}</body></html>"


class LoopbackServer(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when the crawler opens many at once, and a
    # dropped SYN is retried only after a second: longer than the test's download timeout.
    request_queue_size = 128
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # the crawler hangs up on the huge page and the slow one, on purpose


class TroubleSite(SimpleHTTPRequestHandler):
    """Static files from a folder, a few chosen Content-Types, and dynamic trouble."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        self.server.agents.add(self.headers.get("User-Agent"))
        path = self.path.split("?", 1)[0]
        if path == "/busy":
            # Overloaded once: asks the crawler to come back in a second.
            if self.server.requests.count("/busy") == 1:
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return self.reply(200, "text/html; charset=utf-8", html("忙", "<p>稍后再来，这次可以了。</p>").encode())
        if path == "/manual.html":
            return self.reply(200, "text/html", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n")
        if path == "/blob.html":
            return self.reply(200, "text/html; charset=utf-8", b"<html>\x00\x01\x02\x00" + bytes(range(256)))
        if path.startswith("/chain/"):
            # A slow chain of pages, for stopping a crawl half way.
            number = int(path.rsplit("/", 1)[1])
            time.sleep(0.25)
            link = f'<a href="/chain/{number + 1}">下一页</a>' if number < CHAIN_LENGTH else ""
            return self.reply(200, "text/html; charset=utf-8", html(str(number), f"<p>第{number}页。</p>{link}").encode())
        if path == "/redirect/1":
            return self.redirect(301, "/redirect/2")
        if path == "/redirect/2":
            return self.redirect(302, "/landing.html")
        if path == "/redirect/seen":
            return self.redirect(301, "/gbk.html")
        if path == "/away":
            return self.redirect(302, "http://elsewhere.invalid/page.html")
        if path == "/broken":
            return self.reply(500, "text/html", b"<html><body>server error</body></html>")
        if path == "/slow.html":
            time.sleep(3)
            return self.reply(200, "text/html", html("slow", "<p>late</p>").encode())
        if path == "/attachment/42":
            return self.reply(200, "application/octet-stream", bytes(range(256)) * 8)
        if path.startswith(("/calendar/", "/diary/")):
            folder, day = path.rsplit("/", 1)
            following = int(day) + 1
            body = f'<p>第{day}天的记录。</p><a href="{folder}/{following}">下一天</a><a href="/">首页</a>'
            return self.reply(200, "text/html; charset=utf-8", html(day, body).encode())
        return super().do_GET()

    def guess_type(self, path) -> str:
        name = "/" + Path(path).relative_to(self.directory).as_posix()
        return self.server.content_types.get(name) or super().guess_type(path)

    def redirect(self, status: int, location: str) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the crawler gave up waiting (the slow page)

    def log_message(self, format, *args) -> None:
        pass


def write_site(folder: Path) -> dict[str, str]:
    """The test site's files; returns the Content-Type to send for some of them."""
    links = [
        "gbk.html", "gbk-bare.html", "big5.html", "big5-bare.html", "wrong.html", "plain.txt",
        "private/secret.html", "redirect/1", "redirect/seen", "away", "missing.html", "broken", "slow.html",
        "attachment/42", "huge.html", "calendar/1", "nofollow/skipped.html", "gbk.html#top",
        "mailto:editor@example.invalid", "picture.jpg", "busy", "manual.html", "blob.html", "damaged.html",
        *BOILERPLATE,
    ]
    index = "".join(f'<a href="{link}">{link}</a> ' for link in links)
    files = {
        "index.html": html("索引", f"<p>测试站点</p>{index}", '<meta charset="utf-8">').encode("utf-8"),
        "gbk.html": html("GBK", f"<p>{GBK_TEXT}</p>", '<meta charset="gbk">').encode("gbk"),
        "gbk-bare.html": html("GB", f"<p>{DETECT_GB_TEXT}</p>").encode("gb18030"),
        "big5.html": html("Big5", f"<p>{BIG5_TEXT}</p>").encode("big5"),
        "big5-bare.html": html("Big5", f"<p>{DETECT_BIG5_TEXT}</p>").encode("big5"),
        "wrong.html": html("错", f"<p>{WRONG_TEXT}</p>", '<meta charset="utf-8">').encode("gb18030"),
        "plain.txt": "纯文本页面：菊花疏散风热。\n".encode("utf-8"),
        "landing.html": html("落地", "<p>重定向之后到达这里。</p>", '<meta charset="utf-8">').encode("utf-8"),
        "huge.html": html("大", "<p>" + "大" * 100_000 + "</p>", '<meta charset="utf-8">').encode("utf-8"),
        "private/secret.html": html("秘", "<p>不应抓取</p>").encode("utf-8"),
        "nofollow/skipped.html": html("略", "<p>不应抓取</p>").encode("utf-8"),
        "picture.jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
        "damaged.html": html("损", f"<p>{DAMAGED_TEXT}</p>", '<meta charset="gbk">').encode("gbk").replace(
            "润".encode("gbk"), b"\xff\xff"),
        "orphan.html": html("孤", "<p>只在站点地图里出现的页面。</p>", '<meta charset="utf-8">').encode("utf-8"),
        "robots.txt": b"User-agent: *\nDisallow: /private/\nSitemap: /sitemap.xml\n",
        "sitemap.xml": (
            '<?xml version="1.0" encoding="UTF-8"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            "<sitemap><loc>/sitemaps/pages.xml.gz</loc></sitemap></sitemapindex>"
        ).encode(),
        "sitemaps/pages.xml.gz": gzip.compress((
            '<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            "<url><loc>/orphan.html</loc></url><url><loc>/gbk.html</loc></url>"
            "<url><loc>http://elsewhere.invalid/x.html</loc></url></urlset>"
        ).encode()),
        **{name: html("菊花", chrome.format(article=ARTICLE), '<meta charset="utf-8">').encode("utf-8")
           for name, chrome in BOILERPLATE.items()},
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return {
        "/index.html": "text/html; charset=utf-8",
        "/big5.html": "text/html; charset=big5",
        "/wrong.html": "text/html; charset=utf-8",  # declares UTF-8, sends GB18030
        "/plain.txt": "text/plain; charset=utf-8",
    }


@pytest.fixture(scope="module")
def trouble_site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trouble-site")
    content_types = write_site(folder)
    server = LoopbackServer(("127.0.0.1", 0), partial(TroubleSite, directory=str(folder)))
    server.requests, server.content_types, server.agents = [], content_types, set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def trouble_crawl(trouble_site, tmp_path_factory):
    server, base = trouble_site
    output = tmp_path_factory.mktemp("crawl") / "pages"
    sources = [
        {"name": "trouble", "category": "web", "start_urls": [f"{base}/index.html"],
         "allowed_domains": [], "deny": [r"/nofollow/"], "max_depth": 3},
        {"name": "diary", "category": "literature", "start_urls": [f"{base}/diary/1"],
         "allow": [r"/diary/"], "max_depth": 50, "max_pages": 5},
        {"name": "mapped", "category": "web", "sitemap_urls": [f"{base}/robots.txt"], "max_depth": 0},
    ]
    settings = {"download_timeout": 1, "max_page_bytes": 200_000, "autothrottle": False, "concurrency": 16,
                "retry_backoff": 0.05, "contact_url": CONTACT}
    manifest = run_crawl(sources, output, StageManifest(stage="crawl"), settings)
    kept = read_kind(output, "pages").to_pylist()
    rejected_files = sorted((output / "rejected" / "pages").glob("*.parquet"))
    rejected = [r for f in rejected_files for r in pq.read_table(f).to_pylist()]
    return {
        "manifest": manifest, "kept": {r["url"].removeprefix(base): r for r in kept},
        "rejected": {r["url"].removeprefix(base): r for r in rejected}, "requests": list(server.requests),
        "kept_rows": kept, "rejected_rows": rejected,
    }


def test_pages_decode_to_the_right_chinese_text(trouble_crawl):
    kept = trouble_crawl["kept"]
    assert GBK_TEXT in kept["/gbk.html"]["body"] and kept["/gbk.html"]["charset"] == "gb18030"
    assert DETECT_GB_TEXT in kept["/gbk-bare.html"]["body"] and kept["/gbk-bare.html"]["charset"] == "gb18030"
    assert BIG5_TEXT in kept["/big5.html"]["body"] and kept["/big5.html"]["charset"] == "big5"
    assert DETECT_BIG5_TEXT in kept["/big5-bare.html"]["body"] and kept["/big5-bare.html"]["charset"] == "big5"
    assert WRONG_TEXT in kept["/wrong.html"]["body"] and kept["/wrong.html"]["charset"] == "gb18030"
    assert "菊花疏散风热" in kept["/plain.txt"]["body"]
    for path, page in kept.items():
        assert ("\ufffd" in page["body"]) == (path == "/damaged.html")
        assert len(page["content_hash"]) == 64 and page["status"] == 200


def test_undecodable_bytes_are_replaced_and_counted(trouble_crawl):
    page = trouble_crawl["kept"]["/damaged.html"]
    assert page["charset"] == "gb18030" and page["replaced_bytes"] == 2
    assert DAMAGED_TEXT.replace("润", "\ufffd") in page["body"]
    assert trouble_crawl["manifest"].stats["crawl"]["pages/replaced_bytes"] == 2


def test_robots_folder_is_not_fetched_and_is_rejected_as_robots(trouble_crawl):
    assert not any(path.startswith("/private/") for path in trouble_crawl["requests"])
    assert trouble_crawl["rejected"]["/private/secret.html"]["reason"] == "robots"


def test_failures_are_rejected_rows_with_their_reasons(trouble_crawl):
    rejected = trouble_crawl["rejected"]
    assert rejected["/missing.html"]["reason"] == "http_status:404"
    assert rejected["/missing.html"]["status"] == 404
    assert rejected["/broken"]["reason"] == "http_status:500"
    assert rejected["/slow.html"]["reason"] == "timeout"
    assert rejected["/attachment/42"]["reason"] == "not_html:application/octet-stream"
    assert rejected["/huge.html"]["reason"] == "too_large"
    assert rejected["/away"]["reason"] == "offsite_redirect"
    # a PDF and a file full of NUL bytes, both served as text/html
    assert rejected["/manual.html"]["reason"] == rejected["/blob.html"]["reason"] == "not_html:binary"
    # 5xx and timeouts are retried twice before the crawl gives up on them
    counts = Counter(trouble_crawl["requests"])
    assert (counts["/broken"], counts["/slow.html"]) == (3, 3), counts


def test_retry_after_is_honoured_and_the_page_kept(trouble_crawl):
    assert Counter(trouble_crawl["requests"])["/busy"] == 2
    assert "这次可以了" in trouble_crawl["kept"]["/busy"]["body"]
    assert trouble_crawl["manifest"].stats["crawl"]["retry/retry_after"] == 1
    # the wait doubles per retry and is never shorter than the server asked
    assert [retry_wait(n, 0.5) for n in range(4)] == [0.0, 0.5, 1.0, 2.0]
    assert retry_wait(1, 0.5, retry_after=3.0) == 3.0
    assert retry_after_seconds(b"120") == 120.0 and retry_after_seconds(b"soon") is None
    from datetime import datetime, timezone
    now = datetime(2026, 1, 5, 8, 0, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("Mon, 05 Jan 2026 08:00:30 GMT", now) == 30.0


def test_user_agent_names_the_product_and_contact(trouble_crawl, trouble_site):
    server, _ = trouble_site
    assert server.agents == {f"tcm-corpus/0.1 (+{CONTACT})"}


def test_sitemaps_from_robots_index_and_gzip_seed_the_source(trouble_crawl):
    orphan = trouble_crawl["kept"]["/orphan.html"]
    assert orphan["source"] == "mapped" and "只在站点地图里" in orphan["body"]
    # a page another source crawled already is not fetched again; off-domain entries are dropped
    assert trouble_crawl["kept"]["/gbk.html"]["source"] == "trouble"
    assert trouble_crawl["manifest"].stats["crawl"]["pages/from_sitemap"] == 2
    assert trouble_crawl["requests"].count("/sitemaps/pages.xml.gz") == 1


def test_pages_differing_only_in_boilerplate_extract_to_the_same_text(trouble_crawl):
    rows = [trouble_crawl["kept"]["/" + name] for name in BOILERPLATE]
    assert rows[0]["content_hash"] != rows[1]["content_hash"]
    import pyarrow as pa
    from schemas.records import PAGE_SCHEMA
    documents, rejected = pages_to_documents(pa.Table.from_pylist(rows, schema=PAGE_SCHEMA), {})
    assert rejected.num_rows == 0
    first, second = documents.to_pylist()
    assert first["text"] == second["text"] and first["id"] == second["id"]
    assert first["text"].startswith("菊花：疏散风热的常用药\n\n菊花味甘")
    assert first["text"].endswith("平肝明目多用白菊花。")


def test_redirect_chain_is_followed_and_recorded_under_the_first_url(trouble_crawl):
    page = trouble_crawl["kept"]["/redirect/1"]
    assert page["final_url"].endswith("/landing.html")
    assert "重定向之后到达这里" in page["body"]
    # a redirect to a page crawled already is dropped by Scrapy's duplicate filter, and still accounted for
    seen = trouble_crawl["rejected"]["/redirect/seen"]
    assert seen["reason"] == "redirect_seen" and seen["final_url"].endswith("/gbk.html")


def test_every_requested_url_is_one_row_and_the_ledger_balances(trouble_crawl):
    manifest = trouble_crawl["manifest"]
    kept, rejected = trouble_crawl["kept_rows"], trouble_crawl["rejected_rows"]
    assert manifest.rows_in["pages"] == len(kept) + len(rejected)
    assert manifest.rows_out["pages"] == len(kept) and manifest.rows_rejected["pages"] == len(rejected)
    urls = [r["url"] for r in kept + rejected]
    assert len(urls) == len(set(urls)), "a page was fetched twice"
    # fragments are dropped, so gbk.html#top is the page already fetched
    assert not any("#" in url for url in urls)
    # links that are excluded are never requested: deny pattern, mailto, image extensions
    requests = trouble_crawl["requests"]
    assert not any(p.startswith(("/nofollow/", "/picture")) for p in requests)
    assert manifest.rejected_by_reason["http_status"] == 2
    assert manifest.stats["crawl"]["downloader/request_count"] >= len(urls)


def test_link_trap_is_bounded_by_depth_and_by_page_budget(trouble_crawl):
    rows = trouble_crawl["kept_rows"]
    calendar = sorted(r["url"] for r in rows if "/calendar/" in r["url"])
    diary = [r for r in rows if r["source"] == "diary"]
    # index is depth 0, so a depth of 3 reaches calendar days 1..3
    assert [u.rsplit("/", 1)[1] for u in calendar] == ["1", "2", "3"]
    assert len(diary) == 5 and {r["category"] for r in diary} == {"literature"}
    assert all("/diary/" in r["url"] for r in diary)


def test_embedded_sample_site_crawls_with_defaults(tmp_path):
    output = tmp_path / "sample-pages"
    with serve_folder(SAMPLE_SITE) as base:
        manifest = run_crawl(
            [{"name": "sample", "category": "web", "start_urls": [base]}], output,
            StageManifest(stage="crawl", config_hash="c0ffee"),
        )
    assert read_manifest(output).fingerprint == manifest.fingerprint
    assert (manifest.stage, manifest.config_hash) == ("crawl", "c0ffee")
    pages = {r["url"].removeprefix(base): r for r in read_kind(output, "pages").to_pylist()}
    assert {"herbs/huangqi.html", "formulas/guizhi-tang.html", "acupoints/zusanli.html",
            "diet/shanyao-yimi-zhou.html", "seasons/sishi-yangsheng.html"} <= set(pages)
    gbk_page = pages["diet/shanyao-yimi-zhou.html"]
    assert gbk_page["content_type"] == "text/html" and gbk_page["charset"] == "gb18030"
    assert "山药和薏苡仁都是药食同源的食材" in gbk_page["body"]
    assert "足陽明胃經" in pages["acupoints/zusanli.html"]["body"]
    assert manifest.rejected_by_reason == {"http_status": 1, "robots": 1}
    assert manifest.rows_in["pages"] == manifest.rows_out["pages"] + manifest.rows_rejected["pages"]


def test_crawl_stopped_half_way_resumes_without_refetching(trouble_site, tmp_path):
    server, base = trouble_site
    source = {"name": "chain", "category": "web", "start_urls": [f"{base}/chain/1"], "max_depth": 20}
    settings = {"state_dir": tmp_path / "state", "autothrottle": False, "concurrency": 1}
    spec = crawl_spec([source], tmp_path / "pages", StageManifest(stage="crawl"), settings)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    before = len(server.requests)
    child = subprocess.Popen(crawl_command(spec_path), env=child_environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        journalled = []
        while len(journalled) < 3 and child.poll() is None:
            time.sleep(0.05)
            try:
                with sqlite3.connect(tmp_path / "state" / STATE_FILE) as db:
                    journalled = [url for (url,) in db.execute("SELECT url FROM journal")]
            except sqlite3.OperationalError:
                pass  # the crawl has not created its tables yet
        child.send_signal(signal.SIGKILL)  # no chance to save anything on the way out
    finally:
        child.wait()
    assert len(journalled) >= 3 and not (tmp_path / "pages").exists()

    manifest = run_crawl([source], tmp_path / "pages", StageManifest(stage="crawl"), settings)
    fetched = Counter(p for p in server.requests[before:] if p.startswith("/chain/"))
    for url in journalled:
        assert fetched[url.removeprefix(base)] == 1, f"{url} was stored before the stop and fetched again"
    assert manifest.rows_out == {"pages": CHAIN_LENGTH}
    assert manifest.stats["crawl"]["pages/resumed"] >= len(journalled)


class ChangingSite(SimpleHTTPRequestHandler):
    """Pages that answer conditional requests (ETag, Last-Modified) and one that cannot."""

    def do_GET(self) -> None:
        path = self.path
        self.server.requests.append((path, self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")))
        if path not in self.server.pages:
            self.send_error(404)
            return
        body = self.server.pages[path].encode("utf-8")
        etag = '"' + str(abs(hash(body))) + '"'
        modified = "Mon, 05 Jan 2026 08:00:00 GMT"
        validators = path != "/plain.html"  # this one sends no validators: told by its content hash
        if validators and (self.headers.get("If-None-Match") == etag or self.headers.get("If-Modified-Since") == modified and path == "/dated.html"):
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if validators and path != "/dated.html":
            self.send_header("ETag", etag)
        if path == "/dated.html":
            self.send_header("Last-Modified", modified)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


def test_recrawl_asks_only_for_changes_and_keeps_unchanged_rows(tmp_path):
    pages = {
        "/": html("首页", '<a href="/same.html">一</a><a href="/dated.html">二</a><a href="/plain.html">三</a>'
                         '<a href="/changes.html">四</a>'),
        "/same.html": html("同", "<p>不变的页面。</p>"),
        "/dated.html": html("日", "<p>只有修改日期的页面。</p>"),
        "/plain.html": html("素", "<p>没有任何校验头的页面。</p>"),
        "/changes.html": html("变", "<p>第一版。</p>"),
    }
    server = LoopbackServer(("127.0.0.1", 0), ChangingSite)
    server.pages, server.requests = pages, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        source = {"name": "changing", "category": "web", "start_urls": [f"{base}/"]}
        settings = {"state_dir": tmp_path / "state", "autothrottle": False}
        run_crawl([source], tmp_path / "first", StageManifest(stage="crawl"), settings)
        first = {r["url"]: r for r in read_kind(tmp_path / "first", "pages").to_pylist()}
        pages["/changes.html"] = html("变", "<p>第二版，内容改了。</p>")
        server.requests.clear()
        time.sleep(1.1)  # so that a refetched row would carry a later fetched_at
        second_manifest = run_crawl([source], tmp_path / "second", StageManifest(stage="crawl"), settings)
        second = {r["url"]: r for r in read_kind(tmp_path / "second", "pages").to_pylist()}
    finally:
        server.shutdown()
        server.server_close()
    asked = {path: (etag, since) for path, etag, since in server.requests}
    assert asked["/same.html"][0] == first[f"{base}/same.html"]["etag"]
    assert asked["/dated.html"][1] == "Mon, 05 Jan 2026 08:00:00 GMT"
    assert asked["/plain.html"] == (None, None)
    assert second_manifest.stats["crawl"]["pages/not_modified"] == 3  # /, same and dated answered 304
    # unchanged pages, by 304 or by content hash, keep their rows exactly; the changed one is new
    for path in ("/", "/same.html", "/dated.html", "/plain.html"):
        assert second[base + path] == first[base + path], path
    assert second[f"{base}/changes.html"]["content_hash"] != first[f"{base}/changes.html"]["content_hash"]
    assert "第二版" in second[f"{base}/changes.html"]["body"]
    assert second_manifest.stats["crawl"]["pages/unchanged"] == 4


def test_child_failure_is_one_line_crawl_error(trouble_site, tmp_path):
    _, base = trouble_site
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output's parent folder should be")
    with pytest.raises(CrawlError) as caught:
        run_crawl([{"name": "x", "category": "web", "start_urls": [f"{base}/diary/1"], "max_pages": 1}],
                  blocker / "pages", StageManifest(stage="crawl"), {"autothrottle": False})
    message = str(caught.value)
    assert message.startswith("crawl failed:") and "NotADirectoryError" in message
    assert "\n" not in message and "Traceback" not in message


def test_sources_and_settings_are_checked_before_crawling():
    with pytest.raises(ValueError, match="category"):
        crawl_source({"name": "x", "category": "blogs", "start_urls": ["http://a.example/"]})
    with pytest.raises(ValueError, match="start_urls"):
        crawl_source({"name": "x", "category": "web", "start_urls": ["ftp://a.example/"]})
    with pytest.raises(ValueError, match="unknown crawl setting"):
        scrapy_settings({"user_agnet": "typo"})
    with pytest.raises(ValueError, match="not a folder"):
        scrapy_settings({"state_dir": __file__})
    with pytest.raises(ValueError, match="contact_url"):
        scrapy_settings({"contact_url": "tcm.example.org"})
    assert scrapy_settings({"contact_url": CONTACT})["USER_AGENT"] == f"tcm-corpus/0.1 (+{CONTACT})"
    assert scrapy_settings({"user_agent": f"herbs/2 (+{CONTACT})", "contact_url": CONTACT})["USER_AGENT"] == (
        f"herbs/2 (+{CONTACT})")
    with pytest.raises(ValueError, match="start_urls"):
        crawl_source({"name": "x", "category": "web"})
    assert crawl_source({"name": "x", "category": "web", "sitemap_urls": ["http://a.example/sitemap.xml"]})[
        "allowed_domains"] == ["a.example"]
    source = crawl_source({"name": "x", "category": "web", "start_urls": ["http://WWW.Example.com/a?b=2&a=1#frag"]})
    assert source["allowed_domains"] == ["www.example.com"]
    assert source["start_urls"] == ["http://www.example.com/a?a=1&b=2"]


def test_binary_bodies_are_told_from_text():
    assert looks_binary(b"%PDF-1.4 ...") and looks_binary(b"\x89PNG\r\n") and looks_binary(b"PK\x03\x04zip")
    assert looks_binary(b"\x00\x00\x00\x18ftypmp42") and looks_binary(b"<html>\x00\x00")
    assert not looks_binary("<html><p>中医</p></html>".encode("gb18030"))
    assert not looks_binary("中医".encode("utf-16"))  # NUL bytes, but a byte-order mark says text


def test_decode_page_prefers_declarations_that_decode_and_never_fails():
    assert decode_page("中医".encode("gbk"), "GB2312") == ("中医", "gb18030")
    assert decode_page("中醫".encode("big5"), None) == ("中醫", "big5")
    assert decode_page(b'<meta charset="utf-8">' + "经络".encode("gb18030"), None)[1] == "gb18030"
    # a Western header charset is a server default when the page's meta names another
    assert decode_page('<meta charset="gbk">脾胃'.encode("gbk"), "ISO-8859-1")[0].endswith("脾胃")
    assert decode_page(b"\xef\xbb\xbf\xe4\xb8\xad", "gbk") == ("中", "utf-8")
    text, charset, replaced = decode_page_counted(("肝肾阴虚，腰膝酸软。" * 5).encode("utf-8") + b"\xff\xfe", "utf-8")
    assert text.startswith("肝肾") and text.endswith("\ufffd") and (charset, replaced) == ("utf-8", 2)
    # nothing declared and nothing decodes cleanly: the least damaged reading, damage counted
    text, charset, replaced = decode_page_counted("脾胃虚弱".encode("gbk") * 10 + b"\xff", None)
    assert (text[:4], charset, replaced) == ("脾胃虚弱", "gb18030", 1)


def test_crawl_flow_resumes_recrawls_into_the_same_dataset_and_ingest_drops_repeated_articles(
    prefect_harness, trouble_site, tmp_path, monkeypatch
):
    from crawlers.state import default_state_dir
    from flows.pipeline import crawl_flow, ingest_flow

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    _, base = trouble_site
    config = tmp_path / "build.toml"
    config.write_text(
        "[[sources]]\nname = \"herbs\"\nkind = \"crawl\"\ncategory = \"web\"\nmax_depth = 0\n"
        f"start_urls = [\"{base}/herb/juhua.html\", \"{base}/archive/2019/juhua.html\"]\n"
        "[crawl]\nautothrottle = false\ndownload_timeout = 2\n",
        encoding="utf-8",
    )
    output = tmp_path / "crawl"
    first = crawl_flow(str(output), str(config))
    assert first["rows_out"] == {"pages": 2} and not first["skipped"]
    state = default_state_dir(output)
    assert state.parent == tmp_path / "cache" / "tcm-corpus" / "crawl-state" and (state / STATE_FILE).is_file()
    assert not list(output.rglob(STATE_FILE)), "the crawl state lives outside the stage output"
    fingerprint = read_manifest(output).fingerprint
    assert crawl_flow(str(output), str(config))["skipped"]
    # a scheduled re-crawl runs again; nothing changed, so the dataset is the same and what reads it can skip
    recrawled = crawl_flow(str(output), str(config), recrawl=True)
    assert not recrawled["skipped"] and recrawled["stats"]["crawl"]["pages/unchanged"] == 2
    assert read_manifest(output).fingerprint == fingerprint

    ingest = ingest_flow(str(tmp_path / "ingest"), str(config), [str(output)])
    assert ingest["rows_in"] == {"pages": 2} and ingest["rows_kept"] == {"pages": 1}
    assert ingest["rejected_by_reason"] == {"repeated_record": 1}


def test_a_crawl_process_started_ahead_runs_the_next_crawl(trouble_site, tmp_path):
    from crawlers import run

    server, base = trouble_site
    run.start_ahead()
    ahead = run._ahead
    run.start_ahead()  # once: the waiting process is kept
    assert run._ahead is ahead and ahead.process.poll() is None
    before = len(server.requests)
    manifest = run_crawl([{"name": "diary", "category": "web", "start_urls": [f"{base}/diary/1"], "max_pages": 2}],
                         tmp_path / "pages", StageManifest(stage="crawl"), {"autothrottle": False})
    assert run._ahead is None and ahead.process.returncode == 0
    assert manifest.rows_out == {"pages": 2} and len(server.requests) > before
    assert read_kind(tmp_path / "pages", "pages").num_rows == 2


def test_a_crawl_process_given_no_crawl_exits_without_crawling(tmp_path):
    from crawlers.run import CrawlProcess

    process = CrawlProcess()
    process.close()
    assert process.process.returncode == 0 and not process.log_path.exists()


def test_a_command_starts_the_crawl_process_ahead_only_for_a_crawl_that_will_run(tmp_path, monkeypatch):
    import argparse

    import crawlers.run
    from flows import cli
    from flows.config import load_config, sample_config_path
    from schemas.dataset import MANIFEST

    started = []
    monkeypatch.setattr(crawlers.run, "start_ahead", lambda: started.append(True))
    sample = load_config(sample_config_path())  # has a crawl source
    build = argparse.Namespace(flow="build-corpus", workdir=str(tmp_path / "build"), output=None, recrawl=False)
    cli._start_crawl_ahead(build, sample)
    assert started == [True]
    crawled = tmp_path / "build" / "stages" / "crawl"
    crawled.mkdir(parents=True)
    (crawled / MANIFEST).write_text("{}", encoding="utf-8")
    cli._start_crawl_ahead(build, sample)  # crawled before: build-corpus would skip the crawl
    assert started == [True]
    cli._start_crawl_ahead(argparse.Namespace(flow="crawl", workdir=None, output=str(crawled), recrawl=True), sample)
    cli._start_crawl_ahead(argparse.Namespace(flow="refresh", workdir=str(tmp_path / "build"), output=None, recrawl=False), sample)
    assert started == [True, True, True]  # a re-crawl always runs
    cli._start_crawl_ahead(argparse.Namespace(flow="clean", workdir=None, output=str(tmp_path / "c"), recrawl=False), sample)
    cli._start_crawl_ahead(build.__class__(flow="build-corpus", workdir=str(tmp_path / "other"), output=None, recrawl=False),
                           load_config(None))  # no crawl source
    assert started == [True, True, True]
