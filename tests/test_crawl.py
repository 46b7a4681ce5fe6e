"""The crawl room against real HTTP on the loopback interface: a test site with the troubles of
the web (odd charsets, robots, redirects, errors, a slow page, binaries, a link trap), and the
embedded sample site served by crawlers.localsite."""
from __future__ import annotations

import threading
import time
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from crawlers.localsite import serve_folder
from crawlers.run import CrawlError, run_crawl, scrapy_settings
from crawlers.spiders.site import crawl_source, decode_page
from schemas.dataset import StageManifest, read_kind, read_manifest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SITE = REPO / "flows" / "sample" / "site"

GBK_TEXT = "山药健脾益气，适合脾胃虚弱的人经常食用。"
BIG5_TEXT = "人參大補元氣，復脈固脫，補脾益肺。"
WRONG_TEXT = "枸杞子滋补肝肾，益精明目。"
DETECT_GB_TEXT = "当归补血活血，调经止痛，润肠通便。"
DETECT_BIG5_TEXT = "當歸補血活血，調經止痛，潤腸通便。"


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
        path = self.path.split("?", 1)[0]
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
        "mailto:editor@example.invalid", "picture.jpg",
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
        "robots.txt": b"User-agent: *\nDisallow: /private/\n",
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
    server.requests, server.content_types = [], content_types
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
    ]
    settings = {"download_timeout": 1, "max_page_bytes": 200_000, "autothrottle": False, "concurrency": 16}
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
    for page in kept.values():
        assert "\ufffd" not in page["body"]
        assert len(page["content_hash"]) == 64 and page["status"] == 200


def test_robots_folder_is_not_fetched_and_is_rejected_as_robots(trouble_crawl):
    assert not any(path.startswith("/private/") for path in trouble_crawl["requests"])
    assert trouble_crawl["rejected"]["/private/secret.html"]["reason"] == "robots"


def test_failures_are_rejected_rows_with_their_reasons(trouble_crawl):
    rejected = trouble_crawl["rejected"]
    assert rejected["/missing.html"]["reason"] == "http_status:404"
    assert rejected["/missing.html"]["status"] == 404
    assert rejected["/broken"]["reason"] == "http_status:500"
    assert rejected["/slow.html"]["reason"] == "timeout"
    assert rejected["/attachment/42"]["reason"] == "not_html"
    assert rejected["/huge.html"]["reason"] == "too_large"
    assert rejected["/away"]["reason"] == "offsite_redirect"
    # 5xx and timeouts are retried twice before the crawl gives up on them
    counts = Counter(trouble_crawl["requests"])
    assert (counts["/broken"], counts["/slow.html"]) == (3, 3), counts


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


def test_resumed_crawl_with_jobdir_fetches_nothing_twice(trouble_site, tmp_path):
    server, base = trouble_site
    source = {"name": "diary", "category": "web", "start_urls": [f"{base}/diary/100"], "allow": [r"/diary/"],
              "max_depth": 2}
    settings = {"jobdir": tmp_path / "job", "autothrottle": False}
    first = run_crawl([source], tmp_path / "one", StageManifest(stage="crawl"), settings)
    before = len(server.requests)
    second = run_crawl([source], tmp_path / "two", StageManifest(stage="crawl"), settings)
    page_requests = [p for p in server.requests[before:] if p != "/robots.txt"]
    assert page_requests == []
    assert first.rows_out == second.rows_out == {"pages": 3}


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
        scrapy_settings({"jobdir": __file__})
    source = crawl_source({"name": "x", "category": "web", "start_urls": ["http://WWW.Example.com/a?b=2&a=1#frag"]})
    assert source["allowed_domains"] == ["www.example.com"]
    assert source["start_urls"] == ["http://www.example.com/a?a=1&b=2"]


def test_decode_page_prefers_declarations_that_decode_and_never_fails():
    assert decode_page("中医".encode("gbk"), "GB2312") == ("中医", "gb18030")
    assert decode_page("中醫".encode("big5"), None) == ("中醫", "big5")
    assert decode_page(b'<meta charset="utf-8">' + "经络".encode("gb18030"), None)[1] == "gb18030"
    # a Western header charset is a server default when the page's meta names another
    assert decode_page('<meta charset="gbk">脾胃'.encode("gbk"), "ISO-8859-1")[0].endswith("脾胃")
    assert decode_page(b"\xef\xbb\xbf\xe4\xb8\xad", "gbk") == ("中", "utf-8")
    text, charset = decode_page(("肝肾阴虚，腰膝酸软。" * 5).encode("utf-8") + b"\xff", "utf-8")
    assert text.startswith("肝肾") and charset == "utf-8"
