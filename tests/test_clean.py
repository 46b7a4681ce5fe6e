"""Cleaning and selection: normalisation policy, PII redaction, quality tags, thresholds with
reasons, the dry run, and defaults that keep the real classical books and monographs."""
from __future__ import annotations

import json
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.config import SelectConfig, ConfigError, parse_config
from schemas import document_id
from schemas.dataset import StageManifest, read_manifest
from transforms.clean import pii
from transforms.clean.steps import clean_conversations, clean_documents
from transforms.engines.local import LocalEngine
from transforms.ingest.importers import import_file
from transforms.clean.normalize import nfkc, normalize_batch, normalize_text, tidy_whitespace, unicode_clean
from transforms.clean.tag_rules import quality_tags
from transforms.select.rules import MissingTag, select_batch, selection_report
from transforms.stages import run_clean, run_select, selection_dry_run

DEFAULTS = SelectConfig().model_dump()


def docs(texts, source="s", category="books"):
    return pa.table(
        {"id": [document_id(source, f"{i}:{t}") for i, t in enumerate(texts)], "text": texts, "source": [source] * len(texts), "category": [category] * len(texts)}
    )


# -- normalisation ----------------------------------------------------------------------------


def test_invisible_characters_go_and_line_separators_become_newlines():
    raw = "人\u200b参\u200d味\ufeff甘\u00ad，\u202e微\ufe0f寒\u0007。\u2028主补五脏\u2029安精神……"
    assert unicode_clean(raw) == "人参味甘，微寒。\n主补五脏\n\n安精神……"


def test_whitespace_and_blank_lines_are_tidied():
    text, _ = normalize_text("  \u3000\u3000人参\t\t味甘  \n\n\n\n\n   \n微寒  ", opencc=None)
    assert text == "人参 味甘\n\n微寒"


def test_nfkc_policy_equals_full_nfkc_with_chinese_punctuation_protected(shared_data):
    """The fast path (fold only what NFKC changes) against the definition, on a real book."""
    protected = "，：；！？（）［］｛｝｜～＂＇…"
    to_private = {ord(c): 0xF0000 + i for i, c in enumerate(protected)}
    back = {v: k for k, v in to_private.items()}
    book = shared_data / "corpus" / "ancient-books" / "084-汤头歌诀.txt"
    chapters = [r.row["text"] for r in import_file(book, "book", "b", "books")]
    samples = chapters + ["ＡＢ１２ ㈱ ﬁ ① ㍻ e\u0301 \U0001d400 ⼀ ～ … ﹐ ︰ ½ ™ 「引」"]
    for text in samples:
        assert nfkc(text) == unicodedata.normalize("NFKC", text.translate(to_private)).translate(back)
    assert nfkc(samples[-1]) == "AB12 (株) fi 1 平成 é A 一 ～ … , .. 1⁄2 TM 「引」"


def test_batch_normalisation_gives_each_texts_own_normal_form(shared_data):
    """normalize_batch runs each pattern only over the texts it can change: same texts as the
    policy applied text by text, for every form, on a real book and on the characters each
    step looks for (alone, in runs, at the edges, beside Han)."""
    book = shared_data / "corpus" / "ancient-books" / "084-汤头歌诀.txt"
    chapters = [r.row["text"] for r in import_file(book, "book", "b", "books")]
    pieces = ["人参", "味甘", " ", "  ", "\t", "\u3000", "\u00a0", "\u2003", "\n", "\n\n\n", " \n ", "\r\n", "\r",
              "\u2028", "\u2029", "\u200b", "\ufeff", "\u0007", ",", "(", ")", "!", "?", "：", "ＡＢ１２", "①", "\u037e",
              "e\u0301", "\uf900", "\U0001d400", "\U0002f800", "𠀀", "…", "，"]
    crafted = ["".join(pieces[(i * 7 + k * 3) % len(pieces)] for k in range(i % 9)) for i in range(300)]
    texts = chapters + crafted + ["", "a\ud800b, (x)"]
    for form in ("NFKC", "NFC", "none"):
        assert normalize_batch(texts, form) == [tidy_whitespace(unicode_clean(t, form)) for t in texts]


