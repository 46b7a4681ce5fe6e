"""The pure transforms: normalisation, cleaning, exact dedup, decontamination, conversion, sampling."""
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import conversation_id, document_id, dumps_meta
from schemas.dataset import StageManifest
from transforms.clean.steps import clean_conversations, clean_documents
from transforms.convert.conversion import convert_documents, monograph_pairs
from transforms.decontaminate.contamination import ContaminationIndex, decontaminate_with_hits
from transforms.engines.local import LocalEngine
from transforms.clean.normalize import match_key, normalize_text
from transforms.stages import run_dedup
from transforms.sample.order import priority_order, sort_keys, to_corpus_rows, uniform_draws


def docs(texts, source="s", category="books", metas=None):
    return pa.table(
        {
            "id": [document_id(source, t) for t in texts],
            "text": texts,
            "source": [source] * len(texts),
            "category": [category] * len(texts),
            "meta": metas or [None] * len(texts),
        }
    )


def test_normalisation_keeps_chinese_punctuation_and_folds_fullwidth_latin():
    text, changed = normalize_text("黃耆，味甘,微溫。\u200bＡＢ１２\t\t主治  癰疽\r\n\r\n\r\n\r\n（排膿）")
    assert text == "黄耆，味甘，微温。AB12 主治 痈疽\n\n（排脓）"
    assert changed == 4  # 黃溫癰膿; 耆 and 疽 are the same in both scripts
    assert normalize_text("黃耆", opencc=None)[0] == "黃耆"


def test_match_key_ignores_script_punctuation_and_spacing():
    assert match_key("黃耆，味甘, 微溫。") == match_key("黄耆味甘微温")


def test_a_lone_surrogate_is_dropped_from_the_match_form_of_real_text(shared_data):
    """Lines of a real book (GB18030, traditional) with a lone surrogate in them, as a JSON
    "\\ud800" escape gives: match_key and match_keys read each like any other text, dropping the
    surrogate as they drop punctuation, so the key is the one of the line with U+FFFD there (what
    ingest writes) and of the line without it."""
    from transforms.clean.normalize import match_keys
    from transforms.select.conflicts import conversation_keys

    raw = (shared_data / "corpus" / "ancient-books" / "000-神农本草经.txt").read_bytes().decode("gb18030", errors="replace")
    lines = [line.strip() for line in raw.splitlines() if len(line.strip()) > 12][:200]
    broken = [line[:5] + surrogate + line[5:] for line, surrogate in zip(lines, ["\ud800", "\udfff", "\udc80", "\udbff"] * 50)]
    repaired = [line[:5] + "\ufffd" + line[5:] for line in lines]
    expected = [match_key(line) for line in lines]
    assert all(expected) and [match_key(t) for t in repaired] == expected
    assert [match_key(t) for t in broken] == expected
    assert match_keys(broken + lines) == expected + expected, "one text with a surrogate leaves the batch's keys as they are"
    messages = [[{"role": "user", "content": broken[0]}, {"role": "assistant", "content": broken[1]}]]
    clean = [[{"role": "user", "content": lines[0]}, {"role": "assistant", "content": lines[1]}]]
    assert conversation_keys(messages) == conversation_keys(clean)


def test_clean_ledger_and_reasons():
    batch = docs(["黃耆味甘微溫，主治癰疽久敗瘡，排膿止痛。", "短", "  \u200b "])
    kept, rejected = clean_documents(batch, {})
    assert kept.num_rows + rejected.num_rows == batch.num_rows
    # Clean removes only the empty text; how short is too short is select's rule on body_chars.
    assert kept.column("traditional").to_pylist() == [True, False]
    assert kept.column("body_chars").to_pylist() == [20, 1]
    assert rejected.column("reason").to_pylist() == ["empty"]
    # A rejected row keeps its text as it came in.
    assert rejected.column("text").to_pylist()[0] == "  \u200b "


