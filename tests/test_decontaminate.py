"""Decontamination on real data: exam items of the shared benchmarks planted into real book text
are caught, the book text around them is not, and classics quoted by exam stems stay."""
from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.dataset import DatasetWriter, StageManifest, read_kind
from transforms import stages
import numpy as np

from transforms.decontaminate import contamination
from transforms.decontaminate.contamination import ContaminationIndex, answer_text, cited_grams, decontaminate_with_hits, item_forms, own_grams
from transforms.engines.local import LocalEngine
from transforms.ingest.importers.benchmarks import load_benchmark
from transforms.clean.normalize import match_key

from benchmarks.dedup_eval import book_text, load_passages

BENCHMARK_FILES = (
    "mtcmb_tcm_ed_a.jsonl",
    "tcmchat_choice_herb_500.csv",
    "tcmchat_choice_formula_500.csv",
    "cmmlu_traditional_chinese_medicine.csv",
    "tcmchat_medical_case.json",
    "tcmchat_rc.json",
)


@pytest.fixture(scope="module")
def items(shared_data):
    return [item for name in BENCHMARK_FILES for item in load_benchmark(shared_data / "benchmarks" / name)]


@pytest.fixture(scope="module")
def index(items):
    return ContaminationIndex.build(items)


def _as_page(item: dict, style: int) -> str:
    """An exam item as a page might print it."""
    question, options, answer = item["question"], item["options"], item["answer"]
    if style == 0:
        return f"{question}\n{options}\n答案：{answer}"
    if style == 1:  # letters with 、 and options on one line
        return f"1．{question}（ ）\n" + "  ".join(re.sub(r"^([A-H])\. ", r"\1、", o) for o in options.splitlines()) + f"\n【答案】{answer}"
    return f"{question}\n" + "；".join(re.sub(r"^[A-H]\. ", "", o) for o in options.splitlines())  # no letters, no answer


def _dataset(folder, texts: dict[str, str]):
    rows = [{"id": k, "text": v, "source": "books", "category": "books"} for k, v in texts.items()]
    with DatasetWriter(folder, StageManifest(stage="test")) as writer:
        writer.write("documents", pa.Table.from_pylist(rows))
        writer.commit()
    return folder