def test_conversation_redaction_over_a_batch_equals_redaction_text_by_text():
    texts = [CASE, "", "患者女，45岁，头痛。", "微信：abc_def1 QQ 12345678", "\0", "某某 13812345678", "取汁一升。"]
    for kinds in (pii.KINDS, ("phone", "name"), ()):
        out, counts = pii.redact_texts(texts, kinds)
        one_by_one = [pii.redact(t, kinds) if kinds else (t, {}) for t in texts]
        assert out == [t for t, _ in one_by_one]
        assert dict(counts) == {k: sum(c.get(k, 0) for _, c in one_by_one) for k in counts} and all(counts.values())


def test_tokenizer_reading_its_dictionary_by_buckets_segments_as_jieba_does():
    from transforms.clean.words import _full_tokenizer, dictionary_words, tokenizer

    bucketed, full = tokenizer(None), _full_tokenizer(dictionary_words(None))
    assert bucketed.total == full.total
    for text in ["托援交情重", "用村庄家锅底上刮得者", "为七情色欲过度。内损肾精", "益卫固表，气血两虚证", "成人视频 ABC abc 123", "𠀀人参\n黄芪"]:
        assert list(bucketed.tokenize(text)) == list(full.tokenize(text)), text


def test_opencc_is_configurable_and_traditional_is_recorded():
    table = docs(["黃耆味甘微溫，主治癰疽久敗瘡，排膿止痛。", "黄芪味甘微温，主治痈疽久败疮，排脓止痛。"])
    kept, _ = clean_documents(table, {"opencc": "tw2s"})
    assert kept.column("text").to_pylist()[0] == "黄耆味甘微温，主治痈疽久败疮，排脓止痛。"
    assert kept.column("traditional").to_pylist() == [True, False]
    kept, _ = clean_documents(table, {"opencc": None})
    assert kept.column("text").to_pylist()[0].startswith("黃耆")


# -- PII --------------------------------------------------------------------------------------

CASE = (
    "患者王某某，男，45岁，因头痛三日就诊。张三，女，32岁，同住。电话13812345678，座机010-62345678，"
    "邮箱 doc.li@example.com，网址 https://www.example.com/a?b=1 ，QQ：12345678，微信号：tcm_doc88，"
    "身份证11010519491231002X，化验单号110105194912310021。"
)


def test_every_kind_of_personal_data_is_redacted_and_counted():
    text, counts = pii.redact(CASE)
    assert counts == {"name": 2, "phone": 2, "email": 1, "url": 1, "qq": 1, "wechat": 1, "id_number": 1}
    for secret in ("王某某", "张三", "13812345678", "62345678", "doc.li", "example.com", "12345678", "tcm_doc88", "11010519491231002X"):
        assert secret not in text, secret
    # Labels and context stay; a number whose check digit is wrong is not an ID number.
    assert "患者<name>，男，45岁" in text and "微信号：<wechat>" in text and "110105194912310021" in text


def test_case_insensitive_screens_open_only_where_their_openings_say():
    """The url, QQ and WeChat screens are tried only at their opening characters: no other code
    point folds to an opening letter, and the screen finds the same match as a plain search."""
    import re

    for letter in "hwvq":
        folded = re.compile(letter, re.IGNORECASE)
        assert {c for c in map(chr, range(0x110000)) if folded.match(c)} == {letter, letter.upper()}
    text = "网址WWW.a.cn，HtTpS://b.cn；加ＶＸ：Wxid_abcdef，WeChat abcdefg，Vx信，qQ群 12345，扣扣 54321，企鹅12345，微信：abcdefg"
    for kind in pii._SCREEN_OPENINGS:
        for position in range(len(text)):
            expected = pii._SCREENS[kind].search(text, position)
            found = pii._screen_search(kind, text, position)
            assert (found and (found.span(), found.group())) == (expected and (expected.span(), expected.group())), (kind, position)


