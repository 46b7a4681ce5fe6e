"""Main-content extraction: from a fetched HTML page to the fields of a Document.

The page's chrome (navigation, header, footer, sidebars, scripts, forms, ads, share and comment
boxes) is removed, the element holding the article is chosen, and its text is written out with
headings on their own lines and paragraphs separated by blank lines."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import lxml.html
import pyarrow as pa
from lxml import etree
from lxml.cssselect import CSSSelector

from schemas.records import DOCUMENT_SCHEMA, PAGES, conform, document_id, dumps_meta, rejected_schema

CHROME_TAGS = (
    "script", "style", "noscript", "template", "nav", "footer", "aside", "form", "iframe", "svg",
    "button", "select", "textarea", "input", "object", "embed", "canvas", "link", "meta", "head",
)
PARAGRAPH_LIKE = ("p", "pre", "blockquote", "div", "td")
HEADINGS = frozenset(("h1", "h2", "h3", "h4", "h5", "h6"))
BLOCKS = frozenset((
    "p", "div", "section", "article", "main", "ul", "ol", "li", "dl", "dt", "dd", "blockquote",
    "pre", "table", "tr", "td", "th", "figure", "figcaption", "center", "address", "details",
    "summary", "body", "html",
))
# Class or id words that mark page chrome, and words that mark content and overrule them
# (a wrapper "main has-sidebar" holds the article; "sidebar-menu" does not).
CHROME_WORDS = re.compile(
    r"^(ads?|advert\w*|adv|banner|sponsor\w*|promo\w*|nav|navbar|navigation|menu|menubar|footer|"
    r"breadcrumbs?|crumbs?|share|sharing|social|comments?|reply|sidebar|related|recommend\w*|"
    r"popup|modal|cookies?|subscribe|pager|pagination|toolbar|copyright|topbar|meta|byline|tags)$"
)
CONTENT_WORDS = re.compile(r"^(article|content|main|body|post|entry|text|story)$")
WORD_SPLIT = re.compile(r"[\s_\-]+")
HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
TITLE_SPLIT = re.compile(r"\s+[-|_—–]\s+|_|｜")
SPACES = re.compile(r"[\s\u200b]+")
LINE_BREAK = "\u2028"  # stands for <br> while text is gathered, apart from the source's own newlines
PARAGRAPH_BREAK = re.compile(f"{LINE_BREAK}[^\\S{LINE_BREAK}]*{LINE_BREAK}[\\s{LINE_BREAK}]*")
CJK = "\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef"
CJK_WRAP = re.compile(f"(?<=[{CJK}])[^\\S\\n]*\\n\\s*(?=[{CJK}])")


def extract_main(html: str, url: str | None = None, rules: dict | None = None) -> dict:
    """Main content of a page: {"title", "text", "headings"}. A page with a heading (the site
    rule's title, else its <h1>) has it as the text's first line, its subject; `title` is that
    heading, else the page's <title>.

    `rules` may name, for one site, the CSS selector of the content ("content"), of extra parts
    to remove ("drop", a list) and of the title ("title")."""
    rules = rules or {}
    root = _parse(html, url)
    if root is None:
        return {"title": None, "text": "", "headings": []}
    heading = _first_text(root, rules["title"]) if rules.get("title") else None
    page_title = _page_title(root)
    _drop_chrome(root, rules.get("drop") or [])
    # A site rule that matches nothing (the site's layout changed) falls back to the heuristics.
    containers = CSSSelector(rules["content"])(root) if rules.get("content") else []
    blocks = Blocks()
    for container in containers or [_content_root(root)]:
        blocks.add(container)
    if heading is None:
        # The article's <h1>, inside the content or above it (a page's own header is chrome).
        heading = next((h for tag, h in blocks.items if tag == "h1"), None) or _only_h1(root)
    if heading:
        blocks.lead(heading)
    headings = [h for tag, h in blocks.items if tag != "p"]
    return {"title": heading or page_title, "text": blocks.text(), "headings": headings}


def pages_to_documents(
    batch: pa.RecordBatch | pa.Table, params: dict, seen: set[str] | None = None
) -> tuple[pa.Table, pa.Table]:
    """Pages to documents. Returns (documents, rejected pages with a `reason`); every page lands
    in exactly one of them.

    params: `min_chars` (default 20): fewest non-space characters a document may have;
    `rules`: per-site extraction rules keyed by source name or host name.
    `seen`: document ids written already; a page whose main content is one of them (the same
    article under another URL, in other chrome) is rejected as `repeated_record:<id>`."""
    min_chars = int(params.get("min_chars", 20))
    site_rules = params.get("rules") or {}
    documents, rejected = [], []
    for page in conform(batch, PAGES).to_pylist():
        reason, fields = _page_document(page, site_rules)
        if reason is None and _visible_length(fields["text"]) < min_chars:
            reason = f"no_main_content:min_chars={min_chars}"
        doc_id = document_id(page["source"], fields["text"]) if reason is None else None
        if seen is not None and doc_id is not None:
            if doc_id in seen:
                reason = f"repeated_record:{doc_id}"
            else:
                seen.add(doc_id)
        if reason is not None:
            rejected.append({**page, "reason": reason})
            continue
        documents.append({
            "id": doc_id,
            "text": fields["text"],
            "source": page["source"],
            "category": page["category"],
            "url": page["final_url"] or page["url"],
            "title": fields["title"],
            "lang": None,
            "meta": dumps_meta({
                "charset": page["charset"],
                "replaced_bytes": page.get("replaced_bytes"),
                "fetched_at": page["fetched_at"],
                "headings": fields["headings"],
                "content_hash": page["content_hash"],
            }),
        })
    return (
        pa.Table.from_pylist(documents, schema=DOCUMENT_SCHEMA),
        pa.Table.from_pylist(rejected, schema=rejected_schema(PAGES)),
    )


def _page_document(page: dict, site_rules: dict) -> tuple[str | None, dict]:
    body = page["body"]
    if not body:
        return "no_body", {}
    if (page["content_type"] or "").lower().startswith("text/plain"):
        text = "\n".join(line.rstrip() for line in body.replace("\r\n", "\n").splitlines()).strip()
        return None, {"title": None, "text": text, "headings": []}
    url = page["final_url"] or page["url"]
    rules = site_rules.get(page["source"]) or site_rules.get(urlsplit(url or "").hostname or "")
    try:
        return None, extract_main(body, url, rules)
    except (ValueError, etree.LxmlError) as exc:
        return f"extract_error:{type(exc).__name__}", {}


def _visible_length(text: str) -> int:
    return sum(1 for ch in text if not ch.isspace())


def _parse(html: str, url: str | None) -> etree._Element | None:
    if not html or not html.strip():
        return None
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    try:
        # Bytes, so that a page's own <?xml encoding?> or <meta charset> cannot redirect decoding.
        return lxml.html.document_fromstring(html.encode("utf-8", "replace"), parser=parser, base_url=url)
    except etree.ParserError:
        return None


def _first_text(root: etree._Element, selector: str) -> str | None:
    for element in CSSSelector(selector)(root):
        text = _clean(element.text_content())
        if text:
            return text
    return None


def _only_h1(root: etree._Element) -> str | None:
    """The page's one <h1> left after the chrome is gone; with several, none is the article's."""
    found = [text for text in (_clean(h.text_content()) for h in root.iter("h1")) if text]
    return found[0] if len(found) == 1 else None


def _page_title(root: etree._Element) -> str | None:
    """The page's <title> or og:title, less a site name joined to it ("Article - Site")."""
    og = root.xpath("//meta[@property='og:title']/@content")
    title = _clean(og[0]) if og else _clean(" ".join(root.xpath("//title//text()")))
    if not title:
        return None
    parts = [p.strip() for p in TITLE_SPLIT.split(title) if p.strip()]
    return max(parts, key=len) if parts else title


def _drop_chrome(root: etree._Element, extra: list[str]) -> None:
    doomed = []
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        tag = element.tag.lower()
        if tag in CHROME_TAGS or _is_hidden(element) or (tag == "header" and not _in_article(element)):
            doomed.append(element)
        elif tag not in ("html", "body", "main", "article") and _looks_like_chrome(element):
            doomed.append(element)
    for selector in extra:
        doomed.extend(CSSSelector(selector)(root))
    for element in doomed:
        if element.getparent() is not None:
            element.drop_tree()
    for element in list(root.iter("ul", "ol", "div", "section", "table")):
        if element.getparent() is not None and _mostly_links(element):
            element.drop_tree()


def _looks_like_chrome(element: etree._Element) -> bool:
    words = WORD_SPLIT.split(f"{element.get('class', '')} {element.get('id', '')}".lower())
    return any(CHROME_WORDS.match(w) for w in words) and not any(CONTENT_WORDS.match(w) for w in words)


def _is_hidden(element: etree._Element) -> bool:
    return element.get("hidden") is not None or bool(HIDDEN_STYLE.search(element.get("style", "")))


def _in_article(element: etree._Element) -> bool:
    # A <header> inside the article holds its title; the page's own header is chrome.
    return any(a.tag in ("article", "main") for a in element.iterancestors())


def _mostly_links(element: etree._Element) -> bool:
    """A block of links and little else: a menu, a link list, "previous / next" without a telling class."""
    links = element.xpath(".//a")
    if len(links) < 2:
        return False
    text = _visible_length(element.text_content())
    linked = sum(_visible_length(a.text_content()) for a in links)
    if text < 80:
        return linked / text > 0.5
    return len(links) >= 3 and linked / text > 0.7


def _content_root(root: etree._Element) -> etree._Element:
    """The element holding the article: a lone <article> or <main> that holds a fair share of the
    page's text, else the element whose paragraphs carry the most text."""
    body = root.find("body") if root.find("body") is not None else root
    total = _visible_length(body.text_content())
    for tag in ("article", "main"):
        found = body.xpath(f".//{tag}") or ([] if tag != "main" else body.xpath(".//*[@role='main']"))
        if len(found) == 1 and _visible_length(found[0].text_content()) >= 0.3 * total:
            return found[0]
    scores: dict[etree._Element, float] = {}
    for paragraph in body.iter(*PARAGRAPH_LIKE):
        # Older sites write paragraphs as text and <br> straight inside a <div> or <td>.
        own = paragraph.tag in ("div", "td")
        length = _visible_length(_own_text(paragraph) if own else paragraph.text_content())
        parent = paragraph.getparent()
        if parent is None or length < 10:
            continue
        scores[parent] = scores.get(parent, 0) + length
        grandparent = parent.getparent()
        if grandparent is not None:
            scores[grandparent] = scores.get(grandparent, 0) + length / 2
    return max(scores, key=scores.get) if scores else body


def _own_text(element: etree._Element) -> str:
    """The text directly inside `element`, not inside its child elements."""
    return (element.text or "") + "".join(child.tail or "" for child in element)


def _clean(text: str) -> str:
    """Collapse whitespace; a line break in the source between two CJK characters is no gap at all."""
    return SPACES.sub(" ", CJK_WRAP.sub("", text)).strip()


class Blocks:
    """Text of an element tree as (tag, text) blocks: headings and paragraphs."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.buffer: list[str] = []

    def add(self, container: etree._Element) -> None:
        """Add the text inside `container` (not the text that follows it)."""
        self.flush()
        if container.text:
            self.buffer.append(container.text)
        for child in container:
            self.walk(child)
        self.flush()

    def walk(self, element: etree._Element) -> None:
        tag = element.tag.lower() if isinstance(element.tag, str) else ""
        if tag in HEADINGS:
            self.flush()
            heading = _clean(element.text_content())
            if heading:
                self.items.append((tag, heading))
        else:
            block = tag in BLOCKS
            if block:
                self.flush()
            if tag == "br":
                self.buffer.append(LINE_BREAK)
            if element.text and tag:
                self.buffer.append(element.text)
            for child in element:
                self.walk(child)
            if block:
                self.flush()
        if element.tail:
            self.buffer.append(element.tail)

    def lead(self, heading: str) -> None:
        """The page's heading as the first block: the text opens with what it is about."""
        self.flush()
        self.items = [("h1", heading)] + [item for item in self.items if item != ("h1", heading)]

    def flush(self) -> None:
        gathered, self.buffer = "".join(self.buffer), []
        # Two <br> in a row end a paragraph; one breaks a line.
        for paragraph in PARAGRAPH_BREAK.split(gathered):
            lines = [_clean(line) for line in paragraph.split(LINE_BREAK)]
            paragraph = "\n".join(line for line in lines if line)
            if paragraph:
                self.items.append(("p", paragraph))

    def text(self) -> str:
        self.flush()
        return "\n\n".join(text for _, text in self.items)