def test_conversations_must_alternate_and_end_with_answer():
    rows = [
        [{"role": "user", "content": "問"}, {"role": "assistant", "content": "答"}],
        [{"role": "system", "content": "你是中医"}, {"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "user", "content": "只有问题"}],
        [{"role": "user", "content": "问"}, {"role": "assistant", "content": "  "}],
    ]
    table = pa.table({"id": list("abcde"), "messages": rows, "source": ["s"] * 5, "category": ["sft"] * 5})
    kept, rejected = clean_conversations(table, {})
    assert kept.column("id").to_pylist() == ["a", "b"]
    assert kept.column("messages").to_pylist()[0][0]["content"] == "问"
    assert [r.split(":")[0] for r in rejected.column("reason").to_pylist()] == ["roles_not_alternating", "no_answer", "short_turn"]


def exact_dedup(tmp_path, tables, keep):
    """The dedup stage with exact keys only: (kept ids, {rejected id: reason}) over the tables,
    each written as its own file, in order."""
    folder = tmp_path / f"in-{keep}" / "documents"
    folder.mkdir(parents=True)
    for n, table in enumerate(tables):
        pq.write_table(table, folder / f"part-{n:05d}.parquet")
    params = {"method": "exact", "keep": [keep], "paragraphs": {"enabled": False}}
    out = tmp_path / f"out-{keep}"
    run_dedup([folder.parent], out, params, StageManifest(stage="dedup"), LocalEngine(1))
    kept = pq.read_table(out / "documents").column("id").to_pylist()
    rejected_dir = out / "rejected" / "documents"
    rejected = pq.read_table(rejected_dir).to_pylist() if rejected_dir.exists() else []
    return kept, [(row["id"], row["reason"]) for row in rejected]


def test_exact_dedup_names_the_survivor_and_ignores_script_and_punctuation(tmp_path):
    batch = docs(["黃耆，味甘。", "黄耆味甘", "当归味甘辛", "黄耆 味甘！！"])
    ids = batch.column("id").to_pylist()
    kept, rejected = exact_dedup(tmp_path, [batch], "first")
    assert kept == [ids[0], ids[2]]
    assert rejected == [(ids[1], f"exact_duplicate_of:{ids[0]}"), (ids[3], f"exact_duplicate_of:{ids[0]}")]
    kept, rejected = exact_dedup(tmp_path, [batch], "longest")
    assert kept == [ids[2], ids[3]] and {reason for _, reason in rejected} == {f"exact_duplicate_of:{ids[3]}"}


def test_exact_dedup_removes_a_copy_that_shares_the_survivors_id(tmp_path):
    # The same chapter in two books of one source: same content-derived id, still one copy kept.
    first, second = docs(["味甘，无毒。主明目，益气。"]), docs(["味甘，无毒。主明目，益气。"])
    kept, rejected = exact_dedup(tmp_path, [first, second], "first")
    survivor = first.column("id")[0].as_py()
    assert kept == [survivor] and rejected == [(survivor, f"exact_duplicate_of:{survivor}")]


QUESTION = "患者男，四十五岁，恶寒发热，头身疼痛，无汗而喘，舌苔薄白，脉浮紧。治疗应首选的方剂是"


def test_decontamination_finds_a_planted_item_in_traditional_script_only():
    index = ContaminationIndex.build([{"benchmark": "exam", "item": "7", "question": QUESTION}], ngram=13)
    planted = "太阳病篇讲解。患者男，四十五歲，惡寒發熱，頭身疼痛，無汗而喘，舌苔薄白，脈浮緊。治療應首選的方劑是麻黄汤。"
    quoting = "恶寒发热，头身疼痛，是太阳伤寒的常见表现，历代医家多有论述。"
    batch = docs([planted, quoting])
    kept, rejected, _ = decontaminate_with_hits(batch, "documents", index)
    assert rejected.column("reason").to_pylist() == ["contaminated:exam:7"]
    assert kept.column("text").to_pylist() == [quoting]
    flagged, none, _ = decontaminate_with_hits(batch, "documents", index, action="flag")
    assert flagged.column("contamination").to_pylist() == ["contaminated:exam:7", None] and none.num_rows == 0


MONOGRAPH = {
    "kind": "monograph",
    "name": "黄芪",
    "description": "本品为豆科植物蒙古黄芪的干燥根。",
    "sections": {"性味与归经": "甘，微温。归肺、脾经。", "功能与主治": "补气升阳，固表止汗。", "鉴别": "取本品粉末……"},
}


MONOGRAPH_TEXT = (
    "黄芪\n拼音名：Huangqi\n拉丁名：ASTRAGALI RADIX\n本品为豆科植物蒙古黄芪的干燥根。\n"
    "【性味与归经】甘，微温。归肺、脾经。\n【功能与主治】补气升阳，固表止汗。\n【鉴别】取本品粉末……"
)


def test_template_converts_monograph_sections_to_conversations():
    pairs = monograph_pairs(MONOGRAPH, "")
    assert [section for section, _, _ in pairs] == ["来源", "性味与归经", "功能与主治"]
    assert monograph_pairs(MONOGRAPH, MONOGRAPH_TEXT) == pairs, "the text, when there, is what is read"
    batch = docs([MONOGRAPH_TEXT, "一段没有结构的正文" * 5], category="encyclopedia", metas=[dumps_meta(MONOGRAPH), None])
    result = convert_documents(batch, {"keep_text": True})
    conversations = result["conversations"]
    assert conversations.num_rows == 3 and result["converted"] == 1
    assert result["documents"].num_rows == 1
    # The section no template takes stays as the entry's text row, under its name.
    (remainder,) = result["remainders"].column("text").to_pylist()
    assert remainder == "黄芪\n拼音名：Huangqi\n拉丁名：ASTRAGALI RADIX\n【鉴别】取本品粉末……"
    assert dict(result["sections"]["text"]) == {"鉴别": 1}
    first = conversations.to_pylist()[1]
    assert first["messages"][0] == {"role": "user", "content": "黄芪的性味与归经是什么？"}
    assert first["messages"][1]["content"] == "黄芪甘，微温。归肺、脾经。"
    assert first["origin_id"] == batch.column("id")[0].as_py()
    again = convert_documents(batch, {"keep_text": True})["conversations"]
    assert again.column("id").to_pylist() == conversations.column("id").to_pylist(), "deterministic"
    dropped = convert_documents(batch, {"keep_text": False})
    assert dropped["rejected"].column("reason").to_pylist() == ["not_converted:backend=template"]


def _items(counts):
    rows = []
    for category, n in counts.items():
        for i in range(n):
            rows.append({"id": f"{category}-{i}", "source": category, "category": category, "format": "text",
                         "messages": None, "text": f"{category} {i}", "meta": None})
    return to_corpus_rows(pa.Table.from_pylist(rows).select(["id", "text", "source", "category", "meta"]), "documents")


PARAMS = {"mode": "priority", "weights": {"web": 32, "books": 4, "sft": 1}, "sft_epochs": 3, "seed": 11}


def test_priority_order_repeats_sft_and_is_deterministic_by_seed():
    items = _items({"web": 300, "books": 300, "sft": 200})
    expanded, order = priority_order(items, PARAMS)
    assert expanded.num_rows == 300 + 300 + 3 * 200
    ids = expanded.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    sft_copies = Counter(i.rsplit("@", 1)[0] for i in ids if i.startswith("sft-"))
    assert set(sft_copies.values()) == {3}
    _, again = priority_order(items, PARAMS)
    assert np.array_equal(order, again)
    _, other = priority_order(items, {**PARAMS, "seed": 12})
    assert not np.array_equal(order, other)
    # Input order does not matter: the keys hang on ids, not on row numbers.
    reversed_items = items.take(pa.array(range(items.num_rows - 1, -1, -1)))
    expanded_r, order_r = priority_order(reversed_items, PARAMS)
    assert expanded_r.take(pa.array(order_r)).column("id").to_pylist() == expanded.take(pa.array(order)).column("id").to_pylist()


def test_priority_order_puts_domain_first_and_sft_last():
    items = _items({"web": 2000, "books": 2000, "sft": 2000})
    expanded, order = priority_order(items, PARAMS)
    categories = np.array(expanded.column("category").to_pylist())[order]
    tenth = len(categories) // 10
    first, last = categories[:tenth], categories[-tenth:]
    assert (first == "web").mean() > 0.5
    # At the start sft holds 6000 of 78000 units of weight: about 8%, then it rises as the pools drain.
    assert (first == "sft").mean() < 0.12
    assert (last == "sft").mean() > 0.9


def test_exponential_keys_match_weighted_draw_without_replacement():
    # Two items with weights 3 and 1: the heavy one comes first with probability 3/4.
    trials = 20000
    hashes = np.arange(trials * 2, dtype=np.uint64)
    epochs = np.zeros(trials * 2, dtype=np.uint64)
    weights = np.tile([3.0, 1.0], trials)
    keys = sort_keys(hashes, epochs, weights, np.zeros(trials * 2, bool), "priority", 5).reshape(trials, 2)
    share = (keys[:, 0] < keys[:, 1]).mean()
    assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / trials)
    u = uniform_draws(hashes, epochs, 5)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


@pytest.mark.parametrize("mode", ["uniform", "sequential"])
def test_other_sampling_modes(mode):
    items = _items({"web": 100, "sft": 100})
    expanded, order = priority_order(items, {**PARAMS, "mode": mode})
    categories = np.array(expanded.column("category").to_pylist())[order]
    if mode == "sequential":
        assert (categories[:100] == "web").all() and (categories[100:] == "sft").all()
    else:
        assert 0.1 < (categories[:100] == "sft").mean() < 0.9


def test_conversation_ids_are_content_derived():
    messages = [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]
    assert conversation_id("s", messages) == conversation_id("s", list(messages))


def test_key_tables_hold_each_code_points_own_rule():
    """The look-up tables of match_keys (found a block at a time) give, per code point of the BMP,
    what the rule says read one code point at a time: invisible removal and NFKC (full-width
    Chinese punctuation kept), whether the result depends on neighbours, word characters lower-cased."""
    import unicodedata

    from transforms.clean.normalize import _CJK_PUNCT, _INVISIBLE, _key_tables

    seconds = {int(parts[1], 16) for parts in (unicodedata.decomposition(chr(cp)).split() for cp in range(0x110000))
               if len(parts) == 2 and not parts[0].startswith("<")}
    seconds |= set(range(0x1100, 0x1200)) | set(range(0x3130, 0x3190))
    fold, simple_fold, word, simple_word = _key_tables()
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF:
            assert not simple_fold[cp] and not simple_word[cp]
            continue
        char = chr(cp)
        folded = "" if _INVISIBLE.match(char) else char if char in _CJK_PUNCT else unicodedata.normalize("NFKC", char)
        simple = not folded or not (len(folded) != 1 or cp in seconds or ord(folded) in seconds
                                    or unicodedata.combining(char) or unicodedata.combining(folded))
        assert simple_fold[cp] == simple, hex(cp)
        if simple:
            assert fold[cp] == (ord(folded) if folded else 0), hex(cp)
        lowered = char.lower()
        simple_lower = not char.isalnum() or (len(lowered) == 1 and char != "\u03a3")
        assert simple_word[cp] == simple_lower, hex(cp)
        assert word[cp] == (ord(lowered) if char.isalnum() and simple_lower else 0), hex(cp)


def test_lookup_is_numpy_indexing_over_real_code_points(shared_data):
    """`textstats.lookup` (Arrow's take) gives what numpy's indexing gives, for the tables the
    batch steps look code points up in, over a real book's code points; out of bounds it raises
    IndexError as numpy does."""
    from transforms.clean.normalize import _packed_tables
    from transforms.clean.textstats import class_table, lookup

    text = (shared_data / "corpus" / "ancient-books" / "038-本草分经.txt").read_bytes().decode("gb18030")
    points = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    assert len(points) > 10_000 and int(points.max()) <= 0xFFFF
    first, _, _ = _packed_tables()
    flags = np.zeros(0x110000, bool)
    flags[0x4E00:0x9FFF] = True
    for table in (class_table(), first, flags):
        found = lookup(table, points)
        assert found.dtype == table.dtype and np.array_equal(found, table[points])
    assert lookup(first, points[:0]).shape == (0,)
    with pytest.raises(IndexError):
        lookup(class_table(), np.array([0x10000], np.uint32))