def test_case_records_without_names_and_classical_text_are_left_alone():
    for text in ["患者女，45岁，头痛。", "患者高热，口渴，脉洪大。", "取汁一升，分温再服，日三次。", "含量不得少于0.13812345678%。"]:
        assert pii.redact(text) == (text, {})


def test_redaction_is_switchable_per_kind_and_counted_in_the_manifest(tmp_path):
    source = tmp_path / "in"
    table = docs([CASE, "人参味甘微寒，主补五脏，安精神。"])
    (source / "documents").mkdir(parents=True)
    pq.write_table(table, source / "documents" / "part-00000.parquet")
    params = {"min_chars": 5, "pii": {"phone": False, "url": False}}
    manifest = run_clean([source], tmp_path / "clean", params, StageManifest(stage="clean"), LocalEngine(1))
    counts = manifest.stats["pii_redactions"]["documents"]
    assert "phone" not in counts and "url" not in counts and counts["name"] == 2 and counts["id_number"] == 1
    text = pq.read_table(tmp_path / "clean" / "documents").column("text").to_pylist()[0]
    assert "13812345678" in text and "https://www.example.com" in text and "<name>" in text


# -- quality tags -----------------------------------------------------------------------------

VERSE = "四君子汤中和义 参术茯苓甘草比\n益以夏陈名六君 祛痰补气阳虚饵\n除却半夏名异功 或加香砂胃寒使"
FORMULA = "当归三钱 川芎二钱 白芍三钱 熟地黄四钱 水煎服 日一剂早晚分服 忌食生冷油腻之物\n人参 白术 茯苓 甘草各等分"
CLASSICAL = "湿乃地之体风雨蒸气流行于四时而于秋则为正令经曰地之湿气感则害人皮肉筋脉盖湿本属土脾主肌肉"
NAVIGATION = "首页 | 新闻中心 | 产品展示 | 联系我们 | 关于我们 | 在线留言 | Copyright 2024\n" * 3


def test_each_rule_writes_its_column():
    texts = [
        "人参，味甘微寒。主补五脏，安精神，定魂魄。",
        "价格：￥99.00元/盒 ★★★★★ 销量 12345 件 ☆☆ ###",
        "第一行\n第一行\n第一行\n另一行",
        "• 一\n• 二\n• 三",
        "未完……\n待续...\n还有。",
        "加微信领取优惠券，六合彩博彩娱乐城，色情视频免费看",
        "观其面色情况，湿热下注者，宜清利。",
        "以黄□（芩），黄 （芩）长三寸，lOOcm□□□",
    ]
    tags = quality_tags(texts)
    assert tags["han_ratio"][0] == pytest.approx(16 / 21)
    assert tags["symbol_ratio"][1] > 0.2 and tags["digit_ratio"][1] > 0.2
    assert tags["dup_line_ratio"][2] == pytest.approx(6 / 15)
    assert tags["bullet_ratio"][3] == 1 and tags["ellipsis_ratio"][4] == pytest.approx(2 / 3)
    assert tags["flagged_per_kchar"][5] > 100
    # 色情 inside 面色情况 and 下注 inside 湿热下注 are not words of those texts.
    assert tags["flagged_per_kchar"][6] == 0
    assert tags["debris_ratio"][7] > 0.2 and tags["debris_ratio"][0] == 0
    assert tags["mean_line_chars"][2] == pytest.approx(3.0)


def test_duplicate_ngram_share_matches_its_definition():
    texts = ["上为细末，炼蜜为丸，如梧桐子大。人参一两。上为细末，炼蜜为丸，如梧桐子大。", "天地玄黄宇宙洪荒" * 3, "短"]

    def by_hand(text, n=10):
        grams = [text[i : i + n] for i in range(len(text) - n + 1)]
        covered = set()
        for i, gram in enumerate(grams):
            if grams.count(gram) > 1:
                covered.update(range(i, i + n))
        return len(covered) / len(text)

    assert list(quality_tags(texts)["dup_ngram_ratio"]) == pytest.approx([by_hand(t) for t in texts])


