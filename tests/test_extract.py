"""Main-content extraction on the embedded sample site, and pages → documents with its ledger."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from schemas.records import DOCUMENT_SCHEMA, PAGE_SCHEMA, document_id
from transforms.ingest.extract import extract_main, pages_to_documents

SITE = Path(__file__).resolve().parents[1] / "flows" / "sample" / "site"
ARTICLES = {
    "herbs/huangqi.html": ("黄芪：补气固表的常用药", "黄芪为豆科植物蒙古黄芪或膜荚黄芪的干燥根", ["功效与应用", "用法与注意"]),
    "formulas/guizhi-tang.html": ("桂枝汤：《伤寒论》第一方", "方中桂枝辛温，解肌发表", ["组成与方义", "主治证候", "服法"]),
    "acupoints/zusanli.html": ("足三里穴：強壯保健要穴", "足三里是足陽明胃經的合穴", ["定位", "功效主治", "操作方法"]),
    "diet/shanyao-yimi-zhou.html": ("山药薏米粥：健脾祛湿的家常食疗", "山药和薏苡仁都是药食同源的食材", ["材料", "做法", "适宜人群与注意事项"]),
    "seasons/sishi-yangsheng.html": ("顺应四时：中医的四季养生观", "中医认为人与自然是一个整体", ["春季养肝", "夏季养心", "秋季养肺", "冬季养肾"]),
}
# Words that only the page chrome holds: menu, header, breadcrumb, search form, ad, share box,
# comments, sidebars, footer and scripts.
CHROME = ["传承中医药知识", "首页 >", "搜索", "限时特价", "分享到", "网友评论", "写得很清楚", "相关阅读",
          "相關閱讀", "食疗分类", "版权所有", "版權所有", "关于本站", "dataLayer", "querySelectorAll"]


def sample_html(name: str) -> str:
    raw = (SITE / name).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("gb18030")  # the sample's one GBK page


@pytest.mark.parametrize("name", sorted(ARTICLES))
def test_sample_articles_keep_title_headings_and_paragraphs_and_drop_chrome(name):
    title, opening, headings = ARTICLES[name]
    page = extract_main(sample_html(name), f"http://127.0.0.1/{name}")
    assert page["title"] == title
    assert page["headings"] == [title, *headings]
    text = page["text"]
    assert text.startswith(title + "\n\n")
    assert opening in text
    for word in CHROME:
        assert word not in text, f"{word!r} from the page chrome is in the text of {name}"
    lines = text.split("\n")
    for heading in headings:
        assert heading in lines, "a heading is a line of its own"
    blocks = text.split("\n\n")
    assert all(block.strip() == block and block for block in blocks)
    assert sum(len(b) for b in blocks if len(b) > 40) >= 200, "the article paragraphs are kept whole"


def test_paragraph_whitespace_line_breaks_and_hidden_parts():
    html = """<html><head><title>测试 - 站点</title></head><body>
    <div class="content">
      <p>山药
         和薏苡仁同煮。</p>
      <p>必要时做 CT 检查。</p>
      <p>第一行<br>第二行</p>
      <p style="display: none">隐藏的关键词堆砌</p>
      <div hidden>也是隐藏的</div>
      <ul><li><a href="/a">甲</a></li><li><a href="/b">乙</a></li><li><a href="/c">丙</a></li></ul>
    </div></body></html>"""
    page = extract_main(html)
    assert page["text"] == "山药和薏苡仁同煮。\n\n必要时做 CT 检查。\n\n第一行\n第二行"
    assert page["title"] == "测试" and page["headings"] == []


def test_site_rules_choose_content_drop_parts_and_title():
    html = """<html><body><div id="story"><p class="byline">编辑：某某</p><p>正文第一段。</p>
    <div class="note">编者按：此段不要。</div></div><div id="other"><p>别的内容，较长较长较长较长较长较长。</p></div>
    <span class="headline">规则给出的标题</span></body></html>"""
    rules = {"content": "#story", "drop": [".note"], "title": "span.headline"}
    page = extract_main(html, rules=rules)
    # the rule's title is the page's heading: the text opens with it
    assert page == {"title": "规则给出的标题", "text": "规则给出的标题\n\n正文第一段。", "headings": ["规则给出的标题"]}
    # a content rule that matches nothing falls back to the heuristics
    assert "别的内容" in extract_main(html, rules={"content": "#gone"})["text"]


def test_a_heading_above_the_content_becomes_the_first_line():
    body = "<p>这一段讲山药的性味与功效，甘平，补脾养胃，生津益肺，补肾涩精。</p>" * 3
    html = f"""<html><head><title>山药 - 本草站</title></head><body>
    <div class="wrap"><h1>山药</h1><div class="meta-info">2024-05-01</div><div class="txt">{body}</div></div></body></html>"""
    page = extract_main(html)
    assert page["title"] == "山药" and page["text"].startswith("山药\n\n这一段讲山药")
    # an <h1> inside the content, after a dateline, is moved to the front, not repeated
    inside = f"<html><body><article><p>2024-05-01 发布</p><h1>山药</h1>{body}</article></body></html>"
    text = extract_main(inside)["text"]
    assert text.startswith("山药\n\n2024-05-01 发布") and text.count("山药\n") == 1
    # without a heading the text is left as it is; the <title> only names the page
    plain = extract_main(f"<html><head><title>山药的功效 - 站</title></head><body><div>{body}</div></body></html>")
    assert plain["title"] == "山药的功效" and plain["text"].startswith("这一段讲山药")


def test_empty_and_broken_html_give_empty_text():
    assert extract_main("") == {"title": None, "text": "", "headings": []}
    assert extract_main("   ")["text"] == ""
    assert extract_main("<html><body><script>x()</script></body></html>")["text"] == ""
    assert "半截" in extract_main("<div><p>半截的段落<b>没有闭合")["text"]


def page_row(name: str, **changes) -> dict:
    row = {
        "url": f"http://127.0.0.1/{name}", "final_url": f"http://127.0.0.1/{name}", "status": 200,
        "fetched_at": "2026-01-01T00:00:00+00:00", "content_type": "text/html", "charset": "utf-8",
        "body": sample_html(name) if (SITE / name).is_file() else None, "content_hash": "ab" * 32,
        "source": "sample", "category": "web",
    }
    return {**row, **changes}


def test_pages_to_documents_accounts_for_every_page():
    rows = [page_row(name) for name in sorted(ARTICLES)]
    rows += [
        page_row("index.html", url="http://127.0.0.1/", final_url=None),
        page_row("about.html"),
        page_row("empty.html", body=""),
        page_row("nulls.html", body=None),
        page_row("notes.txt", content_type="text/plain; charset=utf-8", body="菊花疏散风热，平抑肝阳。\r\n清肝明目，常用于风热感冒。"),
        page_row("chrome-only.html", body="<html><body><nav><a href='/'>首页</a></nav><footer>版权所有</footer></body></html>"),
    ]
    pages = pa.Table.from_pylist(rows, schema=PAGE_SCHEMA)
    documents, rejected = pages_to_documents(pages, {"min_chars": 50})

    assert documents.num_rows + rejected.num_rows == pages.num_rows
    assert documents.schema.equals(DOCUMENT_SCHEMA)
    assert set(rejected.column_names) == set(PAGE_SCHEMA.names) | {"reason"}
    reasons = {row["url"].rsplit("/", 1)[1]: row["reason"] for row in rejected.to_pylist()}
    assert reasons == {
        "about.html": "no_main_content:min_chars=50",
        "empty.html": "no_body",
        "nulls.html": "no_body",
        "notes.txt": "no_main_content:min_chars=50",
        "chrome-only.html": "no_main_content:min_chars=50",
    }

    by_url = {d["url"]: d for d in documents.to_pylist()}
    assert "http://127.0.0.1/" in by_url, "a page without final_url is known by its url"
    doc = by_url["http://127.0.0.1/diet/shanyao-yimi-zhou.html"]
    assert doc["id"] == document_id("sample", doc["text"])
    assert (doc["source"], doc["category"], doc["title"]) == ("sample", "web", "山药薏米粥：健脾祛湿的家常食疗")
    meta = json.loads(doc["meta"])
    assert meta["headings"][1:] == ["材料", "做法", "适宜人群与注意事项"]
    assert meta["charset"] == "utf-8" and meta["content_hash"] == "ab" * 32 and meta["fetched_at"]

    # a lower threshold keeps the short pages; plain text is kept as it is, line endings normalised
    documents, rejected = pages_to_documents(pages.to_batches()[0], {})
    assert documents.num_rows + rejected.num_rows == pages.num_rows
    assert sorted(rejected.column("reason").to_pylist()) == ["no_body", "no_body", "no_main_content:min_chars=20"]
    plain = [d for d in documents.to_pylist() if d["url"].endswith("notes.txt")][0]
    assert plain["text"] == "菊花疏散风热，平抑肝阳。\n清肝明目，常用于风热感冒。" and plain["title"] is None


def test_pages_to_documents_uses_site_rules_by_source_or_host():
    body = "<html><body><div id='keep'><p>按规则抽取的正文内容，足够长的一段文字。</p></div><div><p>其他</p></div></body></html>"
    pages = pa.Table.from_pylist([page_row("r.html", body=body)], schema=PAGE_SCHEMA)
    for key in ("sample", "127.0.0.1"):
        documents, _ = pages_to_documents(pages, {"rules": {key: {"content": "#keep"}}, "min_chars": 5})
        assert documents.column("text").to_pylist() == ["按规则抽取的正文内容，足够长的一段文字。"]
