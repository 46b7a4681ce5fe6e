"""A labelled language-ID set from the shared data, and precision / recall of the Chinese decision.

Chinese: chapters of classical books (spread over the whole list of 262, so every era and style
is in), herb monographs, terminology entries and Han-only short names (本草纲目, which lid.176
alone calls Japanese). English: the PubMed abstracts. Not Chinese: generated junk (mojibake of
Chinese read as Latin-1, keyboard mash, digits and symbols, base64) and Japanese and Korean
sentences written for this set. The tests hold the figures above floors; benchmarks/clean_eval.py
prints them.
"""
from __future__ import annotations

import base64
import json
import random
from pathlib import Path

from transforms.ingest.importers import import_file

JAPANESE = [
    "本草綱目は明代の李時珍によって書かれた薬物学の書物です。",
    "漢方薬は体質に合わせて処方されることが多い。",
    "葛根湯は風邪のひき始めによく使われます。",
    "人参は古くから滋養強壮の生薬として知られている。",
    "鍼灸治療を受けてから肩こりがずいぶん楽になりました。",
    "この病院では東洋医学と西洋医学の両方を取り入れています。",
    "食後に服用してください。",
    "黄帝内経は中国最古の医学書の一つとされる。",
]
KOREAN = [
    "한의학은 오랜 역사를 가진 전통 의학입니다.",
    "인삼은 면역력을 높이는 데 도움이 됩니다.",
    "침 치료를 받은 후 통증이 많이 줄었습니다.",
    "동의보감은 허준이 편찬한 의학서입니다.",
]
SHORT_HAN = ["本草纲目", "人参", "黄芪", "伤寒论", "金匮要略", "六味地黄丸", "足三里", "当归补血汤", "气血两虚证", "益卫固表"]


def generated_junk(seed: int = 7, count: int = 60) -> list[str]:
    rng = random.Random(seed)
    chinese = "人参味甘微寒主补五脏安精神定魂魄止惊悸除邪气明目开心益智久服轻身延年"
    junk = []
    for i in range(count):
        kind = i % 4
        if kind == 0:  # GB18030 Chinese read as Latin-1
            text = "".join(rng.choice(chinese) for _ in range(rng.randint(15, 60)))
            junk.append(text.encode("gb18030").decode("latin-1"))
        elif kind == 1:  # keyboard mash
            junk.append("".join(rng.choice("asdfghjklqwertyuiopzxcvbnm ") for _ in range(rng.randint(20, 80))))
        elif kind == 2:  # digits and symbols
            junk.append("".join(rng.choice("0123456789#$%&*+-=/<>|~^") for _ in range(rng.randint(20, 80))))
        else:  # an encoded blob
            junk.append(base64.b64encode(rng.randbytes(rng.randint(30, 90))).decode())
    return junk


def labelled_set(shared: Path, books: int = 40, chapters_per_book: int = 8, monographs: int = 150, terms: int = 100) -> list[tuple[str, str, str]]:
    """(text, true language, origin) rows."""
    rows: list[tuple[str, str, str]] = []
    book_files = sorted((shared / "corpus" / "ancient-books").glob("*.txt"))
    step = max(1, len(book_files) // books)
    for path in book_files[::step][:books]:
        chapters = [r.row["text"] for r in import_file(path, "book", "books", "books") if not r.reason]
        rng = random.Random(path.name)
        for text in rng.sample(chapters, min(chapters_per_book, len(chapters))):
            rows.append((text, "zh", "book"))
    pharmacopoeia = shared / "corpus" / "pharmacopoeia"
    entries = [r.row["text"] for r in import_file(pharmacopoeia / "2022年中药药典.txt", "monograph", "p", "encyclopedia") if not r.reason]
    rows += [(text, "zh", "monograph") for text in entries[:monographs]]
    term_rows = [r.row["text"] for r in import_file(pharmacopoeia / "中医临床诊疗术语证候.txt", "terms", "t", "encyclopedia") if not r.reason]
    rows += [(text, "zh", "term") for text in term_rows[:terms]]
    rows += [(text, "zh", "short_han") for text in SHORT_HAN]
    abstracts = json.loads((shared / "english" / "pubmed_abstracts.json").read_text(encoding="utf-8"))
    rows += [(text, "en", "pubmed") for text in abstracts]
    rows += [(text, "ja", "japanese") for text in JAPANESE]
    rows += [(text, "ko", "korean") for text in KOREAN]
    rows += [(text, "junk", "junk") for text in generated_junk()]
    return rows


def precision_recall(truth: list[bool], predicted: list[bool]) -> dict:
    tp = sum(t and p for t, p in zip(truth, predicted))
    fp = sum(p and not t for t, p in zip(truth, predicted))
    fn = sum(t and not p for t, p in zip(truth, predicted))
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
    }


def evaluate(rows: list[tuple[str, str, str]], select_params: dict, clean_params: dict | None = None) -> dict:
    """Clean and tag the rows as the pipeline does, apply the language rules of [select], and
    score the decisions 'is Chinese, kept' and 'is English' against the labels."""
    import pyarrow as pa

    from schemas import document_id
    from transforms.clean.steps import clean_documents
    from transforms.select.rules import rule_failures

    texts = [text for text, _, _ in rows]
    table = pa.table(
        {"id": [document_id("eval", f"{i}:{t}") for i, t in enumerate(texts)], "text": texts, "source": ["eval"] * len(rows), "category": ["books"] * len(rows)}
    )
    kept, rejected = clean_documents(table, {**(clean_params or {}), "min_chars": 0})
    assert rejected.num_rows == 0, rejected.column("reason").to_pylist()
    language_rules = {k: select_params.get(k) for k in ("languages", "min_lang_score")}
    failing = [mask for _, mask, _ in rule_failures(kept, language_rules, "documents")]
    langs = kept.column("lang").to_pylist()
    kept_chinese = [not any(mask[i] for mask in failing) for i in range(len(rows))]
    report = {
        "rows": len(rows),
        "chinese": precision_recall([lang == "zh" for _, lang, _ in rows], kept_chinese),
        "english": precision_recall([lang == "en" for _, lang, _ in rows], [lang == "en" for lang in langs]),
        "by_origin": {},
        "mistakes": [],
    }
    for (text, truth, origin), chinese, lang in zip(rows, kept_chinese, langs):
        entry = report["by_origin"].setdefault(origin, {"rows": 0, "kept_as_chinese": 0})
        entry["rows"] += 1
        entry["kept_as_chinese"] += int(chinese)
        if chinese != (truth == "zh"):
            report["mistakes"].append({"origin": origin, "truth": truth, "lang": lang, "text": text[:60]})
    return report