def test_duplicate_ngram_hashes_and_keys_over_blocks_equal_their_definitions():
    """Window hashes built block by block equal the polynomial over the whole run, across block
    edges; repeated_keys marks exactly the keys that occur more than once."""
    from transforms.clean.tag_rules import HASH_BLOCK, HASH_PRIME, repeated_keys, window_hashes

    rng = np.random.default_rng(7)
    points = rng.integers(0x4E00, 0x4E40, HASH_BLOCK * 2 + 123).astype(np.uint32)
    hashes = window_hashes(points, 10)
    assert hashes.dtype == np.uint64 and len(hashes) == len(points) - 9
    for start in (0, HASH_BLOCK - 5, HASH_BLOCK, 2 * HASH_BLOCK + 100, len(points) - 10):
        expected = 0
        for value in points[start : start + 10]:
            expected = (expected * HASH_PRIME + int(value)) % 2**64
        assert int(hashes[start]) == expected, start
    keys = rng.integers(0, 2**63, 200_000, dtype=np.int64).astype(np.uint64)
    keys[rng.integers(0, len(keys), 500)] = keys[rng.integers(0, len(keys), 500)]
    keys[:3] = keys[-1]  # a value three times more
    values, counts = np.unique(keys, return_counts=True)
    assert np.array_equal(repeated_keys(keys), np.isin(keys, values[counts > 1]))
    assert not repeated_keys(np.arange(10, dtype=np.uint64)).any()


def test_line_punctuation_rule_keeps_verse_formulas_headings_and_classical_text():
    tags = quality_tags([VERSE, FORMULA, "卷一\n伤寒论\n辨太阳病脉证并治", CLASSICAL, NAVIGATION])
    assert list(tags["punct_line_ratio"][:4]) == [1, 1, 1, 1]
    assert tags["punct_line_ratio"][4] == 0


# -- selection --------------------------------------------------------------------------------


def tagged(texts, **params):
    kept, rejected = clean_documents(docs(texts), {"min_chars": 1, **params})
    assert rejected.num_rows == 0
    return kept


def test_selection_names_rule_value_and_threshold():
    table = tagged(["人参，味甘微寒。主补五脏，安精神，定魂魄。", "The root of ginseng is sweet and slightly cold.", NAVIGATION, "一二三" + "1234567890" * 3 + "。"])
    kept, rejected = select_batch(table, "documents", DEFAULTS)
    assert kept.num_rows + rejected.num_rows == 4
    assert kept.column("text").to_pylist() == ["人参，味甘微寒。主补五脏，安精神，定魂魄。"]
    reasons = rejected.column("reason").to_pylist()
    assert reasons[0] == "lang:en(allowed=zh)"
    assert reasons[1].startswith("punct_line_ratio:0<0.12")
    assert reasons[2].startswith("han_ratio:0.") and reasons[2].endswith("<0.3")
    # Thresholds off: nothing is removed; the tags are the same columns, not recomputed.
    off = {key: None for key in DEFAULTS} | {"languages": []}
    assert select_batch(table, "documents", off)[0].num_rows == 4
    disabled = {**DEFAULTS, "languages": [], "disable": ["min_punct_line_ratio", "min_han_ratio"]}
    reasons = select_batch(table, "documents", disabled)[1].column("reason").to_pylist()
    assert reasons and not any(r.startswith(("punct_line_ratio", "han_ratio", "lang")) for r in reasons)


def test_nan_tags_never_fail_and_missing_tags_are_a_clear_error():
    table = tagged(["人参，味甘微寒。主补五脏，安精神。"]).append_column("domain_score", pa.array([np.nan], pa.float32()))
    assert select_batch(table, "documents", {"min_domain_score": 0.9})[0].num_rows == 1
    with pytest.raises(MissingTag, match="domain_lexicon"):
        select_batch(table, "documents", {"min_domain_lexicon": 0.1})