def test_planted_exam_items_are_caught_and_the_book_text_around_them_is_not(tmp_path, shared_data, items, index):
    passages = load_passages(shared_data / "corpus" / "ancient-books", 300, length=800)
    chosen = []
    for name in BENCHMARK_FILES:
        mine = [i for i in items if i["benchmark"] == name.rsplit(".", 1)[0]]
        chosen += mine[7 :: max(1, len(mine) // 4)][:4]
    texts, planted = {}, {}
    for number, item in enumerate(chosen):
        around = passages[number]
        page = _as_page(item, number % 3) if item["options"] else f"{item['question']}\n{item['answer']}"
        texts[f"planted-{number}"] = f"{around[:400]}\n{page}\n{around[400:]}"
        planted[f"planted-{number}"] = (item["benchmark"], item["item"])
    for number, passage in enumerate(passages):
        texts[f"book-{number}"] = passage  # includes, unchanged, the text around every planted item

    params = {"ngram": 13, "min_overlap": 0.5, "question_overlap": 0.9, "action": "remove"}
    manifest = stages.run_decontaminate(
        [_dataset(tmp_path / "in", texts)], tmp_path / "out", params, StageManifest(stage="decontaminate"),
        LocalEngine(workers=1, batch_rows=64), chosen,
    )
    rejected = {r["id"]: r["reason"] for r in pq.read_table(tmp_path / "out" / "rejected" / "documents").to_pylist()}
    assert set(rejected) == set(planted), "every planted item is caught, no clean book passage is"
    report = json.loads((tmp_path / "out" / "contamination.json").read_text(encoding="utf-8"))
    for row_id, (benchmark, item) in planted.items():
        assert rejected[row_id].startswith("contaminated:")
        assert {"benchmark": benchmark, "item": item} in [{"benchmark": h["benchmark"], "item": h["item"]} for h in report["hits"] if h["id"] == row_id]
    assert manifest.rows_in["documents"] == len(texts) == manifest.rows_kept["documents"] + len(rejected)
    per_benchmark = manifest.stats["contamination"]
    assert set(per_benchmark) == {n.rsplit(".", 1)[0] for n in BENCHMARK_FILES}
    assert all(row["items_found"] == row["rows"] == 4 for row in per_benchmark.values()), per_benchmark
    markdown = (tmp_path / "out" / "contamination.md").read_text(encoding="utf-8")
    assert "| mtcmb_tcm_ed_a | 4 | 4 | 0 | 4 | 4 |" in markdown
    assert {"contamination.json", "contamination.md"} <= {f["path"] for f in manifest.files}
    kept = {r["id"] for r in read_kind(tmp_path / "out", "documents").to_pylist()}
    assert all(f"book-{n}" in kept for n in range(len(chosen)))


def test_full_benchmark_index_leaves_real_books_alone(shared_data, index):
    """3,385 real items against real book passages: no passage of the sample is flagged."""
    passages = load_passages(shared_data / "corpus" / "ancient-books", 300, length=1500, seed=21)
    flagged = [(n, index.find(p)) for n, p in enumerate(passages)]
    assert [f for f in flagged if f[1]] == []
    assert sum(index.coverage[b]["indexed"] for b in index.coverage) > 3000


def test_classical_clauses_in_exam_stems_do_not_flag_the_classics(shared_data, items, index):
    """Exam stems cite the Shanghan lun, quoted or not; the book itself must stay in the corpus,
    while a page copying such an item is still caught."""
    shanghan = book_text(shared_data / "corpus" / "ancient-books" / "457-伤寒论.txt")
    by_id = {(i["benchmark"], i["item"]): i for i in items}
    paraphrased = by_id[("mtcmb_tcm_ed_a", "810")]  # 风湿，身体疼烦，不能自转侧……方用 (unquoted)
    quoted = by_id[("mtcmb_tcm_ed_a", "574")]  # “本太阳病，医反下之，因尔腹满时痛者”……
    book = match_key(shanghan)
    stem = match_key(paraphrased["question"])
    grams = {stem[i : i + 13] for i in range(len(stem) - 12)}
    assert sum(g in book for g in grams) / len(grams) >= 0.5, "most of the stem's n-grams are in the book"
    assert match_key(re.search(r"“([^”]+)”", quoted["question"]).group(1)) in book, "the quotation is in the book"
    chapters = [c for c in re.split(r"<篇名>", (shared_data / "corpus" / "ancient-books" / "457-伤寒论.txt").read_bytes().decode("gb18030", "replace"))]
    assert not [c[:30] for c in chapters if index.find(c)]
    page = f"{paraphrased['question']}\n{paraphrased['options']}\n答案：{paraphrased['answer']}"
    assert ("mtcmb_tcm_ed_a", "810") in [(b, i) for b, i, _ in index.find(page)]


def test_chapters_citing_an_item_with_its_answer_are_reported_and_flagged_not_removed(tmp_path, shared_data, items):
    """The Shanghan lun chapters holding the clause an exam item quotes (574, quoted) or cites
    (810, unquoted) with the right option beside it: reported as cited with the answer and
    flagged in the `contamination` column, kept even when the action is `remove`."""
    raw = (shared_data / "corpus" / "ancient-books" / "457-伤寒论.txt").read_bytes().decode("gb18030", "replace")
    chapters = {f"chapter-{n}": c for n, c in enumerate(re.split(r"<篇名>", raw)) if c.strip()}
    mtcmb = [i for i in items if i["benchmark"] == "mtcmb_tcm_ed_a"]
    for action in ("remove", "flag"):
        out = tmp_path / action
        manifest = stages.run_decontaminate(
            [_dataset(tmp_path / f"in-{action}", chapters)], out, {"action": action}, StageManifest(stage="decontaminate"),
            LocalEngine(), mtcmb,
        )
        assert manifest.rows_rejected.get("documents", 0) == 0
        flags = {r["id"]: r["contamination"] for r in read_kind(out, "documents").to_pylist()}
        assert len(flags) == len(chapters)
        cited = {f for f in flags.values() if f}
        assert cited == {"cites_answer:mtcmb_tcm_ed_a:574", "cites_answer:mtcmb_tcm_ed_a:810"}, cited
        row = manifest.stats["contamination"]["mtcmb_tcm_ed_a"]
        assert row["items_found"] == 0 and row["items_cited_with_answer"] == 2 and row["rows_citing"] >= 2
        report = (out / "contamination.md").read_text(encoding="utf-8")
        assert "| mtcmb_tcm_ed_a | 1200 | 1200 | 0 | 0 | 0 | 2 |" in report
        assert "cites_answer" in report
    # the flag reaches the corpus through the row's meta, whose other keys stay
    index = ContaminationIndex.build(mtcmb)
    citing = next(k for k, v in flags.items() if v)
    table = pa.table({"id": [citing, "x"], "text": [chapters[citing], "黄芪补气。"], "meta": ['{"file": "457-伤寒论.txt"}', None]})
    kept, _, _ = decontaminate_with_hits(table, "documents", index, "remove")
    metas = kept.column("meta").to_pylist()
    assert json.loads(metas[0]) == {"file": "457-伤寒论.txt", "contamination": flags[citing]} and metas[1] is None
    # the answer must stand beside the cited words: the clause alone is not enough
    clause = "风湿相搏，身体疼烦，不能自转侧，不呕不渴，脉浮虚而涩者。"
    assert index.find_all(clause + "桂枝附子汤主之。")[1] and not index.find_all(clause)[1]
    assert not index.find_all(clause + "夫" * 200 + "桂枝附子汤")[1]


def test_quoted_spans_are_not_an_items_own_words():
    grams = own_grams("“本太阳病医反下之因尔腹满时痛者”，其“腹满时痛”是病属", 13)
    assert grams and all("是病属" in g or "其" in g for g in grams)
    assert own_grams("“本太阳病医反下之因尔腹满时痛者”", 13), "all quoted: all n-grams count"


def test_short_stems_are_matched_only_with_their_options(index):
    # 与舌没有直接联系的脏是 (10 characters) is a phrase any textbook may hold
    assert not [h for h in index.find("古人论舌，与舌没有直接联系的脏是何脏？答曰：肺也。") if h[1] == "0" and h[0] == "mtcmb_tcm_ed_a"]
    assert ("mtcmb_tcm_ed_a", "0") in [(b, i) for b, i, _ in index.find("与舌没有直接联系的脏是 A.肝 B.心 C.脾 D.肺 E.肾 答案 D")]


def test_flag_keeps_rows_and_names_the_item(tmp_path, items):
    item = next(i for i in items if i["benchmark"] == "tcmchat_choice_herb_500")
    texts = {"page": _as_page(item, 0), "clean": "黄芪甘温，补气升阳，固表止汗，利水消肿，托毒生肌。"}
    manifest = stages.run_decontaminate(
        [_dataset(tmp_path / "in", texts)], tmp_path / "out", {"action": "flag"}, StageManifest(stage="decontaminate"),
        LocalEngine(), [item],
    )
    rows = {r["id"]: r["contamination"] for r in read_kind(tmp_path / "out", "documents").to_pylist()}
    assert rows == {"page": f"contaminated:tcmchat_choice_herb_500:{item['item']}", "clean": None}
    assert manifest.rows_rejected["documents"] == 0 and manifest.stats["contamination"]["tcmchat_choice_herb_500"]["rows"] == 1


def _sliding_window_find_all(index: ContaminationIndex, numbers: dict[str, int], text: str) -> tuple[list, list]:
    """The rule read directly, as the stage computed it before the batch path: every n-gram of
    the match form looked up in a dictionary (`numbers`: n-gram -> its number), every item
    holding one judged."""
    n, key = index.ngram, match_key(text)
    hits: dict[int, dict[int, int]] = {}
    for i in range(len(key) - n + 1):
        gram = numbers.get(key[i : i + n])
        if gram is not None:
            for item in index.postings[index.posting_starts[gram] : index.posting_starts[gram + 1]].tolist():
                hits.setdefault(item, {}).setdefault(gram, i)
    found, cited = [], []
    for number, present in hits.items():
        item = index.items[number]
        passing = [s for s, needed in ((len(set(present) & set(f.tolist())) / len(f), needed) for f, needed in item.forms) if s >= needed]
        if passing:
            found.append((item.benchmark, item.item, max(passing)))
        elif len(item.cited):
            where = [present[g] for g in item.cited.tolist() if g in present]
            share = len(where) / len(item.cited)
            if share >= index.cite_overlap and index._answer_near(key, item.answer_key, where):
                cited.append((item.benchmark, item.item, share))
    return sorted(found, key=lambda h: -h[2]), sorted(cited, key=lambda h: -h[2])


def test_batch_path_flags_exactly_the_rows_the_sliding_window_flags(shared_data, items, index):
    """On real book text, with exam items planted in it and the Shanghan lun chapters that cite
    items with their answers, the batch path (match forms over the batch, hashed n-grams)
    finds and cites the same items, with the same shares, in the same order, row by row."""
    passages = load_passages(shared_data / "corpus" / "ancient-books", 600, length=700, seed=5)
    raw = (shared_data / "corpus" / "ancient-books" / "457-伤寒论.txt").read_bytes().decode("gb18030", "replace")
    chapters = [c for c in re.split(r"<篇名>", raw) if c.strip()]
    planted = [f"{passages[n][:300]}\n{_as_page(item, n % 3)}\n{passages[n][300:]}" for n, item in enumerate(items[::40]) if item["options"]]
    texts = passages + chapters + planted + ["", "ＡＢＣ１２３，「黄芪」\u200b补气", "ΣΑΣ İstanbul é\u0301 𠀀𠀁"]
    batch = index.find_batch(texts)
    n = index.ngram
    numbers = {index.vocabulary[g * n : (g + 1) * n]: g for g in range(index.gram_count)}
    direct = [_sliding_window_find_all(index, numbers, text) for text in texts]
    assert batch == direct
    assert sum(bool(found) for found, _ in batch) >= len(planted) - 2 and any(cited for _, cited in batch)


def test_batch_match_forms_equal_the_per_text_match_form(shared_data):
    """match_keys gives match_key's result for every text: real books, and the characters whose
    key depends on their neighbours (combining marks, final sigma, İ, astral Han, half-width
    voiced marks) or that the key drops (controls, zero-width marks)."""
    from transforms.clean.normalize import match_keys

    texts = load_passages(shared_data / "corpus" / "ancient-books", 400, length=300, seed=9)
    texts += ["", "\n", "ＡＢＣ１２３，（注）…", "e\u0301 a\u0308", "ΟΔΟΣ ΣΑΣ", "İIı", "𠀀本草\U0002a6a5", "ｶﾞｷﾞ", "ㄱㅏ 가\u11a8",
              "乾隆年間，頭髮發現", "\x00\x01 \u200b\ufeff汤", "①⑩㎎㍿", "\ud7a3\u3131"]
    assert match_keys(texts) == [match_key(text) for text in texts]
    everything = "".join(chr(cp) for cp in range(0x20, 0x10000) if not 0xD800 <= cp <= 0xDFFF)
    pieces = [everything[i : i + 97] for i in range(0, len(everything), 97)]
    assert match_keys(pieces) == [match_key(piece) for piece in pieces]


def test_opencc_skips_only_texts_it_returns_as_they_are(shared_data):
    """match_keys runs OpenCC only over texts holding a character its t2s dictionaries can change:
    every other character, alone or in a run with its neighbours, converts to itself, and every
    real text without one converts to itself."""
    import opencc

    from transforms.clean.normalize import _changing_table

    table = _changing_table("t2s")
    assert table is not None and table[ord("後")] and table[ord("坏")] and not table[ord("后")] and not table[ord("一")]
    t2s = opencc.OpenCC("t2s")
    kept = "".join(chr(cp) for cp in range(0x20, 0x10000) if not table[cp] and not 0xD800 <= cp <= 0xDFFF)
    assert t2s.convert(kept) == kept
    assert t2s.convert(kept[::-1]) == kept[::-1]
    texts = load_passages(shared_data / "corpus" / "ancient-books", 400, length=300, seed=11)
    plain = [text for text in texts if not table[[ord(c) for c in text]].any()]
    assert plain and len(plain) < len(texts)
    assert all(t2s.convert(text) == text for text in plain)


def test_opencc_over_runs_gives_what_it_gives_over_whole_texts(shared_data):
    """match_keys hands OpenCC only the runs of characters its dictionaries' keys hold that hold
    a character it changes: the same result as converting the whole texts, on real books and on
    phrases whose conversion depends on their neighbours (乾隆 stays, 乾燥 becomes 干燥)."""
    from transforms.clean.normalize import _code_points, _converted_runs, _converted_texts, _opencc_tables

    changing, keyed = _opencc_tables("t2s")
    assert keyed[ord("乾")] and not keyed[ord("，")] and not changing[ord("一")]
    texts = load_passages(shared_data / "corpus" / "ancient-books", 400, length=300, seed=13)
    texts += ["乾隆年間，頭髮發現乾燥", "著作著名，瞭解了", "後天之本；皇后", "", "一", "於"]
    values, _, ends = _code_points(texts)
    changeable = np.flatnonzero([changing[[ord(c) for c in text]].any() for text in texts])
    runs = _converted_runs(values, ends, changing, keyed)
    whole = _converted_texts(values, ends, changeable)
    assert runs is not None and not np.array_equal(runs[0], values)
    assert np.array_equal(runs[0], whole[0]) and np.array_equal(runs[1], whole[1])
    assert runs[0][ends[-7]:ends[-6]].tobytes().decode("utf-32-le") == "乾隆年间，头发发现干燥"


def _rule_read_item_by_item(items: list[dict], n: int = 13, min_chars: int = 8) -> list[tuple[dict, list, frozenset]]:
    """The indexed items as the rule reads, one item at a time: (item, forms as sets of n-gram
    strings with their shares, cited n-grams)."""
    indexed = []
    for item in items:
        whole = "".join(match_key(str(item.get(k) or "")) for k in ("question", "options", "answer"))
        forms = item_forms(item, n, 0.5, 0.9) if len(whole) >= min_chars else []
        if forms:
            indexed.append((item, forms, cited_grams(item, n) if answer_text(item) else frozenset()))
    return indexed


def _as_strings(index: ContaminationIndex) -> tuple[list, dict]:
    """An index's items (benchmark, item, answer, forms, cited) and postings with n-gram strings for numbers."""
    n = index.ngram

    def gram(number: int) -> str:
        return index.vocabulary[number * n : (number + 1) * n]

    items = [(i.benchmark, i.item, i.answer_key, [({gram(g) for g in f.tolist()}, share) for f, share in i.forms],
              {gram(g) for g in i.cited.tolist()}) for i in index.items]
    postings = {gram(g): index.postings[index.posting_starts[g] : index.posting_starts[g + 1]].tolist() for g in range(index.gram_count)}
    return items, postings


def test_index_built_at_once_holds_what_the_rule_reads_item_by_item(items, index):
    """All items' n-grams are numbered in one pass over arrays; that index holds, per item, the
    forms and cited words the rule gives for the item alone (`item_forms`, `cited_grams`), the
    items holding each n-gram, the floors, and the hash of each n-gram (`window_hashes`)."""
    expected = _rule_read_item_by_item(items)
    indexed, postings = _as_strings(index)
    assert len(indexed) == len(expected) > 3000
    holders: dict[str, list[int]] = {}
    for number, ((benchmark, name, answer, forms, cited), (item, rule_forms, rule_cited)) in enumerate(zip(indexed, expected)):
        assert (benchmark, name, answer) == (item["benchmark"], str(item["item"]), answer_text(item))
        assert forms == [(set(grams), share) for grams, share in rule_forms] and cited == rule_cited
        for gram in frozenset().union(rule_cited, *(grams for grams, _ in rule_forms)):
            holders.setdefault(gram, []).append(number)
        floor = min([share * len(grams) for grams, share in rule_forms] + ([0.6 * len(rule_cited)] if rule_cited else []))
        assert index.floors[number] == floor
    assert postings == holders
    vocabulary = np.frombuffer(index.vocabulary.encode("utf-32-le"), np.uint32)
    assert np.array_equal(index.hashes, contamination.window_hashes(vocabulary, index.ngram)[:: index.ngram][index.hash_grams])
    assert np.all(np.diff(index.hashes.astype(np.float64)) >= 0)


def test_index_tells_apart_n_grams_whose_hashes_agree(items, index, monkeypatch):
    """With a hash of ten bits, nearly every n-gram shares its hash with others: the code points
    still tell them apart, and the index holds the same items and n-grams."""
    real = contamination.window_hashes
    monkeypatch.setattr(contamination, "window_hashes", lambda points, n: real(points, n) & np.uint64(0x3FF))
    weak = ContaminationIndex.build(items[::3])
    monkeypatch.undo()
    assert len(set(weak.hashes.tolist())) <= 1024 < weak.gram_count
    assert _as_strings(weak) == _as_strings(ContaminationIndex.build(items[::3]))
