"""Main-content extraction on Chinese pages: our lxml extractor (transforms.ingest.extract) against
trafilatura, if installed. Run by hand:

    .venv/bin/pip install trafilatura==2.3.1   # only for this comparison
    .venv/bin/python benchmarks/extraction.py

Pages: the embedded sample site's five articles (gold: the headings and paragraphs of their
<article>, less the byline), the test site's article in two sets of chrome, and an older-style
GBK page laid out in tables with <br> paragraphs. Prints, per extractor: share of gold
paragraphs found, share of output characters that are gold, chrome phrases leaked, titles right,
whether the two chrome variants give the same text, and milliseconds per page."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import lxml.html

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_crawl import ARTICLE, BOILERPLATE, html  # noqa: E402  the test site's own pages

from transforms.ingest.extract import extract_main  # noqa: E402

SITE = REPO / "flows" / "sample" / "site"
SAMPLE_PAGES = ["herbs/huangqi.html", "formulas/guizhi-tang.html", "acupoints/zusanli.html",
                "diet/shanyao-yimi-zhou.html", "seasons/sishi-yangsheng.html"]
CHROME = ["传承中医药知识", "首页 >", "搜索", "限时特价", "分享到", "网友评论", "写得很清楚", "相关阅读",
          "相關閱讀", "食疗分类", "版权所有", "版權所有", "关于本站", "dataLayer", "querySelectorAll",
          "旧版首页", "热门文章", "好文章，收藏了", "京ICP备", "作者：本站编辑"]
OLD_STYLE = """<html><head><meta http-equiv="Content-Type" content="text/html; charset=gb2312">
<title>中医论坛 - 脾胃病的饮食调养</title></head><body>
<table width="100%"><tr><td class="top">中医论坛 | 首页 | 登录 | 注册 | 搜索</td></tr></table>
<table width="960"><tr>
<td width="200" valign="top"><a href="/a">内科</a><br><a href="/b">外科</a><br><a href="/c">妇科</a><br><a href="/d">儿科</a></td>
<td valign="top"><font size="4"><b>脾胃病的饮食调养</b></font><br><br>
脾胃为后天之本，气血生化之源。脾胃虚弱的人，饮食宜清淡、温软、易于消化，少吃生冷油腻。<br><br>
早餐可以喝山药小米粥，山药健脾益气，小米和胃安眠，两者同煮，适合长期食用。<br><br>
饮食要定时定量，不可暴饮暴食，晚餐宜少，睡前两小时不再进食，以免加重脾胃负担。<br></td>
</tr></table>
<table><tr><td>版权所有 中医论坛 2008 京ICP备00000000号</td></tr></table></body></html>"""
OLD_STYLE_GOLD = ["脾胃为后天之本，气血生化之源。脾胃虚弱的人，饮食宜清淡、温软、易于消化，少吃生冷油腻。",
                  "早餐可以喝山药小米粥，山药健脾益气，小米和胃安眠，两者同煮，适合长期食用。",
                  "饮食要定时定量，不可暴饮暴食，晚餐宜少，睡前两小时不再进食，以免加重脾胃负担。"]
SPACE = re.compile(r"\s+")


def squeeze(text: str) -> str:
    return SPACE.sub("", text or "")


def pages() -> list[dict]:
    result = []
    for name in SAMPLE_PAGES:
        raw = (SITE / name).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("gb18030")
        parser = lxml.html.HTMLParser(encoding="utf-8")
        root = lxml.html.fromstring(text.encode("utf-8"), parser=parser)
        article = root.xpath("//article | //div[@id='content'] | //div[@class='post-body']")[0]
        gold = [e.text_content() for e in article.iter("h1", "h2", "h3", "p") if e.get("class") != "meta"]
        result.append({"name": name, "html": text, "gold": gold, "title": gold[0]})
    article_gold = [e.text_content() for e in lxml.html.fragments_fromstring(ARTICLE)]
    for name, chrome in BOILERPLATE.items():
        result.append({"name": name, "html": html("菊花", chrome.format(article=ARTICLE)), "gold": article_gold,
                       "title": "菊花：疏散风热的常用药", "variant": "boilerplate"})
    result.append({"name": "old-style.html", "html": OLD_STYLE, "gold": OLD_STYLE_GOLD, "title": "脾胃病的饮食调养"})
    return result


def ours(page: str) -> tuple[str, str | None]:
    found = extract_main(page)
    return found["text"], found["title"]


def trafilatura_extract(page: str, **options) -> tuple[str, str | None]:
    import trafilatura

    document = trafilatura.bare_extraction(page, include_comments=False, include_tables=True, with_metadata=True,
                                           **options)
    if document is None:
        return "", None
    return document.text or "", document.title


def measure(name: str, extract, corpus: list[dict]) -> dict:
    recall = precision = titles = 0.0
    leaks: list[str] = []
    variants = []
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        outputs = [extract(page["html"]) for page in corpus]
    seconds = (time.perf_counter() - started) / rounds / len(corpus)
    for page, (text, title) in zip(corpus, outputs):
        flat = squeeze(text)
        gold = [squeeze(g) for g in page["gold"] if squeeze(g)]
        found = [g for g in gold if g in flat]
        recall += len(found) / len(gold)
        precision += min(1.0, sum(map(len, found)) / max(len(flat), 1))
        titles += squeeze(title) == squeeze(page["title"])
        leaks += [f"{page['name']}:{w}" for w in CHROME if squeeze(w) in flat]
        if page.get("variant"):
            variants.append(text)
    n = len(corpus)
    return {
        "extractor": name, "pages": n, "gold_recall": round(recall / n, 3), "gold_precision": round(precision / n, 3),
        "chrome_leaks": len(leaks), "titles_right": f"{int(titles)}/{n}",
        "variants_same_text": len(set(variants)) == 1, "ms_per_page": round(seconds * 1000, 2), "leaked": leaks[:8],
    }


def main() -> None:
    corpus = pages()
    results = [measure("lxml (transforms.ingest.extract)", ours, corpus)]
    try:
        import trafilatura
    except ImportError:
        print("trafilatura is not installed: pip install trafilatura==2.3.1 to compare")
    else:
        results.append(measure(f"trafilatura {trafilatura.__version__}", trafilatura_extract, corpus))
        results.append(measure(f"trafilatura {trafilatura.__version__} favor_precision",
                               lambda page: trafilatura_extract(page, favor_precision=True), corpus))
    for result in results:
        print(" | ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