def test_conversations_are_judged_on_language_and_flagged_words_only():
    rows = [
        [{"role": "user", "content": "胃痛怎么办？"}, {"role": "assistant", "content": "建议少食多餐。"}],
        [{"role": "user", "content": "How do I treat a cold?"}, {"role": "assistant", "content": "Rest and fluids."}],
    ]
    table = pa.table({"id": ["a", "b"], "messages": rows, "source": ["s", "s"], "category": ["sft", "sft"]})
    kept, _ = clean_conversations(table, {})
    assert kept.column("lang").to_pylist() == ["zh", "en"]
    selected, rejected = select_batch(kept, "conversations", DEFAULTS)
    # Short turns would fail min_mean_line_chars as prose; for dialogue it does not apply.
    assert selected.column("id").to_pylist() == ["a"]
    assert rejected.column("reason").to_pylist() == ["lang:en(allowed=zh)"]


def test_config_rejects_a_domain_threshold_without_its_tagger(tmp_path):
    with pytest.raises(ConfigError, match="select.min_domain_score needs clean.domain_model"):
        parse_config("[select]\nmin_domain_score = 0.5\n", tmp_path)
    config = parse_config('[clean]\ndomain_model = "m.bin"\n[select]\nmin_domain_score = 0.5\n', tmp_path)
    assert config.clean.domain_model == tmp_path / "m.bin"
    with pytest.raises(ConfigError, match="unknown rule 'max_han'"):
        parse_config('[select]\ndisable = ["max_han"]\n', tmp_path)


# -- the real books ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_slice(shared_data, tmp_path_factory):
    """Every 16th classical book (17 books, verse and formula collections among them), the
    pharmacopoeia and a terminology standard, as an ingest-like dataset."""
    folder = tmp_path_factory.mktemp("slice")
    books = sorted((shared_data / "corpus" / "ancient-books").glob("*.txt"))
    books = books[::16] + [p for p in books if p.name.startswith(("084-", "045-"))]
    rows = [r.row for path in books for r in import_file(path, "book", "books", "books") if not r.reason]
    pharmacopoeia = shared_data / "corpus" / "pharmacopoeia"
    rows += [r.row for r in import_file(pharmacopoeia / "2022年中药药典.txt", "monograph", "monographs", "encyclopedia") if not r.reason]
    rows += [r.row for r in import_file(pharmacopoeia / "中医临床诊疗术语疾病.txt", "terms", "terms", "encyclopedia") if not r.reason]
    (folder / "documents").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "documents" / "part-00000.parquet")
    return folder


def test_defaults_keep_the_classical_books_monographs_and_terms(shared_slice, tmp_path):
    engine = LocalEngine(1, 4096)
    clean = run_clean([shared_slice], tmp_path / "clean", {}, StageManifest(stage="clean"), engine)
    select = run_select([tmp_path / "clean"], tmp_path / "select", DEFAULTS, StageManifest(stage="select"), engine)
    for manifest in (clean, select):
        assert manifest.rows_in["documents"] == manifest.rows_kept["documents"] + manifest.rows_rejected.get("documents", 0)
    kept = pq.read_table(tmp_path / "select" / "documents")
    by_source = {s: kept.column("source").to_pylist().count(s) for s in ("books", "monographs", "terms")}
    tagged_rows = pq.read_table(tmp_path / "clean" / "documents")
    before = {s: tagged_rows.column("source").to_pylist().count(s) for s in by_source}
    assert by_source["monographs"] == before["monographs"] and by_source["terms"] == before["terms"]
    # Quality rules remove at most 0.5% of the chapters; length removes only what is not a whole
    # entry (a fragment, a cross-reference), never a titled body that ends a sentence.
    too_short = select.rejected_by_reason.get("too_short", 0)
    assert by_source["books"] + too_short >= 0.995 * before["books"], select.rejected_by_reason
    verse = [t for t, b in zip(kept.column("text").to_pylist(), kept.column("meta").to_pylist()) if b and "汤头歌诀" in b]
    assert len(verse) > 20
    rejected = pq.read_table(tmp_path / "select" / "rejected" / "documents") if select.rows_rejected.get("documents") else None
    if rejected is not None:
        assert all(":" in r for r in rejected.column("reason").to_pylist())
        kinds = {r.split(":")[1] for r in rejected.column("reason").to_pylist() if r.startswith("too_short:")}
        assert kinds and kinds <= {"fragment", "cross_reference", "untitled"}, kinds


def test_dry_run_reports_per_rule_and_writes_nothing(shared_slice, tmp_path):
    strict = {**DEFAULTS, "min_han_ratio": 0.8, "max_digit_ratio": 0.01}
    report = selection_dry_run([shared_slice], strict, LocalEngine(1, 4096), clean_params={})
    part = report["documents"]
    assert part["rules"]["min_han_ratio"]["would_remove"] > 100
    assert part["rules"]["max_digit_ratio"]["would_remove"] > 100  # the monographs' assays
    example = part["rules"]["min_han_ratio"]["examples"][0]
    assert example["reason"].startswith("han_ratio:") and example["text"]
    assert part["would_remove"] <= sum(rule["would_remove"] for rule in part["rules"].values())
    assert list(tmp_path.iterdir()) == []
    # Untagged rows cannot be selected: a dry run on ingest output must go through clean.
    with pytest.raises(MissingTag, match="lang_score"):
        selection_report(pq.read_table(shared_slice / "documents").slice(0, 5), "documents", strict)


def test_a_changed_threshold_reruns_selection_only_and_the_cli_dry_run_writes_nothing(shared_slice, tmp_path, prefect_harness, capsys):
    from flows import pipeline
    from flows.cli import main

    small = tmp_path / "small"
    (small / "documents").mkdir(parents=True)
    pq.write_table(pq.read_table(shared_slice / "documents").slice(0, 400), small / "documents" / "part-00000.parquet")
    config = tmp_path / "build.toml"
    config.write_text("[select]\nmin_han_ratio = 0.3\n[engine]\nworkers = 1\n", encoding="utf-8")
    clean_dir, select_dir = str(tmp_path / "clean"), str(tmp_path / "select")
    assert not pipeline.clean_flow([str(small)], clean_dir, str(config))["skipped"]
    first = pipeline.select_flow([clean_dir], select_dir, str(config))
    config.write_text("[select]\nmin_han_ratio = 0.85\n[engine]\nworkers = 1\n", encoding="utf-8")
    assert pipeline.clean_flow([str(small)], clean_dir, str(config))["skipped"], "tags are not recomputed"
    second = pipeline.select_flow([clean_dir], select_dir, str(config))
    assert not second["skipped"]
    assert second["rows_rejected"]["documents"] > first["rows_rejected"].get("documents", 0)
    assert second["rejected_by_reason"]["han_ratio"] > 0

    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["run", "select", "--dry-run", "--input", clean_dir, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "min_han_ratio" in out and "would remove" in out and "han_ratio:0." in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_evidence_characters_are_kept_per_machine_and_read_back_the_same(tmp_path, monkeypatch):
    """The evidence classes are worked out from OpenCC's tables once, written to the temp dir,
    and read back identical; the classes built from either are the same patterns."""
    import tempfile

    from transforms.clean import simplify

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    worked_out = simplify._worked_out_evidence()
    assert simplify._evidence_chars() == worked_out  # worked out and written
    written = list(tmp_path.rglob("evidence-*.json"))
    assert len(written) == 1 and not list(tmp_path.rglob("*.partial"))
    assert simplify._evidence_chars() == worked_out  # read back
    assert "參" in worked_out["traditional"] and "参" in worked_out["simplified"] and "裡" in worked_out["taiwan"]
    patterns = simplify.Evidence(**{name: simplify._char_class(set(chars)) for name, chars in worked_out.items()})
    assert simplify.evidence() == patterns
